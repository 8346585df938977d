"""``mailpath probe``: one SYN per address and port, and what answered."""

from __future__ import annotations

from typing import Annotated

import typer
from mailpath.agent.cli.common import (
    JsonOpt,
    Method,
    PcapOpt,
    PortsOpt,
    RetriesOpt,
    TimeoutOpt,
    command,
    finish,
    given,
    pcap_file,
    progress,
    refuse_unused,
    save_capture,
)


@command("probe")
def probe(
    ctx: typer.Context,
    targets: Annotated[
        list[str],
        typer.Argument(
            metavar="TARGET...",
            help="HOST, HOST:PORT, IPv4:PORT, [IPv6]:PORT; a name is probed on all its addresses.",
        ),
    ],
    port: PortsOpt = None,
    timeout: TimeoutOpt = 1.0,
    retries: RetriesOpt = 2,
    method: Annotated[
        Method, typer.Option(help="raw SYN probes (needs CAP_NET_RAW), connect(), or auto: raw when allowed.")
    ] = Method.auto,
    rate: Annotated[float, typer.Option(min=1, max=1e6, help="Packets per second at most.")] = 20000,
    icmp_interval: Annotated[
        float,
        typer.Option(
            min=0,
            max=60,
            help="Seconds a router needs to earn "
            "one ICMP error (Linux: 1). Paced retries use it so that rate-limited "
            "rejects are not mistaken for silent drops.",
        ),
    ] = 1.0,
    min_wait: Annotated[
        float,
        typer.Option(
            min=0,
            max=60,
            help="Least seconds to listen for a "
            "late reply before calling a port filtered: routers answer host-unreachable "
            "only after ARP/ND fails (~3 s on Linux).",
        ),
    ] = 3.5,
    pace_budget: Annotated[
        float,
        typer.Option(
            min=0,
            max=86400,
            help="Most seconds for paced retries "
            "behind ICMP rate limits (about one port a second); past it, the rest are "
            "reported filtered and marked unconfirmed.",
        ),
    ] = 120.0,
    pcap: PcapOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Send one SYN per address and port and say what answered.

    The verdicts: open, refused, reset-in-path, rejected, unreachable or filtered."""
    from mailpath.agent.render import print_probe
    from mailpath.agent.targets import expand, parse_ports
    from mailpath.probes import Options
    from mailpath.probes import probe as run_probe

    if method is Method.connect:
        raw_only = given(ctx, "rate", "icmp_interval", "min_wait", "pace_budget")
        refuse_unused(raw_only, "only raw SYN probes use this, not --method connect")
    pcap_file(pcap, method.value)
    found = expand(targets, parse_ports(port or []))
    options = Options(
        timeout=timeout,
        retries=retries,
        rate=rate,
        icmp_interval=icmp_interval,
        min_wait=min_wait,
        pace_budget=pace_budget,
    )
    recorder = None
    if pcap:
        from mailpath.probes.capture import Recorder

        recorder, method = Recorder(), Method.raw  # packets are recorded by the raw engine only
    with progress("probing", len(found)) as tick:
        results = run_probe(found, method=method.value, options=options, progress=tick, recorder=recorder)
    capture, failed = save_capture(recorder, pcap)
    problem = not all(r.verdict == "open" for r in results)
    finish("probe", json_out, results, lambda r: r.to_dict(), print_probe, problem, failed, capture)
