"""What happens on this host before a probe leaves it: source selection and local refusals."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass

from mailpath.probes import wire
from mailpath.probes.classify import Verdict

LOCAL = "local"  # responder of a verdict reached without leaving this host


def local_verdict(err: int) -> tuple[Verdict, str]:
    """Verdict for a probe that could not leave this host, from the errno the kernel gave.

    Route types map as Linux's fib does: unreachable → EHOSTUNREACH, prohibit → EACCES,
    blackhole → EINVAL, no route at all → ENETUNREACH; a local firewall (OUTPUT DROP or
    REJECT) surfaces as EPERM.
    """
    name = errno.errorcode.get(err, str(err))
    if err in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
        return Verdict.UNREACHABLE, f"no route from this host ({name})"
    if err in (errno.EACCES, errno.EPERM):
        return Verdict.REJECTED, f"refused by this host's own policy: prohibit route or firewall ({name})"
    if err == errno.EINVAL:
        return Verdict.FILTERED, f"discarded by this host: blackhole route ({name})"
    return Verdict.UNREACHABLE, f"could not send from this host ({name})"


def route(address: str) -> str | int:
    """Our source address towards ``address`` as the kernel would choose it, or the errno
    of the route lookup (no route, prohibit, blackhole...). Sends nothing: a UDP connect()
    only consults the routing table."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((address, 9))
        except OSError as e:
            return e.errno or errno.EHOSTUNREACH
        return s.getsockname()[0].split("%")[0]


def ephemeral_ports() -> tuple[int, int]:
    """This host's source-port range: the ports the replies to its connections come back to."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999  # the Linux default


@dataclass(frozen=True, slots=True)
class FirstHop:
    """Where a packet to a destination goes first, from this host's routing table, and whether
    that gateway answers an echo to its own address."""

    gateway: str | None  # None: the destination is on a directly connected network
    interface: str | None
    answers: bool | None = None  # True up, False silent, None not asked or could not ask


def first_hop(address: str) -> FirstHop | None:
    """The gateway and interface the kernel would use for ``address`` (``ip route get``, so
    policy routing counts); None when it cannot say. Sends nothing."""
    try:
        out = subprocess.run(
            ["ip", "-j", "route", "get", address], capture_output=True, text=True, timeout=5, check=True
        ).stdout
        (entry,) = json.loads(out)[:1]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return FirstHop(entry.get("gateway"), entry.get("dev"))


def echo(address: str, timeout: float = 1.0, tries: int = 2) -> bool | None:
    """Does ``address`` answer an ICMP echo? None when this process may open no ICMP socket
    (neither a ping socket, see net.ipv4.ping_group_range, nor a raw one)."""
    v6 = ":" in address
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    for kind in (socket.SOCK_DGRAM, socket.SOCK_RAW):
        try:
            s = socket.socket(family, kind, proto)
        except OSError:
            continue
        with s:
            s.settimeout(timeout)
            ident = os.getpid() & 0xFFFF
            for seq in range(1, tries + 1):
                try:
                    # ICMPv6 sockets compute the checksum themselves: the pseudo-header here is moot
                    packet = wire.icmp_echo(ident, seq, v6=v6, src="::" if v6 else "", dst=address)
                    s.sendto(packet, (address, 0))
                    if _echo_reply(s, address, kind, v6, timeout):
                        return True
                except OSError:
                    return False
            return False
    return None


def _echo_reply(s: socket.socket, address: str, kind: int, v6: bool, timeout: float) -> bool:
    """Wait up to ``timeout`` for an echo reply from ``address`` on ``s``."""
    deadline = time.monotonic() + timeout
    want = wire.ICMP6_ECHO_REPLY if v6 else wire.ICMP_ECHO_REPLY
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            data, peer = s.recvfrom(2048)
        except TimeoutError:
            return False
        if kind == socket.SOCK_RAW and not v6:
            data = data[(data[0] & 0x0F) * 4 :]  # raw IPv4 sockets hand over the IP header too
        if peer[0].split("%")[0] == address and data and data[0] == want:
            return True
    return False
