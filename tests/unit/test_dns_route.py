"""build_route: DNS outcomes to a mail route and its problems (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from mailpath.probes.dns import Failure, build_route


def codes(route):
    return [p.code for p in route.problems]


def test_mx_sorted_with_addresses():
    r = build_route(
        "Example.com.",
        [(20, "b.example.com."), (10, "a.example.com")],
        {"a.example.com": (["192.0.2.1"], ["2001:db8::1"]), "b.example.com": (["192.0.2.2"], Failure.NODATA)},
    )
    assert [(x.preference, x.host, x.addresses) for x in r.mx] == [
        (10, "a.example.com", ["192.0.2.1", "2001:db8::1"]),
        (20, "b.example.com", ["192.0.2.2"]),
    ]
    assert r.domain == "example.com" and codes(r) == []


def test_implicit_mx():
    r = build_route("example.com", Failure.NODATA, {"example.com": (["192.0.2.1"], Failure.NODATA)})
    assert codes(r) == ["no-mx"] and r.implicit_mx and r.mx[0].addresses == ["192.0.2.1"]


def test_no_mx_and_no_address():
    r = build_route("example.com", Failure.NODATA, {"example.com": (Failure.NODATA, Failure.NODATA)})
    assert codes(r) == ["no-mx", "mx-no-address"]


def test_null_mx():
    r = build_route("example.com", [(0, ".")], {})
    assert codes(r) == ["null-mx"] and r.null_mx and r.mx == []


def test_failures():
    assert codes(build_route("x.example", Failure.NXDOMAIN, {})) == ["nxdomain"]
    assert codes(build_route("x.example", Failure.SERVFAIL, {})) == ["servfail"]
    assert codes(build_route("x.example", Failure.TIMEOUT, {})) == ["dns-timeout"]
    r = build_route(
        "x.example", [(10, "mx.x.example")], {"mx.x.example": (Failure.NXDOMAIN, Failure.NXDOMAIN)}
    )
    assert codes(r) == ["mx-no-address"] and "does not exist" in r.problems[0].message
    r = build_route("x.example", [(10, "mx.x.example")], {"mx.x.example": (Failure.TIMEOUT, ["2001:db8::5"])})
    assert codes(r) == ["dns-timeout"] and r.mx[0].addresses == ["2001:db8::5"]


outcomes = st.one_of(st.sampled_from(list(Failure)), st.lists(st.ip_addresses().map(str), max_size=3))


@given(
    st.one_of(
        st.sampled_from(list(Failure)),
        st.lists(st.tuples(st.integers(0, 65535), st.sampled_from(["a.x", "b.x", "c.x", "."])), max_size=4),
    ),
    st.dictionaries(st.sampled_from(["a.x", "b.x", "c.x", "x"]), st.tuples(outcomes, outcomes)),
)
def test_every_route_is_consistent(mx, addresses):
    r = build_route("x", mx, addresses)
    prefs = [x.preference for x in r.mx]
    assert prefs == sorted(prefs)
    for x in r.mx:  # an exchange without addresses is always explained
        if not x.addresses:
            assert {"mx-no-address", "servfail", "dns-timeout"} & set(codes(r))
    assert all(
        p.code in {"nxdomain", "no-mx", "null-mx", "mx-no-address", "servfail", "dns-timeout"}
        for p in r.problems
    )
