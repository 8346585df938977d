"""What a transport probe is asked and what it answers; shared by the raw and connect() engines."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mailpath.probes.classify import Verdict


@dataclass(frozen=True, slots=True)
class Target:
    """One (address, port) to probe; ``host`` is what the user typed (a name or the address)."""

    host: str
    address: str
    port: int

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4


@dataclass(frozen=True, slots=True)
class Icmp:
    """An ICMP error as received: type, code and its name (``admin-prohibited``…)."""

    type: int
    code: int
    name: str


@dataclass(slots=True)
class ProbeResult:
    host: str
    address: str
    port: int
    verdict: Verdict
    method: str  # "raw" or "connect"
    reason: str
    responder: str | None = None
    responder_hop: int | None = None
    destination_hop: int | None = None
    icmp: Icmp | None = None
    rtt_ms: float | None = None
    attempts: int = 0
    # What this method cannot tell apart (connect() mode); empty for raw probes.
    limitations: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["verdict"] = str(self.verdict)
        return d
