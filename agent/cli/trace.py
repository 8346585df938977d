"""``mailpath trace``: TCP SYN traceroute on the real port, with a control trace."""

from __future__ import annotations

from typing import Annotated

import typer
from mailpath.agent.cli.common import (
    Ipv4Opt,
    Ipv6Opt,
    JsonOpt,
    PcapOpt,
    TimeoutOpt,
    command,
    finish,
    one_family,
    pcap_file,
    save_capture,
)


@command("trace")
def trace(
    target: Annotated[
        str,
        typer.Argument(
            metavar="TARGET",
            help="HOST, HOST:PORT, IPv4:PORT or [IPv6]:PORT; a name is traced on all its addresses.",
        ),
    ],
    port: Annotated[
        int, typer.Option("-p", "--port", min=1, max=65535, help="Port when TARGET has none.")
    ] = 25,
    max_hops: Annotated[int, typer.Option(min=1, max=255, help="Highest TTL to try.")] = 30,
    timeout: TimeoutOpt = 1.0,
    probes: Annotated[int, typer.Option(min=1, max=10, help="Probes per TTL.")] = 3,
    max_silent: Annotated[
        int, typer.Option(min=1, max=255, help="Silent TTLs past the last answer before the trace stops.")
    ] = 3,
    control: Annotated[str, typer.Option(help="Control trace: icmp (echo), a TCP port, or none.")] = "icmp",
    ipv4: Ipv4Opt = False,
    ipv6: Ipv6Opt = False,
    icmp_interval: Annotated[
        float, typer.Option(min=0, max=60, help="Seconds a router needs to earn one ICMP error (Linux: 1).")
    ] = 1.0,
    min_wait: Annotated[
        float,
        typer.Option(
            min=0, max=60, help="How long the final silence check listens (a late host-unreachable)."
        ),
    ] = 3.5,
    pcap: PcapOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """TCP SYN traceroute on the real port: which hop drops, rejects or forges a RST.

    A control trace (ICMP echo, or another TCP port) runs alongside, to tell a drop of this
    port from a path that goes silent anyway."""
    from mailpath.agent.render import print_traces
    from mailpath.agent.targets import expand, parse_target
    from mailpath.probes.errors import InputError
    from mailpath.probes.trace import TraceOptions, trace_raw

    host, given_port = parse_target(target)
    if control not in ("icmp", "none") and not (control.isdigit() and 1 <= int(control) <= 65535):
        raise InputError(f"invalid --control {control!r}: expected icmp, none or a port 1-65535")
    pcap_file(pcap)
    found = one_family(expand([target], [given_port or port]), ipv4, ipv6, host, lambda t: t.family)
    options = TraceOptions(
        max_hops=max_hops,
        probes=probes,
        timeout=timeout,
        max_silent=max_silent,
        icmp_interval=icmp_interval,
        min_wait=min_wait,
    )
    ctl = None if control == "none" else (control if control == "icmp" else int(control))
    recorder = None
    if pcap:
        from mailpath.probes.capture import Recorder

        recorder = Recorder()
    results = trace_raw(found, options, ctl, recorder)
    capture, failed = save_capture(recorder, pcap)
    problem = not all(r.verdict == "open" for r in results)
    finish("trace", json_out, results, lambda r: r.to_dict(), print_traces, problem, failed, capture)
