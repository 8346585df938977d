"""Mail routing in DNS: MX records, their addresses, the implicit MX and the null MX.

:func:`build_route` is pure: it turns lookup outcomes into a :class:`MailRoute` with its
problems. :func:`lookup_route` does the lookups with dnspython, concurrently.

Problem codes: ``nxdomain``, ``no-mx`` (RFC 5321 §5.1 implicit MX used), ``null-mx``
(RFC 7505), ``mx-no-address``, ``servfail``, ``dns-timeout``, ``dns-refused`` (a given
nameserver refuses at once: nothing listens there).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import ip_address

from mailpath.probes.errors import DependencyFailed, ResolveError
from mailpath.probes.problem import Problem


class Failure(StrEnum):
    """Why a lookup gave no records."""

    NXDOMAIN = "nxdomain"  # the name does not exist
    NODATA = "nodata"  # the name exists, but has no record of this type
    SERVFAIL = "servfail"  # the nameservers failed (SERVFAIL, REFUSED, ...)
    TIMEOUT = "timeout"  # no answer in time


Outcome = list | Failure  # records, or why there are none


@dataclass
class Exchange:
    preference: int
    host: str
    addresses: list[str] = field(default_factory=list)
    implicit: bool = False


@dataclass
class MailRoute:
    domain: str
    mx: list[Exchange]
    problems: list[Problem]
    null_mx: bool = False
    nameservers: list[str] = field(default_factory=list)

    @property
    def implicit_mx(self) -> bool:
        return any(x.implicit for x in self.mx)

    def to_dict(self) -> dict:
        return {
            "domain": self.domain,
            "mx": [
                {"preference": x.preference, "host": x.host, "addresses": x.addresses, "implicit": x.implicit}
                for x in self.mx
            ],
            "problems": [p.to_dict() for p in self.problems],
            "implicit_mx": self.implicit_mx,
            "null_mx": self.null_mx,
            "nameservers": self.nameservers,
        }


def _failure_problem(failure: Failure, name: str, rtype: str, timeout: float) -> Problem | None:
    if failure is Failure.SERVFAIL:
        return Problem("servfail", f"the nameservers failed to answer {name} {rtype} (SERVFAIL or refused)")
    if failure is Failure.TIMEOUT:
        return Problem("dns-timeout", f"no answer for {name} {rtype} within {timeout:g} s")
    return None


def build_route(
    domain: str,
    mx: Outcome,
    addresses: dict[str, tuple[Outcome, Outcome]],
    timeout: float = 5.0,
) -> MailRoute:
    """Mail route of ``domain`` from its MX outcome (a list of (preference, host)) and the
    (A, AAAA) outcomes of every host named (the domain itself when it has no MX)."""
    domain = domain.rstrip(".").lower()
    problems: list[Problem] = []
    if mx is Failure.NXDOMAIN:
        return MailRoute(domain, [], [Problem("nxdomain", f"{domain} does not exist (NXDOMAIN)")])
    if isinstance(mx, Failure) and mx is not Failure.NODATA:
        return MailRoute(domain, [], [_failure_problem(mx, domain, "MX", timeout)])
    if isinstance(mx, list) and len(mx) == 1 and mx[0][1] in ("", ".") and mx[0][0] == 0:
        msg = f"{domain} publishes a null MX (RFC 7505): it accepts no mail"
        return MailRoute(domain, [], [Problem("null-mx", msg)], null_mx=True)
    if mx is Failure.NODATA or not mx:
        exchanges = [Exchange(0, domain, implicit=True)]
        problems.append(
            Problem(
                "no-mx",
                f"{domain} has no MX record: mail goes to the domain's own "
                f"A/AAAA addresses (RFC 5321 implicit MX)",
            )
        )
    else:
        hosts = sorted({(pref, host.rstrip(".").lower()) for pref, host in mx if host not in ("", ".")})
        exchanges = [Exchange(pref, host) for pref, host in hosts]
    for x in exchanges:
        v4, v6 = addresses.get(x.host, (Failure.NODATA, Failure.NODATA))
        failed = False
        for outcome, rtype in ((v4, "A"), (v6, "AAAA")):
            if isinstance(outcome, list):
                x.addresses += [str(a) for a in outcome]
            elif (p := _failure_problem(outcome, x.host, rtype, timeout)) is not None:
                problems.append(p)
                failed = True
        if not x.addresses and not failed:
            what = "the domain itself" if x.implicit else f"MX {x.host}"
            problems.append(
                Problem(
                    "mx-no-address",
                    f"{what} has no A or AAAA address"
                    + (" (the name does not exist)" if Failure.NXDOMAIN in (v4, v6) else ""),
                )
            )
    return MailRoute(domain, exchanges, problems)


def _resolver(nameservers: list[tuple[str, int]], timeout: float):
    import dns.asyncresolver
    import dns.nameserver
    import dns.resolver

    try:
        resolver = dns.asyncresolver.Resolver(configure=not nameservers)
    except dns.resolver.NoResolverConfiguration:
        raise DependencyFailed("no DNS resolver configured here (/etc/resolv.conf)") from None
    if nameservers:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(a, p) for a, p in nameservers]
    resolver.lifetime = timeout
    resolver.timeout = max(timeout / 3, 0.5)
    return resolver


async def _query(resolver, name: str, rtype: str) -> Outcome:
    import dns.exception
    import dns.name
    import dns.resolver

    try:
        answer = await resolver.resolve(name, rtype, search=False)
    except dns.resolver.NXDOMAIN:
        return Failure.NXDOMAIN
    except dns.resolver.NoAnswer:
        return Failure.NODATA
    except (dns.resolver.LifetimeTimeout, dns.exception.Timeout):
        return Failure.TIMEOUT
    except (dns.resolver.NoNameservers, dns.resolver.YXDOMAIN):
        return Failure.SERVFAIL
    except dns.exception.DNSException:  # anything else dnspython raises: no usable answer
        return Failure.SERVFAIL
    if rtype == "MX":
        return [
            (r.preference, "." if r.exchange == dns.name.root else r.exchange.to_text(True)) for r in answer
        ]
    return [r.to_text() for r in answer]


async def addresses_of(resolver, host: str) -> tuple[Outcome, Outcome]:
    """(A, AAAA) outcomes of ``host``, looked up together."""
    a, aaaa = await asyncio.gather(_query(resolver, host, "A"), _query(resolver, host, "AAAA"))
    return a, aaaa


def refuses(address: str, port: int, timeout: float = 1.0) -> bool:
    """Does the nameserver refuse at the transport (ICMP port unreachable: nothing listens)?
    A connected UDP socket sees that at once; dnspython's unconnected one would wait out its
    timeout. An answer, or silence, is not a refusal."""
    import dns.message

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((address, port))
            s.send(dns.message.make_query(".", "NS").to_wire())
            s.recv(512)
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False


async def _refusing(nameservers: list[tuple[str, int]], timeout: float) -> list[tuple[str, int]]:
    checks = [asyncio.to_thread(refuses, a, p, min(timeout, 1.0)) for a, p in nameservers]
    return [ns for ns, no in zip(nameservers, await asyncio.gather(*checks), strict=True) if no]


def _named(nameservers: list[tuple[str, int]]) -> str:
    return ", ".join(a if p == 53 else (f"[{a}]:{p}" if ":" in a else f"{a}:{p}") for a, p in nameservers)


async def lookup_route_async(domain: str, nameservers: list[tuple[str, int]], timeout: float) -> MailRoute:
    if nameservers and (refused := await _refusing(nameservers, timeout)) == nameservers:
        message = f"the nameserver {_named(refused)} refused the query: nothing listens there"
        return MailRoute(domain, [], [Problem("dns-refused", message)], nameservers=[_named(nameservers)])
    resolver = _resolver(nameservers, timeout)
    name = domain.rstrip(".")
    mx = await _query(resolver, name, "MX")
    if isinstance(mx, list):
        hosts = sorted({h.rstrip(".").lower() for _, h in mx if h not in ("", ".")})
    elif mx is Failure.NODATA:
        hosts = [name.lower()]
    else:
        hosts = []
    found = await asyncio.gather(*(addresses_of(resolver, h) for h in hosts))
    route = build_route(domain, mx, dict(zip(hosts, found, strict=True)), timeout)
    route.nameservers = [f"{a}" if p == 53 else f"{a}:{p}" for a, p in nameservers] or [
        str(ns) for ns in resolver.nameservers
    ]
    return route


def lookup_route(domain: str, nameservers: list[tuple[str, int]] = (), timeout: float = 5.0) -> MailRoute:
    """Look up the mail route of ``domain`` (through ``nameservers``, else the system's)."""
    return asyncio.run(lookup_route_async(domain, list(nameservers), timeout))


def system_addresses(host: str) -> list[str]:
    """All A and AAAA addresses of ``host`` through the system resolver (/etc/hosts and search
    domains included), in its order. Raises :class:`ResolveError` saying why there are none."""
    try:
        return [str(ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except socket.gaierror as e:
        kind = _GAI_KIND.get(e.errno, "unresolvable")
        raise ResolveError(host, kind, e.strerror or kind) from None
    return list(dict.fromkeys(sockaddr[0].split("%")[0] for *_, sockaddr in infos))


# getaddrinfo's answers, in the words of DNS (EAI_NODATA is glibc's "no address for this name")
_GAI_KIND = {
    socket.EAI_NONAME: "nxdomain",
    getattr(socket, "EAI_NODATA", -5): "nodata",
    socket.EAI_AGAIN: "timeout",
    socket.EAI_FAIL: "servfail",
}


async def resolve_host(host: str, nameservers: list[tuple[str, int]], timeout: float) -> list[str]:
    """A and AAAA addresses of ``host``: through ``nameservers`` when given (dnspython), else
    the system resolver. Raises :class:`ResolveError` (nxdomain, nodata, servfail, timeout,
    unresolvable) when there are none."""
    if not nameservers:
        return await asyncio.to_thread(system_addresses, host)
    try:
        return [str(ip_address(host))]
    except ValueError:
        pass
    if (refused := await _refusing(nameservers, timeout)) == nameservers:
        raise ResolveError(
            host, "refused", f"the nameserver {_named(refused)} refused: nothing listens there"
        )
    a, aaaa = await addresses_of(_resolver(nameservers, timeout), host)
    addresses = [x for outcome in (a, aaaa) if isinstance(outcome, list) for x in outcome]
    if addresses:
        return addresses
    failures = [o for o in (a, aaaa) if isinstance(o, Failure) and o is not Failure.NODATA]
    kind = failures[0] if failures else Failure.NODATA
    why = {Failure.NXDOMAIN: "NXDOMAIN", Failure.SERVFAIL: "SERVFAIL", Failure.TIMEOUT: "timed out"}
    raise ResolveError(host, str(kind), why.get(kind, "no A or AAAA record"))
