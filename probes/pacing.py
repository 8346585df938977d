"""Pacing sends so that routers' ICMP rate limits cannot fake a silent drop.

Linux answers ICMP errors to one destination from a token bucket (``icmp_ratelimit``
1000 ms, burst 6; ICMPv6 likewise, faster for wide routes). Every ICMP error we receive
tells us a router spent a token. A packet sent at least ``interval`` after the last error
from every router that sent us errors, and ``interval`` plus a round trip after our previous
paced packet, finds a token at each of them: if it meets silence, the silence is real.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class Pacer:
    """Paced sends of one address family (ICMPv4 and ICMPv6 errors have separate buckets)."""

    interval: float
    queue: deque = field(default_factory=deque)
    errors: dict[str, float] = field(default_factory=dict)  # ICMP error source -> its last arrival
    last_sent: float = float("-inf")

    def gate(self, max_rtt: float) -> float:
        """Earliest time a paced packet may go, so each error-sending router has a token."""
        last_error = max(self.errors.values(), default=float("-inf"))
        return max(self.last_sent + self.interval + max_rtt, last_error + self.interval)

    def error_from(self, router: str, now: float) -> None:
        self.errors[router] = now


def pacers(interval: float) -> dict[int, Pacer]:
    """One pacer per address family."""
    return {4: Pacer(interval), 6: Pacer(interval)}
