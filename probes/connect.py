"""Unprivileged fallback: probe with connect(), for hosts where raw sockets are not allowed.

The kernel folds packet-level causes into one errno, but with IP_RECVERR/IPV6_RECVERR it
also queues the ICMP error that ended (or, for soft errors, merely hit) the attempt, with
its type, code and sender. So this mode still names ICMP rejects and who sent them; what it
cannot do is give hop numbers or tell a RST from the host from one forged in the path.
Each result lists what this mode cannot tell apart. An open port gets a full handshake,
closed at once with a RST (SO_LINGER 0) so no session is left on the server.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import sys
import time
from dataclasses import dataclass

from mailpath.probes import wire
from mailpath.probes.classify import Verdict, icmp_name, unreach_verdict
from mailpath.probes.local import LOCAL, local_verdict, route
from mailpath.probes.result import Icmp, ProbeResult, Target

_IP_RECVERR, _IPV6_RECVERR = 11, 25  # Linux <linux/in.h>, <linux/in6.h>
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # struct sock_extended_err
_ORIGIN_ICMP, _ORIGIN_ICMP6 = 2, 3

NO_HOPS = "connect() mode gives no hop numbers: it cannot see the TTL of what answered"
_LIMITS = {
    Verdict.REFUSED: "connect() cannot tell a RST from the host and a RST forged in the path "
    "apart: both read as ECONNREFUSED",
    Verdict.FILTERED: "connect() cannot tell a silent drop from an ICMP error suppressed by a "
    "router's rate limit",
    Verdict.OPEN: "connect() completes the handshake (then resets it) instead of a half-open probe",
}

_ERRNO_VERDICT = {
    errno.ECONNREFUSED: Verdict.REFUSED,
    errno.EACCES: Verdict.REJECTED,
    errno.ENOPROTOOPT: Verdict.REJECTED,  # ICMP protocol unreachable
    errno.ETIMEDOUT: Verdict.FILTERED,
}


@dataclass(frozen=True, slots=True)
class QueuedICMP:
    """An ICMP error the kernel queued on the socket (MSG_ERRQUEUE)."""

    sender: str
    type: int
    code: int


def parse_extended_error(data: bytes) -> QueuedICMP | None:
    """Read a ``sock_extended_err`` followed by its offender sockaddr; ICMP origins only."""
    if len(data) < _EXTENDED_ERR.size + 8:
        return None
    _err, origin, icmp_type, code, _pad, _info, _data = _EXTENDED_ERR.unpack_from(data)
    if origin not in (_ORIGIN_ICMP, _ORIGIN_ICMP6):
        return None
    offender = data[_EXTENDED_ERR.size :]
    family = int.from_bytes(offender[:2], sys.byteorder)
    if family == socket.AF_INET:
        sender = socket.inet_ntop(socket.AF_INET, offender[4:8])
    elif family == socket.AF_INET6 and len(offender) >= 24:
        sender = socket.inet_ntop(socket.AF_INET6, offender[8:24])
    else:
        return None
    return QueuedICMP(sender, icmp_type, code)


def _queued_icmp(s: socket.socket) -> QueuedICMP | None:
    found = None
    while True:
        try:
            _data, anc, _flags, _addr = s.recvmsg(512, 1024, socket.MSG_ERRQUEUE)
        except OSError:
            return found
        for level, kind, value in anc:
            if (level, kind) in ((socket.IPPROTO_IP, _IP_RECVERR), (socket.IPPROTO_IPV6, _IPV6_RECVERR)):
                found = parse_extended_error(value) or found


@dataclass
class _Attempt:
    verdict: Verdict | None  # None: timed out with nothing queued
    err: int | None
    elapsed: float
    icmp: QueuedICMP | None = None


async def _connect_once(t: Target, timeout: float) -> _Attempt:
    family = socket.AF_INET6 if t.family == 6 else socket.AF_INET
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setblocking(False)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
        else:
            s.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
        try:
            await asyncio.wait_for(loop.sock_connect(s, (t.address, t.port)), timeout)
        except TimeoutError:
            queued = _queued_icmp(s)  # a soft error (e.g. ICMPv6 prohibited) leaves the SYN retrying
            return _Attempt(None, None, time.monotonic() - start, queued)
        except OSError as e:
            return _Attempt(
                _ERRNO_VERDICT.get(e.errno, Verdict.UNREACHABLE),
                e.errno,
                time.monotonic() - start,
                _queued_icmp(s),
            )
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return _Attempt(Verdict.OPEN, None, time.monotonic() - start)


def _icmp_result(base: dict, t: Target, a: _Attempt) -> ProbeResult:
    q = a.icmp
    te = wire.ICMP6_TIME_EXCEEDED if t.family == 6 else wire.ICMP_TIME_EXCEEDED
    verdict = Verdict.UNREACHABLE if q.type == te else unreach_verdict(t.family, q.code)
    name = icmp_name(t.family, q.type, q.code)
    return ProbeResult(
        **base,
        verdict=verdict,
        responder=q.sender,
        rtt_ms=round(a.elapsed * 1000, 3),
        icmp=Icmp(q.type, q.code, name),
        reason=f"ICMP {name} from {q.sender} (from the socket's error queue)",
        limitations=[NO_HOPS],
    )


async def _probe_one(t: Target, timeout: float, retries: int, gate: asyncio.Semaphore) -> ProbeResult:
    base = dict(host=t.host, address=t.address, port=t.port, method="connect")
    source = route(t.address)
    if isinstance(source, int):
        verdict, why = local_verdict(source)
        return ProbeResult(**base, verdict=verdict, reason=why, responder=LOCAL, responder_hop=0)
    async with gate:
        attempts = 0
        while True:
            attempts += 1
            a = await _connect_once(t, timeout)
            if a.verdict is not None or a.icmp is not None or attempts > retries:
                break
    base["attempts"] = attempts
    if a.icmp is not None and a.verdict is not Verdict.OPEN:
        return _icmp_result(base, t, a)
    if a.verdict is None:
        return ProbeResult(
            **base,
            verdict=Verdict.FILTERED,
            limitations=[_LIMITS[Verdict.FILTERED]],
            reason=f"connect() timed out {attempts} time{'s' if attempts > 1 else ''} ({timeout:g} s each)",
        )
    if a.err in (errno.EPERM, errno.EACCES):  # with no ICMP queued: this host's own netfilter
        why = local_verdict(a.err)[1]
        return ProbeResult(**base, verdict=Verdict.REJECTED, reason=why, responder=LOCAL, responder_hop=0)
    name = "connected" if a.err is None else errno.errorcode.get(a.err, str(a.err))
    return ProbeResult(
        **base,
        verdict=a.verdict,
        reason=f"connect(): {name}",
        responder=t.address if a.verdict in (Verdict.OPEN, Verdict.REFUSED) else None,
        rtt_ms=round(a.elapsed * 1000, 3),
        limitations=[_LIMITS.get(a.verdict, NO_HOPS)],
    )


async def _probe_all(targets: list[Target], timeout: float, retries: int, concurrency: int):
    gate = asyncio.Semaphore(concurrency)
    return await asyncio.gather(*(_probe_one(t, timeout, retries, gate) for t in targets))


def probe_connect(
    targets: list[Target], *, timeout: float = 1.0, retries: int = 2, concurrency: int = 256
) -> list[ProbeResult]:
    """Probe every target with connect(), ``concurrency`` at a time."""
    return list(asyncio.run(_probe_all(targets, timeout, retries, concurrency)))
