"""`mailpath smtp` and `mailpath diagnose` against a real MTA nobody here wrote: Exim
(exim.lab.test, ``lab.mta``), with its own TLS stack (GnuTLS), authenticators and ACLs."""

from __future__ import annotations

import os
import sys
from base64 import b64encode

import pytest

from tests.conftest import MAILPATH, Run

pytestmark = pytest.mark.lab

HOST = "exim.lab.test"
PW = "MAILPATH_TEST_PASSWORD"
AUTH = ("--user", "alice", "--password-env", PW)


@pytest.fixture(scope="module")
def mail():
    from lab import Lab
    from lab.mail import setup_mail

    with Lab() as lab:
        yield setup_mail(lab)


def run(mail, *args: str, argv0: tuple[str, ...] = (MAILPATH,)) -> Run:
    env = {**os.environ, PW: mail.password, "WRONG_PW": "not the password"}
    r = mail.lab.exec("client", [*argv0, *args], check=False, timeout=120, env=env)
    return Run(r.returncode, r.stdout, r.stderr)


def smtp(mail, target: str, *args: str) -> Run:
    return run(mail, "smtp", target, "--ca-file", str(mail.ca_file), "--timeout", "5", "--json", *args)


CASES = {
    # name: (port, extra args, expected problem codes, tls_mode)
    "submission with AUTH": (587, AUTH, [], "starttls"),
    "wrong password": (587, ("--user", "alice", "--password-env", "WRONG_PW"), ["auth-failed"], "starttls"),
    "relay port STARTTLS": (25, (), [], "starttls"),
    "AUTH on the relay port, after TLS": (25, AUTH, [], "starttls"),
    "no AUTH offered in clear": (25, ("--tls", "none", *AUTH, "-v"), ["auth-unsupported"], "none"),
    "implicit TLS with AUTH": (465, AUTH, [], "implicit"),
    "envelope accepted": (25, ("--from", "app@lab.test", "--to", "alice@lab.test"), [], "starttls"),
    "relay denied": (25, ("--to", "someone@example.com"), ["relay-denied"], "starttls"),
    "recipient unknown": (
        25,
        ("--from", "app@lab.test", "--to", "nobody@lab.test"),
        ["recipient-refused"],
        "starttls",
    ),
    "relay after AUTH on submission": (
        587,
        (*AUTH, "--from", "alice@lab.test", "--to", "bob@example.com"),
        [],
        "starttls",
    ),
    "implicit TLS asked on a STARTTLS port": (587, ("--tls", "implicit"), ["tls-mismatch"], "starttls"),
    "STARTTLS asked on the implicit TLS port": (
        465,
        ("--tls", "starttls", "--timeout", "1"),  # Exim waits for a TLS ClientHello there
        ["tls-mismatch"],
        "implicit",
    ),
}


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("case", list(CASES))
def test_exim(mail, case, family):
    port, extra, codes, mode = CASES[case]
    r = smtp(mail, f"{HOST}:{port}", f"-{family}", *extra)
    d = r.one
    assert sorted(p["code"] for p in d["problems"]) == sorted(codes), d["problems"]
    assert r.code == (1 if codes else 0), r.stderr
    assert d["address"] == mail.addresses("exim")[family == 6] and d["port"] == port
    assert d["tls_mode"] == mode
    assert " ESMTP Exim " in d["greeting"], d["greeting"]  # the real thing, not the lab's aiosmtpd
    if mode == "none":
        assert d["tls"] is None and "AUTH" not in d["capabilities"] and d["auth_mechanisms"] == []
    else:
        assert d["tls"]["verified"] and d["tls"]["trusted"] and d["tls"]["version"].startswith("TLS")
        assert HOST in d["tls"]["certificate"]["names"]
        assert d["auth_mechanisms"] == ["PLAIN", "LOGIN"]
    if mode == "starttls":  # AUTH only once TLS is up: never offered, never sent, in clear
        assert "STARTTLS" in d["capabilities_before_tls"] and "AUTH" not in d["capabilities_before_tls"]
        assert "STARTTLS" not in d["capabilities"]
    assert "auth-in-clear" not in [p["code"] for p in d["problems"]]
    if mode == "none":
        assert d["auth"] is None and not any(line.startswith("C: AUTH") for line in d["transcript"])
    elif "--user" in extra:
        assert d["auth"]["user"] == "alice" and d["auth"]["mechanism"] == "PLAIN"
        assert d["auth"]["ok"] is (codes != ["auth-failed"])
        assert d["auth"]["reply"].startswith("235" if d["auth"]["ok"] else "535"), d["auth"]
    else:
        assert d["auth"] is None
    if "--to" in extra:
        (rcpt,) = d["envelope"]["recipients"]
        assert rcpt["address"] == extra[extra.index("--to") + 1]
        assert rcpt["accepted"] is (codes == []), rcpt
        assert d["envelope"]["mail_reply"].startswith("250")
        if codes == ["relay-denied"]:
            assert d["envelope"]["mail_from"] == "" and rcpt["reply"] == "550 relay not permitted"
        if codes == ["recipient-refused"]:
            assert rcpt["reply"] == "550 Unrouteable address"
    else:
        assert d["envelope"] is None
    assert mail.password not in r.stdout + r.stderr


@pytest.mark.parametrize("family", [4, 6])
def test_the_certificate_verifies_when_the_address_is_dialled(mail, family):
    """The leaf carries exim's addresses as IP SANs, so dialling an address verifies too."""
    address = mail.addresses("exim")[family == 6]
    r = smtp(mail, f"[{address}]:465" if family == 6 else f"{address}:465")
    d = r.one
    assert d["problems"] == [] and r.code == 0, d["problems"]
    assert d["tls"]["verified"] is True and d["tls"]["server_name"] == address
    assert address in d["tls"]["certificate"]["names"]


def test_another_server_name_does_not_match(mail):
    r = smtp(mail, f"{HOST}:465", "-4", "--server-name", "other.example")
    d = r.one
    assert [p["code"] for p in d["problems"]] == ["cert-name-mismatch"], d["problems"]
    assert d["tls"]["verified"] is False and d["tls"]["trusted"] is True and r.code == 1


def test_transcript_shows_the_conversation_with_auth_redacted(mail):
    args = ("smtp", f"{HOST}:587", "-6", "--ca-file", str(mail.ca_file), *AUTH, "-v")
    secret = b64encode(f"\0alice\0{mail.password}".encode()).decode()
    r = run(mail, *args)
    assert r.code == 0, r.stdout + r.stderr
    assert "S: 220 exim.lab.test ESMTP Exim" in r.stdout and "C: STARTTLS" in r.stdout
    assert "S: 250-AUTH PLAIN LOGIN" in r.stdout and "C: AUTH PLAIN <redacted>" in r.stdout
    assert "S: 235 Authentication succeeded" in r.stdout
    assert mail.password not in r.stdout + r.stderr and secret not in r.stdout + r.stderr
    transcript = run(mail, *args, "--json").one["transcript"]
    assert "C: AUTH PLAIN <redacted>" in transcript
    assert not any(mail.password in line or secret in line for line in transcript)


# mailpath picks PLAIN whenever it is offered; to speak LOGIN to a real server, this runs the
# same command line with LOGIN as its only preference.
LOGIN_ONLY = (
    "import sys\n"
    "from mailpath.probes import smtpwire\n"
    "smtpwire.AUTH_PREFERENCE = ('LOGIN',)\n"
    "from mailpath.agent.cli import main\n"
    "sys.argv = ['mailpath', *sys.argv[1:]]\n"
    "sys.exit(main())\n"
)


@pytest.mark.parametrize(("password", "ok"), [(PW, True), ("WRONG_PW", False)])
def test_auth_login(mail, password, ok):
    args = ("smtp", f"{HOST}:465", "-4", "--ca-file", str(mail.ca_file), "--user", "alice")
    r = run(mail, *args, "--password-env", password, "--json", "-v", argv0=(sys.executable, "-c", LOGIN_ONLY))
    d = r.one
    assert d["auth"]["mechanism"] == "LOGIN" and d["auth"]["ok"] is ok, d["auth"]
    assert [p["code"] for p in d["problems"]] == ([] if ok else ["auth-failed"])
    assert r.code == (0 if ok else 1)
    transcript = d["transcript"]
    start = transcript.index("C: AUTH LOGIN")
    assert transcript[start + 1 : start + 5] == [
        "S: 334 VXNlcm5hbWU6",  # Username:
        "C: <redacted>",
        "S: 334 UGFzc3dvcmQ6",  # Password:
        "C: <redacted>",
    ], transcript
    assert mail.password not in r.stdout + r.stderr
    assert b64encode(mail.password.encode()).decode() not in r.stdout + r.stderr


def test_every_address_and_port(mail):
    r = smtp(mail, HOST, "-p", "25,465,587", *AUTH)
    by = {(s["address"], s["port"]): s for s in r.items}
    assert sorted(by) == sorted((a, p) for a in mail.addresses("exim") for p in (25, 465, 587))
    for s in by.values():
        assert s["problems"] == [] and s["auth"]["ok"], s
    assert r.code == 0


def test_diagnose_finds_nothing_wrong(mail):
    r = run(
        mail,
        "diagnose",
        HOST,
        "-p",
        "25,465,587",
        "--ca-file",
        str(mail.ca_file),
        "--no-cloud",
        "--json",
        "--timeout",
        "2",
    )
    findings = r.items
    assert sorted(f["port"] for f in findings) == [25, 465, 587], findings
    assert {f["cause"] for f in findings} == {"none"}, findings
    for f in findings:
        assert sorted(a["address"] for a in f["addresses"]) == sorted(mail.addresses("exim"))
    assert r.code == 0, r.stderr
