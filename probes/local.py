"""What happens on this host before a probe leaves it: source selection and local refusals."""

from __future__ import annotations

import errno
import socket

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
