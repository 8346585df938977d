"""The I/O edge of the raw probes: raw sockets, route lookups, and the loop that drives a batch.

Everything here is thin on purpose; decisions live in the sans-I/O machines (``syn``,
``trace``). IPv4 is sent through an IP_HDRINCL socket so each packet carries its own TTL;
IPv6 through a raw TCP/ICMPv6 socket with the hop limit and source address as ancillary
data, and received with them as ancillary data too (IPv6 raw sockets never show the header).

Replies must survive a busy host. Each receiving socket's queue is sized for the batch
(``SO_RCVBUFFORCE``, which passes ``net.core.rmem_max``, then ``SO_RCVBUF`` capped by it).
Should the queue still overflow (the driver starved of CPU while replies pour in), the
kernel's drop count comes with every later packet (``SO_RXQ_OVFL``, read with ``recvmsg``)
and from ``/proc/net/raw``/``raw6`` (the ``drops`` column of our sockets, by inode), and
:func:`drive` tells the machine (``dropped``), which decides what to ask again. Replies already
queued are read before any timer is judged, so a reply that came in time is never late.

Given a recorder (``--pcap``, :mod:`mailpath.probes.capture`), every packet sent is handed to it
with the time just before the send, and every datagram read with the kernel's receive time
(``SO_TIMESTAMPNS``, asked for only then); the IPv6 header, which these sockets never show, is
rebuilt from the addresses and hop limit. Without one, none of this runs.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable

from mailpath.probes import caps, wire
from mailpath.probes.errors import NO_RAW, PermissionDenied
from mailpath.probes.machine import Machine

_HOPLIMIT = struct.Struct("i")
_U32 = struct.Struct("I")
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; not exported by Python
_SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)  # Linux; not exported by Python
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; = SCM_TIMESTAMPNS
_TIMESPEC = struct.Struct("qq")
_ANC4 = socket.CMSG_SPACE(4)  # SO_RXQ_OVFL
_ANC6 = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(4) + socket.CMSG_SPACE(4)  # pktinfo, hop limit, drops
_ANC_TS = socket.CMSG_SPACE(_TIMESPEC.size)  # SO_TIMESTAMPNS, when recording
# Receive queue per socket: the kernel charges each queued packet its buffer's true size
# (about 0.8 KiB for a reply on a veth, up to a few KiB on real NICs) and doubles what is asked.
RCVBUF_MIN = 16 << 20
RCVBUF_MAX = 256 << 20
_PER_REPLY = 2048
# How often the driver reads the sockets' drop counters from /proc (and once more before done).
_PROC_EVERY = 0.1


def rcvbuf_for(replies: int) -> int:
    """The receive queue (bytes asked, before the kernel doubles it) for a batch that may
    draw ``replies`` replies, every one of them queued at once: 16 MiB at least, 256 MiB at
    most. Memory is charged only for packets actually queued."""
    return max(RCVBUF_MIN, min(RCVBUF_MAX, replies * _PER_REPLY))


def _raw(family: int, proto: int, rcvbuf: int, stamps: bool = False) -> socket.socket:
    s = socket.socket(family, socket.SOCK_RAW, proto)
    s.setblocking(False)
    if proto != socket.IPPROTO_RAW and stamps:
        s.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    if proto != socket.IPPROTO_RAW:
        try:  # CAP_NET_ADMIN (in the socket's network namespace): past net.core.rmem_max
            s.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
        except OSError:  # without it, capped at rmem_max: the drop count covers what overflows
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setsockopt(socket.SOL_SOCKET, _SO_RXQ_OVFL, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    return s


class RawNet:
    """Raw sockets for the families in use. Opening needs CAP_NET_RAW (else PermissionDenied)."""

    def __init__(self, families: set[int], rcvbuf: int = RCVBUF_MIN, recorder=None) -> None:
        self.recorder = recorder  # a probes.capture.Recorder, or None
        self._anc_extra = _ANC_TS if recorder is not None else 0
        self._send4 = self._send6 = None
        self._recv: dict[int, tuple[int, int]] = {}  # fd -> (family, proto)
        self._socks: list[socket.socket] = []
        self._drops: dict[int, int] = {}  # fd -> the kernel's drop count, as last seen
        self._inodes: dict[int, int] = {}  # socket inode -> fd (to read /proc/net/raw*)
        caps.raise_net_raw()  # permitted only (a file capability, as in the image): make it effective
        try:
            st = recorder is not None
            if 4 in families:
                self._send4 = self._add(_raw(socket.AF_INET, socket.IPPROTO_RAW, rcvbuf), None)
                self._add(_raw(socket.AF_INET, socket.IPPROTO_TCP, rcvbuf, st), (4, wire.PROTO_TCP))
                self._add(_raw(socket.AF_INET, socket.IPPROTO_ICMP, rcvbuf, st), (4, wire.PROTO_ICMP))
            if 6 in families:
                tcp6 = self._add(_raw(socket.AF_INET6, socket.IPPROTO_TCP, rcvbuf, st), (6, wire.PROTO_TCP))
                icmp6 = self._add(
                    _raw(socket.AF_INET6, socket.IPPROTO_ICMPV6, rcvbuf, st), (6, wire.PROTO_ICMPV6)
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
            self._drops[s.fileno()] = 0
            self._inodes[os.fstat(s.fileno()).st_ino] = s.fileno()
        return s

    @property
    def rcvbuf(self) -> int:
        """The smallest receive queue (bytes) the kernel actually gave a receiving socket."""
        by_fd = {s.fileno(): s for s in self._socks}
        return min(by_fd[fd].getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) for fd in self._recv)

    def drops(self, fresh: bool = False) -> int:
        """Replies the kernel dropped on our receiving sockets (their queues overflowed) so far:
        as the last packets read said (SO_RXQ_OVFL), or, ``fresh``, read from /proc now."""
        if fresh:
            for name in ("raw", "raw6"):
                try:
                    with open(f"/proc/net/{name}") as f:
                        lines = f.read().splitlines()[1:]
                except OSError:
                    continue
                for line in lines:
                    fields = line.split()
                    # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
                    if len(fields) >= 13 and fields[9].isdigit() and int(fields[9]) in self._inodes:
                        fd = self._inodes[int(fields[9])]
                        self._drops[fd] = max(self._drops[fd], int(fields[-1]))
        return sum(self._drops.values())

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
        data = None
        try:
            if self.recorder is not None:
                at = time.time()
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
        if self.recorder is not None:
            if data is None:
                data = wire.ipv6_packet(pkt.src, pkt.dst, pkt.proto, pkt.payload, hop_limit=pkt.ttl)
            self.recorder.sent(at, data)
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
                    size = (_ANC4 if family == 4 else _ANC6) + self._anc_extra
                    data, anc, _flags, addr = sock.recvmsg(65535, size)
                except BlockingIOError:
                    break
                except OSError:
                    break
                stamp = None
                for level, kind, value in anc:
                    if level == socket.SOL_SOCKET and kind == _SO_RXQ_OVFL and len(value) >= 4:
                        self._drops[fd] = max(self._drops[fd], _U32.unpack_from(value)[0])
                    elif level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(value) >= 16:
                        sec, nsec = _TIMESPEC.unpack_from(value)
                        stamp = sec + nsec / 1e9
                dg = wire.parse_ipv4(data) if family == 4 else _datagram6(data, anc, addr, proto)
                if dg is not None:
                    out.append(dg)
                    if self.recorder is not None:
                        self._record(dg, data, stamp)
        return out

    def _record(self, dg: wire.Datagram, data: bytes, stamp: float | None) -> None:
        if dg.family == 6:
            data = wire.ipv6_packet(dg.src, dg.dst, dg.proto, dg.payload, hop_limit=dg.ttl)
        self.recorder.heard(stamp if stamp is not None else time.time(), data, dg)


def _datagram6(data: bytes, anc: list, addr: tuple, proto: int) -> wire.Datagram | None:
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
    """Run a sans-I/O machine against real sockets until it is done.

    Replies already queued are fed before the machine judges any timer, so a reply that came
    in time is never taken for silence however late this process gets the CPU. Replies the
    kernel dropped are reported to the machine (when it takes such reports), with the
    interval they were lost in, before it may finish.
    """
    reported = 0.0
    drops = _DropWatch(net, machine, clock)
    while True:
        for dg in net.receive(0.0):
            machine.feed(dg, clock())
        drops.check()
        now = clock()
        for pkt in machine.poll(now):
            err = net.send(pkt)
            if err is not None:
                machine.send_failed(pkt, err, now)
        if machine.done and not drops.check(fresh=True):
            return
        wait = min(machine.next_wakeup(now) - clock(), 0.25)
        for dg in net.receive(wait):
            machine.feed(dg, clock())
        if progress and clock() - reported > 0.2:
            reported = clock()
            progress()


class _DropWatch:
    """Tells the machine of replies the kernel dropped: how many, by when, and since when.

    The count read from /proc at a moment is exact, so drops found later happened after it
    (``since``); the count that comes with a packet tells of drops before that packet was
    queued, so it only moves the count, never ``since``."""

    def __init__(self, net: RawNet, machine: Machine, clock: Callable[[], float]) -> None:
        self.net, self.clock = net, clock
        self.report = getattr(machine, "dropped", None)
        # drops before the machine sent anything cost it nothing: count from here
        self.read_at = self.since = clock()
        self.total = net.drops(fresh=True)

    def check(self, fresh: bool = False) -> bool:
        """Report new drops; True when there were any. ``fresh``: read /proc now."""
        if self.report is None:
            return False
        at = self.clock()
        fresh = fresh or at - self.read_at >= _PROC_EVERY
        count = self.net.drops(fresh=fresh)
        new = count > self.total
        if new:
            self.report(count - self.total, self.clock(), self.since)
            self.total = count
        if fresh:
            self.read_at = self.since = at
        return new
