"""The collector's two ways to read a batch agree: the fast path (pydantic straight from the
bytes) takes only documents the step-by-step path accepts, and returns the same findings;
whatever it does not take, the step-by-step path reads (and names the problem). Checked on
valid batches with one part replaced by anything JSON can hold (NaN, infinities, huge
numbers, deep nesting, NUL, surrogates, long targets, times at the edges of the calendar)."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailpath.collector import ingest


def _finding(i: int = 0) -> dict:
    return {
        "id": str(uuid.UUID(int=i + 1)),
        "created_at": "2026-01-02T03:04:05+00:00",
        "agent": {"hostname": "h", "version": "0.1.0", "cloud": {"provider": "aws", "region": "x"}},
        "target": "mx.example.test",
        "port": 25,
        "addresses": [{"address": "198.18.3.2", "verdict": "filtered"}],
        "cause": "firewall",
        "location": {"kind": "hop", "hop": 2, "address": "198.18.2.1"},
        "headline": "25 on mx.example.test: firewall — dropped",
        "severity": "error",
    }


EDGES = [
    None,
    True,
    10**40,
    float("nan"),
    float("inf"),
    -1e308,
    "a\x00b",
    {"a\x00": 1},
    "\ud800",
    "\udc00x",
    "😀",
    "x" * 300,
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "2026-01-01T00:00:00",
    "mailpath.finding/v2",
    "none",
    [],
    {},
    json.loads("[" * 29 + "]" * 29),
    json.loads("[" * 33 + "]" * 33),
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(EDGES),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)
deep = st.integers(min_value=25, max_value=40).map(lambda n: json.loads("[" * n + "]" * n))
PLACES = [
    ("doc", "error"),
    ("doc", "schema"),
    ("doc", "extra"),
    ("finding", "target"),
    ("finding", "created_at"),
    ("finding", "port"),
    ("finding", "headline"),
    ("finding", "schema"),
    ("finding", "unexpected"),
    ("agent", "cloud"),
    ("cloud", "nested"),
    ("location", "address"),
]


def _document(place: tuple[str, str], value: object, count: int) -> dict:
    findings = [_finding(i) for i in range(count)]
    doc: dict = {"schema": "mailpath.diagnose/v1", "findings": findings}
    where, key = place
    target = {
        "doc": doc,
        "finding": findings[-1],
        "agent": findings[-1]["agent"],
        "cloud": findings[-1]["agent"]["cloud"],
        "location": findings[-1]["location"],
    }[where]
    target[key] = value
    return doc


def _read(parse, data: bytes):
    try:
        return [f.model_dump(mode="json") for f in parse(data)]
    except ingest.Rejected as e:
        return ("rejected", e.status, e.reason, e.index)


def _agree(data: bytes) -> None:
    checked = _read(ingest._parse_checked, data)
    fast = ingest._parse_fast(data)
    if fast is not None:
        assert [f.model_dump(mode="json") for f in fast] == checked, data[:300]
    assert _read(ingest.parse, data) == checked


@settings(max_examples=600, deadline=None)
@given(
    place=st.sampled_from(PLACES),
    value=values | deep,
    count=st.integers(min_value=1, max_value=3),
    ascii_only=st.booleans(),
)
def test_the_fast_path_takes_only_what_the_checked_path_accepts(place, value, count, ascii_only):
    doc = _document(place, value, count)
    _agree(json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))


def test_every_edge_value_in_every_place():
    for place in PLACES:
        for value in EDGES:
            for ascii_only in (True, False):
                doc = _document(place, value, 2)
                _agree(json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize(
    "data",
    [
        json.dumps({"findings": [_finding()]}).encode(),
        b"\xef\xbb\xbf" + json.dumps({"findings": [_finding()]}).encode(),  # a BOM
        json.dumps({"findings": [_finding()], "error": {"a": [[[1]]]}}).encode(),
        json.dumps({"findings": [_finding(), _finding()]}).encode(),  # the same id twice
        b'{"findings": [], "findings": []}',
        b'{"findings": [], "error": NaN}',
        b'{"findings": [], "error": 1e999}',
        b'{"findings": [], "error": ' + b"1" * 400 + b".0}",
        b'{"findings": [], "error": "\\u0000"}',
        b'{"findings": [], "error": "\\\\u0000"}',  # a backslash and "u0000": text, not NUL
    ],
)
def test_the_paths_agree_on_edge_documents(data):
    _agree(data)


def test_usual_batches_take_the_fast_path():
    doc = {"schema": "mailpath.diagnose/v1", "findings": [_finding(i) for i in range(50)]}
    fast = ingest._parse_fast(json.dumps(doc).encode())
    assert fast is not None and len(fast) == 50
    assert all(f.created_at.tzinfo is dt.UTC for f in fast)
    emoji = {"findings": [{**_finding(), "headline": "😀 dropped"}]}
    assert ingest._parse_fast(json.dumps(emoji, ensure_ascii=False).encode()) is not None


def _signature_as_stored(finding) -> str:
    """The digest the collector has stored with every latest state since migration 0001."""
    import hashlib

    state = {
        "cause": finding.cause,
        "location": finding.location.model_dump(mode="json") if finding.location else None,
        "verdicts": sorted((a.address, a.verdict) for a in finding.addresses),
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


@given(
    cause=st.sampled_from(["none", "firewall", "network", "tls"]),
    location=st.none()
    | st.fixed_dictionaries(
        {"kind": st.sampled_from(["local", "hop", "destination", "cloud"])},
        optional={
            "hop": st.integers(1, 64),
            "address": st.sampled_from(["198.18.2.1", "2001:db8:2::1"]),
            "component": st.text(max_size=6),
        },
    ),
    addresses=st.lists(
        st.fixed_dictionaries(
            {
                "address": st.sampled_from(["198.18.3.2", "198.18.3.3", "2001:db8:3::2"]),
                "verdict": st.sampled_from(["open", "filtered", "refused", "reset-in-path"]),
            }
        ),
        max_size=4,
    ),
)
def test_the_state_signature_is_the_one_stored_before(cause, location, addresses):
    from mailpath.agent.finding import Finding

    doc = {**_finding(), "cause": cause, "location": location, "addresses": addresses}
    finding = Finding.model_validate(doc)
    assert ingest.signature(finding) == _signature_as_stored(finding)
    shuffled = Finding.model_validate({**doc, "addresses": addresses[::-1]})
    assert ingest.signature(shuffled) == ingest.signature(finding)
