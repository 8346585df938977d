"""The I/O edge of the raw probes: raw sockets, route lookups, and the loop that drives a batch.

Everything here is thin on purpose; decisions live in the sans-I/O machines (``syn``,
``trace``). IPv4 is sent through an IP_HDRINCL socket so each packet carries its own TTL;
IPv6 through a raw TCP/ICMPv6 socket with the hop limit and source address as ancillary
data, and received with them as ancillary data too (IPv6 raw sockets never show the header).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable

from mailpath.probes import wire
from mailpath.probes.errors import NO_RAW, PermissionDenied
from mailpath.probes.machine import Machine

_HOPLIMIT = struct.Struct("i")
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; not exported by Python


def _raw(family: int, proto: int, rcvbuf: int) -> socket.socket:
    s = socket.socket(family, socket.SOCK_RAW, proto)
    s.setblocking(False)
    if proto != socket.IPPROTO_RAW:
        try:
            s.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    return s


class RawNet:
    """Raw sockets for the families in use. Opening needs CAP_NET_RAW (else PermissionDenied)."""

    def __init__(self, families: set[int], rcvbuf: int = 1 << 24) -> None:
        self._send4 = self._send6 = None
        self._recv: dict[int, tuple[int, int]] = {}  # fd -> (family, proto)
        self._socks: list[socket.socket] = []
        try:
            if 4 in families:
                self._send4 = self._add(_raw(socket.AF_INET, socket.IPPROTO_RAW, rcvbuf), None)
                self._add(_raw(socket.AF_INET, socket.IPPROTO_TCP, rcvbuf), (4, wire.PROTO_TCP))
                self._add(_raw(socket.AF_INET, socket.IPPROTO_ICMP, rcvbuf), (4, wire.PROTO_ICMP))
            if 6 in families:
                tcp6 = self._add(_raw(socket.AF_INET6, socket.IPPROTO_TCP, rcvbuf), (6, wire.PROTO_TCP))
                icmp6 = self._add(
                    _raw(socket.AF_INET6, socket.IPPROTO_ICMPV6, rcvbuf), (6, wire.PROTO_ICMPV6)
                )
                self._send6 = {wire.PROTO_TCP: tcp6, wire.PROTO_ICMPV6: icmp6}
        except PermissionError:
            self.close()
            raise PermissionDenied(NO_RAW) from None
        except BaseException:
            self.close()
            raise
        self._ident = int.from_bytes(os.urandom(2), "big")

    def _add(self, s: socket.socket, recv: tuple[int, int] | None) -> socket.socket:
        self._socks.append(s)
        if recv:
            self._recv[s.fileno()] = recv
        return s

    def __enter__(self) -> RawNet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for s in self._socks:
            s.close()
        self._socks.clear()

    def send(self, pkt) -> int | None:
        """Send one ``syn.Send``; returns the errno if the kernel refused it."""
        try:
            if pkt.family == 4:
                self._ident = (self._ident + 1) & 0xFFFF
                data = wire.ipv4_packet(
                    pkt.src, pkt.dst, pkt.proto, pkt.payload, ttl=pkt.ttl, ident=self._ident
                )
                self._send4.sendto(data, (pkt.dst, 0))
            else:
                anc = [
                    (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, _HOPLIMIT.pack(pkt.ttl)),
                    (
                        socket.IPPROTO_IPV6,
                        socket.IPV6_PKTINFO,
                        socket.inet_pton(socket.AF_INET6, pkt.src) + struct.pack("I", 0),
                    ),
                ]
                self._send6[pkt.proto].sendmsg([pkt.payload], anc, 0, (pkt.dst, 0))
        except OSError as e:
            return e.errno or errno.EIO
        return None

    def receive(self, timeout: float, limit: int = 4096) -> list[wire.Datagram]:
        """Wait up to ``timeout`` for replies, then drain what is queued (at most ``limit``)."""
        fds = list(self._recv)
        ready, _, _ = select.select(fds, [], [], max(timeout, 0.0))
        out: list[wire.Datagram] = []
        by_fd = {s.fileno(): s for s in self._socks}
        for fd in ready:
            family, proto = self._recv[fd]
            sock = by_fd[fd]
            while len(out) < limit:
                try:
                    dg = wire.parse_ipv4(sock.recv(65535)) if family == 4 else _recv6(sock, proto)
                except BlockingIOError:
                    break
                except OSError:
                    break
                if dg is not None:
                    out.append(dg)
        return out


def _recv6(sock: socket.socket, proto: int) -> wire.Datagram | None:
    data, anc, _flags, addr = sock.recvmsg(65535, socket.CMSG_SPACE(20) + socket.CMSG_SPACE(4))
    ttl, dst = None, None
    for level, kind, value in anc:
        if level != socket.IPPROTO_IPV6:
            continue
        if kind == socket.IPV6_HOPLIMIT and len(value) >= 4:
            ttl = _HOPLIMIT.unpack_from(value)[0]
        elif kind == socket.IPV6_PKTINFO and len(value) >= 16:
            dst = socket.inet_ntop(socket.AF_INET6, value[:16])
    if ttl is None or dst is None:
        return None
    return wire.Datagram(6, addr[0].split("%")[0], dst, ttl, proto, data)


def drive(
    machine: Machine,
    net: RawNet,
    *,
    clock: Callable[[], float] = time.monotonic,
    progress: Callable[[], None] | None = None,
) -> None:
    """Run a sans-I/O machine against real sockets until it is done."""
    reported = 0.0
    while True:
        now = clock()
        for pkt in machine.poll(now):
            err = net.send(pkt)
            if err is not None:
                machine.send_failed(pkt, err, now)
        if machine.done:
            return
        wait = min(machine.next_wakeup(now) - clock(), 0.25)
        for dg in net.receive(wait):
            machine.feed(dg, clock())
        if progress and clock() - reported > 0.2:
            reported = clock()
            progress()
