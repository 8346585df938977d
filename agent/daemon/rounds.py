"""One round of the agent: every configured target diagnosed, and what of it is reported.

The pure half decides what a round sends. A finding is keyed by its target and port (and the
mail domain it came from); its *signature* is its cause, its location and the verdict of
each address. With ``report = "changes"`` a finding is sent when its key is new, when its
signature differs from the last one sent, or as a heartbeat when the last one sent is
``heartbeat`` seconds old (less a slack, so that rounds, which never fall exactly on the
heartbeat, do not make it late by almost an interval); ``report = "all"`` sends every one.
"Sent" means spooled: from the spool, delivery never loses a finding (short of the spool's
bounds). The state (key → signature and time of the last one sent) is a JSON object kept in
the spool's meta table, so a restart resends nothing that did not change.

The I/O half runs a round through the diagnose pipeline's own stages
(:func:`~mailpath.agent.diagnose.plan`, :func:`~mailpath.agent.diagnose.measure`,
:func:`~mailpath.agent.diagnose.findings`, the three steps of ``diagnose_async``) in the
daemon's event loop: names first for every target, then the cloud configuration read once for
the round with every address found, then the measurements, at most ``concurrency`` targets at
a time. The observations are kept beside the findings for the metrics (round-trip times and
certificates are in them, not in the findings).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from mailpath.agent.daemon.config import AgentConfig, TargetConfig
    from mailpath.agent.finding import Agent, Finding

Why = Literal["new", "changed", "heartbeat", "all"]

# -- what a round sends (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """The last finding sent for one key: its signature and when (Unix time)."""

    signature: str
    at: float


@dataclass(frozen=True)
class Decision:
    finding: dict
    why: Why


def finding_key(finding: Mapping) -> str:
    """What a finding is about: its mail domain (when it came from MX records), target, port."""
    return json.dumps([finding.get("domain"), finding["target"], finding["port"]], separators=(",", ":"))


def signature(finding: Mapping) -> str:
    """What, when it changes, makes a finding worth sending: the cause, the location, and the
    verdict of each address (sorted: the order DNS gave them in does not count)."""
    location = finding.get("location")
    if location is not None:
        location = {k: location.get(k) for k in ("kind", "hop", "address", "component")}
    verdicts = sorted([a["address"], a["verdict"]] for a in finding.get("addresses") or [])
    doc = {"cause": finding["cause"], "location": location, "verdicts": verdicts}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def select(
    findings: Iterable[dict],
    state: Mapping[str, Sent],
    *,
    report: Literal["changes", "all"],
    now: float,
    heartbeat: float,
    slack: float = 0.0,
) -> tuple[list[Decision], dict[str, Sent]]:
    """The findings to send, each with why, and the state after sending them. A heartbeat is
    due when the last one sent is at least ``heartbeat - slack`` seconds old."""
    out: list[Decision] = []
    after = dict(state)
    for f in findings:
        key, sig = finding_key(f), signature(f)
        last = after.get(key)
        why: Why
        if report == "all":
            why = "all"
        elif last is None:
            why = "new"
        elif last.signature != sig:
            why = "changed"
        elif now - last.at >= heartbeat - slack:
            why = "heartbeat"
        else:
            continue
        after[key] = Sent(sig, now)
        out.append(Decision(f, why))
    return out, after


def prune(state: Mapping[str, Sent], now: float, older_than: float) -> dict[str, Sent]:
    """The state without keys sent last more than ``older_than`` seconds ago: a key that is
    still diagnosed is sent at least every heartbeat, so those are targets no longer probed
    (an MX host gone, a target taken out of the configuration). Keeps the state bounded."""
    return {k: v for k, v in state.items() if now - v.at <= older_than}


def dump_state(state: Mapping[str, Sent]) -> str:
    return json.dumps({k: [v.signature, v.at] for k, v in sorted(state.items())}, separators=(",", ":"))


def load_state(text: str | None) -> dict[str, Sent]:
    """The state from its JSON text; anything unreadable is an empty state (everything new)."""
    if not text:
        return {}
    try:
        raw = json.loads(text)
        return {str(k): Sent(str(v[0]), float(v[1])) for k, v in raw.items()}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return {}


# -- what the metrics show of a target and port (pure) -------------------------------------------


@dataclass(frozen=True)
class PortFacts:
    """One finding as the metrics show it."""

    host: str  # the host probed (an MX host, or the target itself)
    port: int
    cause: str
    severity: str
    verdicts: dict[str, int]  # verdict -> addresses with it
    rtt: float | None  # seconds: the fastest answer to a probe among the addresses
    cert_not_after: float | None  # Unix time: the earliest certificate expiry among the addresses


def port_facts(finding: Finding, observations: Mapping) -> PortFacts:
    """The facts of ``finding`` and of its observations (``measure``'s, keyed by host, address
    and port): round-trip times from the probes, certificate expiry from the SMTP checks."""
    rtts, expiries = [], []
    for a in finding.addresses:
        o = observations.get((finding.target, a.address, finding.port))
        if o is None:
            continue
        if o.probe.rtt_ms is not None and o.probe.verdict == "open":
            rtts.append(o.probe.rtt_ms / 1000)
        cert = ((o.smtp.tls or {}).get("certificate") if o.smtp is not None else None) or {}
        if cert.get("not_after"):
            expiries.append(dt.datetime.fromisoformat(cert["not_after"]).timestamp())
    return PortFacts(
        host=finding.target,
        port=finding.port,
        cause=finding.cause,
        severity=finding.severity,
        verdicts=dict(Counter(a.verdict for a in finding.addresses)),
        rtt=min(rtts) if rtts else None,
        cert_not_after=min(expiries) if expiries else None,
    )


# -- one round (I/O) -----------------------------------------------------------------------------


@dataclass
class TargetResult:
    """One configured target diagnosed: its findings, or the error that stopped it."""

    target: TargetConfig
    findings: list[Finding] = field(default_factory=list)
    facts: list[PortFacts] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    recorder: object | None = None  # its packets ([capture] dir set): a probes.capture.Recorder


@dataclass
class Round:
    """What a round did, as the log line, ``status`` and the spool's meta show it."""

    number: int
    started_at: float  # Unix time
    targets: int = 0
    diagnosed: int = 0
    findings: int = 0
    problems: int = 0  # findings whose cause is not none
    sent: Counter = field(default_factory=Counter)  # why -> findings spooled
    errors: list[str] = field(default_factory=list)  # "target: error", one per target that failed
    cloud: str | None = None  # why the cloud was not read, when it was asked for and failed
    seconds: float = 0.0
    interrupted: bool = False  # stopped by SIGTERM before every target was diagnosed
    spool_error: str | None = None

    def to_json(self) -> dict:
        return {
            "number": self.number,
            "started_at": _iso(self.started_at),
            "seconds": round(self.seconds, 3),
            "targets": self.targets,
            "diagnosed": self.diagnosed,
            "findings": self.findings,
            "problems": self.problems,
            "sent": sum(self.sent.values()),
            "sent_why": dict(sorted(self.sent.items())),
            "errors": self.errors,
            "cloud_error": self.cloud,
            "interrupted": self.interrupted,
            "spool_error": self.spool_error,
        }

    def line(self) -> str:
        """The round in one line of the log (under 60 characters in the usual case)."""
        sent = sum(self.sent.values())
        why = "+".join(f"{n} {w}" for w, n in sorted(self.sent.items()) if w != "all")
        parts = [
            f"round {self.number}: {self.diagnosed}/{self.targets} targets",
            f"{self.problems}/{self.findings} problems",
            f"{sent} sent" + (f" ({why})" if why and sent else ""),
        ]
        if self.errors:
            parts.append(f"{len(self.errors)} failed")
        if self.interrupted:
            parts.append("interrupted")
        return ", ".join(parts) + f", {self.seconds:.1f} s"


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def options_for(config: AgentConfig, target: TargetConfig):
    """The ``DiagnoseOptions`` of one target, as ``mailpath diagnose`` builds them from its
    options (the cloud is read by the round, once, so ``cloud`` is None here). Reads the SMTP
    password from its file or variable now, so a rotated secret is used at the next round."""
    from mailpath.agent.diagnose import DiagnoseOptions

    p = config.probe
    return DiagnoseOptions(
        ports=list(target.ports),
        method=p.method,
        timeout=p.timeout,
        retries=p.retries,
        min_wait=p.min_wait,
        smtp_timeout=p.smtp_timeout,
        max_hops=p.max_hops,
        follow_mx=target.follow_mx,
        nameservers=target.nameserver_addresses(),
        dns_timeout=p.dns_timeout,
        family=target.family,
        cloud=None,
        ca_file=str(target.tls_ca_file) if target.tls_ca_file else None,
        server_name=target.server_name,
        ehlo=target.ehlo,
        mail_from=target.mail_from,
        rcpt_to=list(target.rcpt_to),
        user=target.smtp_user,
        password=target.smtp_password(),
    )


def read_cloud_once(config: AgentConfig, addresses: list[str]):
    """The round's one read of the cloud: (CloudRead or None, the identity findings carry,
    why it failed). As ``diagnose`` does: when the check was not required, a failure only
    leaves the cloud out; when it was, the identity says why."""
    from mailpath.cloud.check import read_cloud
    from mailpath.probes.errors import MailpathError

    options = config.cloud.options()
    if options is None:
        return None, None, None
    try:
        read = read_cloud(options, addresses)
    except MailpathError as e:
        why = f"cloud check failed: {e}"
        return None, ({"error": why} if options.required else None), why
    return read, (read.identity if read else None), None


async def run_round(
    config: AgentConfig,
    number: int,
    *,
    agent: Agent,
    stop: asyncio.Event | None = None,
    on_result: Callable[[TargetResult], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[Round, list[TargetResult]]:
    """Diagnose every target of ``config``: names, then the cloud (once), then the
    measurements, ``config.concurrency`` targets at a time. ``on_result`` is called in the
    loop as each target is done. When ``stop`` is set, targets not yet started are skipped
    (those running finish: the caller bounds how long it waits for them)."""
    from mailpath.agent.diagnose import findings as make_findings
    from mailpath.agent.diagnose import measure, plan

    started, t0 = clock(), time.monotonic()
    rnd = Round(number=number, started_at=started, targets=len(config.targets))
    gate = asyncio.Semaphore(config.concurrency)
    stopping = stop or asyncio.Event()
    results: list[TargetResult] = []

    async def planned(t: TargetConfig):
        async with gate:
            if stopping.is_set():
                return None
            try:
                opts = options_for(config, t)
                return opts, await plan(t.host, opts)
            except Exception as e:  # one target's failure is not the round's
                return _failure(t, e)

    plans = await asyncio.gather(*(planned(t) for t in config.targets))
    addresses = sorted({a for p in plans if isinstance(p, tuple) for x in p[1] for a in x.addresses})
    read, identity, rnd.cloud = (None, None, None)
    if not stopping.is_set():
        read, identity, rnd.cloud = await asyncio.to_thread(read_cloud_once, config, addresses)
    who = agent.model_copy(update={"cloud": identity}) if identity else agent

    async def measured(t: TargetConfig, p) -> None:
        if p is None:
            return
        if isinstance(p, TargetResult):
            result = p
        else:
            async with gate:
                if stopping.is_set():
                    return
                start = time.monotonic()
                opts, plans_ = p
                recorder = _recorder(config)
                try:
                    obs, _ = await measure(plans_, opts, read, recorder=recorder)
                    found = make_findings(plans_, obs, opts, who)
                    result = TargetResult(t, found, [port_facts(f, obs) for f in found], recorder=recorder)
                except Exception as e:
                    result = _failure(t, e)
                result.seconds = time.monotonic() - start
        results.append(result)
        if on_result is not None:
            on_result(result)

    await asyncio.gather(*(measured(t, p) for t, p in zip(config.targets, plans, strict=True)))
    rnd.seconds = time.monotonic() - t0
    rnd.interrupted = stopping.is_set() and len(results) < len(config.targets)
    for r in results:
        if r.error:
            rnd.errors.append(f"{r.target.target}: {r.error}")
        else:
            rnd.diagnosed += 1
            rnd.findings += len(r.findings)
            rnd.problems += sum(f.cause != "none" for f in r.findings)
    return rnd, results


def _recorder(config: AgentConfig):
    if config.capture.dir is None:
        return None
    from mailpath.probes.capture import Recorder

    return Recorder(limit=config.capture.max_packets)


def _failure(t: TargetConfig, e: BaseException) -> TargetResult:
    from mailpath.probes.errors import MailpathError

    what = str(e) if isinstance(e, MailpathError | OSError) else f"{type(e).__name__}: {e}"
    return TargetResult(t, error=what)
