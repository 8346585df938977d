"""The SMTP check: greeting, EHLO, STARTTLS or implicit TLS, the certificate, AUTH, QUIT.

Never sends mail. Every stage has its own timeout, so no stage can hang the check. When
the certificate does not verify, the check reconnects twice at most, to tell an untrusted
chain apart from an expired or misnamed certificate (each judged on its own), and goes on
over the unverified connection to report what lies beyond (capabilities, AUTH).

Problem codes: ``no-greeting``, ``service-refused``, ``starttls-missing``, ``starttls-failed``,
``tls-mismatch``, ``tls-handshake-failed``, ``cert-untrusted``, ``cert-name-mismatch``,
``cert-expired``, ``auth-in-clear``, ``auth-failed``, ``auth-unsupported``, ``timeout``, and
``connect-failed`` when TCP itself fails (``mailpath probe`` says why).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import socket
import ssl
import time
from dataclasses import dataclass, field

from mailpath.probes.problem import Problem
from mailpath.probes.result import Target
from mailpath.probes.smtpwire import (
    ProtocolError,
    ReplyReader,
    SMTPReply,
    auth_plain,
    b64,
    capabilities,
    cert_problems,
    choose_mechanism,
    cram_md5,
    parse_certificate,
)

_NO_CHECK_TIME = 0x200000  # OpenSSL X509_V_FLAG_NO_CHECK_TIME


@dataclass
class SmtpOptions:
    tls: str = "auto"  # auto | starttls | implicit | none
    timeout: float = 10.0  # per stage
    server_name: str | None = None  # name the certificate must carry; default: the host as given
    ca_file: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    allow_auth_in_clear: bool = False


@dataclass
class Stage:
    name: str
    ok: bool
    ms: float
    detail: str

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "ms": self.ms, "detail": self.detail}


@dataclass
class SmtpResult:
    host: str
    address: str
    port: int
    tls_mode: str  # what the session ended up using: implicit, starttls or none
    expected_tls: str  # what was asked for (auto resolved): implicit, starttls, opportunistic, none
    stages: list[Stage] = field(default_factory=list)
    greeting: str | None = None
    capabilities: dict[str, list[str]] | None = None
    capabilities_before_tls: dict[str, list[str]] | None = None
    tls: dict | None = None
    auth_mechanisms: list[str] = field(default_factory=list)
    auth: dict | None = None
    problems: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "host": self.host,
            "address": self.address,
            "port": self.port,
            "tls_mode": self.tls_mode,
            "expected_tls": self.expected_tls,
            "stages": [s.to_dict() for s in self.stages],
            "greeting": self.greeting,
            "capabilities": self.capabilities,
            "capabilities_before_tls": self.capabilities_before_tls,
            "tls": self.tls,
            "auth_mechanisms": self.auth_mechanisms,
            "auth": self.auth,
            "problems": [p.to_dict() for p in self.problems],
        }


class _Stop(Exception):
    """End the session here (the problem is already recorded)."""


class _CertFailure(Exception):
    def __init__(self, error: ssl.SSLCertVerificationError) -> None:
        self.error = error


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.parser = reader, writer, ReplyReader()
        self.pending: list[SMTPReply] = []  # replies read ahead (e.g. while probing the TLS mode)

    async def reply(self) -> SMTPReply:
        if self.pending:
            return self.pending.pop(0)
        while (reply := self.parser.next_reply()) is None:
            data = await self.reader.read(4096)
            if not data:
                raise ConnectionResetError("the server closed the connection")
            self.parser.feed(data)
        return reply

    async def command(self, line: str) -> SMTPReply:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        return self.writer.get_extra_info("ssl_object")

    async def start_tls(self, ctx: ssl.SSLContext, server_name: str | None) -> None:
        await self.writer.start_tls(ctx, server_hostname=server_name)
        self.parser, self.pending = ReplyReader(), []

    def close(self) -> None:
        self.writer.close()


def _contexts(opts: SmtpOptions) -> dict[str, ssl.SSLContext]:
    """verify: what a mail client does; trust: the chain only (no name, no dates); none."""
    verify = ssl.create_default_context(cafile=opts.ca_file)
    trust = ssl.create_default_context(cafile=opts.ca_file)
    trust.check_hostname = False
    trust.verify_flags |= _NO_CHECK_TIME
    none = ssl.create_default_context()
    none.check_hostname = False
    none.verify_mode = ssl.CERT_NONE
    return {"verify": verify, "trust": trust, "none": none}


def _sni(name: str) -> str | None:
    """SNI is for names only (RFC 6066); an address gets none but is still verified."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in name else socket.AF_INET, name.strip("[]"))
        return None
    except OSError:
        return name


class _Session:
    """One conversation with one address. Records stages and problems as it goes."""

    def __init__(self, host: str, address: str, port: int, opts: SmtpOptions, source: str = "") -> None:
        self.host, self.address, self.port, self.opts = host, address, port, opts
        self.server_name = (opts.server_name or host).rstrip(".")
        self.mode = opts.tls
        if self.mode == "auto":
            self.mode = "implicit" if port == 465 else "opportunistic"
        self.expect = {"starttls": "starttls", "implicit": "implicit", "none": "none"}.get(
            self.mode, "opportunistic"
        )
        if self.mode == "opportunistic" and port == 587:
            self.expect = "starttls"  # submission: STARTTLS is expected (RFC 8314 §3.3)
        self.source = source
        self.learned: list[Problem] = []  # TLS-mode findings that hold for every reconnection

    def reset(self) -> None:
        self.result = SmtpResult(self.host, self.address, self.port, "none", self.expect)
        self.result.problems += self.learned
        self.conn: _Conn | None = None
        self.peer: dict | None = None  # version, cipher and certificate of the TLS session

    def learn(self, code: str, message: str, stage: str, mode: str) -> None:
        """A TLS mode mismatch: record it, and use the mode that works from now on."""
        problem = Problem(code, message, stage)
        self.learned.append(problem)
        self.result.problems.append(problem)
        self.mode = mode

    # -- helpers -----------------------------------------------------------------------

    def problem(self, code: str, message: str, stage: str) -> None:
        self.result.problems.append(Problem(code, message, stage))

    async def stage(self, name: str, coro, detail=None):
        """Run one stage under its timeout; a timeout ends the session."""
        start = time.monotonic()
        try:
            value = await asyncio.wait_for(coro, self.opts.timeout)
        except TimeoutError:
            ms = round((time.monotonic() - start) * 1000, 1)
            self.result.stages.append(Stage(name, False, ms, f"no answer within {self.opts.timeout:g} s"))
            raise
        ms = round((time.monotonic() - start) * 1000, 1)
        text = detail(value) if callable(detail) else (detail if detail is not None else str(value))
        ok = value.ok if isinstance(value, SMTPReply) else True
        self.result.stages.append(Stage(name, ok, ms, text))
        return value

    def fail_stage(self, name: str, start: float, detail: str) -> None:
        self.result.stages.append(Stage(name, False, round((time.monotonic() - start) * 1000, 1), detail))

    async def connect(self) -> _Conn:
        start = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.address, self.port), self.opts.timeout
            )
        except TimeoutError:
            self.fail_stage("connect", start, f"no answer within {self.opts.timeout:g} s")
            self.problem(
                "timeout",
                f"TCP connect to {self.address} port {self.port} timed out "
                "(run mailpath probe/trace to see where)",
                "connect",
            )
            raise _Stop from None
        except OSError as e:
            name = errno.errorcode.get(e.errno or 0, str(e))
            self.fail_stage("connect", start, f"{name}: {e.strerror}")
            self.problem(
                "connect-failed",
                f"TCP connect to {self.address} port {self.port} failed: "
                f"{e.strerror} (run mailpath probe to see why)",
                "connect",
            )
            raise _Stop from None
        self.result.stages.append(
            Stage(
                "connect",
                True,
                round((time.monotonic() - start) * 1000, 1),
                f"connected to {self.address} port {self.port}",
            )
        )
        return _Conn(reader, writer)

    async def handshake(self, conn: _Conn, ctx: ssl.SSLContext, stage: str) -> None:
        start = time.monotonic()
        try:
            await asyncio.wait_for(conn.start_tls(ctx, _sni(self.server_name)), self.opts.timeout)
        except ssl.SSLCertVerificationError as e:
            self.fail_stage(stage, start, f"certificate not accepted: {e.verify_message}")
            raise _CertFailure(e) from None
        except TimeoutError:
            self.fail_stage(stage, start, f"no handshake within {self.opts.timeout:g} s")
            raise
        except (ssl.SSLError, ConnectionError) as e:
            self.fail_stage(stage, start, f"handshake failed: {e}")
            raise
        ssl_obj = conn.ssl_object
        self.result.tls_mode = "starttls" if self.result.capabilities_before_tls is not None else "implicit"
        self.peer = {
            "version": ssl_obj.version(),
            "cipher": ssl_obj.cipher()[0],
            "der": ssl_obj.getpeercert(binary_form=True),
        }
        self.result.stages.append(
            Stage(
                stage,
                True,
                round((time.monotonic() - start) * 1000, 1),
                f"{self.peer['version']} {self.peer['cipher']}",
            )
        )

    # -- the conversation --------------------------------------------------------------

    async def run(self, ctx: ssl.SSLContext) -> None:
        """The whole conversation over ``ctx``; raises _CertFailure when it rejects the cert."""
        self.reset()
        implicit = self.mode == "implicit"
        conn = self.conn = await self.connect()
        if implicit:
            try:
                await self.handshake(conn, ctx, "tls")
            except _CertFailure:
                raise
            except (ssl.SSLError, ConnectionError, TimeoutError) as e:
                conn.close()
                conn = self.conn = await self._implicit_tls_failed(e)
        greeting = await self._greeting(conn, ctx)
        conn = self.conn  # the greeting may have moved the session to a new, TLS, connection
        self.result.greeting = str(greeting)
        caps = await self._ehlo(conn, "ehlo")
        if self.result.tls_mode == "none":
            self.result.capabilities_before_tls = caps
            if "AUTH" in caps:
                self.problem(
                    "auth-in-clear",
                    f"AUTH ({' '.join(caps['AUTH'])}) is offered before TLS: "
                    "passwords can cross the network in clear",
                    "ehlo",
                )
            caps = await self._starttls(conn, caps, ctx)
        self.result.capabilities = caps
        self.result.auth_mechanisms = caps.get("AUTH", [])
        if self.opts.user:
            await self._auth(conn, caps)
        await self._quit(conn)

    async def _implicit_tls_failed(self, error: Exception) -> _Conn:
        """Implicit TLS failed: if the port speaks plaintext SMTP, that is a TLS mode mismatch
        (and the check goes on in plaintext); otherwise the handshake failed."""
        conn = await self.connect()
        try:
            reply = await asyncio.wait_for(conn.reply(), min(self.opts.timeout, 5.0))
        except (TimeoutError, ProtocolError, ConnectionError):
            conn.close()
            self.problem("tls-handshake-failed", f"TLS handshake on port {self.port} failed: {error}", "tls")
            raise _Stop from None
        conn.pending.insert(0, reply)
        self.learn(
            "tls-mismatch",
            f"port {self.port} answers in plaintext SMTP ({reply}), not implicit "
            "TLS: the client must use STARTTLS or plaintext here",
            "tls",
            "opportunistic",
        )
        return conn

    async def _greeting(self, conn: _Conn, ctx: ssl.SSLContext) -> SMTPReply:
        try:
            greeting = await self.stage("greeting", conn.reply())
        except TimeoutError:
            if self.result.tls_mode == "none" and await self._speaks_tls():
                self.learn(
                    "tls-mismatch",
                    f"port {self.port} expects implicit TLS (as on 465) and says "
                    "nothing in plaintext: the client must use implicit TLS (SMTPS) here",
                    "greeting",
                    "implicit",
                )
                conn.close()
                conn = self.conn = await self.connect()
                await self.handshake(conn, ctx, "tls")
                return await self._greeting(conn, ctx)
            self.problem(
                "no-greeting", f"connected, but no greeting within {self.opts.timeout:g} s", "greeting"
            )
            raise _Stop from None
        except (ProtocolError, ConnectionError) as e:
            self.result.stages.append(Stage("greeting", False, 0.0, str(e)))
            self.problem("no-greeting", f"no SMTP greeting: {e}", "greeting")
            raise _Stop from None
        if greeting.code != 220:
            self.problem("service-refused", f"the greeting refuses service: {greeting}", "greeting")
            await self._quit(conn)
            raise _Stop
        return greeting

    async def _speaks_tls(self) -> bool:
        """Does the port complete a TLS handshake (any certificate)? Used when no greeting came."""
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.address, self.port, ssl=_contexts(self.opts)["none"]),
                min(self.opts.timeout, 5.0),
            )
        except (OSError, TimeoutError, ssl.SSLError):
            return False
        writer.close()
        return True

    async def _ehlo(self, conn: _Conn, stage: str) -> dict[str, list[str]]:
        name = (
            f"[{self.source}]"
            if self.source and ":" not in self.source
            else (f"[IPv6:{self.source}]" if self.source else "[127.0.0.1]")
        )
        reply = await self.stage(stage, self._command(conn, f"EHLO {name}"))
        if reply.code != 250:
            self.problem("service-refused", f"EHLO was refused: {reply}", stage)
            await self._quit(conn)
            raise _Stop
        return capabilities(reply)

    async def _command(self, conn: _Conn, line: str) -> SMTPReply:
        try:
            return await conn.command(line)
        except (ProtocolError, ConnectionError) as e:
            self.result.stages.append(Stage(line.split()[0].lower(), False, 0.0, str(e)))
            self.problem(
                "service-refused",
                f"the server broke off after {line.split()[0]}: {e}",
                line.split()[0].lower(),
            )
            raise _Stop from None

    async def _starttls(self, conn: _Conn, caps: dict, ctx: ssl.SSLContext) -> dict:
        if self.mode == "none":
            return caps
        if "STARTTLS" not in caps:
            if self.expect == "starttls":
                why = "was asked for" if self.opts.tls == "starttls" else "is expected on submission port 587"
                self.problem("starttls-missing", f"the server does not offer STARTTLS, which {why}", "ehlo")
            return caps
        reply = await self.stage("starttls", self._command(conn, "STARTTLS"))
        if reply.code != 220:
            self.problem("starttls-failed", f"STARTTLS is offered but refused: {reply}", "starttls")
            return caps
        try:
            await self.handshake(conn, ctx, "tls")
        except (ssl.SSLError, ConnectionError) as e:
            self.problem("tls-handshake-failed", f"TLS handshake after STARTTLS failed: {e}", "tls")
            raise _Stop from None
        return await self._ehlo(conn, "ehlo-tls")

    async def _auth(self, conn: _Conn, caps: dict) -> None:
        offered = caps.get("AUTH", [])
        user, password = self.opts.user, self.opts.password or ""
        if not offered:
            self.problem(
                "auth-unsupported",
                "the server offers no AUTH here"
                + ("" if self.result.tls_mode != "none" else " (some servers offer it only after TLS)"),
                "auth",
            )
            return
        if self.result.tls_mode == "none" and not self.opts.allow_auth_in_clear:
            self.result.stages.append(
                Stage(
                    "auth",
                    False,
                    0.0,
                    "not tried: the password would cross in clear (--allow-auth-in-clear to send it anyway)",
                )
            )
            return
        mech = choose_mechanism(offered)
        if mech is None:
            self.problem(
                "auth-unsupported",
                f"the server offers AUTH {' '.join(offered)}; mailpath speaks PLAIN, LOGIN and CRAM-MD5",
                "auth",
            )
            return
        reply = await self.stage(
            "auth",
            self._authenticate(conn, mech, user, password),
            detail=lambda r: f"AUTH {mech} as {user}: {r}",
        )
        self.result.auth = {"user": user, "mechanism": mech, "ok": reply.code == 235, "reply": str(reply)}
        if reply.code != 235:
            self.problem("auth-failed", f"AUTH {mech} as {user} was refused: {reply}", "auth")

    async def _authenticate(self, conn: _Conn, mech: str, user: str, password: str) -> SMTPReply:
        if mech == "PLAIN":
            return await conn.command(f"AUTH PLAIN {auth_plain(user, password)}")
        reply = await conn.command(f"AUTH {mech}")
        if mech == "CRAM-MD5":
            return await conn.command(cram_md5(user, password, reply.text)) if reply.code == 334 else reply
        for secret in (user, password):  # LOGIN: 334 Username:, 334 Password:
            if reply.code != 334:
                return reply
            reply = await conn.command(b64(secret))
        return reply

    async def _quit(self, conn: _Conn) -> None:
        try:
            await self.stage("quit", conn.command("QUIT"))
        except (TimeoutError, ProtocolError, ConnectionError, OSError):
            pass
        finally:
            conn.close()


async def check_address(
    host: str, address: str, port: int, opts: SmtpOptions, source: str = ""
) -> SmtpResult:
    """The SMTP check of one address; never raises for anything the server does.

    A certificate that fails verification is looked at further: a second connection checks
    the chain alone (no name, no dates); if that fails too, a third goes on unverified. The
    report then judges trust, expiry and name each on its own.
    """
    s = _Session(host, address, port, opts, source)
    ctxs = _contexts(opts)
    failure: ssl.SSLCertVerificationError | None = None
    trusted = True
    for name in ("verify", "trust", "none"):
        try:
            await _converse(s, ctxs[name])
            break
        except _CertFailure as e:
            if s.conn:
                s.conn.close()
            failure = failure or e.error
            # after "verify" fails, trust is open (the next context tells); after "trust", it is lost
            trusted = name == "verify"
    result = s.result
    cert = parse_certificate(s.peer["der"]) if s.peer and s.peer["der"] else None
    if failure is not None:
        result.stages.insert(
            0,
            Stage(
                "verify",
                False,
                0.0,
                f"certificate not accepted on first try: "
                f"{failure.verify_message}; reconnected to look further",
            ),
        )
        now = dt.datetime.now(dt.UTC)
        for code, message in cert_problems(
            cert, s.server_name, now, trusted, failure.verify_code, failure.verify_message
        ):
            result.problems.append(Problem(code, message, "tls"))
    if s.peer:
        result.tls = {
            "version": s.peer["version"],
            "cipher": s.peer["cipher"],
            "verified": failure is None,
            "trusted": trusted,
            "server_name": s.server_name,
            "certificate": cert.to_dict() if cert else None,
        }
    return result


async def _converse(s: _Session, ctx: ssl.SSLContext) -> None:
    try:
        await s.run(ctx)
    except _Stop:
        pass
    except TimeoutError:
        last = s.result.stages[-1].name if s.result.stages else "connect"
        s.problem("timeout", f"stage {last} got no answer within {s.opts.timeout:g} s", last)
        if s.conn:
            s.conn.close()


async def check_targets(targets: list[Target], opts: SmtpOptions) -> list[SmtpResult]:
    """The SMTP check of every (host, address, port), all at once, from the source address the
    routing table picks for each; results in the order given."""
    from mailpath.probes.local import route

    sources = {a: route(a) for a in {t.address for t in targets}}

    def source(address: str) -> str:
        src = sources[address]
        return src if isinstance(src, str) else ""  # an errno: the connect itself will say it

    return list(
        await asyncio.gather(
            *(check_address(t.host, t.address, t.port, opts, source(t.address)) for t in targets)
        )
    )
