"""The lab's mail world: a private CA, a DNS zone (dnsmasq) and SMTP services, good and broken.

Every service has an address of its own on the server (198.18.3.N and 2001:db8:3::N) and
a name in the zone ``lab.test``, so the same port can behave differently per name:

========================  ===================================================================
good.lab.test (.10)       25 STARTTLS; 587 STARTTLS + AUTH after TLS; 465 implicit TLS + AUTH
plain.lab.test (.11)      25 no TLS, AUTH in clear; 587 no STARTTLS; 465 plaintext SMTP
silent.lab.test (.12)     25 never greets; 587 implicit TLS (not STARTTLS); 2525 greets, then silent
refuse.lab.test (.13)     25 greeting 554; 587 EHLO refused 550
broken.lab.test (.14)     25 STARTTLS refused 454; 587 STARTTLS accepted, then no TLS
expired.lab.test (.15)    465 certificate expired
wrongname.lab.test (.16)  465 certificate for other.example
untrusted.lab.test (.17)  465 certificate from a CA nobody trusts
clientcert.lab.test (.18) 465 TLS 1.3 only, a client certificate required (``openssl s_server``:
                          asyncio's TLS server does not send the alert, OpenSSL's own does)
oldtls.lab.test (.19)     465 TLS 1.0 at most
busy.lab.test (.20)       25 greeting 421 (temporary)
policy.lab.test (.21)     25 STARTTLS, a MAIL/RCPT policy (lab.smtpd.Policy); 587 the same + AUTH
exim.lab.test (.22)       a real MTA, Exim (lab.mta): 25 STARTTLS, AUTH after TLS; 587 STARTTLS +
                          AUTH PLAIN/LOGIN; 465 implicit TLS + AUTH; relaying only after AUTH,
                          ``nobody@lab.test`` unknown, other lab.test local parts accepted
dns: .53                  dnsmasq; servfail.lab.test is delegated to a server that SERVFAILs,
                          slow.lab.test to one that never answers
========================  ===================================================================

The zone: ``lab.test`` MX 10 good, MX 20 plain; ``nullmx.lab.test`` null MX (RFC 7505);
``nomx.lab.test`` no MX, an A/AAAA (implicit MX); ``dangling.lab.test`` MX to a name
without addresses; everything else under lab.test is NXDOMAIN.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.mta import serve_exim
from lab.network import Lab
from lab.smtpd import PASSWORD, USER

HOSTS = {
    "good": 10,
    "plain": 11,
    "silent": 12,
    "refuse": 13,
    "broken": 14,
    "expired": 15,
    "wrongname": 16,
    "untrusted": 17,
    "clientcert": 18,
    "oldtls": 19,
    "busy": 20,
    "policy": 21,
    "exim": 22,
}
DNS = 53
SLOW_DNS = 54  # an address nothing listens on


def v4(n: int) -> str:
    return f"198.18.3.{n}"


def v6(n: int) -> str:
    return f"2001:db8:3::{n}"  # the same digits as the IPv4 address, read as hex


@dataclass
class MailLab:
    lab: Lab
    workdir: Path
    ca_file: Path
    user: str = USER.decode()
    password: str = PASSWORD.decode()
    names: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (v4, v6)

    def addresses(self, host: str) -> tuple[str, str]:
        return v4(HOSTS[host]), v6(HOSTS[host])


def _pki(workdir: Path) -> tuple[Path, dict[str, Path]]:
    import trustme

    ca, rogue = trustme.CA(), trustme.CA()
    ca_file = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    leaves = {
        "good": ca.issue_cert(
            *_names("good"),
            *_names("silent"),
            *_names("broken"),
            *_names("clientcert"),
            *_names("oldtls"),
            *_names("policy"),
            *_names("exim"),
            "mail.lab.test",
        ),
        "expired": ca.issue_cert(*_names("expired"), not_before=past - dt.timedelta(days=90), not_after=past),
        "wrongname": ca.issue_cert("other.example"),
        "untrusted": rogue.issue_cert(*_names("untrusted")),
    }
    prefixes = {}
    for name, leaf in leaves.items():
        prefix = workdir / name
        leaf.private_key_pem.write_to_path(f"{prefix}.key")
        with open(f"{prefix}.pem", "wb") as f:
            for blob in leaf.cert_chain_pems:
                f.write(blob.bytes())
        prefixes[name] = prefix
    return ca_file, prefixes


def _names(host: str) -> list[str]:
    n = HOSTS[host]
    return [f"{host}.lab.test", v4(n), v6(n)]


def _services(certs: dict[str, Path]) -> list[dict]:
    good = str(certs["good"])
    table = [
        ("good", 25, "smtp", "starttls", good, False),
        ("good", 587, "smtp", "starttls", good, True),
        ("good", 465, "smtp", "implicit", good, True),
        ("plain", 25, "smtp", "none", None, True),
        ("plain", 587, "smtp", "none", None, False),
        ("plain", 465, "smtp", "none", None, False),
        ("silent", 25, "never-greet", "none", None, False),
        ("silent", 587, "smtp", "implicit", good, True),
        ("silent", 2525, "greet-then-silent", "none", None, False),
        ("refuse", 25, "greet-554", "none", None, False),
        ("refuse", 587, "ehlo-550", "none", None, False),
        ("broken", 25, "starttls-454", "starttls", good, False),
        ("broken", 587, "starttls-garbage", "starttls", good, False),
        ("expired", 465, "smtp", "implicit", str(certs["expired"]), True),
        ("wrongname", 465, "smtp", "implicit", str(certs["wrongname"]), True),
        ("untrusted", 465, "smtp", "implicit", str(certs["untrusted"]), True),
        ("oldtls", 465, "smtp", "implicit", good, False),
        ("busy", 25, "greet-421", "none", None, False),
        ("policy", 25, "policy", "starttls", good, False),
        ("policy", 587, "policy", "starttls", good, True),
    ]
    extra = {"oldtls": {"tls_max": "TLSv1"}}
    out = []
    for host, port, behaviour, tls, cert, auth in table:
        for address in (v4(HOSTS[host]), v6(HOSTS[host])):
            out.append(
                extra.get(host, {})
                | {
                    "name": f"{host}.lab.test",
                    "address": address,
                    "port": port,
                    "behaviour": behaviour,
                    "tls": tls,
                    "cert": cert,
                    "auth": auth,
                    # implicit TLS is TLS from the start; aiosmtpd only counts STARTTLS
                    "auth_require_tls": host != "plain" and tls != "implicit",
                }
            )
    return out


def _serve_client_cert_required(lab: Lab, cert: Path, ca_file: Path) -> None:
    """clientcert.lab.test:465: TLS 1.3 that demands a client certificate, from OpenSSL's own
    server, which sends the certificate_required alert after the client's handshake is done."""
    n = HOSTS["clientcert"]
    for address in (v4(n), f"[{v6(n)}]"):
        argv = ["openssl", "s_server", "-quiet", "-accept", f"{address}:465", "-cert", f"{cert}.pem"]
        argv += ["-key", f"{cert}.key", "-CAfile", str(ca_file), "-Verify", "1", "-verify_return_error"]
        lab.popen(
            "server",
            [*argv, "-tls1_3"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 5
    want = {f"{v4(n)}:465", f"[{v6(n)}]:465"}
    while not want <= set(lab.exec("server", ["ss", "-Hltn", "sport = :465"]).stdout.split()):
        if time.monotonic() > deadline:
            raise RuntimeError("openssl s_server did not start")
        time.sleep(0.05)


def _zone() -> list[str]:
    lines = [f"host-record={h}.lab.test,{v4(n)},{v6(n)}" for h, n in HOSTS.items()]
    lines += [
        f"host-record=dns-ready.lab.test,{v4(DNS)}",
        "mx-host=lab.test,good.lab.test,10",
        "mx-host=lab.test,plain.lab.test,20",
        "dns-rr=nullmx.lab.test,15,000000",
        f"host-record=nomx.lab.test,{v4(10)},{v6(10)}",
        "mx-host=dangling.lab.test,nowhere.lab.test,10",
        f"server=/servfail.lab.test/{v4(DNS)}#5300",
        f"server=/slow.lab.test/{v4(SLOW_DNS)}",
        "local=/lab.test/",
    ]
    return lines


def setup_mail(lab: Lab, workdir: Path | None = None) -> MailLab:
    """Add the mail world to a running lab (addresses, CA, DNS, SMTP: aiosmtpd and Exim)."""
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-mail-"))
        lab.on_down(lambda: shutil.rmtree(workdir, ignore_errors=True))
    for n in (*HOSTS.values(), DNS):
        lab.add_address("server", v4(n), v6(n))
    ca_file, certs = _pki(workdir)
    lab.serve_dns(_zone(), v4(DNS), v6(DNS), workdir)
    lab.serve_smtp(_services(certs), workdir)
    _serve_client_cert_required(lab, certs["good"], ca_file)
    n = HOSTS["exim"]
    serve_exim(
        lab,
        workdir,
        name="exim.lab.test",
        address4=v4(n),
        address6=v6(n),
        cert_prefix=certs["good"],
        user=USER.decode(),
        password=PASSWORD.decode(),
    )
    names = {f"{h}.lab.test": (v4(n), v6(n)) for h, n in HOSTS.items()}
    return MailLab(lab, workdir, ca_file, names=names)
