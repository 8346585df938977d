"""The diagnose pipeline: resolve, probe, trace what is not open, talk SMTP to what is, read
the cloud, and correlate everything into one finding per target and port.

Stages overlap: the cloud is read while the probes run; traces and SMTP checks of every
address and port run together. Answered targets so cost about one round trip per stage;
only silent drops wait for timeouts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from dataclasses import dataclass, field
from ipaddress import ip_address

from mailpath.agent import __version__
from mailpath.agent.correlate import Diagnosis, Observation, combine
from mailpath.agent.finding import (
    AddressResult,
    Agent,
    Evidence,
    Finding,
    SmtpSummary,
    TraceHop,
    TraceSummary,
)
from mailpath.cloud.check import CloudOptions, CloudRead, read_cloud
from mailpath.probes.errors import DependencyFailed, MailpathError, ResolveError
from mailpath.probes.result import Target


@dataclass
class DiagnoseOptions:
    ports: list[int] = field(default_factory=lambda: [25, 465, 587])
    method: str = "auto"  # raw, connect, auto
    timeout: float = 1.0  # per probe try
    retries: int = 2
    min_wait: float = 3.5
    smtp_timeout: float = 10.0
    max_hops: int = 30
    follow_mx: bool = True
    nameservers: list[tuple[str, int]] = field(default_factory=list)
    dns_timeout: float = 5.0
    family: int | None = None  # 4 or 6 to keep one family
    cloud: CloudOptions | None = field(default_factory=CloudOptions)  # None: no cloud check
    ca_file: str | None = None
    server_name: str | None = None  # the name certificates must carry (default: the host dialled)
    ehlo: str | None = None
    mail_from: str | None = None  # envelope test (see SmtpOptions)
    rcpt_to: list[str] = field(default_factory=list)
    user: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass
class Plan:
    """One host to examine (an MX host or the target itself), with its addresses, or the DNS
    evidence of why there are none."""

    host: str
    addresses: list[str]
    domain: str | None = None
    dns: list[Evidence] = field(default_factory=list)
    dns_cause: str | None = None  # a DNS problem that leaves this host without addresses


# -- stage 1: names ---------------------------------------------------------------------------


async def plan(target: str, opts: DiagnoseOptions) -> list[Plan]:
    try:
        ip_address(target)
        return [Plan(target, [target])]
    except ValueError:
        pass
    name = target.rstrip(".").lower()
    if opts.follow_mx:
        from mailpath.probes.dns import lookup_route_async

        try:
            route = await lookup_route_async(name, opts.nameservers, opts.dns_timeout)
        except DependencyFailed:  # no resolver configuration for dnspython: fall back to the system's
            route = None
        if route is not None:
            plans = _plans_from_route(name, route)
            if plans is not None and await _known_to_the_system(plans, opts):
                note = Evidence(
                    source="dns",
                    ref=f"dns:{name}/address",
                    fact=f"DNS has no domain {name} (NXDOMAIN), but this host's resolver knows it as a "
                    "host (/etc/hosts or a search domain): diagnosed as that host",
                )
                return await _fill_from_system([Plan(name, [], dns=[note])], opts)
            if plans is not None:
                return await _fill_from_system(plans, opts)
    return await _fill_from_system([Plan(name, [])], opts)


async def _known_to_the_system(plans: list[Plan], opts: DiagnoseOptions) -> bool:
    """DNS says the name does not exist, yet the system resolver (/etc/hosts, search domains)
    knows it as a host: then it is that host (the caller resolves it again), and the evidence
    says why. Only for the system's resolver: with --nameserver, DNS is what was asked for."""
    if opts.nameservers or len(plans) != 1 or plans[0].dns_cause != "nxdomain":
        return False
    from mailpath.probes.dns import system_addresses

    host = plans[0].host
    try:
        await asyncio.to_thread(system_addresses, host)
    except ResolveError:
        return False
    return True


def _plans_from_route(domain: str, route) -> list[Plan] | None:
    """Plans from the mail route; None when the name has no MX (then it is a host name)."""
    ev = [
        Evidence(source="dns", ref=f"dns:{domain}/{p.code}", fact=p.message)
        for p in route.problems
        if p.code != "no-mx"
    ]
    fatal = [
        p
        for p in route.problems
        if p.code in ("nxdomain", "null-mx", "servfail", "dns-timeout", "dns-refused")
    ]
    if fatal and not route.mx:
        return [Plan(domain, [], None, ev, fatal[0].code)]
    if not route.mx or route.implicit_mx:
        return None
    plans = []
    for x in route.mx:
        facts = [
            Evidence(
                source="dns",
                ref=f"dns:{domain}/mx",
                fact=f"MX {x.preference} {x.host}: " + (", ".join(x.addresses) or "no address"),
            )
        ]
        mine = [e for e in ev if x.host in e.fact]
        plans.append(
            Plan(x.host, list(x.addresses), domain, facts + mine, None if x.addresses else "mx-no-address")
        )
    return plans


async def _fill_from_system(plans: list[Plan], opts: DiagnoseOptions) -> list[Plan]:
    """Addresses of hosts that still have none, through the system resolver (/etc/hosts too)."""
    from mailpath.probes.dns import resolve_host

    for p in plans:
        if p.addresses or p.dns_cause:
            continue
        try:
            p.addresses = await resolve_host(p.host, opts.nameservers, opts.dns_timeout)
        except ResolveError as e:
            p.dns_cause = _RESOLVE_CAUSE.get(e.kind, "unresolvable")
            p.dns.append(Evidence(source="dns", ref=f"dns:{p.host}/address", fact=str(e)))
    for p in plans:
        if opts.family:
            kept = [a for a in p.addresses if ip_address(a).version == opts.family]
            if p.addresses and not kept:
                p.dns_cause = "no-address-in-family"
                p.dns.append(
                    Evidence(
                        source="dns",
                        ref=f"dns:{p.host}/address",
                        fact=f"{p.host} has no IPv{opts.family} address",
                    )
                )
            p.addresses = kept
    return plans


# -- stages 2-4: measure ----------------------------------------------------------------------


def _read_cloud(options: CloudOptions | None, addresses: list[str]) -> tuple[CloudRead | None, dict | None]:
    """The cloud configuration and this host's cloud identity. The cloud check is one witness
    among several: when it cannot run, the identity says why and the diagnosis goes on."""
    if options is None:
        return None, None
    try:
        read = read_cloud(options, addresses)
    except MailpathError as e:
        return None, {"error": f"cloud check failed: {e}"} if options.required else None
    return read, (read.identity if read else None)


async def measure(
    plans: list[Plan], opts: DiagnoseOptions, cloud: CloudRead | None = None, recorder=None
) -> tuple[dict[tuple[str, str, int], Observation], dict | None]:
    """Observations per (host, address, port), and the cloud identity when there is one.
    ``cloud``: a configuration already read (the agent reads it once a round); else it is read
    here, while the probes run, as ``opts.cloud`` says. ``recorder``
    (:class:`mailpath.probes.capture.Recorder`): keep the packets of the raw probes and traces,
    named after the evidence refs of the findings."""
    from mailpath.probes import Options, probe
    from mailpath.probes.smtp import SmtpOptions, check_targets
    from mailpath.probes.trace import TraceOptions, trace_raw

    targets = [Target(p.host, a, port) for p in plans for a in p.addresses for port in opts.ports]
    if not targets:
        return {}, None
    addresses = sorted({t.address for t in targets})
    if cloud is not None:
        cloud_task = asyncio.create_task(asyncio.sleep(0, (cloud, cloud.identity)))
    else:
        cloud_task = asyncio.create_task(asyncio.to_thread(_read_cloud, opts.cloud, addresses))
    options = Options(timeout=opts.timeout, retries=opts.retries, min_wait=opts.min_wait)
    results = await asyncio.to_thread(probe, targets, method=opts.method, options=options, recorder=recorder)
    obs = {
        (t.host, t.address, t.port): Observation(t.address, r) for t, r in zip(targets, results, strict=True)
    }

    to_trace = [
        t
        for t, r in zip(targets, results, strict=True)
        if r.verdict != "open" and r.responder != "local" and r.method == "raw"
    ]
    smtp_opts = SmtpOptions(
        timeout=opts.smtp_timeout,
        ca_file=opts.ca_file,
        server_name=opts.server_name,
        ehlo=opts.ehlo,
        mail_from=opts.mail_from,
        rcpt_to=opts.rcpt_to,
        user=opts.user,
        password=opts.password,
    )
    open_ = [t for t, r in zip(targets, results, strict=True) if r.verdict == "open"]

    async def traces():
        if not to_trace:
            return []
        topts = TraceOptions(max_hops=opts.max_hops, timeout=opts.timeout, min_wait=opts.min_wait)
        try:
            return await asyncio.to_thread(trace_raw, to_trace, topts, "icmp", recorder)
        except (OSError, MailpathError):  # the traces are a witness: without them the probes still speak
            return [None] * len(to_trace)

    traced, checked, (read, identity) = await asyncio.gather(
        traces(), check_targets(open_, smtp_opts), cloud_task
    )
    for t, tr in zip(to_trace, traced, strict=True):
        obs[(t.host, t.address, t.port)].trace = tr
    for t, s in zip(open_, checked, strict=True):
        obs[(t.host, t.address, t.port)].smtp = s
    await _ask_first_hops([o for o in obs.values() if o.trace is not None and o.trace.drop_after_hop == 0])
    if read is not None:
        for (_, address, port), o in obs.items():
            o.cloud = read.evaluate(address, port)
    return obs, identity


async def _ask_first_hops(silent: list[Observation]) -> None:
    """Where not even hop 1 answered: the first hop from this host's routing table, and whether
    that gateway answers an echo to its own address (each gateway asked once)."""
    from mailpath.probes.local import echo, first_hop

    hops = {o.address: await asyncio.to_thread(first_hop, o.address) for o in silent}
    gateways = sorted({h.gateway for h in hops.values() if h is not None and h.gateway})
    answers = dict(
        zip(gateways, await asyncio.gather(*(asyncio.to_thread(echo, g) for g in gateways)), strict=True)
    )
    for o in silent:
        hop = hops[o.address]
        if hop is not None:
            o.first_hop = dataclasses.replace(hop, answers=answers.get(hop.gateway)) if hop.gateway else hop


# -- stage 5: findings ------------------------------------------------------------------------


def _address_result(o: Observation) -> AddressResult:
    p, t, s = o.probe, o.trace, o.smtp
    return AddressResult(
        address=o.address,
        verdict=str(p.verdict),
        method=p.method,
        limitations=p.limitations,
        responder=p.responder,
        responder_hop=p.responder_hop,
        destination_hop=p.destination_hop,
        trace=TraceSummary(
            verdict=str(t.verdict),
            drop_after_hop=t.drop_after_hop,
            reached_destination=t.reached_destination,
            responder_hop=t.responder_hop,
            destination_hop=t.destination_hop,
            port_specific=t.port_specific,
            hops=[TraceHop(ttl=h.ttl, address=h.address, reply=h.reply) for h in t.hops],
        )
        if t is not None
        else None,
        smtp=SmtpSummary(
            tls_mode=s.tls_mode,
            greeting=s.greeting,
            tls_version=(s.tls or {}).get("version"),
            auth_mechanisms=s.auth_mechanisms,
            problems=[p.code for p in s.problems],
        )
        if s is not None
        else None,
    )


_RESOLVE_CAUSE = {  # ResolveError.kind -> the finding's DNS cause
    "refused": "dns-refused",
    "nxdomain": "nxdomain",
    "nodata": "no-address",
    "servfail": "servfail",
    "timeout": "dns-timeout",
}
_DNS_STEPS = {
    "nxdomain": "The name does not exist: check the spelling of the domain or host the application uses",
    "null-mx": "The domain publishes a null MX (RFC 7505): it accepts no mail at all",
    "servfail": "The domain's nameservers fail (SERVFAIL): check its DNS (DNSSEC, delegation) or the "
    "resolver",
    "dns-timeout": "No DNS answer in time: check this host's resolver (/etc/resolv.conf) and the domain's "
    "nameservers",
    "mx-no-address": "The MX host has no A/AAAA record: fix the MX target's address records",
    "no-address": "The name exists but has no A/AAAA record: fix its address records",
    "dns-refused": "The nameserver given with --nameserver refuses DNS (nothing listens on its port): "
    "check its address and port, and that it runs",
    "unresolvable": "The name does not resolve here: check /etc/hosts, the resolver and the name",
    "no-address-in-family": "The host has no address of the requested IP family",
}


def _dns_step(cause: str, nameservers: list[tuple[str, int]]) -> str:
    """What to do about a DNS cause; about the nameservers asked when they were given."""
    if nameservers and cause == "dns-timeout":
        asked = ", ".join(a for a, _ in nameservers)
        return f"The nameserver given with --nameserver ({asked}) does not answer in time: check it"
    return _DNS_STEPS.get(cause, "Fix the DNS records of the target")


def _dns_finding(p: Plan, port: int, agent: Agent, nameservers: list[tuple[str, int]]) -> Finding:
    return Finding(
        agent=agent,
        target=p.host,
        domain=p.domain,
        port=port,
        cause="dns",
        location=None,  # the name's DNS, not a place on the path
        headline=f"{port} on {p.host}: {p.dns_cause.replace('-', ' ')} — dns",
        evidence=p.dns,
        remediation=[_dns_step(p.dns_cause, nameservers)],
        severity="error",
    )


def agent_info(name: str | None = None) -> Agent:
    """This host as findings name it: ``name`` (the agent's configured name) or the host name."""
    return Agent(hostname=name or socket.gethostname(), version=__version__)


def findings(plans: list[Plan], obs: dict, opts: DiagnoseOptions, agent: Agent) -> list[Finding]:
    out = []
    for p in plans:
        for port in opts.ports:
            if p.dns_cause or not p.addresses:
                out.append(_dns_finding(p, port, agent, opts.nameservers))
                continue
            group = [obs[(p.host, a, port)] for a in p.addresses]
            d: Diagnosis = combine(group, p.host)
            out.append(
                Finding(
                    agent=agent,
                    target=p.host,
                    domain=p.domain,
                    port=port,
                    addresses=[_address_result(o) for o in group],
                    cause=d.cause,
                    location=d.location,
                    headline=d.headline(port, p.host),
                    evidence=p.dns + d.evidence,
                    remediation=d.remediation,
                    severity=d.severity,
                    candidates=d.candidates,
                )
            )
    return out


async def diagnose_async(
    target: str, opts: DiagnoseOptions, agent: Agent, cloud: CloudRead | None = None, recorder=None
) -> list[Finding]:
    """Diagnose ``target`` (a mail domain, host name or address) in the running event loop:
    one finding per host and port. ``agent`` names who reports them; the cloud identity found
    on the way is added to it. ``cloud``: a configuration already read (see :func:`measure`).
    ``recorder``: keep the packets of the probes and traces (see :func:`measure`); write them
    with ``recorder.write(path)``."""
    plans = await plan(target, opts)
    obs, identity = await measure(plans, opts, cloud, recorder)
    if identity:
        agent = agent.model_copy(update={"cloud": identity})
    return findings(plans, obs, opts, agent)


def diagnose(target: str, opts: DiagnoseOptions, agent: Agent | None = None, recorder=None) -> list[Finding]:
    """:func:`diagnose_async` in an event loop of its own (the CLI's way)."""
    return asyncio.run(diagnose_async(target, opts, agent or agent_info(), recorder=recorder))
