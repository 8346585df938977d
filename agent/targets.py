"""Parsing what the user typed: targets (``HOST``, ``HOST:PORT``, ``[IPv6]:PORT``) and port lists.

Pure apart from the resolver :func:`expand` is given (the system's by default). Every error
is an :class:`InputError` whose message names the offending value, so the CLI can print it on
one line and exit 2.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address

from mailpath.probes.dns import system_addresses
from mailpath.probes.errors import InputError
from mailpath.probes.result import Target

DEFAULT_PORTS = (25, 465, 587)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def parse_ports(specs: Iterable[str]) -> list[int]:
    """``["25,465", "30000-30010"]`` -> sorted unique ports. Empty input -> []."""
    ports: set[int] = set()
    for spec in specs:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                raise InputError(f"empty port in {spec!r}")
            lo, sep, hi = part.partition("-")
            a, b = _port(lo, part), _port(hi, part) if sep else None
            if b is None:
                ports.add(a)
            elif a > b:
                raise InputError(f"port range {part!r} runs backwards")
            else:
                ports.update(range(a, b + 1))
    return sorted(ports)


def _port(text: str, whole: str) -> int:
    if not text.isdigit():
        raise InputError(f"invalid port {whole!r}: not a number")
    n = int(text)
    if not 1 <= n <= 65535:
        raise InputError(f"port {n} in {whole!r} is out of range 1-65535")
    return n


def is_hostname(name: str) -> bool:
    """RFC 1123 host name (underscores tolerated, as resolvers do); a trailing dot is fine."""
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if all(label.isdigit() for label in labels):  # looks like a broken IPv4 literal
        return False
    return all(_LABEL.match(label) for label in labels)


def ascii_name(name: str) -> str:
    """A host or domain name as DNS carries it: internationalised names converted to IDNA
    (``bücher.example`` -> ``xn--bcher-kva.example``); a name too long for DNS refused."""
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise InputError(
                f"invalid name {name!r}: cannot convert it to IDNA (give its xn-- form)"
            ) from None
    bare = name[:-1] if name.endswith(".") else name
    if len(bare) > 253:
        raise InputError(f"name too long: {len(bare)} characters, DNS allows 253 ({bare[:40]}...)")
    for label in bare.split("."):
        if len(label) > 63:
            raise InputError(f"label {label!r} is longer than 63 characters")
    return name


def parse_target(text: str) -> tuple[str, int | None]:
    """Split a target into (host, port or None). IPv6 literals need brackets to carry a port."""
    text = text.strip()
    if not text:
        raise InputError("empty target")
    if text.startswith("["):
        m = re.fullmatch(r"\[([^\]]+)\](?::(.*))?", text)
        if not m or not _is_ip(m.group(1), 6):
            raise InputError(f"invalid target {text!r}: expected [IPv6] or [IPv6]:PORT")
        return str(IPv6Address(m.group(1))), (_port(m.group(2), text) if m.group(2) is not None else None)
    if text.count(":") >= 2:
        if not _is_ip(text, 6):
            raise InputError(f"invalid target {text!r}: not an IPv6 address")
        return str(IPv6Address(text)), None
    host, sep, port = text.partition(":")
    if _is_ip(host, 4):
        host = str(IPv4Address(host))
    elif not is_hostname(host := ascii_name(host)):
        raise InputError(f"invalid host {host!r} in target {text!r}")
    return host, (_port(port, text) if sep else None)


def _is_ip(text: str, version: int) -> bool:
    try:
        return ip_address(text).version == version
    except ValueError:
        return False


Resolver = Callable[[str], list[str]]


def expand(texts: Iterable[str], ports: list[int], resolver: Resolver = system_addresses) -> list[Target]:
    """Targets as typed -> one Target per (address, port), in the order given."""
    parsed = [parse_target(t) for t in texts]  # all syntax errors before any lookup
    out: dict[tuple[str, str, int], Target] = {}
    for host, port in parsed:
        for address in resolver(host):
            for p in [port] if port is not None else (ports or list(DEFAULT_PORTS)):
                out.setdefault((host, address, p), Target(host, address, p))
    return list(out.values())


def parse_nameserver(text: str) -> tuple[str, int]:
    """``ADDR``, ``ADDR:PORT`` or ``[IPv6]:PORT`` -> (address, port); names are refused, since
    looking up the resolver would need a resolver."""
    host, port = parse_target(text)
    if not (_is_ip(host, 4) or _is_ip(host, 6)):
        raise InputError(f"invalid nameserver {text!r}: give an IP address")
    return host, port or 53


def parse_domain(text: str) -> str:
    text = ascii_name(text)
    if not is_hostname(text):
        raise InputError(f"invalid domain {text!r}")
    return text.rstrip(".").lower()
