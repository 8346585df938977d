"""The correlation rules of `mailpath diagnose`, rule by rule, on hand-made measurements."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
from mailpath.agent.correlate import Observation, combine, diagnose_address
from mailpath.agent.finding import Agent, Finding, json_schema
from mailpath.agent.render import print_findings
from mailpath.cloud.evaluate import Blocker, Evaluation
from mailpath.probes.classify import Verdict
from mailpath.probes.local import FirstHop
from mailpath.probes.problem import Problem
from mailpath.probes.result import Icmp, ProbeResult
from mailpath.probes.smtp import SmtpResult
from mailpath.probes.trace import ControlTrace, Hop, TraceResult
from rich.console import Console

ROOT = Path(__file__).resolve().parents[2]
DEST = "198.51.100.25"


def probe(verdict: str, **kw) -> ProbeResult:
    base = dict(
        host="mx.example.com",
        address=kw.pop("address", DEST),
        port=kw.pop("port", 587),
        verdict=Verdict(verdict),
        method=kw.pop("method", "raw"),
        reason=kw.pop("reason", f"{verdict} (test)"),
    )
    return ProbeResult(**base, **kw)


def trace(
    verdict="filtered", drop_after=2, port_specific=True, reached_control=True, furthest=3
) -> TraceResult:
    hops = [
        Hop(ttl=n, address=f"192.0.2.{n}", reply="time-exceeded") for n in range(1, (drop_after or 0) + 1)
    ]
    return TraceResult(
        host="mx.example.com",
        address=DEST,
        port=587,
        source="203.0.113.5",
        hops=hops,
        verdict=Verdict(verdict),
        drop_after_hop=drop_after,
        reached_destination=False,
        responder=None,
        responder_hop=None,
        destination_hop=furthest if reached_control else None,
        control=ControlTrace(
            kind="icmp",
            port=None,
            hops=[],
            reached_destination=reached_control,
            last_hop=furthest,
            furthest_hop=furthest,
        ),
        port_specific=port_specific,
        reason=f"SYNs to port 587 go silent after hop {drop_after}" if drop_after else "no answer at all",
        complete=True,
    )


def smtp(*codes: str, mode="starttls") -> SmtpResult:
    r = SmtpResult("mx.example.com", DEST, 587, mode, "starttls")
    r.problems = [Problem(c, f"{c} happened", "tls") for c in codes]
    r.tls = {"version": "TLSv1.3"} if mode != "none" else None
    return r


def cloud(*blockers: Blocker) -> Evaluation:
    return Evaluation(DEST, 587, "blocked" if blockers else "allowed", list(blockers), [])


SG = Blocker(
    "security-group", "egress", "sg-0abc", None, "ENI_SG_RULES_MISMATCH", "no egress rule allows TCP 587"
)
POLICY = Blocker(
    "provider-policy",
    "egress",
    "aws",
    None,
    "PROVIDER_PORT_25_BLOCK",
    "likely cause, to verify: AWS blocks outbound TCP 25 ...",
    certain=False,
)
ROUTE = Blocker("route-table", "egress", "rtb-0123", "198.51.100.0/24", "ROUTE_BLACKHOLE", "blackhole")


def dx(o: Observation):
    return diagnose_address(o, "mx.example.com")


def test_silent_drop_at_hop_1_and_a_security_group_without_the_port_is_cloud_config():
    d = dx(Observation(DEST, probe("filtered"), trace(drop_after=1), cloud=cloud(SG)))
    assert d.cause == "cloud-config"
    assert d.location.kind == "cloud" and d.location.component == "sg-0abc"
    assert any(e.source == "cloud" and "sg-0abc" in e.ref for e in d.evidence)
    assert any(e.source == "trace" for e in d.evidence) and "sg-0abc" in d.remediation[0]


def test_a_nat_gateway_that_certainly_blocks_outranks_the_provider_policy():
    nat = Blocker("nat-gateway", "egress", "nat-0abc", None, "BAD_STATE", "nat-0abc is pending")
    d = dx(Observation(DEST, probe("filtered", port=25), trace(drop_after=1), cloud=cloud(nat, POLICY)))
    assert d.cause == "cloud-config" and d.location.component == "nat-0abc"


def test_everything_allowed_on_aws_port_25_public_is_cloud_policy():
    d = dx(Observation(DEST, probe("filtered", port=25), trace(drop_after=1), cloud=cloud(POLICY)))
    assert d.cause == "cloud-policy" and d.location.component == "provider-policy"
    assert any("587" in step for step in d.remediation)


def test_reset_in_path_is_a_firewall_at_that_hop():
    t = trace("reset-in-path", drop_after=None)
    t.hops = [
        Hop(ttl=1, address="192.0.2.1", reply="time-exceeded"),
        Hop(ttl=2, address=DEST, reply="rst"),
    ]
    d = dx(Observation(DEST, probe("reset-in-path", responder=DEST, responder_hop=1, destination_hop=3), t))
    assert d.cause == "firewall" and (d.location.kind, d.location.hop, d.location.address) == (
        "hop",
        1,
        "192.0.2.1",
    )


def test_refused_is_the_service():
    d = dx(Observation(DEST, probe("refused", responder=DEST, responder_hop=3, destination_hop=3)))
    assert d.cause == "service" and d.location.kind == "destination" and "port right" in d.remediation[0]


@pytest.mark.parametrize(("mode", "fix"), [("implicit", "TLS on connect"), ("none", "for STARTTLS on 587")])
def test_open_with_tls_mismatch_is_tls_with_the_right_mode(mode, fix):
    d = dx(Observation(DEST, probe("open"), smtp=smtp("tls-mismatch", mode=mode)))
    assert d.cause == "tls"
    assert fix in d.remediation[0]


@pytest.mark.parametrize(
    ("codes", "cause"),
    [
        (("cert-expired",), "tls"),
        (("cert-untrusted", "cert-name-mismatch"), "tls"),
        (("starttls-missing",), "tls"),
        (("auth-failed",), "auth"),
        (("auth-unsupported",), "auth"),
        (("no-greeting",), "service"),
        (("service-refused",), "service"),
        (("timeout",), "service"),
        ((), "none"),
    ],
)
def test_open_then_smtp_decides(codes, cause):
    assert dx(Observation(DEST, probe("open"), smtp=smtp(*codes))).cause == cause


def test_auth_in_clear_is_a_warning():
    d = dx(Observation(DEST, probe("open"), smtp=smtp("auth-in-clear", mode="none")))
    assert d.cause == "tls" and d.severity == "warning"


def test_rejected_names_the_hop_or_the_destination():
    d = dx(
        Observation(
            DEST,
            probe(
                "rejected",
                responder="192.0.2.2",
                responder_hop=2,
                icmp=Icmp(3, 13, "communication administratively prohibited"),
            ),
        )
    )
    assert d.cause == "firewall" and (d.location.kind, d.location.hop) == ("hop", 2)
    d = dx(Observation(DEST, probe("rejected", responder=DEST, responder_hop=3)))
    assert d.location.kind == "destination"


def test_unreachable_is_network_unless_the_cloud_route_explains_it():
    o = Observation(DEST, probe("unreachable", responder="192.0.2.2", responder_hop=2))
    assert dx(o).cause == "network" and dx(o).location.hop == 2
    o.cloud = cloud(ROUTE)
    assert dx(o).cause == "cloud-config" and dx(o).location.component == "rtb-0123"


def test_local_refusals():
    assert dx(Observation(DEST, probe("unreachable", responder="local", responder_hop=0))).cause == "network"
    d = dx(Observation(DEST, probe("rejected", responder="local", responder_hop=0)))
    assert d.cause == "firewall" and d.location.kind == "local"


def test_port_specific_drop_is_a_firewall_after_hop_n():
    d = dx(Observation(DEST, probe("filtered"), trace(drop_after=2, furthest=3)))
    assert d.cause == "firewall" and (d.location.hop, d.location.address) == (2, "192.0.2.2")
    assert d.summary == "dropped after hop 2 (192.0.2.2)"
    assert len(d.candidates) == 2  # hop 2's filter or the destination's own firewall (hop 3)


def test_path_silent_for_the_control_too_is_network_with_the_alternatives():
    d = dx(
        Observation(
            DEST,
            probe("filtered"),
            trace(drop_after=2, port_specific=False, reached_control=False, furthest=2),
        )
    )
    assert d.cause == "network" and {c.cause for c in d.candidates} == {"network", "firewall"}


def test_no_trace_leaves_the_causes_open():
    d = dx(Observation(DEST, probe("filtered", method="connect")))
    assert {c.cause for c in d.candidates} == {"firewall", "network", "cloud-config"}
    assert all(c.how_to_tell for c in d.candidates)


def test_one_working_address_makes_it_a_warning():
    bad = Observation(DEST, probe("refused", responder=DEST))
    good = Observation("2001:db8::25", probe("open", address="2001:db8::25"), smtp=smtp())
    d = combine([good, bad], "mx.example.com")
    assert d.cause == "service" and d.severity == "warning" and "works on 2001:db8::25" in d.summary
    assert combine([good], "mx.example.com").cause == "none"


def test_the_choice_among_failing_addresses_does_not_depend_on_dns_order():
    def observations():
        return [
            Observation(
                "2001:db8::25", probe("filtered", address="2001:db8::25"), trace(drop_after=2, furthest=3)
            ),
            Observation(DEST, probe("refused", responder=DEST)),
            Observation("192.0.2.99", probe("open", address="192.0.2.99"), smtp=smtp()),
        ]

    seen = set()
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2], [2, 0, 1]):
        group = observations()
        d = combine([group[i] for i in order], "mx.example.com")
        seen.add((d.cause, d.summary, d.severity, repr(d.location)))
    assert len(seen) == 1, seen
    ((cause, summary, severity, _),) = seen
    # both failing ones are errors: the IPv4 address is told; the working one is named
    assert cause == "service" and severity == "warning" and summary.endswith("(works on 192.0.2.99)")


# -- the schema and the report ---------------------------------------------------------------


def test_a_rst_through_connect_leaves_service_and_firewall_open():
    d = dx(Observation(DEST, probe("refused", method="connect", responder=DEST)))
    assert d.cause == "service" and {c.cause for c in d.candidates} == {"service", "firewall"}
    assert "CAP_NET_RAW" in d.remediation[0] and "firewall" in d.summary


@pytest.mark.parametrize(
    ("answers", "cause", "words"),
    [
        (True, "network", "is up (it answers echo) but forwards nothing"),
        (False, "network", "answers nothing"),
    ],
)
def test_silence_from_hop_1_names_the_gateway_from_the_routing_table(answers, cause, words):
    t = trace(drop_after=0, port_specific=False, reached_control=False, furthest=0)
    hop = FirstHop("192.0.2.1", "eth0", answers)
    d = dx(Observation(DEST, probe("filtered"), t, first_hop=hop))
    assert d.cause == cause and (d.location.kind, d.location.hop, d.location.address) == (
        "hop",
        1,
        "192.0.2.1",
    )
    assert words in d.summary and "eth0" in d.summary
    assert any(e.ref.endswith("/gateway") for e in d.evidence) and "hop 0" not in str(d)


def test_silence_from_hop_1_with_the_control_through_is_the_gateways_filter():
    t = trace(drop_after=0, port_specific=True, reached_control=True, furthest=3)
    d = dx(Observation(DEST, probe("filtered"), t, first_hop=FirstHop("192.0.2.1", "eth0", True)))
    assert d.cause == "firewall" and d.location.address == "192.0.2.1"


def test_a_directly_connected_destination_that_drops_is_the_destination():
    t = trace(drop_after=0, port_specific=True, reached_control=True, furthest=1)
    d = dx(Observation(DEST, probe("filtered"), t, first_hop=FirstHop(None, "eth0")))
    assert d.cause == "firewall" and (d.location.kind, d.location.hop) == ("destination", 1)


@pytest.mark.parametrize(
    ("codes", "cause", "severity"),
    [
        (["relay-denied"], "auth", "error"),
        (["recipient-refused"], "service", "error"),
        (["sender-refused"], "service", "error"),
        (["recipient-deferred"], "service", "warning"),
        (["service-temporary"], "service", "warning"),
        (["tls-client-cert-required"], "tls", "error"),
    ],
)
def test_envelope_temporary_and_client_certificate_outcomes(codes, cause, severity):
    d = dx(Observation(DEST, probe("open"), smtp=smtp(*codes)))
    assert (d.cause, d.severity) == (cause, severity) and d.remediation


def test_accepts_mail_only_when_a_recipient_was_accepted():
    s = smtp()
    assert "accepts mail" not in dx(Observation(DEST, probe("open"), smtp=s)).summary
    s.envelope = {
        "mail_from": "a@x",
        "mail_reply": "250",
        "recipients": [{"address": "b@x", "accepted": True, "reply": "250"}],
    }
    assert dx(Observation(DEST, probe("open"), smtp=s)).summary.startswith("accepts mail for b@x")


def test_published_schema_is_the_models_schema():
    published = json.loads((ROOT / "agent" / "schema" / "finding-v1.json").read_text())
    assert published == json.loads(json.dumps(json_schema(), sort_keys=True)), (
        "agent/schema/finding-v1.json is stale: regenerate it (and bump the version if incompatible)"
    )


def _fixed_findings() -> list[Finding]:
    agent = Agent(hostname="app-1", version="0.1.0")
    out = []
    cases = [
        Observation(DEST, probe("filtered"), trace(drop_after=2, furthest=3)),
        Observation(DEST, probe("open"), smtp=smtp("tls-mismatch", mode="implicit")),
        Observation(DEST, probe("filtered", port=25), trace(drop_after=1), cloud=cloud(POLICY)),
        Observation(DEST, probe("open"), smtp=smtp()),
    ]
    for o in cases:
        d = combine([o], "mx.example.com")
        out.append(
            Finding(
                id="00000000-0000-4000-8000-000000000000",
                created_at="2026-11-28T00:00:00Z",
                agent=agent,
                target="mx.example.com",
                domain="example.com",
                port=o.probe.port,
                cause=d.cause,
                location=d.location,
                headline=d.headline(o.probe.port, "mx.example.com"),
                evidence=d.evidence,
                remediation=d.remediation,
                severity=d.severity,
                candidates=d.candidates,
            )
        )
    return out


def test_findings_validate_against_the_published_schema():
    schema = json.loads((ROOT / "agent" / "schema" / "finding-v1.json").read_text())
    for f in _fixed_findings():
        jsonschema.validate(f.to_json_dict(), schema)
        assert Finding.model_validate(f.to_json_dict()) == f


def test_human_report_matches_the_golden_file():
    console = Console(width=80, record=True, color_system=None, file=open("/dev/null", "w"))  # noqa: SIM115
    print_findings(_fixed_findings(), console)
    got = console.export_text()
    golden = ROOT / "tests" / "golden" / "diagnose-report.txt"
    if os.environ.get("MAILPATH_UPDATE_GOLDEN"):  # after a deliberate change: rewrite, review, commit
        golden.write_text(got)
    assert got == golden.read_text()
