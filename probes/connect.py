"""Unprivileged fallback: probe with connect(), for hosts where raw sockets are not allowed.

The kernel folds several packet-level causes into one errno, so each result says what this
mode cannot tell apart. An open port gets a full handshake, closed at once with a RST
(SO_LINGER 0) so no TIME_WAIT or half-finished session is left on the server.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import time

from probes.classify import Verdict
from probes.local import LOCAL, local_verdict, route
from probes.result import ProbeResult, Target

_LIMITS = {
    Verdict.REFUSED: "connect() cannot tell a RST from the host, a RST forged in the path, "
    "and an ICMP port-unreachable apart: all read as ECONNREFUSED",
    Verdict.UNREACHABLE: "connect() cannot tell ICMP host-unreachable from an IPv4 "
    "admin-prohibited reject (both EHOSTUNREACH), nor which hop answered",
    Verdict.REJECTED: "connect() cannot tell an IPv6 admin-prohibited reject from a local "
    "firewall (both EACCES/EPERM), nor which hop answered",
    Verdict.FILTERED: "connect() cannot tell a silent drop from an ICMP error suppressed by a "
    "router's rate limit",
    Verdict.OPEN: "connect() completes the handshake (then resets it) instead of a half-open probe",
}

_ERRNO_VERDICT = {
    errno.ECONNREFUSED: Verdict.REFUSED,
    errno.EHOSTUNREACH: Verdict.UNREACHABLE,
    errno.ENETUNREACH: Verdict.UNREACHABLE,
    errno.EHOSTDOWN: Verdict.UNREACHABLE,
    errno.ENONET: Verdict.UNREACHABLE,
    errno.EACCES: Verdict.REJECTED,
    errno.EPERM: Verdict.REJECTED,
    errno.ENOPROTOOPT: Verdict.REJECTED,  # ICMP protocol unreachable
    errno.ETIMEDOUT: Verdict.FILTERED,
}


def errno_verdict(err: int) -> Verdict:
    return _ERRNO_VERDICT.get(err, Verdict.UNREACHABLE)


async def _connect_once(t: Target, timeout: float) -> tuple[Verdict | None, int | None, float]:
    family = socket.AF_INET6 if t.family == 6 else socket.AF_INET
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(s, (t.address, t.port)), timeout)
        except TimeoutError:
            return None, None, time.monotonic() - start
        except OSError as e:
            return errno_verdict(e.errno), e.errno, time.monotonic() - start
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return Verdict.OPEN, None, time.monotonic() - start


async def _probe_one(t: Target, timeout: float, retries: int, gate: asyncio.Semaphore) -> ProbeResult:
    base = dict(host=t.host, address=t.address, port=t.port, method="connect")
    source = route(t.address)
    if isinstance(source, int):
        verdict, why = local_verdict(source)
        return ProbeResult(**base, verdict=verdict, reason=why, responder=LOCAL, responder_hop=0)
    async with gate:
        attempt, verdict = 0, None
        while verdict is None and attempt <= retries:
            attempt += 1
            verdict, err, elapsed = await _connect_once(t, timeout)
    if verdict is None:
        return ProbeResult(
            **base,
            attempts=attempt,
            verdict=Verdict.FILTERED,
            limitations=[_LIMITS[Verdict.FILTERED]],
            reason=f"connect() timed out {attempt} time{'s' if attempt > 1 else ''} ({timeout:g} s each)",
        )
    if err == errno.EPERM:  # only this host's own netfilter answers EPERM
        why = local_verdict(err)[1]
        return ProbeResult(
            **base, attempts=attempt, verdict=Verdict.REJECTED, reason=why, responder=LOCAL, responder_hop=0
        )
    name = "connected" if err is None else errno.errorcode.get(err, str(err))
    answered_by_host = verdict in (Verdict.OPEN, Verdict.REFUSED)
    return ProbeResult(
        **base,
        attempts=attempt,
        verdict=verdict,
        reason=f"connect(): {name}",
        responder=t.address if answered_by_host else None,
        rtt_ms=round(elapsed * 1000, 3),
        limitations=[_LIMITS[verdict]],
    )


async def _probe_all(targets: list[Target], timeout: float, retries: int, concurrency: int):
    gate = asyncio.Semaphore(concurrency)
    return await asyncio.gather(*(_probe_one(t, timeout, retries, gate) for t in targets))


def probe_connect(
    targets: list[Target], *, timeout: float = 1.0, retries: int = 2, concurrency: int = 256
) -> list[ProbeResult]:
    """Probe every target with connect(), ``concurrency`` at a time."""
    return list(asyncio.run(_probe_all(targets, timeout, retries, concurrency)))
