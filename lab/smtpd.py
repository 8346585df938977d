"""SMTP services for the lab, good and broken, from a JSON spec (aiosmtpd underneath).

Usage: ``python -m lab.smtpd SPEC.json``; prints ``ready`` once every service listens.
Each service: ``{"address": "198.18.3.10", "port": 587, "behaviour": "smtp", "tls": "starttls",
"cert": "/path/cert-prefix", "auth": true, "auth_require_tls": true}``.

Behaviours: ``smtp`` (a real aiosmtpd server), ``starttls-454`` (STARTTLS offered, then
refused), ``starttls-garbage`` (STARTTLS accepted, then no TLS), ``ehlo-550`` (EHLO
refused), ``greet-554`` (greeting refuses service), ``never-greet`` (accepts, says nothing),
``greet-then-silent`` (greets, then never answers), ``greet-421`` (a temporary refusal),
``policy`` (a real server whose MAIL/RCPT answers follow a small policy: sender
``blocked@…`` refused 553 5.7.1, ``later@…`` deferred 451, recipients outside lab.test refused
554 5.7.1 relay access denied unless the session authenticated, ``nobody@lab.test`` unknown
550 5.1.1, ``busy@lab.test`` deferred 450). ``tls``: ``none``, ``starttls`` or ``implicit``
(the whole connection is TLS, as on 465).
``tls_max``: the highest TLS version offered (``TLSv1``, ``TLSv1_2``...).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import sys

from aiosmtpd.handlers import Sink
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

USER, PASSWORD = b"alice", b"correct horse battery staple"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (USER, PASSWORD)
    return AuthResult(success=ok, handled=False)


class StartTLS454(SMTP):
    async def smtp_STARTTLS(self, arg):
        await self.push("454 4.7.0 TLS not available due to temporary reason")


class StartTLSGarbage(SMTP):
    async def smtp_STARTTLS(self, arg):
        await self.push("220 2.0.0 Ready to start TLS")
        self.transport.write(b"this is not a TLS record\r\n" * 4)
        self.transport.close()


class Ehlo550(SMTP):
    async def smtp_EHLO(self, hostname):
        await self.push("550 5.7.1 Client host rejected: go away")


class Policy:
    """A handler with a mail policy, so MAIL FROM and RCPT TO meet real refusals."""

    async def handle_MAIL(self, server, session, envelope, address, options):
        local = address.split("@")[0]
        if local == "blocked":
            return "553 5.7.1 Sender address rejected: not permitted"
        if local == "later":
            return "451 4.7.1 Sender address deferred: try again later"
        envelope.mail_from = address
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local, _, domain = address.rpartition("@")
        if domain.lower() != "lab.test" and not session.authenticated:  # relay only for AUTH users
            return f"554 5.7.1 <{address}>: Relay access denied"
        if local == "nobody":
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if local == "busy":
            return f"450 4.2.1 <{address}>: Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"


class Scripted(asyncio.Protocol):
    """Not SMTP at all: the broken greetings."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.behaviour == "greet-554":
            transport.write(b"554 5.3.2 lab.test: no SMTP service here\r\n")
        elif self.behaviour == "greet-421":
            transport.write(b"421 4.3.2 lab.test: too many connections, try again later\r\n")
        elif self.behaviour == "greet-then-silent":
            transport.write(b"220-lab.test ESMTP\r\n220 slow to answer\r\n")

    def data_received(self, data: bytes) -> None:
        if self.behaviour in ("greet-554", "greet-421") and data.upper().startswith(b"QUIT"):
            self.transport.write(b"221 2.0.0 Bye\r\n")
            self.transport.close()


def _context(spec: dict) -> ssl.SSLContext:
    prefix = spec["cert"]
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(f"{prefix}.pem", f"{prefix}.key")
    if spec.get("tls_max"):
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let OpenSSL speak the old versions at all
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = ssl.TLSVersion[spec["tls_max"]]
    return ctx


def _factory(spec: dict):
    behaviour = spec.get("behaviour", "smtp")
    if behaviour in ("greet-554", "greet-421", "never-greet", "greet-then-silent"):
        return lambda: Scripted(behaviour)
    cls = {
        "smtp": SMTP,
        "policy": SMTP,
        "starttls-454": StartTLS454,
        "starttls-garbage": StartTLSGarbage,
        "ehlo-550": Ehlo550,
    }[behaviour]
    starttls = spec.get("tls") == "starttls" or behaviour.startswith("starttls")
    kwargs = dict(
        hostname=spec.get("name", "lab.test"),
        ident="mailpath lab ESMTP",
        tls_context=_context(spec) if starttls and spec.get("cert") else None,
        auth_require_tls=spec.get("auth_require_tls", True),
        authenticator=authenticator if spec.get("auth") else None,
        auth_exclude_mechanism=[] if spec.get("auth") else ["LOGIN", "PLAIN"],
    )
    handler = Policy if behaviour == "policy" else Sink
    return lambda: cls(handler(), **kwargs)


async def serve(specs: list[dict]) -> None:
    loop = asyncio.get_running_loop()
    for spec in specs:
        ssl_ctx = _context(spec) if spec.get("tls") == "implicit" else None
        await loop.create_server(_factory(spec), host=spec["address"], port=spec["port"], ssl=ssl_ctx)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    with open(sys.argv[1]) as f:
        asyncio.run(serve(json.load(f)))
