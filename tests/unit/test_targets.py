"""Target and port syntax: everything a user can type, and the errors that name the bad value."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailpath.agent.targets import InputError, expand, is_hostname, parse_ports, parse_target
from mailpath.probes.result import Target


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail.example.com", ("mail.example.com", None)),
        ("mail.example.com:587", ("mail.example.com", 587)),
        ("198.18.3.2:25", ("198.18.3.2", 25)),
        ("198.18.3.2", ("198.18.3.2", None)),
        ("[2001:db8::1]:465", ("2001:db8::1", 465)),
        ("[2001:DB8:0::1]", ("2001:db8::1", None)),
        ("2001:db8::1", ("2001:db8::1", None)),
        ("localhost", ("localhost", None)),
        ("smtp.example.com.", ("smtp.example.com.", None)),
    ],
)
def test_parse_target(text, expected):
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("", "empty"),
        ("bad host", "bad host"),
        ("host:0", "0"),
        ("host:65536", "65536"),
        ("host:smtp", "host:smtp"),
        ("[2001:db8::1]:x", "[2001:db8::1]:x"),
        ("[198.18.3.2]:25", "[198.18.3.2]:25"),
        ("2001:db8::zz", "2001:db8::zz"),
        ("999.1.1.1", "999.1.1.1"),
        ("-leading.example", "-leading.example"),
        ("a" * 64 + ".example", "a" * 64),
    ],
)
def test_bad_targets_name_the_value(text, names):
    with pytest.raises(InputError) as e:
        parse_target(text)
    assert names in str(e.value)


def test_parse_ports():
    assert parse_ports(["25,465,587"]) == [25, 465, 587]
    assert parse_ports(["30000-30003", "25"]) == [25, 30000, 30001, 30002, 30003]
    assert parse_ports(["587,25,587"]) == [25, 587]
    assert parse_ports([]) == []


@pytest.mark.parametrize("spec", ["0", "65536", "25,", "a", "10-5", "1-2-3", "-5", "25 587"])
def test_bad_ports(spec):
    with pytest.raises(InputError):
        parse_ports([spec])


@given(st.lists(st.integers(1, 65535), min_size=1, max_size=20))
def test_ports_roundtrip(ports):
    assert parse_ports([",".join(map(str, ports))]) == sorted(set(ports))


@given(st.ip_addresses())
def test_any_ip_literal_parses(ip):
    text = f"[{ip}]:25" if ip.version == 6 else f"{ip}:25"
    assert parse_target(text) == (str(ip), 25)


def test_hostname_rules():
    assert is_hostname("mx1.example.com") and is_hostname("_dmarc.example.com")
    assert not is_hostname("1.2.3") and not is_hostname("a..b") and not is_hostname("x" * 254)


def test_expand_uses_every_address_and_default_ports():
    fake = {"mail.test": ["198.18.3.2", "2001:db8:3::2"], "198.18.3.9": ["198.18.3.9"]}
    got = expand(["mail.test", "198.18.3.9:2525"], [], resolver=fake.__getitem__)
    assert got == [
        Target("mail.test", "198.18.3.2", 25),
        Target("mail.test", "198.18.3.2", 465),
        Target("mail.test", "198.18.3.2", 587),
        Target("mail.test", "2001:db8:3::2", 25),
        Target("mail.test", "2001:db8:3::2", 465),
        Target("mail.test", "2001:db8:3::2", 587),
        Target("198.18.3.9", "198.18.3.9", 2525),
    ]


def test_expand_checks_all_syntax_before_resolving():
    calls = []
    with pytest.raises(InputError):
        expand(["ok.test", "bad host"], [], resolver=lambda h: calls.append(h) or ["198.18.3.2"])
    assert calls == []


def test_internationalised_names_become_idna_and_long_names_are_refused():
    from mailpath.agent.targets import ascii_name, parse_domain, parse_target

    assert ascii_name("bücher.example") == "xn--bcher-kva.example"
    assert parse_target("bücher.example:587") == ("xn--bcher-kva.example", 587)
    assert parse_domain("Bücher.Example.") == "xn--bcher-kva.example"
    with pytest.raises(InputError, match="too long: 254 characters"):
        ascii_name(".".join(["a" * 63] * 4)[:250] + ".abc")
    with pytest.raises(InputError, match="longer than 63"):
        parse_target("a" * 64 + ".example")
    with pytest.raises(InputError, match="xn-- form"):
        ascii_name("a\u05d0.example")  # a Hebrew letter after a Latin one: IDNA's bidi rule
