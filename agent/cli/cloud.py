"""``mailpath cloud``: which cloud rule or policy blocks mail from this host."""

from __future__ import annotations

from typing import Annotated

import typer
from mailpath.agent.cli.common import JsonOpt, Port25Opt, choice, command, finish, given, refuse_unused


@command("cloud")
def cloud(
    ctx: typer.Context,
    dest: Annotated[list[str], typer.Option("--dest", help="Destination address or name (repeatable).")],
    port: Port25Opt = None,
    instance_id: Annotated[str | None, typer.Option(help="EC2 instance to evaluate (off EC2).")] = None,
    eni: Annotated[str | None, typer.Option(help="Network interface to evaluate (off EC2).")] = None,
    region: Annotated[
        str | None, typer.Option(help="AWS region (default: IMDS, then the usual configuration).")
    ] = None,
    provider: Annotated[str, typer.Option(help="auto (IMDS, then DMI), aws, gcp, azure.")] = "auto",
    ephemeral: Annotated[
        str | None,
        typer.Option(help="The client's source ports, LO-HI (default: this host's ip_local_port_range)."),
    ] = None,
    imds_timeout: Annotated[float, typer.Option(min=0.05, max=30, help="Seconds to wait for IMDS.")] = 1.0,
    json_out: JsonOpt = False,
) -> None:
    """Which security group, network ACL, route or provider policy blocks mail to DEST.

    An evaluation of the cloud's configuration, read with read-only calls."""
    from mailpath.agent.render import print_evaluations
    from mailpath.agent.targets import parse_ports
    from mailpath.cloud.check import CloudOptions, read_cloud
    from mailpath.probes.dns import system_addresses

    choice(provider, ("auto", "aws", "gcp", "azure"), "--provider")
    if provider in ("gcp", "azure"):
        refuse_unused(given(ctx, "instance_id", "eni", "region"), f"AWS only, not {provider}")
    ports = parse_ports(port or []) or [25]
    addresses = [a for d in dest for a in system_addresses(d)]
    eph = None
    if ephemeral:
        span = parse_ports([ephemeral])
        eph = (span[0], span[-1])
    options = CloudOptions(
        provider=provider,
        instance_id=instance_id,
        eni=eni,
        region=region,
        ephemeral=eph,
        imds_timeout=imds_timeout,
        required=True,
    )
    read = read_cloud(options, addresses)
    docs = [read.document(a, p) for a in addresses for p in ports]
    problem = not all(d["verdict"] == "allowed" for d in docs)
    finish("cloud", json_out, docs, lambda d: d, print_evaluations, problem)
