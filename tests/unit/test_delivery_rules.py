"""The pure parts of delivery: what an answer means (retry, hold, dead-letter, split), how long
to wait, how a batch is cut, the settings, and a finding as an OpenTelemetry log record."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailpath.agent.daemon import otlp
from mailpath.agent.daemon.delivery import (
    CollectorSettings,
    DeliverySettings,
    OtlpSettings,
    StdoutSettings,
    _Transient,
    _Wait,
    make_sinks,
)
from mailpath.agent.daemon.outcome import (
    Accepted,
    Hold,
    Refused,
    Retry,
    TooLarge,
    backoff_window,
    choose_wait,
    classify,
    split,
)
from mailpath.agent.finding import Finding
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from pydantic import ValidationError
from tenacity import Future as TenacityFuture
from tenacity import RetryCallState

# -- classify ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, {"accepted": 3, "new": 3}, Accepted()),
        (500, {"detail": "boom"}, Retry("http-500", "500 boom", None)),
        (503, {"detail": "db down"}, Retry("http-503", "503 db down", None)),
        (408, {}, Retry("http-408", "408", None)),
        (401, {"detail": "invalid or revoked token"}, Hold("http-401", "401 invalid or revoked token")),
        (403, {"detail": "a viewer token"}, Hold("http-403", "403 a viewer token")),
        (404, {"detail": "Not Found"}, Hold("http-404", "404 Not Found")),
        (415, {"detail": "x", "reason": "unsupported-media-type", "index": None}, Hold("http-415", "415 x")),
        (413, {"detail": "the body is over the limit", "reason": "too-large", "index": None},
         TooLarge("413 too-large: the body is over the limit")),
        (422, {"detail": "finding 2 is bad", "reason": "schema-violation", "index": 2},
         Refused(2, "422 schema-violation: finding 2 is bad")),
        (422, {"detail": "document schema 'x'", "reason": "unknown-schema", "index": None},
         Hold("http-422", "422 document schema 'x'")),
        (422, {"detail": "finding 1 has schema 'y'", "reason": "unknown-schema", "index": 1},
         Refused(1, "422 unknown-schema: finding 1 has schema 'y'")),
        (422, {"detail": "expected a JSON object", "reason": "not-a-batch", "index": None},
         Refused(None, "422 not-a-batch: expected a JSON object")),
        (400, {"detail": "the gzip body is truncated", "reason": "bad-encoding", "index": None},
         Refused(None, "400 bad-encoding: the gzip body is truncated")),
        (422, {"detail": "index out of the batch", "reason": "schema-violation", "index": 7},
         Refused(None, "422 schema-violation: index out of the batch")),
    ],
)  # fmt: skip
def test_classify_answers_of_the_collector(status, body, expected):
    assert classify(status, body, None, size=3) == expected


def test_classify_keeps_retry_after_of_429_and_503():
    assert classify(429, {"detail": "slow down"}, 7.0, 10) == Retry("http-429", "429 slow down", 7.0)
    assert classify(503, {}, 2.5, 10).retry_after == 2.5


@given(
    status=st.integers(100, 599),
    index=st.one_of(st.none(), st.booleans(), st.integers(-5, 50), st.text(max_size=3)),
    size=st.integers(1, 40),
    retry_after=st.one_of(st.none(), st.floats(0, 1e6)),
)
def test_classify_is_total_and_retries_only_what_may_pass_later(status, index, size, retry_after):
    outcome = classify(status, {"detail": "d", "reason": "r", "index": index}, retry_after, size)
    if 200 <= status < 300:
        assert outcome == Accepted()
    elif status in (408, 429) or status >= 500:
        assert isinstance(outcome, Retry) and outcome.retry_after == retry_after
    elif status == 413:
        assert isinstance(outcome, TooLarge)
    elif status in (401, 403, 404, 405, 415):
        assert isinstance(outcome, Hold)
    elif 400 <= status < 500:
        assert isinstance(outcome, Refused)  # never retried: it would be refused again
        valid = isinstance(index, int) and not isinstance(index, bool) and 0 <= index < size
        assert outcome.index == (index if valid else None)
        assert outcome.reason.startswith(f"{status} r")
    else:  # 1xx, 3xx: not an answer the delivery knows; tried again later rather than lost
        assert isinstance(outcome, Retry)


# -- waits -------------------------------------------------------------------------------


def _state(attempt: int, outcome) -> RetryCallState:
    rs = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    rs.attempt_number = attempt
    future = TenacityFuture(attempt)
    future.set_exception(_Transient(outcome))
    rs.outcome = future
    return rs


@settings(max_examples=300)
@given(
    attempt=st.integers(1, 200),
    base=st.floats(0.01, 10),
    cap=st.floats(10, 600),
    retry_after=st.one_of(st.none(), st.floats(0, 10_000)),
    retry_after_max=st.floats(0, 1000),
)
def test_the_wait_is_full_jitter_under_the_cap_or_the_retry_after(
    attempt, base, cap, retry_after, retry_after_max
):
    s = DeliverySettings(backoff_base=base, backoff_cap=cap, retry_after_max=retry_after_max)
    wait = _Wait(s)(_state(attempt, Retry("http-503", retry_after=retry_after)))
    if retry_after is None:
        assert 0 <= wait <= backoff_window(attempt, base, cap) <= cap
    else:
        assert wait == min(retry_after, retry_after_max)
    assert _Wait(s)(_state(attempt, Hold("http-401"))) == cap


def test_full_jitter_spreads_over_the_whole_window():
    s = DeliverySettings(backoff_base=1, backoff_cap=1000)
    waits = [_Wait(s)(_state(4, Retry("connect"))) for _ in range(2000)]
    assert 0 <= min(waits) < 0.5 and 7.5 < max(waits) <= 8  # window 1·2^3 = 8
    assert 3 < sum(waits) / len(waits) < 5  # uniform: mean 4


def test_backoff_window_grows_then_stays_at_the_cap():
    assert [backoff_window(n, 0.5, 30) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff_window(10_000, 0.5, 30) == 30  # no overflow


def test_choose_wait_never_passes_the_cap_even_if_the_backoff_does():
    assert choose_wait(Retry("x"), cap=5, retry_after_max=60, backoff=lambda: 99) == 5
    assert choose_wait(Retry("x", retry_after=45), cap=5, retry_after_max=60, backoff=lambda: 0) == 45


@given(st.integers(2, 100_000))
def test_split_cuts_in_two_non_empty_halves(size):
    a, b = split(size)
    assert a + b == size and a >= 1 and b >= 1 and abs(a - b) <= 1


# -- settings ----------------------------------------------------------------------------


def test_settings_refuse_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(ValidationError, match="extra"):
        DeliverySettings(batch_sise=10)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="backoff_base"):
        DeliverySettings(backoff_base=60, backoff_cap=30)
    with pytest.raises(ValidationError, match="http"):
        CollectorSettings(url="collector:8443", token_file=tmp_path / "t")
    with pytest.raises(ValidationError, match="http"):
        OtlpSettings(endpoint="grpc://otel:4317")
    with pytest.raises(ValidationError):
        OtlpSettings(endpoint="http://otel:4318/v1/logs", compression="zstd")
    with pytest.raises(ValidationError, match="extra"):
        StdoutSettings(enabled=True, pretty=True)  # type: ignore[call-arg]


def test_make_sinks_in_order_and_only_those_configured(tmp_path):
    c = CollectorSettings(url="https://collector.internal:8443", token_file=tmp_path / "t")
    o = OtlpSettings(endpoint="http://127.0.0.1:4318/v1/logs")
    assert [s.name for s in make_sinks(c, o, StdoutSettings(enabled=True))] == ["collector", "otlp", "stdout"]
    assert [s.name for s in make_sinks(None, o, StdoutSettings(enabled=False))] == ["otlp"]
    assert make_sinks(None, None, None) == []


def test_otlp_headers_come_from_settings_env_and_file(tmp_path, monkeypatch):
    secret = tmp_path / "headers"
    secret.write_text("# the vendor's key\nx-api-key=s%3Dcret\n")
    monkeypatch.setenv("OTLP_HEADERS", "x-tenant=blue, x-api-key=overridden")
    s = OtlpSettings(
        endpoint="http://127.0.0.1:4318/v1/logs",
        headers={"x-team": "mail"},
        headers_env="OTLP_HEADERS",
        headers_file=secret,
    )
    assert otlp.OtlpSink(s).headers() == {"x-team": "mail", "x-tenant": "blue", "x-api-key": "s=cret"}
    with pytest.raises(ValueError):
        otlp.parse_headers("novalue")


# -- a finding as a log record -----------------------------------------------------------

CAUSES = ["dns", "network", "firewall", "service", "tls", "auth", "cloud-config", "cloud-policy", "none"]
names = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True)
addresses = st.lists(
    st.fixed_dictionaries(
        {
            "address": st.ip_addresses().map(str),
            "verdict": st.sampled_from(
                ["open", "refused", "reset-in-path", "rejected", "unreachable", "filtered"]
            ),
        }
    ),
    max_size=4,
)
locations = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {"kind": st.sampled_from(["local", "hop", "destination", "cloud"])},
        optional={
            "hop": st.integers(1, 64),
            "address": st.ip_addresses().map(str),
            "component": st.sampled_from(["sg-0abc", "acl-0def", "provider-policy"]),
        },
    ),
)
agents = st.fixed_dictionaries(
    {"hostname": names, "version": st.sampled_from(["0.1.0", "0.2.0"])},
    optional={
        "cloud": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {"provider": st.just("aws")},
                optional={
                    "region": st.sampled_from(["eu-west-1", "us-east-1"]),
                    "instance_id": st.just("i-0abc"),
                },
            ),
        )
    },
)


@st.composite
def findings(draw) -> dict:
    created = draw(st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC)))
    doc = {
        "id": str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))),
        "created_at": created.isoformat(),
        "agent": draw(agents),
        "target": draw(names),
        "port": draw(st.integers(1, 65535)),
        "addresses": draw(addresses),
        "cause": draw(st.sampled_from(CAUSES)),
        "location": draw(locations),
        "headline": draw(st.text(max_size=40)),
        "severity": draw(st.sampled_from(["info", "warning", "error"])),
    }
    if draw(st.booleans()):
        doc["domain"] = draw(names)
    return Finding.model_validate(doc).to_json_dict()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(findings(), min_size=1, max_size=8, unique_by=lambda f: f["id"]),
    st.dictionaries(names, names, max_size=2),
)
def test_each_finding_is_one_log_event_with_its_facts(batch, extra):
    # through the wire format: what a receiver decodes
    request = ExportLogsServiceRequest.FromString(
        otlp.export_request(batch, resource=extra, now_ns=123).SerializeToString()
    )
    records = []
    for rl in request.resource_logs:
        resource = {kv.key: kv.value.string_value for kv in rl.resource.attributes}
        for sl in rl.scope_logs:
            assert sl.scope.name == "mailpath.agent"
            records += [(resource, r) for r in sl.log_records]
    # one ResourceLogs per agent, the records of each in the batch's order
    assert len(request.resource_logs) == len({json.dumps(f["agent"], sort_keys=True) for f in batch})
    by_id = {f["id"]: f for f in batch}
    assert sorted(by_id) == sorted(json.loads(r.body.string_value)["id"] for _, r in records)
    for resource, r in records:
        f = json.loads(r.body.string_value)
        assert f == by_id[f["id"]]  # the body is the finding, whole
        assert r.event_name == "mailpath.finding"
        assert (r.severity_number, r.severity_text) == otlp.SEVERITY[f["severity"]]
        assert r.observed_time_unix_nano == 123
        created = dt.datetime.fromisoformat(f["created_at"])
        assert r.time_unix_nano == int(created.timestamp()) * 10**9 + created.microsecond * 1000
        attrs = {kv.key: kv.value for kv in r.attributes}
        assert attrs["mailpath.finding.id"].string_value == f["id"]
        assert attrs["server.address"].string_value == attrs["mailpath.target"].string_value == f["target"]
        assert attrs["server.port"].int_value == attrs["mailpath.port"].int_value == f["port"]
        assert attrs["mailpath.cause"].string_value == f["cause"]
        assert ("mailpath.domain" in attrs) == bool(f.get("domain"))
        loc = f["location"] or {}
        for key in ("kind", "hop", "address", "component"):
            name = f"mailpath.location.{key}"
            assert (name in attrs) == (loc.get(key) is not None)
        verdicts = (
            [v.string_value for v in attrs["mailpath.verdicts"].array_value.values] if f["addresses"] else []
        )
        assert verdicts == [a["verdict"] for a in f["addresses"]]
        assert resource["service.name"] == "mailpath-agent"
        assert resource["host.name"] == f["agent"]["hostname"]
        assert resource["service.version"] == f["agent"]["version"]
        cloud = f["agent"].get("cloud") or {}
        assert resource.get("cloud.region") == cloud.get("region")
        assert resource.get("host.id") == cloud.get("instance_id")
        for k, v in extra.items():
            assert resource[k] == v


def test_a_finding_that_cannot_be_mapped_is_named_by_its_index():
    good = {
        "id": str(uuid.uuid4()),
        "created_at": "2026-01-01T00:00:00+00:00",
        "agent": {"hostname": "h", "version": "0.1.0"},
        "target": "mx.example.test",
        "port": 25,
        "cause": "none",
        "severity": "info",
        "headline": "ok",
    }
    bad = {**good, "created_at": "yesterday"}
    with pytest.raises(otlp.Unencodable) as e:
        otlp.export_request([good, good, bad])
    assert e.value.index == 2 and "ValueError" in e.value.reason
