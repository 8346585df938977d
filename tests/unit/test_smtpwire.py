"""SMTP reply parsing, EHLO capabilities, AUTH encodings and certificate judgement."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailpath.probes.smtpwire import (
    CertInfo,
    ProtocolError,
    ReplyReader,
    SMTPReply,
    auth_plain,
    capabilities,
    cert_problems,
    choose_mechanism,
    cram_md5,
    name_matches,
)


def replies(data: bytes, chunk: int = 1000) -> list[SMTPReply]:
    r, out = ReplyReader(), []
    for i in range(0, len(data), chunk):
        r.feed(data[i : i + chunk])
        while (reply := r.next_reply()) is not None:
            out.append(reply)
    return out


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_multiline_greeting_in_any_chunking(chunk):
    data = b"220-mx.example ESMTP Postfix\r\n220-please wait\r\n220 ready\r\n250 ok\r\n"
    got = replies(data, chunk)
    assert [r.code for r in got] == [220, 250]
    assert got[0].lines == ("mx.example ESMTP Postfix", "please wait", "ready")


def test_bare_lf_and_code_only_lines():
    assert replies(b"220\n250 ok\n") == [SMTPReply(220, ("",)), SMTPReply(250, ("ok",))]


@pytest.mark.parametrize(
    "bad",
    [
        b"HTTP/1.1 400 Bad Request\r\n",
        b"22 short\r\n",
        b"220x\r\n",
        b"220-a\r\n250 b\r\n",
        b"\x16\x03\x01\x00\xa5\r\n",
    ],
)
def test_not_smtp(bad):
    with pytest.raises(ProtocolError):
        replies(bad)


def test_a_good_reply_is_read_before_trailing_garbage():
    r = ReplyReader()
    r.feed(b"220 2.0.0 Ready to start TLS\r\nthis is not TLS\r\n")
    assert r.next_reply().code == 220
    with pytest.raises(ProtocolError):
        r.next_reply()


def test_endless_line_is_refused():
    r = ReplyReader()
    r.feed(b"220 " + b"x" * 5000)
    with pytest.raises(ProtocolError):
        r.next_reply()


@given(st.binary(max_size=300))
def test_garbage_only_raises_protocol_error(data):
    with contextlib.suppress(ProtocolError):
        replies(data, 7)


def test_capabilities_found_on_any_line_including_the_last():
    ehlo = replies(
        b"250-mx.example\r\n250-SIZE 1000\r\n250-AUTH=LOGIN\r\n250-auth plain login\r\n250 STARTTLS\r\n"
    )[0]
    caps = capabilities(ehlo)
    assert "STARTTLS" in caps and caps["SIZE"] == ["1000"]
    assert caps["AUTH"] == ["LOGIN", "PLAIN"]
    assert "AUTH" not in capabilities(replies(b"250-mx.example\r\n250 AUTH\r\n")[0])


def test_auth_encodings():
    assert base64.b64decode(auth_plain("alice", "pw")) == b"\0alice\0pw"
    # RFC 2195's example
    challenge = base64.b64encode(b"<1896.697170952@postoffice.reston.mci.net>").decode()
    assert base64.b64decode(cram_md5("tim", "tanstaaftanstaaf", challenge)) == (
        b"tim b913a602c7eda7a495b4e6e7334d3890"
    )
    assert choose_mechanism(["CRAM-MD5", "LOGIN"]) == "LOGIN"
    assert choose_mechanism(["XOAUTH2"]) is None


NOW = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)


def cert(names=("mail.example.com",), ips=(), days=(-10, 80), self_signed=False) -> CertInfo:
    return CertInfo(
        "CN=x",
        "CN=x" if self_signed else "CN=ca",
        list(names),
        list(ips),
        NOW + dt.timedelta(days=days[0]),
        NOW + dt.timedelta(days=days[1]),
        self_signed,
    )


@pytest.mark.parametrize(
    ("name", "names", "ips", "ok"),
    [
        ("mail.example.com", ["mail.example.com"], [], True),
        ("MAIL.example.com.", ["mail.example.com"], [], True),
        ("mail.example.com", ["*.example.com"], [], True),
        ("a.mail.example.com", ["*.example.com"], [], False),
        ("example.com", ["*.example.com"], [], False),
        ("mail.example.org", ["mail.example.com"], [], False),
        ("198.18.3.10", ["198.18.3.10"], [], False),  # an IP must be an IP SAN
        ("198.18.3.10", [], ["198.18.3.10"], True),
        ("2001:db8:3::10", [], ["2001:db8:3:0::10"], True),
        ("x.com", ["*.com"], [], False),
    ],
)
def test_name_matching(name, names, ips, ok):
    assert name_matches(name, cert(names, ips)) is ok


def test_each_certificate_fault_is_judged_on_its_own():
    def codes(c, name="mail.example.com", trusted=True):
        return [p[0] for p in cert_problems(c, name, NOW, trusted)]

    assert codes(cert()) == []
    assert codes(cert(days=(-100, -1))) == ["cert-expired"]
    assert codes(cert(days=(5, 100))) == ["cert-expired"]  # not yet valid
    assert codes(cert(), "other.example") == ["cert-name-mismatch"]
    assert codes(cert(self_signed=True), trusted=False) == ["cert-untrusted"]
    assert codes(cert(days=(-100, -1), self_signed=True), "other.example", False) == [
        "cert-expired",
        "cert-name-mismatch",
        "cert-untrusted",
    ]
