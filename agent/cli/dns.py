"""``mailpath dns``: where mail for a domain goes."""

from __future__ import annotations

from typing import Annotated

import typer
from mailpath.agent.cli.common import JsonOpt, NameserverOpt, command, finish


@command("dns")
def dns(
    domain: Annotated[str, typer.Argument(help="The mail domain, e.g. example.com.")],
    nameserver: NameserverOpt = None,
    timeout: Annotated[float, typer.Option(min=0.1, max=120, help="Seconds for the whole lookup.")] = 5.0,
    json_out: JsonOpt = False,
) -> None:
    """Where mail for DOMAIN goes: its MX hosts and their addresses.

    MX records by preference and their A/AAAA addresses (the domain's own addresses when it
    has no MX; nothing for a null MX)."""
    from mailpath.agent.render import print_route
    from mailpath.agent.targets import parse_domain, parse_nameserver
    from mailpath.probes.dns import lookup_route

    name = parse_domain(domain)
    servers = [parse_nameserver(n) for n in nameserver or []]
    route = lookup_route(name, servers, timeout)
    show = lambda routes: [print_route(r) for r in routes]  # noqa: E731
    finish("dns", json_out, [route], lambda r: r.to_dict(), show, bool(route.problems))
