"""A small fleet's findings, made by the real diagnosis: each fault is put on a simulated path
(:mod:`tests.simnet`, in virtual time, no packet sent), traced by the trace engine, and the
probe, trace and SMTP results go through ``mailpath.agent.diagnose.findings`` (the correlation
rules) to a finding, as ``mailpath diagnose`` would report it. Dashboard tests post these."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

from mailpath.agent.correlate import Observation
from mailpath.agent.diagnose import DiagnoseOptions, Plan, findings
from mailpath.agent.finding import Agent
from mailpath.probes.problem import Problem
from mailpath.probes.result import ProbeResult, Target
from mailpath.probes.smtp import SmtpResult
from mailpath.probes.trace import TraceOptions, TraceRun

from tests.simnet import CLOSED, DROP, FORGE_RST, OPEN, Path, Router, SimNet, icmp, run

ROUTERS = 3
CLIENT = "198.18.1.1"

# fault name -> (where: 0 the destination, k hop k; the action there)
FAULTS = {
    "ok": (None, None),
    "forged-rst": (2, FORGE_RST),
    "drop": (2, DROP),
    "reject": (1, icmp(13)),
    "unreachable": (2, icmp(1)),
    "closed": (0, CLOSED),
    "tls-mismatch": (None, None),
}


def router(k: int) -> str:
    """The address of the router at hop ``k`` on every simulated path."""
    return f"198.18.{k}.254"


def diagnosed(
    target: str, port: int, fault: str, *, hostname: str, created_at: dt.datetime, dest: str = "198.18.9.9"
) -> dict:
    """The finding (JSON) that ``mailpath diagnose`` makes of ``fault`` on the way to
    ``target``:``port`` (its one address ``dest``), stamped ``created_at``."""
    where, action = FAULTS[fault]
    path = Path([Router(router(k), f"2001:db8:{k}::fe") for k in range(1, ROUTERS + 1)], dest4=dest)
    path.ports[port] = OPEN
    if where == 0:
        path.ports[port] = action
    elif where:
        path.routers[where - 1].ports[port] = action
    run_ = TraceRun(Target(target, dest, port), CLIENT, TraceOptions(), "icmp", random.Random(port))
    run(run_, SimNet(path))
    t = run_.result()
    probe = ProbeResult(
        host=target,
        address=dest,
        port=port,
        verdict=t.verdict,
        method="raw",
        reason=t.reason,
        responder=t.responder,
        responder_hop=t.responder_hop,
        destination_hop=t.destination_hop,
        attempts=1,
    )
    smtp = None
    if str(t.verdict) == "open":
        problems = (
            [Problem("tls-mismatch", "the port speaks implicit TLS")] if fault == "tls-mismatch" else []
        )
        smtp = SmtpResult(
            host=target,
            address=dest,
            port=port,
            tls_mode="none" if problems else "starttls",
            expected_tls="starttls",
            greeting=f"220 {target} ESMTP",
            tls=None if problems else {"version": "TLSv1.3"},
            problems=problems,
        )
    obs = {(target, dest, port): Observation(dest, probe, t, smtp)}
    agent = Agent(hostname=hostname, version="0.1.0")
    (finding,) = findings([Plan(target, [dest])], obs, DiagnoseOptions(ports=[port], cloud=None), agent)
    return finding.model_copy(update={"created_at": created_at}).to_json_dict()


@dataclass(frozen=True)
class Report:
    agent: str
    target: str
    port: int
    fault: str
    minutes_ago: int


# Two agents, four targets:ports. edge-fra's mx1:25 is the forged RST (the newest change);
# its mx2:25 was dropped by a firewall and has recovered since; edge-iad sees other faults.
FLEET = [
    Report("edge-fra", "mx1.example.net", 25, "ok", 300),
    Report("edge-fra", "mx1.example.net", 25, "forged-rst", 12),
    Report("edge-fra", "mx1.example.net", 587, "ok", 90),
    Report("edge-fra", "mx2.example.org", 25, "drop", 240),
    Report("edge-fra", "mx2.example.org", 25, "drop", 180),
    Report("edge-fra", "mx2.example.org", 25, "ok", 45),
    Report("edge-fra", "smtp.example.com", 465, "reject", 120),
    Report("edge-iad", "mx1.example.net", 25, "ok", 200),
    Report("edge-iad", "mx1.example.net", 587, "tls-mismatch", 30),
    Report("edge-iad", "mx2.example.org", 25, "unreachable", 60),
    Report("edge-iad", "smtp.example.com", 465, "closed", 150),
]


def fleet(now: dt.datetime, reports: list[Report] = FLEET) -> dict[str, list[dict]]:
    """Each agent's findings of ``reports``, oldest first."""
    out: dict[str, list[dict]] = {}
    for r in sorted(reports, key=lambda r: -r.minutes_ago):
        f = diagnosed(
            r.target, r.port, r.fault, hostname=r.agent, created_at=now - dt.timedelta(minutes=r.minutes_ago)
        )
        out.setdefault(r.agent, []).append(f)
    return out
