"""The SMTP check: greeting, EHLO, STARTTLS or implicit TLS, the certificate, AUTH, QUIT.

Never sends mail. Every stage has its own timeout, so no stage can hang the check. When
the certificate does not verify, the check reconnects twice at most, to tell an untrusted
chain apart from an expired or misnamed certificate (each judged on its own), and goes on
over the unverified connection to report what lies beyond (capabilities, AUTH).

With an envelope (``mail_from``/``rcpt_to``) it goes on to MAIL FROM and RCPT TO, then RSET
and QUIT: never DATA, so no mail is sent.

Problem codes: ``no-greeting``, ``service-refused``, ``service-temporary`` (a 4xx: a deferral,
not a refusal), ``starttls-missing``, ``starttls-failed``, ``tls-mismatch``,
``tls-handshake-failed``, ``tls-client-cert-required``, ``cert-untrusted``,
``cert-name-mismatch``, ``cert-expired``, ``auth-in-clear``, ``auth-failed``,
``auth-unsupported``, ``sender-refused``, ``sender-deferred``, ``recipient-refused``,
``recipient-deferred``, ``relay-denied``, ``timeout``, ``connect-failed`` when TCP itself fails
(``mailpath probe`` says why), and ``check-failed`` when the check itself broke (a bug: the
other sessions of the run still complete).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import functools
import os
import ssl
import time
import weakref
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
    envelope_problem,
    parse_certificate,
    redact,
)

_NO_CHECK_TIME = 0x200000  # OpenSSL X509_V_FLAG_NO_CHECK_TIME

# connect() errors in words (never a Python repr)
_CONNECT_ERRORS = {
    errno.ECONNREFUSED: ("refused", " (a RST: nothing listens there, or a firewall resets)"),
    errno.ETIMEDOUT: ("timed out", ""),
    errno.EHOSTUNREACH: ("host unreachable", ""),
    errno.ENETUNREACH: ("network unreachable", ""),
    errno.EACCES: ("not permitted", " (a local firewall or policy)"),
    errno.EPERM: ("not permitted", " (a local firewall or policy)"),
    errno.ECONNRESET: ("reset", ""),
    errno.EADDRNOTAVAIL: ("no usable source address", ""),
}
# ssl.SSLObject.version() -> ssl.TLSVersion, and ssl.TLSVersion names -> words
_VERSIONS = {
    "SSLv3": ssl.TLSVersion.SSLv3,
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
_TLS_NAMES = {
    "SSLv3": "SSL 3.0",
    "TLSv1": "TLS 1.0",
    "TLSv1_1": "TLS 1.1",
    "TLSv1_2": "TLS 1.2",
    "TLSv1_3": "TLS 1.3",
}


class _Lag:
    """How long an event loop could not run callbacks: the summed lateness of a heartbeat
    (every ``tick`` while some stage waits), plus how late the pending beat is now. A loop
    starved by other sessions' work or by a busy CPU runs late; an idle one does not."""

    tick = 0.02
    slack = 0.002  # a timer fires up to a millisecond late on an idle loop (epoll's resolution)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.total, self.users = loop, 0.0, 0
        self.due = 0.0
        self.handle: asyncio.TimerHandle | None = None

    def lag(self) -> float:
        pending = max(0.0, self.loop.time() - self.due - self.slack) if self.handle else 0.0
        return self.total + pending

    def __enter__(self) -> _Lag:
        self.users += 1
        if self.handle is None:
            self.due = self.loop.time() + self.tick
            self.handle = self.loop.call_at(self.due, self._beat)
        return self

    def __exit__(self, *exc: object) -> None:
        self.users -= 1
        if self.users == 0 and self.handle is not None:
            self.total = self.lag()
            self.handle.cancel()
            self.handle = None

    def _beat(self) -> None:
        now = self.loop.time()
        self.total += max(0.0, now - self.due - self.slack)
        self.due = now + self.tick
        self.handle = self.loop.call_at(self.due, self._beat)


_LAGS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Lag] = weakref.WeakKeyDictionary()


async def _within(aw, timeout: float):
    """``asyncio.wait_for``, with ``timeout`` counted in time the event loop was free to read
    the answer: the server always has ``timeout`` seconds to answer.

    On a starved loop (many sessions at once, a busy CPU) an answer can sit unread when the
    deadline passes, and wait_for would cancel it: here the time the loop could not run
    (:class:`_Lag`) does not count, and the deadline moves by that much: a busy host costs
    time (a loop free half the time waits twice as long), never a false timeout.
    """
    loop = asyncio.get_running_loop()
    lags = _LAGS.get(loop) or _LAGS.setdefault(loop, _Lag(loop))
    task = asyncio.ensure_future(aw)
    with lags:
        start, lag0 = loop.time(), lags.lag()
        try:
            while True:
                free = loop.time() - start - (lags.lag() - lag0)
                if free >= timeout:
                    for _ in range(3):  # a last look at what the loop has ready
                        await asyncio.sleep(0)
                    if task.done():
                        break
                    task.cancel()
                    await asyncio.wait((task,))
                    break
                done, _ = await asyncio.wait((task,), timeout=timeout - free)
                if done:
                    break
        except asyncio.CancelledError:
            task.cancel()
            raise
    if task.cancelled():
        raise TimeoutError
    return task.result()  # done, or it finished as it was being cancelled


def _ssl_reason(e: BaseException) -> str:
    """An SSL error in words: OpenSSL's reason, not the exception's repr."""
    reason = getattr(e, "reason", None)
    return str(reason).replace("_", " ").lower() if reason else (str(e) or type(e).__name__)


def _client_cert_required(e: ssl.SSLError) -> bool:
    return "CERTIFICATE_REQUIRED" in (getattr(e, "reason", None) or str(e)).upper()


@dataclass
class SmtpOptions:
    tls: str = "auto"  # auto | starttls | implicit | none
    timeout: float = 10.0  # per stage
    server_name: str | None = None  # name the certificate must carry; default: the host as given
    ca_file: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    allow_auth_in_clear: bool = False
    ehlo: str | None = None  # the EHLO name; default: this host's source address as a literal
    mail_from: str | None = None  # envelope test: MAIL FROM (None with rcpt_to: the null sender)
    rcpt_to: list[str] = field(default_factory=list)  # envelope test: RCPT TO, each
    transcript: bool = False  # keep the conversation (AUTH payloads redacted)


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
    tls_mode: str  # what the session ended up using: implicit, starttls, none, or not-reached
    expected_tls: str  # what was asked for (auto resolved): implicit, starttls, opportunistic, none
    stages: list[Stage] = field(default_factory=list)
    greeting: str | None = None
    capabilities: dict[str, list[str]] | None = None
    capabilities_before_tls: dict[str, list[str]] | None = None
    tls: dict | None = None
    auth_mechanisms: list[str] = field(default_factory=list)
    auth: dict | None = None
    envelope: dict | None = (
        None  # {"mail_from", "mail_reply", "recipients": [{"address", "accepted", "reply"}]}
    )
    problems: list[Problem] = field(default_factory=list)
    transcript: list[str] | None = None  # "C: ...", "S: ...", "-- ..." (with SmtpOptions.transcript)

    @property
    def accepted_recipients(self) -> list[str]:
        return [r["address"] for r in (self.envelope or {}).get("recipients", []) if r["accepted"]]

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
            "envelope": self.envelope,
            "problems": [p.to_dict() for p in self.problems],
            "transcript": self.transcript,
        }


class _Stop(Exception):
    """End the session here (the problem is already recorded)."""


class _CertFailure(Exception):
    def __init__(self, error: ssl.SSLCertVerificationError) -> None:
        self.error = error


class _TlsBroken(Exception):
    """The TLS session failed after its handshake (an alert on the first read: TLS 1.3 sends
    a client-certificate requirement that way)."""

    def __init__(self, error: ssl.SSLError) -> None:
        self.error = error


class _Conn:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log: list[str] | None = None
    ) -> None:
        self.reader, self.writer, self.parser = reader, writer, ReplyReader()
        self.pending: list[SMTPReply] = []  # replies read ahead (e.g. while probing the TLS mode)
        self.log = log  # the transcript, when one is kept

    async def reply(self) -> SMTPReply:
        if self.pending:
            return self.pending.pop(0)
        while (reply := self.parser.next_reply()) is None:
            try:
                data = await self.reader.read(4096)
            except ssl.SSLError as e:
                raise _TlsBroken(e) from None
            if not data:
                raise ConnectionResetError("the server closed the connection")
            self.parser.feed(data)
        if self.log is not None:
            self.log += [
                f"S: {reply.code}{'-' if i < len(reply.lines) - 1 else ' '}{line}".rstrip()
                for i, line in enumerate(reply.lines)
            ]
        return reply

    async def pending_error(self) -> ssl.SSLError:
        """The TLS alert that ended the session, when one is waiting to be read."""
        try:
            await _within(self.reader.read(1), 1.0)
        except ssl.SSLError as e:
            return e
        except (OSError, TimeoutError):
            pass
        return ssl.SSLError("the server ended the TLS session during its handshake")

    async def command(self, line: str, secret: bool = False) -> SMTPReply:
        if self.log is not None:
            self.log.append(f"C: {redact(line, secret)}")
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
    """verify: what a mail client does; trust: the chain only (no name, no dates); none.
    Made once per CA file (and its modification time, so a replaced file is read again):
    loading the system's trust store costs ~100 ms, and a context serves any number of
    connections."""
    stamp = None
    if opts.ca_file:
        try:
            stamp = os.stat(opts.ca_file).st_mtime_ns
        except OSError:
            stamp = -1  # let ssl say what is wrong with it
    return _made_contexts(opts.ca_file, stamp)


@functools.lru_cache(maxsize=8)
def _made_contexts(ca_file: str | None, _stamp: int | None) -> dict[str, ssl.SSLContext]:
    verify = ssl.create_default_context(cafile=ca_file)
    trust = ssl.create_default_context(cafile=ca_file)
    trust.check_hostname = False
    trust.verify_flags |= _NO_CHECK_TIME
    none = ssl.create_default_context()
    none.check_hostname = False
    none.verify_mode = ssl.CERT_NONE
    return {"verify": verify, "trust": trust, "none": none}


class _Session:
    """One conversation with one address. Records stages and problems as it goes."""

    def __init__(self, host: str, address: str, port: int, opts: SmtpOptions, source: str = "") -> None:
        self.host, self.address, self.port, self.opts = host, address, port, opts
        # what was dialled: the certificate must name it (an IP SAN for an address). Python's ssl
        # checks an address against IP SANs and sends no SNI for it (RFC 6066 names only).
        self.server_name = (opts.server_name or host).rstrip(".").strip("[]")
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
        self.result = SmtpResult(self.host, self.address, self.port, "not-reached", self.expect)
        self.result.problems += self.learned
        self.result.transcript = [] if self.opts.transcript else None
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
            value = await _within(coro, self.opts.timeout)
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
            reader, writer = await _within(
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
            why, hint = _CONNECT_ERRORS.get(e.errno or 0, ("failed", ""))
            self.fail_stage("connect", start, f"{why} ({errno.errorcode.get(e.errno or 0, 'error')})")
            self.problem(
                "connect-failed",
                f"TCP connect to {self.address} port {self.port}: {why}{hint}; mailpath probe says more",
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
        if self.result.tls_mode == "not-reached":
            self.result.tls_mode = "none"
        self.log(f"-- connected to {self.address} port {self.port}")
        return _Conn(reader, writer, self.result.transcript)

    def log(self, line: str) -> None:
        if self.result.transcript is not None:
            self.result.transcript.append(line)

    async def handshake(self, conn: _Conn, ctx: ssl.SSLContext, stage: str) -> None:
        start = time.monotonic()
        try:
            await _within(conn.start_tls(ctx, self.server_name), self.opts.timeout)
        except ssl.SSLCertVerificationError as e:
            self.fail_stage(stage, start, f"certificate not accepted: {e.verify_message}")
            raise _CertFailure(e) from None
        except TimeoutError:
            self.fail_stage(stage, start, f"no handshake within {self.opts.timeout:g} s")
            raise
        except (ssl.SSLError, ConnectionError) as e:
            self.fail_stage(stage, start, f"handshake failed: {_ssl_reason(e)}")
            raise
        ssl_obj = conn.ssl_object
        self.result.tls_mode = "starttls" if self.result.capabilities_before_tls is not None else "implicit"
        try:
            der = ssl_obj.getpeercert(binary_form=True)
        except ValueError:  # "handshake not done yet": the server ended it (an alert) as it closed
            self.fail_stage(stage, start, "the server ended the TLS session during its handshake")
            raise _TlsBroken(await conn.pending_error()) from None
        self.peer = {"version": ssl_obj.version(), "cipher": ssl_obj.cipher()[0], "der": der}
        self.result.stages.append(
            Stage(
                stage,
                True,
                round((time.monotonic() - start) * 1000, 1),
                f"{self.peer['version']} {self.peer['cipher']}",
            )
        )
        self.log(f"-- TLS handshake: {self.peer['version']} {self.peer['cipher']}")

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
        if self.opts.rcpt_to or self.opts.mail_from is not None:
            await self._envelope(conn)
        await self._quit(conn)

    async def _implicit_tls_failed(self, error: Exception) -> _Conn:
        """Implicit TLS failed: if the port speaks plaintext SMTP, that is a TLS mode mismatch
        (and the check goes on in plaintext); otherwise the handshake failed."""
        conn = await self.connect()
        try:
            reply = await _within(conn.reply(), min(self.opts.timeout, 5.0))
        except (TimeoutError, ProtocolError, ConnectionError, _TlsBroken):
            conn.close()
            await self.tls_failed(error, f"TLS handshake on port {self.port} failed")
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
            if 400 <= greeting.code < 500:
                self.problem(
                    "service-temporary",
                    f"the greeting defers service ({greeting}): a temporary refusal, not a permanent "
                    "one (load, connection limits, greylisting); retry later",
                    "greeting",
                )
            else:
                self.problem("service-refused", f"the greeting refuses service: {greeting}", "greeting")
            await self._quit(conn)
            raise _Stop
        return greeting

    async def _speaks_tls(self) -> bool:
        """Does the port complete a TLS handshake (any certificate)? Used when no greeting came."""
        try:
            _, writer = await _within(
                asyncio.open_connection(self.address, self.port, ssl=_contexts(self.opts)["none"]),
                min(self.opts.timeout, 5.0),
            )
        except (OSError, TimeoutError, ssl.SSLError):
            return False
        writer.close()
        return True

    async def _ehlo(self, conn: _Conn, stage: str) -> dict[str, list[str]]:
        name = self.opts.ehlo or (
            f"[{self.source}]"
            if self.source and ":" not in self.source
            else (f"[IPv6:{self.source}]" if self.source else "[127.0.0.1]")
        )
        reply = await self.stage(stage, self._command(conn, f"EHLO {name}"))
        if reply.code != 250:
            if 400 <= reply.code < 500:
                self.problem("service-temporary", f"EHLO was deferred ({reply}): a temporary refusal", stage)
            else:
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
            temporary = " (temporarily: 4xx)" if 400 <= reply.code < 500 else ""
            self.problem(
                "starttls-failed", f"STARTTLS is offered but refused{temporary}: {reply}", "starttls"
            )
            return caps
        try:
            await self.handshake(conn, ctx, "tls")
        except (ssl.SSLError, ConnectionError) as e:
            await self.tls_failed(e, "TLS handshake after STARTTLS failed")
            raise _Stop from None
        return await self._ehlo(conn, "ehlo-tls")

    async def tls_failed(self, error: BaseException, what: str) -> None:
        """Record a failed handshake, naming a client-certificate demand or the versions each
        side speaks when that is why."""
        if isinstance(error, ssl.SSLError) and _client_cert_required(error):
            self.problem(
                "tls-client-cert-required",
                f"{what}: the server requires a client certificate ({_ssl_reason(error)})",
                "tls",
            )
            return
        message = f"{what}: {_ssl_reason(error)}"
        # Servers differ in how they refuse an old version (an alert, or a reset): ask the server
        # what it settles on when any version is allowed, and compare with this client's floor.
        floor = _contexts(self.opts)["verify"].minimum_version
        offered = await self._server_tls_version()
        if offered is not None and offered < floor:
            message = (
                f"{what}: the server offers only {_TLS_NAMES.get(offered.name, offered.name)}; "
                f"this client requires {_TLS_NAMES.get(floor.name, floor.name)} or later"
            )
        self.problem("tls-handshake-failed", message, "tls")

    async def _server_tls_version(self) -> ssl.TLSVersion | None:
        """The TLS version the server settles on when any version is allowed (None: none)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        with contextlib.suppress(ssl.SSLError):
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        try:
            reader, writer = await _within(
                asyncio.open_connection(self.address, self.port), self.opts.timeout
            )
            conn = _Conn(reader, writer)
            if self.mode != "implicit":
                await _within(conn.reply(), self.opts.timeout)
                await _within(conn.command("EHLO mailpath.invalid"), self.opts.timeout)
                await _within(conn.command("STARTTLS"), self.opts.timeout)
            await _within(conn.start_tls(ctx, None), self.opts.timeout)
            version = conn.ssl_object.version()
            conn.close()
        except (OSError, TimeoutError, ProtocolError, _TlsBroken):
            return None
        return _VERSIONS.get(version)

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
        if 400 <= reply.code < 500:
            self.problem("auth-failed", f"AUTH {mech} as {user} failed temporarily (4xx): {reply}", "auth")
        elif reply.code != 235:
            self.problem("auth-failed", f"AUTH {mech} as {user} was refused: {reply}", "auth")

    async def _authenticate(self, conn: _Conn, mech: str, user: str, password: str) -> SMTPReply:
        if mech == "PLAIN":
            return await conn.command(f"AUTH PLAIN {auth_plain(user, password)}")
        reply = await conn.command(f"AUTH {mech}")
        if mech == "CRAM-MD5":
            if reply.code != 334:
                return reply
            return await conn.command(cram_md5(user, password, reply.text), secret=True)
        for secret in (user, password):  # LOGIN: 334 Username:, 334 Password:
            if reply.code != 334:
                return reply
            reply = await conn.command(b64(secret), secret=True)
        return reply

    async def _envelope(self, conn: _Conn) -> None:
        """MAIL FROM and each RCPT TO, then RSET: what the server would accept, never DATA."""
        sender = self.opts.mail_from or ""
        env: dict = {"mail_from": sender, "mail_reply": None, "recipients": []}
        self.result.envelope = env
        mail = await self.stage("mail", self._command(conn, f"MAIL FROM:<{sender}>"))
        env["mail_reply"] = str(mail)
        code = envelope_problem(mail, "mail")
        if code is not None:
            self.problem(code, f"MAIL FROM:<{sender}> was {_refusal(mail)}: {mail}", "mail")
            return
        for rcpt in self.opts.rcpt_to:
            reply = await self.stage("rcpt", self._command(conn, f"RCPT TO:<{rcpt}>"))
            env["recipients"].append({"address": rcpt, "accepted": reply.code < 400, "reply": str(reply)})
            code = envelope_problem(reply, "rcpt")
            if code is not None:
                what = "relaying to it was denied" if code == "relay-denied" else f"it was {_refusal(reply)}"
                self.problem(code, f"RCPT TO:<{rcpt}>: {what}: {reply}", "rcpt")
        await self.stage("rset", self._command(conn, "RSET"))

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
    try:
        return await _check(host, address, port, opts, source)
    except Exception as e:  # a bug must not end a run over several sessions: it is this one's result
        result = SmtpResult(host, address, port, "not-reached", opts.tls)
        result.problems.append(
            Problem("check-failed", f"the SMTP check itself failed: {type(e).__name__}: {e}", "session")
        )
        return result


async def _check(host: str, address: str, port: int, opts: SmtpOptions, source: str) -> SmtpResult:
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


def _refusal(reply: SMTPReply) -> str:
    return "deferred (4xx, temporary)" if reply.code < 500 else "refused"


async def _converse(s: _Session, ctx: ssl.SSLContext) -> None:
    try:
        await s.run(ctx)
    except _Stop:
        pass
    except TimeoutError:
        last = s.result.stages[-1].name if s.result.stages else "connect"
        s.problem("timeout", f"stage {last} got no answer within {s.opts.timeout:g} s", last)
    except _TlsBroken as e:
        await s.tls_failed(e.error, "the TLS session failed right after its handshake")
    except ssl.SSLError as e:  # a handshake error no stage turned into a finding
        await s.tls_failed(e, "TLS failed")
    except OSError as e:
        s.problem("service-refused", f"the connection broke: {e.strerror or _ssl_reason(e)}", "session")
    finally:
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
