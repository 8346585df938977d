"""From measurements to one root cause: the correlation rules of ``mailpath diagnose``.

Pure: it reads probe, trace, SMTP, DNS and cloud results and writes a diagnosis; every rule
is a small function with its own unit test. Rules, in the order they apply to one address:

1. the host could not send at all (``responder: local``) → ``network`` (no route, blackhole)
   or ``firewall`` (a prohibit route, the host's own firewall), at ``local``;
2. ``open`` → the SMTP conversation decides: ``service`` (no greeting, refused, hangs),
   ``tls`` (mode mismatch, certificate, STARTTLS), ``auth``; else ``none``;
3. ``refused`` → ``service`` at the destination: nothing listens (is the port right?);
4. ``reset-in-path`` → ``firewall`` at the hop that forged the RST;
5. ``rejected`` → ``firewall`` at the hop (or destination) that sent the ICMP reject;
6. ``unreachable`` → ``cloud-config`` when the cloud's route table explains it, else
   ``network`` at the hop that said so;
7. ``filtered`` → ``cloud-config`` when a security group, ACL or route certainly blocks;
   ``cloud-policy`` when only the provider's port-25 policy does; else the trace decides:
   a port-specific drop is a ``firewall`` after hop N, a path that goes silent for the
   control too is ``network``; with no trace, the causes that remain are listed.

Across the addresses of one target and port, the first failing address's diagnosis is the
finding's (``error`` when no address works, ``warning`` when another one does).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mailpath.agent.finding import Candidate, Evidence, Location
from mailpath.probes.result import ProbeResult

if TYPE_CHECKING:  # the types only: correlation reads results, it runs no probe and no cloud call
    from mailpath.cloud.evaluate import Evaluation
    from mailpath.probes.local import FirstHop
    from mailpath.probes.smtp import SmtpResult
    from mailpath.probes.trace import TraceResult

SERVICE_CODES = (
    "no-greeting",
    "service-refused",
    "service-temporary",
    "timeout",
    "connect-failed",
    "check-failed",
)
TLS_CODES = (
    "tls-mismatch",
    "tls-handshake-failed",
    "starttls-failed",
    "starttls-missing",
    "cert-untrusted",
    "cert-name-mismatch",
    "cert-expired",
    "tls-client-cert-required",
)
AUTH_CODES = ("auth-failed", "auth-unsupported")
# the envelope test (--from/--to): relaying needs AUTH; the rest is the server's own policy
ENVELOPE_CODES = (
    "relay-denied",
    "sender-refused",
    "recipient-refused",
    "sender-deferred",
    "recipient-deferred",
)
CERTAIN_CLOUD = (
    "security-group",
    "network-acl",
    "route-table",
    "internet-gateway",
    "nat-gateway",
    "egress-only-internet-gateway",
    "network-interface",
)


@dataclass
class Observation:
    """Everything measured about one address on one port."""

    address: str
    probe: ProbeResult
    trace: TraceResult | None = None
    smtp: SmtpResult | None = None
    cloud: Evaluation | None = None
    first_hop: FirstHop | None = None  # asked only when not even hop 1 answered the trace


@dataclass
class Diagnosis:
    cause: str
    summary: str  # the headline's middle: "dropped after hop 2 (198.18.2.2)"
    location: Location | None = None
    evidence: list[Evidence] = field(default_factory=list)
    remediation: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    severity: str = "error"

    def headline(self, port: int, target: str) -> str:
        """ "587 on mail.example.com: dropped after hop 2 (10.0.0.1) — firewall"."""
        return f"{port} on {target}: {self.summary} — {self.cause if self.cause != 'none' else 'ok'}"


def _ref(o: Observation, kind: str, suffix: str = "") -> str:
    return f"{kind}:{o.address}:{o.probe.port}{suffix}"


def _probe_fact(o: Observation) -> Evidence:
    p = o.probe
    return Evidence(source="probe", ref=_ref(o, "probe"), fact=f"{p.verdict}: {p.reason}")


def _facts(o: Observation, ttl: int | None = None) -> list[Evidence]:
    """The probe's fact, then the trace's when there is one (``ttl``: where it points)."""
    ev = [_probe_fact(o)]
    if o.trace is not None:
        ttl = ttl if ttl is not None else (o.trace.responder_hop or (o.trace.drop_after_hop or 0) + 1)
        ev.append(Evidence(source="trace", ref=_ref(o, "trace", f"/ttl={ttl}"), fact=o.trace.reason))
    return ev


def _hop_address(o: Observation, hop: int | None) -> str | None:
    """The address of the router at ``hop``, as the trace saw it answer time-exceeded."""
    return o.trace.hop_address(hop) if o.trace is not None else None


def _at(hop: int | None, address: str | None) -> str:
    return f"hop {hop}" + (f" ({address})" if address else "")


# -- the rules -------------------------------------------------------------------------------


def rule_local(o: Observation) -> Diagnosis:
    """The probe never left this host: the routing table or a local firewall refused it."""
    p = o.probe
    firewall = p.verdict == "rejected"
    cause = "firewall" if firewall else "network"
    return Diagnosis(
        cause,
        f"cannot leave this host ({p.reason})",
        Location(kind="local"),
        [_probe_fact(o)],
        [
            "Check this host's own firewall (iptables/nftables OUTPUT, security agents) for TCP "
            f"{p.port} to {o.address}"
            if firewall
            else f"Check this host's routing table for {o.address}: `ip route get {o.address}` (no route, a "
            "blackhole or unreachable route)"
        ],
    )


# what rule_open says, apart from how it decides: the remediation for each outcome
SERVICE_FIX = (
    "The port is open but the SMTP service on {address}:{port} does not work ({code}): "
    "check the mail server's logs, its load and its client restrictions (e.g. "
    "postscreen, greylisting, reject rules for this host)"
)


@dataclass(frozen=True)
class _TlsModeText:
    """What to say when the port speaks one TLS mode and the client expected the other."""

    speaks: str  # the summary's "the port speaks ..."
    fix: str  # the client's fix on {port}, then {other}: the way out through the other mode
    other_port: int  # the port the other mode belongs on
    use_other: str  # {other} on any other port: move there
    fix_server: str  # {other} on other_port itself: there the server is the one that is wrong


TLS_MISMATCH_TEXTS = {
    "implicit": _TlsModeText(
        "implicit TLS",
        "Port {port} speaks implicit TLS (SMTPS): configure the client for TLS on connect "
        "(SslOnConnect / SMTP_SSL) on {port}, {other}",
        587,
        "or use STARTTLS on 587",
        "or fix the server: 587 should offer STARTTLS",
    ),
    "plaintext": _TlsModeText(
        "plaintext SMTP/STARTTLS",
        "Port {port} speaks plaintext SMTP: configure the client for STARTTLS on {port} (not TLS on "
        "connect), {other}",
        465,
        "or use implicit TLS on 465",
        "or fix the server: 465 should speak implicit TLS",
    ),
}
TLS_FIXES = {  # every TLS code but tls-mismatch (TLS_MISMATCH_TEXTS)
    "cert-untrusted": "Install a certificate from a CA the clients trust on {target}, or add its CA "
    "to the client's trust store",
    "cert-name-mismatch": "Use a certificate that names {target} (or connect by a name it has)",
    "cert-expired": "Renew the certificate of {target}",
    "starttls-missing": "Enable STARTTLS on {target}:{port} (submission requires it), or use 465",
    "starttls-failed": "Fix TLS on {target}:{port}: STARTTLS is offered but refused",
    "tls-handshake-failed": "Fix TLS on {target}:{port}: the handshake fails (protocols, ciphers, "
    "certificate chain)",
    "tls-client-cert-required": "{target}:{port} requires a client certificate: give the application one "
    "the server trusts, or submit on a port that does not require it",
}
ENVELOPE_FIXES = {
    "relay-denied": "{target} relays only for authenticated clients: submit on 587/465 with AUTH, or send "
    "only to domains {target} receives mail for",
    "sender-refused": "{target} refuses the sender address: use one it accepts (its domain, SPF/DMARC "
    "policy, sender restrictions)",
    "recipient-refused": "{target} refuses the recipient: check the address (unknown user, or a domain it "
    "does not serve)",
    "sender-deferred": "{target} defers the sender (4xx, temporary): retry later; if it persists, check "
    "greylisting and rate limits",
    "recipient-deferred": "{target} defers the recipient (4xx, temporary): retry later; if it persists, "
    "check greylisting and the mailbox",
}
AUTH_FIXES = {
    "auth-failed": "Check the user name and password the application uses",
    "auth-unsupported": "The server offers no usable AUTH on {port}: use the submission port (587/465) "
    "or enable AUTH",
}
AUTH_IN_CLEAR_FIX = "Require TLS before AUTH on {target}:{port}, and configure clients for STARTTLS"


def _tls_mismatch_fix(mode: str, port: int) -> str:
    """The client's fix when ``port`` speaks ``mode`` (implicit | plaintext) and it expected the other."""
    t = TLS_MISMATCH_TEXTS[mode]
    return t.fix.format(port=port, other=t.fix_server if port == t.other_port else t.use_other)


def _accepts_summary(s: SmtpResult) -> str:
    """What the session reached, in the words a mail administrator uses: "accepts mail" only
    when a recipient was accepted; else "AUTH ok" or "EHLO accepted" (starttls, TLSv1.3)."""
    mode = s.tls_mode if s.tls_mode != "none" else "no TLS"
    tls = f"({mode}{', ' + s.tls['version'] if s.tls else ''})"
    if accepted := s.accepted_recipients:
        return f"accepts mail for {', '.join(accepted)} {tls}"
    if s.auth and s.auth.get("ok"):
        return f"AUTH ok, EHLO accepted {tls}; no envelope tested (--from/--to)"
    return f"EHLO accepted {tls}; no envelope tested (--from/--to)"


def _smtp_facts(o: Observation, s: SmtpResult) -> list[Evidence]:
    """One fact per problem of the SMTP session, referenced by the stage that met it."""
    return [
        Evidence(
            source="smtp", ref=_ref(o, "smtp", f"/{p.stage or 'session'}"), fact=f"{p.code}: {p.message}"
        )
        for p in s.problems
    ]


def _among(codes: list[str], kind: tuple[str, ...]) -> list[str]:
    """The codes of one kind, in the order the session met them."""
    return [c for c in codes if c in kind]


def rule_open(o: Observation, target: str) -> Diagnosis:
    """A SYN-ACK came back: the SMTP conversation decides."""
    s, port = o.smtp, o.probe.port
    where = Location(kind="destination", address=o.address)
    ev = [_probe_fact(o)]
    if s is None:
        return Diagnosis("none", "open", where, ev, severity="info")
    ev += _smtp_facts(o, s)
    codes = [p.code for p in s.problems]
    if service := _among(codes, SERVICE_CODES):
        fix = SERVICE_FIX.format(address=o.address, port=port, code=service[0])
        if service[0] == "service-temporary":
            return Diagnosis(
                "service", "SMTP service defers (4xx, temporary)", where, ev, [fix], severity="warning"
            )
        return Diagnosis("service", f"SMTP service fails ({service[0]})", where, ev, [fix])
    if "tls-mismatch" in codes:
        mode = "implicit" if s.tls_mode == "implicit" else "plaintext"
        summary = f"TLS mode mismatch: the port speaks {TLS_MISMATCH_TEXTS[mode].speaks}"
        return Diagnosis("tls", summary, where, ev, [_tls_mismatch_fix(mode, port)])
    if tls := _among(codes, TLS_CODES):
        fixes = [TLS_FIXES[c].format(target=target, port=port) for c in tls]
        return Diagnosis("tls", f"TLS problem ({', '.join(tls)})", where, ev, fixes)
    if auth := _among(codes, AUTH_CODES):
        fix = AUTH_FIXES["auth-failed" if "auth-failed" in auth else "auth-unsupported"].format(port=port)
        return Diagnosis("auth", f"AUTH fails ({', '.join(auth)})", where, ev, [fix])
    if envelope := _among(codes, ENVELOPE_CODES):
        cause = "auth" if envelope[0] == "relay-denied" else "service"
        deferred = all(c.endswith("-deferred") for c in envelope)
        fixes = [ENVELOPE_FIXES[c].format(target=target) for c in dict.fromkeys(envelope)]
        summary = (
            f"the envelope is {'deferred' if deferred else 'refused'} ({', '.join(dict.fromkeys(envelope))})"
        )
        if s.accepted_recipients:
            summary += f"; accepts mail for {', '.join(s.accepted_recipients)}"
        return Diagnosis(cause, summary, where, ev, fixes, severity="warning" if deferred else "error")
    if "auth-in-clear" in codes:
        fix = AUTH_IN_CLEAR_FIX.format(target=target, port=port)
        return Diagnosis("tls", "AUTH is offered before TLS", where, ev, [fix], severity="warning")
    return Diagnosis("none", _accepts_summary(s), where, ev, severity="info")


def rule_refused(o: Observation) -> Diagnosis:
    """A RST from the destination itself: nothing listens there. Through connect() a RST
    cannot be placed, so a firewall forging it stays a candidate."""
    p = o.probe
    if p.method == "connect":
        return Diagnosis(
            "service",
            f"refused (a RST) for {p.port} at {o.address}: the server, or a firewall forging it",
            Location(kind="destination", address=o.address),
            [_probe_fact(o)],
            [
                f"Is anything listening on {o.address}:{p.port}? If it is, a firewall in the path forges "
                "the RST: run mailpath with CAP_NET_RAW (as root, or --method raw) to tell which",
            ],
            candidates=[
                Candidate(
                    cause="service",
                    reason=f"nothing listens on {o.address}:{p.port}",
                    how_to_tell="the RST's TTL matches the destination's distance (raw probes)",
                ),
                Candidate(
                    cause="firewall",
                    reason="a firewall or IPS in the path forges the RST",
                    how_to_tell="the RST's TTL says a nearer hop sent it (raw probes, CAP_NET_RAW)",
                ),
            ],
        )
    return Diagnosis(
        "service",
        f"refused by {o.address} (nothing listens on {p.port})",
        Location(kind="destination", hop=p.destination_hop, address=o.address),
        [_probe_fact(o)],
        [
            f"Nothing listens on {o.address}:{p.port}: is the port right (25 relay, 587 submission with "
            "STARTTLS, 465 implicit TLS)? Is the mail service running and bound to this address?"
        ],
    )


def rule_reset_in_path(o: Observation) -> Diagnosis:
    """A RST claiming to be the destination, generated by a nearer hop."""
    p = o.probe
    hop = p.responder_hop
    addr = _hop_address(o, hop)
    ev = _facts(o, hop)
    return Diagnosis(
        "firewall",
        f"connection reset by a device at {_at(hop, addr)}, not by the server",
        Location(kind="hop", hop=hop, address=addr),
        ev,
        [
            f"A firewall or IPS at {_at(hop, addr)} forges RSTs for TCP {p.port}: allow the port there, or "
            "send through a port it permits (e.g. 587)"
        ],
    )


def rule_rejected(o: Observation) -> Diagnosis:
    """An ICMP reject: the hop (or the destination) that sent it filters the port."""
    p = o.probe
    own = p.responder == o.address
    where = (
        Location(kind="destination", hop=p.responder_hop, address=o.address)
        if own
        else Location(kind="hop", hop=p.responder_hop, address=p.responder)
    )
    name = p.icmp.name if p.icmp else "reject"
    what = f"{o.address}'s own firewall" if own else f"the firewall at {_at(p.responder_hop, p.responder)}"
    return Diagnosis(
        "firewall",
        f"rejected by {'the destination' if own else _at(p.responder_hop, p.responder)} ({name})",
        where,
        _facts(o, p.responder_hop),
        [f"Allow TCP {p.port} to {o.address} in {what}"],
    )


def _cloud_blockers(o: Observation, certain: bool) -> list:
    if o.cloud is None:
        return []
    return [
        b for b in o.cloud.blockers if b.certain == certain and (not certain or b.component in CERTAIN_CLOUD)
    ]


def _cloud_diagnosis(o: Observation, summary_prefix: str, ev: list[Evidence]) -> Diagnosis | None:
    certain = _cloud_blockers(o, True)
    if certain:
        b = certain[0]
        ev = [
            *ev,
            *(
                Evidence(source="cloud", ref=f"cloud:{x.component}:{x.id}", fact=f"{x.code}: {x.message}")
                for x in certain
            ),
        ]
        return Diagnosis(
            "cloud-config",
            f"{summary_prefix}: {b.component} {b.id or ''} blocks it".replace("  ", " "),
            Location(kind="cloud", component=b.id or b.component),
            ev,
            [f"Change {b.component} {b.id}: {b.message}" for b in certain],
        )
    policy = _cloud_blockers(o, False)
    if policy:
        b = policy[0]
        ev = [*ev, Evidence(source="cloud", ref=f"cloud:provider-policy:{b.id}", fact=b.message)]
        return Diagnosis(
            "cloud-policy",
            f"{summary_prefix}: the provider's port-25 block",
            Location(kind="cloud", component="provider-policy"),
            ev,
            [
                b.message.removeprefix("likely cause, to verify: "),
                "Meanwhile, send through submission (587 with STARTTLS, or 465) to a relay",
            ],
        )
    return None


def rule_unreachable(o: Observation) -> Diagnosis:
    """An ICMP net/host unreachable (or no route): routing, unless the cloud route table says why."""
    p = o.probe
    ev = _facts(o, p.responder_hop)
    cloud = _cloud_diagnosis(o, "no route", ev)
    if cloud is not None and cloud.cause == "cloud-config":
        return cloud
    return Diagnosis(
        "network",
        f"unreachable: {p.reason}",
        Location(kind="hop", hop=p.responder_hop, address=p.responder),
        ev,
        [
            f"The router at {_at(p.responder_hop, p.responder)} has no route to {o.address}: check routing "
            "there (or whether the address is right and the host is up)"
        ],
    )


def rule_filtered(o: Observation) -> Diagnosis:
    """Silence: the cloud configuration, then the trace and its control, decide."""
    p, t = o.probe, o.trace
    last = t.drop_after_hop if t is not None else None
    ev = _facts(o, (last or 0) + 1)
    where = f"dropped after {_at(last, _hop_address(o, last))}" if last else "no answer, not even from hop 1"
    cloud = _cloud_diagnosis(o, where, ev)
    if cloud is not None:
        return cloud
    if t is None:
        return Diagnosis(
            "firewall",
            "no answer (silently dropped)",
            None,
            ev,
            [f"Find where TCP {p.port} is dropped: run `mailpath trace {o.address} -p {p.port}` as root"],
            candidates=[
                Candidate(
                    cause="firewall",
                    reason="a firewall drops the port silently",
                    how_to_tell="a TCP traceroute that dies on this port but not on another",
                ),
                Candidate(
                    cause="network",
                    reason="the path or the host is down",
                    how_to_tell="the control trace (ICMP echo) going silent at the same hop",
                ),
                Candidate(
                    cause="cloud-config",
                    reason="a security group or ACL drops it",
                    how_to_tell="`mailpath cloud --dest ... --port ...` on the cloud host",
                ),
            ],
        )
    if not last:
        return _silent_from_hop_1(o, ev)
    addr = _hop_address(o, last)
    location = Location(kind="hop", hop=last, address=addr)
    ctl = t.control
    dest_hop = ctl.furthest_hop if ctl is not None and ctl.reached_destination else None
    if ctl is not None and t.port_specific is False:
        return Diagnosis(
            "network",
            f"{where}, for every kind of packet",
            location,
            ev,
            [
                f"The path to {o.address} goes silent after {_at(last, addr)} even for the control "
                f"({ctl.kind}): check routing beyond that hop, and whether {o.address} is up"
            ],
            candidates=[
                Candidate(
                    cause="network",
                    reason="a routing black hole or a host that is down",
                    how_to_tell="a route lookup on the next hop; the host's console",
                ),
                Candidate(
                    cause="firewall",
                    reason="a firewall that drops everything to this address",
                    how_to_tell="its logs; a trace to a neighbouring address",
                ),
            ],
        )
    steps = [f"A firewall drops TCP {p.port} after {_at(last, addr)}: allow the port there"]
    candidates = []
    if dest_hop is not None and dest_hop == (last or 0) + 1:
        steps.append(
            f"{o.address} is the next hop (hop {dest_hop}): its own host firewall may be the one "
            "dropping; check both"
        )
        candidates = [
            Candidate(
                cause="firewall",
                reason=f"the forwarding filter of {_at(last, addr)}",
                how_to_tell="its rules/counters for the port",
            ),
            Candidate(
                cause="firewall",
                reason=f"the host firewall of {o.address} (hop {dest_hop})",
                how_to_tell="its INPUT rules/counters; a trace cannot see between the two",
            ),
        ]
    return Diagnosis("firewall", where, location, ev, steps, candidates)


def _silent_from_hop_1(o: Observation, ev: list[Evidence]) -> Diagnosis:
    """Not even hop 1 answered, yet the SYNs left this host (a local refusal is rule_local's).
    The first hop, from this host's routing table, and its answer to an echo of its own tell a
    destination that drops on a directly connected network, a gateway that is up but forwards
    nothing, and a gateway (or link) that is down."""
    p, t, hop = o.probe, o.trace, o.first_hop
    ctl = t.control
    port_specific = t.port_specific is True
    if ctl is not None and ctl.reached_destination and ctl.furthest_hop == 1:
        return Diagnosis(
            "firewall",
            f"dropped by {o.address} itself (directly connected: it answers the control, not TCP {p.port})",
            Location(kind="destination", hop=1, address=o.address),
            ev,
            [f"Allow TCP {p.port} in {o.address}'s own firewall (its INPUT rules), or start the service"],
        )
    if hop is None or hop.gateway is None:
        via = f" on {hop.interface}" if hop is not None and hop.interface else ""
        direct = hop is not None
        return Diagnosis(
            "network",
            f"no answer from {o.address}"
            + (f", directly connected{via}" if direct else ", not even from hop 1"),
            Location(kind="destination" if direct else "hop", hop=1, address=o.address if direct else None),
            ev,
            [
                f"{o.address} is on a directly connected network{via} and answers nothing: check "
                "that it is up and that its firewall lets this host in"
                if direct
                else "Nothing on the path answered, not even the first router: check this host's "
                "link and gateway"
            ],
        )
    gw = f"{hop.gateway} (via {hop.interface})" if hop.interface else hop.gateway
    where = Location(kind="hop", hop=1, address=hop.gateway)
    ev = [*ev, Evidence(source="trace", ref=_ref(o, "trace", "/gateway"), fact=_gateway_fact(hop))]
    if port_specific:
        return Diagnosis(
            "firewall",
            f"dropped by the gateway {gw} (the control gets through)",
            where,
            ev,
            [
                f"The gateway {gw} forwards other traffic to {o.address} but drops TCP {p.port}: "
                "allow it there"
            ],
        )
    if hop.answers is False:
        return Diagnosis(
            "network",
            f"the gateway {gw} answers nothing",
            where,
            ev,
            [
                f"The gateway {gw} does not answer, not even an echo to its own address: it or the "
                "link to it is down (check the interface, ARP/ND: `ip neigh`)"
            ],
            candidates=[
                Candidate(
                    cause="network",
                    reason="the gateway or the link is down",
                    how_to_tell="`ip neigh show` for the gateway; the link's state",
                ),
                Candidate(
                    cause="firewall",
                    reason="the gateway drops everything, echo to itself included",
                    how_to_tell="its rules and counters",
                ),
            ],
        )
    up = " is up (it answers echo) but" if hop.answers else ""
    return Diagnosis(
        "network",
        f"the gateway {gw}{up} forwards nothing to {o.address}",
        where,
        ev,
        [
            f"The gateway {gw}{up} forwards nothing to {o.address} and answers nothing for it: "
            f"check its route to {o.address} (a black hole) and its forwarding filter"
        ],
        candidates=[
            Candidate(
                cause="network",
                reason=f"a black-hole route for {o.address} on the gateway",
                how_to_tell="`ip route get` on the gateway",
            ),
            Candidate(
                cause="firewall",
                reason=f"the gateway's forwarding filter drops all traffic to {o.address}",
                how_to_tell="its rules and counters",
            ),
        ],
    )


def _gateway_fact(hop: FirstHop) -> str:
    asked = {
        True: "answers an echo to its own address",
        False: "does not answer an echo to its own address",
        None: "was not asked (no ICMP socket)",
    }[hop.answers]
    return f"first hop from this host's routing table: {hop.gateway} via {hop.interface}; it {asked}"


def diagnose_address(o: Observation, target: str) -> Diagnosis:
    p = o.probe
    if p.responder == "local":
        return rule_local(o)
    rule = {
        "open": lambda: rule_open(o, target),
        "refused": lambda: rule_refused(o),
        "reset-in-path": lambda: rule_reset_in_path(o),
        "rejected": lambda: rule_rejected(o),
        "unreachable": lambda: rule_unreachable(o),
        "filtered": lambda: rule_filtered(o),
    }[str(p.verdict)]
    return rule()


_RANK = {"error": 0, "warning": 1, "info": 2}


def _address_key(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


def combine(observations: list[Observation], target: str) -> Diagnosis:
    """One diagnosis for all addresses of a target and port."""
    per = [(o, diagnose_address(o, target)) for o in observations]
    failing = [(o, d) for o, d in per if d.cause != "none"]
    if not failing:
        o, d = per[0]
        d.evidence = [e for _, x in per for e in x.evidence]
        return d
    # the most severe, then by address: the same choice whatever order DNS gave them in
    o, chosen = min(failing, key=lambda od: (_RANK.get(od[1].severity, 3), _address_key(od[0].address)))
    ok = sorted((x for x, d in per if d.cause == "none"), key=lambda x: _address_key(x.address))
    if ok and chosen.severity == "error":
        chosen.severity = "warning"
        chosen.summary += f" (works on {', '.join(x.address for x in ok)})"
    others = [e for x, d in per if x is not o for e in d.evidence]
    chosen.evidence = chosen.evidence + others
    return chosen
