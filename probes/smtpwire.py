"""The SMTP conversation's pure parts: reading replies, EHLO capabilities, AUTH encodings,
and judging a server certificate.

Nothing here touches a socket (h11's split): ``probes.smtp`` does the I/O.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import ipaddress
from dataclasses import dataclass, field

MAX_LINE = 4096  # RFC 5321 allows 512 for replies; a generous cap stops a hostile flood
MAX_LINES = 200


class ProtocolError(Exception):
    """The peer does not speak SMTP (or speaks it badly enough that we stop)."""


@dataclass(frozen=True, slots=True)
class SMTPReply:
    code: int
    lines: tuple[str, ...]  # the text of each line, without the code

    @property
    def text(self) -> str:
        return " ".join(line for line in self.lines if line).strip()

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400


@dataclass
class ReplyReader:
    """Incremental reply parser: ``feed`` bytes, then take complete (possibly multi-line)
    replies one at a time with ``next_reply``. A malformed line raises only when the reply
    it belongs to is asked for, so a good reply followed by garbage is still read."""

    _buffer: bytearray = field(default_factory=bytearray)
    _lines: list[str] = field(default_factory=list)
    _code: int | None = None

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_reply(self) -> SMTPReply | None:
        while (end := self._buffer.find(b"\n")) != -1:
            raw = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            reply = self._line(raw)
            if reply:
                return reply
        if len(self._buffer) > MAX_LINE:
            raise ProtocolError(f"reply line longer than {MAX_LINE} bytes")
        return None

    def _line(self, raw: bytes) -> SMTPReply | None:
        text = raw.decode("utf-8", "replace")
        if len(text) < 3 or not text[:3].isdigit() or (len(text) > 3 and text[3] not in " -"):
            raise ProtocolError(f"not an SMTP reply: {text[:60]!r}")
        code = int(text[:3])
        if self._code is not None and code != self._code:
            raise ProtocolError(f"reply code changed within a multi-line reply: {text[:60]!r}")
        self._code = code
        self._lines.append(text[4:])
        if len(self._lines) > MAX_LINES:
            raise ProtocolError(f"reply longer than {MAX_LINES} lines")
        if len(text) > 3 and text[3] == "-":
            return None
        reply = SMTPReply(code, tuple(self._lines))
        self._lines, self._code = [], None
        return reply


def enhanced_status(reply: SMTPReply) -> str | None:
    """The RFC 3463 enhanced status code a reply starts with (``5.7.1``), if any."""
    words = reply.text.split(maxsplit=1)
    if not words:
        return None
    parts = words[0].split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] in ("2", "4", "5"):
        return words[0]
    return None


_RELAY_WORDS = ("relay", "relaying")


def envelope_problem(reply: SMTPReply, stage: str) -> str | None:
    """The problem code of a MAIL (``stage="mail"``) or RCPT (``"rcpt"``) reply, or None when
    it was accepted. 4xx is a deferral, never a refusal; a 5xx RCPT with enhanced status 5.7.x
    or that speaks of relaying is a relay refusal (RFC 3463: 5.7 is security or policy)."""
    if reply.code < 400:
        return None
    if reply.code < 500:
        return "sender-deferred" if stage == "mail" else "recipient-deferred"
    if stage == "mail":
        return "sender-refused"
    status = enhanced_status(reply) or ""
    if status.startswith("5.7.") or any(w in reply.text.lower() for w in _RELAY_WORDS):
        return "relay-denied"
    return "recipient-refused"


def redact(line: str, secret: bool = False) -> str:
    """A client line as a transcript shows it: AUTH payloads and continuation secrets hidden."""
    if secret:
        return "<redacted>"
    words = line.split()
    if len(words) >= 3 and words[0].upper() == "AUTH":
        return f"{words[0]} {words[1]} <redacted>"
    return line


def capabilities(ehlo: SMTPReply) -> dict[str, list[str]]:
    """EHLO keywords (upper case) and their parameters. The first line is the greeting
    name; a keyword on the last ``250 `` line counts like any other (unlike ``^250-STARTTLS``)."""
    caps: dict[str, list[str]] = {}
    for line in ehlo.lines[1:]:
        words = line.split()
        if not words:
            continue
        keyword = words[0].upper()
        if keyword.startswith("AUTH="):  # the pre-RFC 4954 form some servers still send
            caps.setdefault("AUTH", []).extend(w.upper() for w in (keyword[5:], *words[1:]) if w)
            continue
        params = [w.upper() for w in words[1:]] if keyword == "AUTH" else words[1:]
        caps.setdefault(keyword, [])
        caps[keyword] += [p for p in params if p not in caps[keyword]]
    if caps.get("AUTH") == []:  # "250-AUTH" naming no mechanism offers nothing usable
        del caps["AUTH"]
    return caps


AUTH_PREFERENCE = ("PLAIN", "LOGIN", "CRAM-MD5")


def choose_mechanism(offered: list[str]) -> str | None:
    return next((m for m in AUTH_PREFERENCE if m in offered), None)


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def auth_plain(user: str, password: str) -> str:
    """The initial response of AUTH PLAIN (RFC 4616)."""
    return b64(f"\0{user}\0{password}")


def cram_md5(user: str, password: str, challenge_b64: str) -> str:
    challenge = base64.b64decode(challenge_b64, validate=False)
    digest = hmac.new(password.encode(), challenge, "md5").hexdigest()
    return b64(f"{user} {digest}")


# -- certificates -------------------------------------------------------------------------


@dataclass
class CertInfo:
    subject: str
    issuer: str
    dns_names: list[str]
    ip_addresses: list[str]
    not_before: dt.datetime
    not_after: dt.datetime
    self_signed: bool

    def to_dict(self) -> dict:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "names": self.dns_names + self.ip_addresses,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "self_signed": self.self_signed,
        }


def parse_certificate(der: bytes) -> CertInfo:
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = san.get_values_for_type(x509.DNSName)
        ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns_names, ips = [], []
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        dns_names=list(dns_names),
        ip_addresses=ips,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        self_signed=cert.subject == cert.issuer,
    )


def name_matches(name: str, cert: CertInfo) -> bool:
    """RFC 6125 matching: IP literals against IP SANs; names against DNS SANs, a wildcard
    standing for exactly one whole left-most label. (The CN is not consulted, as in browsers
    and Python's ssl since 3.7.)"""
    name = name.rstrip(".").lower()
    try:
        ip = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        ip = None
    if ip is not None:
        return any(ipaddress.ip_address(a) == ip for a in cert.ip_addresses)
    for pattern in (p.rstrip(".").lower() for p in cert.dns_names):
        if pattern == name:
            return True
        if pattern.startswith("*.") and "." in name:
            label, rest = name.split(".", 1)
            if label and rest == pattern[2:] and "." in rest:
                return True
    return False


# OpenSSL verify codes that mean "the chain does not lead to a trusted root"
_UNTRUSTED_CODES = {2, 18, 19, 20, 21, 27, 28, 30, 31, 32, 50, 79}


def cert_problems(
    cert: CertInfo | None,
    server_name: str,
    now: dt.datetime,
    trusted: bool | None,
    verify_code: int | None = None,
    verify_message: str = "",
) -> list[tuple[str, str]]:
    """(code, message) pairs for everything wrong with the certificate, judged
    independently: expiry and name from the certificate itself, trust from a verification
    that ignored both (``trusted``; None when it could not be established)."""
    problems = []
    if cert is not None:
        if now > cert.not_after:
            problems.append(
                ("cert-expired", f"the certificate expired on {cert.not_after:%Y-%m-%d %H:%M} UTC")
            )
        elif now < cert.not_before:
            problems.append(
                ("cert-expired", f"the certificate is not valid before {cert.not_before:%Y-%m-%d %H:%M} UTC")
            )
        if not name_matches(server_name, cert):
            names = ", ".join(cert.dns_names + cert.ip_addresses) or "none"
            problems.append(
                ("cert-name-mismatch", f"the certificate does not name {server_name} (it names: {names})")
            )
    untrusted = trusted is False or (trusted is None and verify_code in _UNTRUSTED_CODES)
    if untrusted:
        who = f"issued by {cert.issuer}" if cert else "its issuer"
        extra = " (self-signed)" if cert and cert.self_signed else ""
        problems.append(
            (
                "cert-untrusted",
                f"the certificate, {who}{extra}, does not chain to a trusted "
                f"CA{': ' + verify_message if verify_message else ''}",
            )
        )
    return problems
