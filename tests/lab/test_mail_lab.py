"""`mailpath dns` and `mailpath smtp` against real services in the lab: dnsmasq, aiosmtpd
servers good and broken, and certificates from a private CA made for the test."""

from __future__ import annotations

import os

import pytest

from tests.conftest import MAILPATH, Run

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def mail():
    from lab import Lab
    from lab.mail import setup_mail

    with Lab() as lab:
        yield setup_mail(lab)


def run(mail, *args: str, env: dict | None = None) -> Run:
    r = mail.lab.exec(
        "client", [MAILPATH, *args], check=False, timeout=120, env={**os.environ, **(env or {})}
    )
    return Run(r.returncode, r.stdout, r.stderr)


# -- dns ------------------------------------------------------------------------------------


def test_mx_records_in_preference_order(mail):
    r = run(mail, "dns", "lab.test", "--json")
    assert r.code == 0, r.stderr
    d = r.one
    assert d["domain"] == "lab.test" and d["problems"] == []
    assert [(x["preference"], x["host"]) for x in d["mx"]] == [(10, "good.lab.test"), (20, "plain.lab.test")]
    assert d["mx"][0]["addresses"] == list(mail.addresses("good"))


@pytest.mark.parametrize(
    ("domain", "code"),
    [
        ("nomx.lab.test", "no-mx"),
        ("nullmx.lab.test", "null-mx"),
        ("dangling.lab.test", "mx-no-address"),
        ("nothing-here.lab.test", "nxdomain"),
        ("x.servfail.lab.test", "servfail"),
        ("x.slow.lab.test", "dns-timeout"),
    ],
)
def test_dns_problem_codes(mail, domain, code):
    r = run(mail, "dns", domain, "--timeout", "2", "--json")
    assert r.code == 1
    assert code in [p["code"] for p in r.one["problems"]], r.json
    if code == "no-mx":
        assert r.one["mx"][0]["implicit"] and r.one["mx"][0]["addresses"] == list(mail.addresses("good"))


@pytest.mark.parametrize("server", ["198.18.3.53", "[2001:db8:3::53]:53"])
def test_dns_through_a_given_nameserver(mail, server):
    r = run(mail, "dns", "lab.test", "--nameserver", server, "--json")
    assert r.code == 0 and len(r.one["mx"]) == 2


def test_dns_timeout_from_a_dead_nameserver(mail):
    r = run(mail, "dns", "lab.test", "--nameserver", "198.18.3.54", "--timeout", "1.5", "--json")
    assert [p["code"] for p in r.one["problems"]] == ["dns-timeout"]


@pytest.mark.parametrize(
    "args",
    [
        ("dns", "bad domain!"),
        ("dns", "lab.test", "--nameserver", "good.lab.test"),
        ("smtp", "good.lab.test", "--tls", "sometimes"),
        ("smtp", "good.lab.test", "--user", "alice"),
        ("smtp", "good.lab.test", "--user", "a", "--password-env", "NOPE_NOT_SET"),
        ("smtp", "nothing-here.lab.test"),
    ],
)
def test_bad_input(mail, args):
    r = run(mail, *args)
    assert r.code == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


# -- smtp -----------------------------------------------------------------------------------

PW = "MAILPATH_TEST_PASSWORD"
CASES = {
    # name: (host, port, extra args, expected problem codes, tls_mode)
    "submission with AUTH": ("good", 587, ("--user", "alice", "--password-env", PW), [], "starttls"),
    "implicit TLS": ("good", 465, (), [], "implicit"),
    "relay port STARTTLS": ("good", 25, (), [], "starttls"),
    "wrong password": (
        "good",
        587,
        ("--user", "alice", "--password-env", "WRONG_PW"),
        ["auth-failed"],
        "starttls",
    ),
    "no AUTH offered": (
        "good",
        25,
        ("--user", "alice", "--password-env", PW),
        ["auth-unsupported"],
        "starttls",
    ),
    "AUTH in clear": ("plain", 25, (), ["auth-in-clear"], "none"),
    "587 without STARTTLS": ("plain", 587, (), ["starttls-missing"], "none"),
    "STARTTLS asked, not offered": (
        "plain",
        25,
        ("--tls", "starttls"),
        ["auth-in-clear", "starttls-missing"],
        "none",
    ),
    "465 speaks plaintext": ("plain", 465, (), ["tls-mismatch"], "none"),
    "implicit asked on a STARTTLS port": ("good", 587, ("--tls", "implicit"), ["tls-mismatch"], "starttls"),
    "587 speaks implicit TLS": ("silent", 587, (), ["tls-mismatch"], "implicit"),
    "never greets": ("silent", 25, (), ["no-greeting"], "none"),
    "greets then hangs": ("silent", 2525, (), ["timeout"], "none"),
    "greeting 554": ("refuse", 25, (), ["service-refused"], "none"),
    "EHLO refused": ("refuse", 587, (), ["service-refused"], "none"),
    "STARTTLS refused": ("broken", 25, (), ["starttls-failed"], "none"),
    "TLS never starts": ("broken", 587, (), ["tls-handshake-failed"], "none"),
    "expired certificate": ("expired", 465, (), ["cert-expired"], "implicit"),
    "certificate for another name": ("wrongname", 465, (), ["cert-name-mismatch"], "implicit"),
    "certificate from an unknown CA": ("untrusted", 465, (), ["cert-untrusted"], "implicit"),
    "greeting 421 is temporary": ("busy", 25, (), ["service-temporary"], "none"),
    "TLS 1.3 client certificate required": (
        "clientcert",
        465,
        (),
        ["tls-client-cert-required"],
        "implicit",
    ),
    "server speaks only TLS 1.0": ("oldtls", 465, (), ["tls-handshake-failed"], "none"),
    "envelope accepted": ("policy", 25, ("--from", "app@lab.test", "--to", "alice@lab.test"), [], "starttls"),
    "relay denied": (
        "policy",
        25,
        ("--from", "app@lab.test", "--to", "someone@example.com"),
        ["relay-denied"],
        "starttls",
    ),
    "sender refused": (
        "policy",
        25,
        ("--from", "blocked@lab.test", "--to", "alice@lab.test"),
        ["sender-refused"],
        "starttls",
    ),
    "sender deferred": (
        "policy",
        25,
        ("--from", "later@lab.test", "--to", "alice@lab.test"),
        ["sender-deferred"],
        "starttls",
    ),
    "recipient unknown": (
        "policy",
        25,
        ("--from", "app@lab.test", "--to", "nobody@lab.test", "--to", "alice@lab.test"),
        ["recipient-refused"],
        "starttls",
    ),
    "recipient deferred": (
        "policy",
        25,
        ("--from", "", "--to", "busy@lab.test"),
        ["recipient-deferred"],
        "starttls",
    ),
    "envelope after AUTH on submission": (
        "policy",
        587,
        ("--user", "alice", "--password-env", PW, "--from", "alice@lab.test", "--to", "bob@example.com"),
        [],
        "starttls",
    ),
}


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("case", list(CASES))
def test_smtp_problem_codes(mail, case, family):
    host, port, extra, codes, mode = CASES[case]
    env = {PW: mail.password, "WRONG_PW": "not the password"}
    r = run(
        mail,
        "smtp",
        f"{host}.lab.test",
        "-p",
        str(port),
        f"-{family}",
        "--ca-file",
        str(mail.ca_file),
        "--timeout",
        "2",
        "--json",
        *extra,
        env=env,
    )
    d = r.one
    assert sorted(p["code"] for p in d["problems"]) == sorted(codes), d["problems"]
    assert r.code == (1 if codes else 0)
    assert d["address"] == mail.addresses(host)[family == 6] and d["port"] == port
    assert d["tls_mode"] == mode
    assert set(d) >= {
        "host",
        "address",
        "port",
        "tls_mode",
        "stages",
        "greeting",
        "capabilities",
        "tls",
        "auth_mechanisms",
        "problems",
    }
    for stage in d["stages"]:
        assert set(stage) == {"name", "ok", "ms", "detail"}
    for p in d["problems"]:
        assert p["stage"] and p["message"]
    assert mail.password not in r.stdout + r.stderr  # the password is never shown
    if mode != "none" and d["tls"] is None:  # the server ended TLS within the handshake
        assert codes == ["tls-client-cert-required"]
    elif mode != "none":
        assert d["tls"]["version"].startswith("TLS") and d["tls"]["cipher"]
        assert d["tls"]["certificate"]["not_after"] and d["tls"]["certificate"]["issuer"]
    if case == "submission with AUTH":
        assert d["auth"] == {"user": "alice", "mechanism": "PLAIN", "ok": True, "reply": d["auth"]["reply"]}
        assert "STARTTLS" in d["capabilities_before_tls"] and "AUTH" in d["capabilities"]
        assert d["tls"]["verified"] and f"{host}.lab.test" in d["tls"]["certificate"]["names"]


def test_system_trust_does_not_know_the_lab_ca(mail):
    r = run(mail, "smtp", "good.lab.test", "-p", "465", "-4", "--json")
    assert [p["code"] for p in r.one["problems"]] == ["cert-untrusted"]


def test_server_name_overrides_the_name_checked(mail):
    r = run(
        mail,
        "smtp",
        "wrongname.lab.test",
        "-p",
        "465",
        "-4",
        "--ca-file",
        str(mail.ca_file),
        "--server-name",
        "other.example",
        "--json",
    )
    assert r.code == 0 and r.one["problems"] == []


def test_every_address_and_port_of_a_name(mail):
    r = run(
        mail,
        "smtp",
        "good.lab.test",
        "-p",
        "25,587",
        "--ca-file",
        str(mail.ca_file),
        "--json",
        "--nameserver",
        "198.18.3.53",
    )
    sessions = r.items
    assert sorted((s["address"], s["port"]) for s in sessions) == sorted(
        (a, p) for a in mail.addresses("good") for p in (25, 587)
    )
    assert r.code == 0


def test_password_file_and_human_report(mail, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text(mail.password + "\n")
    r = run(
        mail,
        "smtp",
        "good.lab.test",
        "-p",
        "587",
        "-4",
        "--ca-file",
        str(mail.ca_file),
        "--user",
        "alice",
        "--password-file",
        str(secret),
    )
    assert r.code == 0 and "ehlo-tls" in r.stdout and "AUTH PLAIN as alice" in r.stdout
    assert mail.password not in r.stdout + r.stderr


def test_tls_version_floor_names_both_sides(mail):
    r = run(mail, "smtp", "oldtls.lab.test:465", "-4", "--ca-file", str(mail.ca_file), "--json")
    (p,) = r.one["problems"]
    assert p["code"] == "tls-handshake-failed"
    assert "offers only TLS 1.0" in p["message"] and "requires TLS 1.2 or later" in p["message"], p


@pytest.mark.parametrize("family", [4, 6])
def test_an_address_is_checked_against_the_certificates_ip_names(mail, family):
    """A certificate trusted but issued for another name does not verify when the address was
    dialled; one that carries the address as an IP SAN does."""
    wrong = mail.addresses("wrongname")[family == 6]
    good = mail.addresses("good")[family == 6]

    def target(a):
        return f"[{a}]:465" if family == 6 else f"{a}:465"

    r = run(mail, "smtp", target(wrong), "--ca-file", str(mail.ca_file), "--json")
    assert [p["code"] for p in r.one["problems"]] == ["cert-name-mismatch"], r.one
    assert r.one["tls"]["verified"] is False and r.code == 1
    r = run(mail, "smtp", target(good), "--ca-file", str(mail.ca_file), "--json")
    assert r.one["problems"] == [] and r.one["tls"]["verified"] is True and r.code == 0


def test_diagnose_checks_the_certificate_against_what_it_dialled(mail):
    r = run(
        mail,
        "diagnose",
        mail.addresses("wrongname")[0],
        "-p",
        "465",
        "--ca-file",
        str(mail.ca_file),
        "--json",
        "--timeout",
        "0.5",
        "--no-cloud",
    )
    (f,) = r.items
    assert f["cause"] == "tls" and "cert-name-mismatch" in f["addresses"][0]["smtp"]["problems"], f
    r = run(
        mail,
        "diagnose",
        "wrongname.lab.test",
        "-p",
        "465",
        "--ca-file",
        str(mail.ca_file),
        "--server-name",
        "other.example",
        "--json",
        "--timeout",
        "0.5",
        "--no-cloud",
    )
    assert {f["cause"] for f in r.items} == {"none"} and r.code == 0, r.items


def test_one_failing_session_does_not_end_the_run(mail):
    """The client-certificate alert of one session is that session's result; the others complete."""
    r = run(
        mail,
        "smtp",
        "clientcert.lab.test",
        "-p",
        "465,25",
        "--ca-file",
        str(mail.ca_file),
        "--json",
        "--timeout",
        "2",
    )
    by_port = {(s["address"], s["port"]): [p["code"] for p in s["problems"]] for s in r.items}
    for a in mail.addresses("clientcert"):
        assert by_port[(a, 465)] == ["tls-client-cert-required"]
        assert by_port[(a, 25)] == ["connect-failed"]  # nothing listens on 25 there
    assert r.code == 1 and "Traceback" not in r.stderr


def test_transcript_shows_the_conversation_with_auth_redacted(mail):
    env = {PW: mail.password}
    args = (
        "smtp",
        "good.lab.test:587",
        "-4",
        "--ca-file",
        str(mail.ca_file),
        "--user",
        "alice",
        "--password-env",
        PW,
        "-v",
    )
    r = run(mail, *args, env=env)
    assert r.code == 0, r.stderr
    assert "C: EHLO" in r.stdout and "S: 220" in r.stdout and "C: STARTTLS" in r.stdout
    assert "-- TLS handshake: TLSv1.3" in r.stdout and "C: AUTH PLAIN <redacted>" in r.stdout
    from base64 import b64encode

    secret = b64encode(f"\0alice\0{mail.password}".encode()).decode()
    assert mail.password not in r.stdout and secret not in r.stdout
    doc = run(mail, *args, "--json", env=env)
    assert "C: AUTH PLAIN <redacted>" in doc.one["transcript"]
    assert not any(mail.password in line or secret in line for line in doc.one["transcript"])
