"""The agent's metrics as Prometheus reads them (the text format, parsed by prometheus-client's
own parser): per target and port, rounds, the spool, the delivery's events; labels bounded;
``/metrics`` and ``/healthz`` served on 127.0.0.1."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailpath.agent.daemon import metrics as metrics_module
from mailpath.agent.daemon.metrics import Metrics, MetricsServer
from mailpath.agent.daemon.rounds import PortFacts
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families


def samples(m: Metrics) -> dict[tuple[str, tuple], float]:
    """Every sample: (name, sorted labels) -> value."""
    text = generate_latest(m.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def named(m: Metrics, name: str) -> dict[tuple, float]:
    return {labels: v for (n, labels), v in samples(m).items() if n == name}


def facts(host="mx.test", port=25, cause="none", verdicts=None, rtt=None, cert=None) -> PortFacts:
    return PortFacts(host, port, cause, "info", verdicts or {"open": 1}, rtt, cert)


def key(target="example.test", host="mx.test", port=25, **more):
    return tuple(sorted({"target": target, "host": host, "port": str(port), **more}.items()))


def test_per_target_and_port_the_cause_up_verdicts_rtt_and_certificate_expiry():
    m = Metrics()
    expires = time.time() + 10 * 86400
    m.target_done(
        "example.test",
        [
            facts(port=25, cause="none", verdicts={"open": 2}, rtt=0.004, cert=expires),
            facts(port=587, cause="firewall", verdicts={"filtered": 1, "open": 1}),
        ],
        None,
    )
    assert named(m, "mailpath_target_state") == {
        key(port=25, cause="none"): 1.0,
        key(port=587, cause="firewall"): 1.0,
    }
    assert named(m, "mailpath_target_up") == {key(port=25): 1.0, key(port=587): 0.0}
    assert named(m, "mailpath_target_addresses") == {
        key(port=25, verdict="open"): 2.0,
        key(port=587, verdict="filtered"): 1.0,
        key(port=587, verdict="open"): 1.0,
    }
    assert named(m, "mailpath_probe_rtt_seconds") == {key(port=25): 0.004}
    assert named(m, "mailpath_ssl_earliest_cert_expiry") == {key(port=25): expires}
    (left,) = named(m, "mailpath_ssl_earliest_cert_expiry_seconds_left").values()
    assert 10 * 86400 - 60 < left <= 10 * 86400
    assert set(named(m, "mailpath_target_last_diagnosis_timestamp_seconds")) == {key(port=25), key(port=587)}


def test_a_new_diagnosis_replaces_the_targets_series_and_a_failure_keeps_them():
    m = Metrics()
    m.target_done("example.test", [facts(host="mx1.test", cause="none"), facts(host="mx2.test")], None)
    m.target_done("example.test", [facts(host="mx1.test", cause="tls")], None)  # mx2 left the MX records
    assert named(m, "mailpath_target_state") == {key(host="mx1.test", cause="tls"): 1.0}
    m.target_done("example.test", None, "cannot resolve")
    assert named(m, "mailpath_target_state") == {key(host="mx1.test", cause="tls"): 1.0}
    assert named(m, "mailpath_target_errors_total") == {(("target", "example.test"),): 1.0}


def test_targets_taken_out_of_the_configuration_lose_their_series():
    m = Metrics()
    m.target_done("a.test", [facts(host="a.test")], None)
    m.target_done("b.test", [facts(host="b.test")], None)
    m.target_done("b.test", None, "boom")
    m.keep_targets(["a.test"])
    assert {dict(k)["target"] for k in named(m, "mailpath_target_up")} == {"a.test"}
    assert named(m, "mailpath_target_errors_total") == {}


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["mx1", "mx2", "mx3"]),
                st.sampled_from([25, 465, 587]),
                st.sampled_from(["none", "firewall", "tls", "dns", "service"]),
                st.sampled_from(["open", "filtered", "refused"]),
            ),
            max_size=9,
            unique_by=lambda x: (x[0], x[1]),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_labels_stay_bounded_whatever_the_rounds_say(history):
    """However causes and hosts change over rounds, one target has at most one state series per
    host and port: what the latest diagnosis said."""
    m = Metrics()
    for found in history:
        m.target_done("d.test", [facts(f"{h}.test", p, c, {v: 1}) for h, p, c, v in found], None)
    state = named(m, "mailpath_target_state")
    latest = history[-1]
    assert len(state) == len(latest) <= 9
    assert set(state) == {key("d.test", f"{h}.test", p, cause=c) for h, p, c, _ in latest}


def test_rounds_spool_and_delivery_events():
    @dataclass
    class Counts:
        pending: int
        dead: int
        dropped: int

    class FakeSpool:
        def counts(self):
            return Counts(3, 1, 7)

    m = Metrics()
    m.round_done(12.5, {"changed": 2, "heartbeat": 1})
    m.round_done(0.5, {"changed": 1})
    m.watch_spool(FakeSpool())
    m.delivered("collector", 5)
    m.delivered("collector", 2)
    m.retried("collector", "http-503")
    m.retried("otlp", "connect")
    m.dead("collector", 1)
    s = samples(m)
    assert s[("mailpath_round_duration_seconds_count", ())] == 2
    assert s[("mailpath_round_duration_seconds_bucket", (("le", "1.0"),))] == 1
    assert s[("mailpath_round_duration_seconds_sum", ())] == 13.0
    assert named(m, "mailpath_findings_spooled_total") == {
        (("why", "changed"),): 3.0,
        (("why", "heartbeat"),): 1.0,
    }
    assert s[("mailpath_spool_pending", ())] == 3 and s[("mailpath_spool_dead_letters", ())] == 1
    assert s[("mailpath_spool_dropped_total", ())] == 7
    assert named(m, "mailpath_delivered_total") == {(("sink", "collector"),): 7.0}
    assert named(m, "mailpath_delivery_retries_total") == {
        (("reason", "http-503"), ("sink", "collector")): 1.0,
        (("reason", "connect"), ("sink", "otlp")): 1.0,
    }
    assert named(m, "mailpath_dead_letters_total") == {(("sink", "collector"),): 1.0}
    assert s[("mailpath_last_round_timestamp_seconds", ())] == pytest.approx(time.time(), abs=60)
    assert s[("mailpath_agent_info", (("version", "0.1.0"),))] == 1


def test_metrics_and_healthz_are_served(monkeypatch):
    m = Metrics()
    m.target_done("t.test", [facts(host="t.test")], None)
    server = MetricsServer(m, "127.0.0.1", 0)
    try:
        with httpx.Client(base_url=server.url, trust_env=False, timeout=5) as c:
            r = c.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            assert 'mailpath_target_up{host="t.test",port="25",target="t.test"} 1.0' in r.text
            r = c.get("/healthz")
            assert r.status_code == 200 and r.text == "ok: no round finished yet\n"
            m.round_done(1.0, {})
            assert c.get("/healthz").text.startswith("ok: last round ended 0 s ago")
            assert c.get("/").status_code == 404
            monkeypatch.setattr(metrics_module, "STALE_LOOP", 0.0)  # the loop stopped ticking
            time.sleep(0.01)
            r = c.get("/healthz")
            assert r.status_code == 503 and "event loop has not run" in r.text
    finally:
        server.close()
    assert server.url.startswith("http://127.0.0.1:")


def test_an_ipv6_listener():
    server = MetricsServer(Metrics(), "::1", 0)
    try:
        assert server.url.startswith("http://[::1]:")
        with httpx.Client(trust_env=False, timeout=5) as c:
            assert c.get(server.url + "/healthz").status_code == 200
    finally:
        server.close()
