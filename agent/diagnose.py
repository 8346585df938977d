"""The diagnose pipeline: resolve, probe, trace what is not open, talk SMTP to what is, read
the cloud, and correlate everything into one finding per target and port.

Stages overlap: the cloud is read while the probes run; traces and SMTP checks of every
address and port run together. Answered targets so cost about one round trip per stage;
only silent drops wait for timeouts.
"""

from __future__ import annotations

import asyncio
import os
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
    Location,
    SmtpSummary,
    TraceHop,
    TraceSummary,
)
from mailpath.probes.local import ephemeral_ports
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
    cloud: str = "auto"  # auto, yes, no
    instance_id: str | None = None
    eni: str | None = None
    region: str | None = None
    provider: str | None = None
    ca_file: str | None = None
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
        except Exception:  # no resolver configuration for dnspython: fall back to the system's
            route = None
        if route is not None:
            plans = _plans_from_route(name, route)
            if plans is not None:
                return await _fill_from_system(plans, opts)
    return await _fill_from_system([Plan(name, [])], opts)


def _plans_from_route(domain: str, route) -> list[Plan] | None:
    """Plans from the mail route; None when the name has no MX (then it is a host name)."""
    ev = [
        Evidence(source="dns", ref=f"dns:{domain}/{p.code}", fact=p.message)
        for p in route.problems
        if p.code != "no-mx"
    ]
    fatal = [p for p in route.problems if p.code in ("nxdomain", "null-mx", "servfail", "dns-timeout")]
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
    from mailpath.agent.targets import InputError, resolve

    for p in plans:
        if p.addresses or p.dns_cause:
            continue
        try:
            if opts.nameservers:
                from mailpath.probes.dns import resolve_host

                p.addresses, why = await resolve_host(p.host, opts.nameservers, opts.dns_timeout)
                if not p.addresses:
                    raise InputError(f"cannot resolve {p.host!r}: {why}")
            else:
                p.addresses = await asyncio.to_thread(resolve, p.host)
        except InputError as e:
            p.dns_cause = "nxdomain" if "not known" in str(e) or "NXDOMAIN" in str(e) else "unresolvable"
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


def _cloud_reader(opts: DiagnoseOptions, addresses: list[str]):
    """(provider, identity dict, context, {address: destination interface}) or None off cloud."""
    if opts.cloud == "no":
        return None
    from mailpath.cloud.aws import find_identity
    from mailpath.cloud.evaluate import policy_only
    from mailpath.cloud.provider import detect

    dmi = detect()
    # IMDS is asked only where it can answer: on AWS by its DMI, or where it was pointed to
    ask = opts.provider == "aws" or (
        opts.provider is None
        and (opts.cloud == "yes" or dmi == "aws" or bool(os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT")))
    )
    identity = find_identity(opts.instance_id, opts.eni, opts.region, ask_imds=ask)
    provider = opts.provider or ("aws" if identity else dmi)
    if provider is None:
        return None
    eph = ephemeral_ports()
    if provider == "aws" and identity is not None:
        from mailpath.cloud.aws import Reader, read_context

        try:
            ctx, dests, _ = read_context(identity, addresses, eph, Reader(identity.region))
        except Exception as e:  # credentials, region, endpoint: the rest of the diagnosis goes on
            return provider, {"error": f"could not read AWS: {e}", **identity.to_dict()}, None, {}
        return provider, identity.to_dict(), ctx, dests
    return provider, {"provider": provider}, policy_only(provider, eph), dict.fromkeys(addresses)


def _safe_cloud_reader(opts: DiagnoseOptions, addresses: list[str]):
    """The cloud check is one witness among several: its failure must not stop the diagnosis."""
    try:
        return _cloud_reader(opts, addresses)
    except Exception as e:
        return None if opts.cloud == "auto" else ("unknown", {"error": f"cloud check failed: {e}"}, None, {})


async def measure(
    plans: list[Plan], opts: DiagnoseOptions
) -> tuple[dict[tuple[str, str, int], Observation], dict | None]:
    """Observations per (host, address, port), and the cloud identity when there is one."""
    from mailpath.probes import Options, probe
    from mailpath.probes.smtp import SmtpOptions, check_address
    from mailpath.probes.trace import TraceOptions, trace_raw

    targets = [Target(p.host, a, port) for p in plans for a in p.addresses for port in opts.ports]
    if not targets:
        return {}, None
    addresses = sorted({t.address for t in targets})
    cloud_task = asyncio.create_task(asyncio.to_thread(_safe_cloud_reader, opts, addresses))
    options = Options(timeout=opts.timeout, retries=opts.retries, min_wait=opts.min_wait)
    results = await asyncio.to_thread(probe, targets, method=opts.method, options=options)
    obs = {
        (t.host, t.address, t.port): Observation(t.address, r) for t, r in zip(targets, results, strict=True)
    }

    to_trace = [
        t
        for t, r in zip(targets, results, strict=True)
        if r.verdict != "open" and r.responder != "local" and r.method == "raw"
    ]
    smtp_opts = SmtpOptions(
        timeout=opts.smtp_timeout, ca_file=opts.ca_file, user=opts.user, password=opts.password
    )
    open_ = [t for t, r in zip(targets, results, strict=True) if r.verdict == "open"]

    async def traces():
        if not to_trace:
            return []
        topts = TraceOptions(max_hops=opts.max_hops, timeout=opts.timeout, min_wait=opts.min_wait)
        return await asyncio.to_thread(trace_raw, to_trace, topts)

    from mailpath.probes.local import route

    sessions = [
        check_address(
            t.host, t.address, t.port, smtp_opts, src if isinstance(src := route(t.address), str) else ""
        )
        for t in open_
    ]
    traced, checked, cloud = await asyncio.gather(traces(), asyncio.gather(*sessions), cloud_task)
    for t, tr in zip(to_trace, traced, strict=True):
        obs[(t.host, t.address, t.port)].trace = tr
    for t, s in zip(open_, checked, strict=True):
        obs[(t.host, t.address, t.port)].smtp = s
    if cloud and cloud[2] is not None:
        from mailpath.cloud.evaluate import evaluate

        _, _, ctx, dests = cloud
        for (_, address, port), o in obs.items():
            ctx.destination = dests.get(address)
            o.cloud = evaluate(ctx, address, port)
    return obs, (cloud[1] if cloud else None)


# -- stage 5: findings ------------------------------------------------------------------------


def _address_result(o: Observation) -> AddressResult:
    p, t, s = o.probe, o.trace, o.smtp
    return AddressResult(
        address=o.address,
        verdict=str(p.verdict),
        method=p.method,
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


_DNS_STEPS = {
    "nxdomain": "The name does not exist: check the spelling of the domain or host the application uses",
    "null-mx": "The domain publishes a null MX (RFC 7505): it accepts no mail at all",
    "servfail": "The domain's nameservers fail (SERVFAIL): check its DNS (DNSSEC, delegation) or the "
    "resolver",
    "dns-timeout": "No DNS answer in time: check this host's resolver (/etc/resolv.conf) and the domain's "
    "nameservers",
    "mx-no-address": "The MX host has no A/AAAA record: fix the MX target's address records",
    "unresolvable": "The name does not resolve here: check /etc/hosts, the resolver and the name",
    "no-address-in-family": "The host has no address of the requested IP family",
}


def _dns_finding(p: Plan, port: int, agent: Agent) -> Finding:
    return Finding(
        agent=agent,
        target=p.host,
        domain=p.domain,
        port=port,
        cause="dns",
        location=Location(kind="local"),
        headline=f"{port} on {p.host}: {p.dns_cause.replace('-', ' ')} — dns",
        evidence=p.dns,
        remediation=[_DNS_STEPS.get(p.dns_cause, "Fix the DNS records of the target")],
        severity="error",
    )


def agent_info(cloud_identity: dict | None) -> Agent:
    return Agent(hostname=socket.gethostname(), version=__version__, cloud=cloud_identity or None)


def findings(
    plans: list[Plan], obs: dict, opts: DiagnoseOptions, cloud_identity: dict | None
) -> list[Finding]:
    agent = agent_info(cloud_identity)
    out = []
    for p in plans:
        for port in opts.ports:
            if p.dns_cause or not p.addresses:
                out.append(_dns_finding(p, port, agent))
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


def diagnose(target: str, opts: DiagnoseOptions) -> list[Finding]:
    async def run():
        plans = await plan(target, opts)
        obs, cloud_identity = await measure(plans, opts)
        return findings(plans, obs, opts, cloud_identity)

    return asyncio.run(run())
