"""``mailpath pcap``: what a capture taken elsewhere shows of the connections to mail ports."""

from __future__ import annotations

from typing import Annotated

import typer
from mailpath.agent.cli.common import JsonOpt, command, finish

MAX_ROWS = 40  # more attempts than this: grouped, as probe groups its ports


@command("pcap")
def pcap(
    file: Annotated[str, typer.Argument(metavar="FILE", help="A pcap or pcapng capture (gzipped too).")],
    port: Annotated[
        list[str] | None,
        typer.Option(
            "-p",
            "--port",
            help="Mail ports whose connection attempts to report: 25,465,587 or 2525-2530 "
            "(repeatable). Default 25,465,587.",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Read a capture (tcpdump, Wireshark) and say what happened to each connection attempt
    to a mail port, in the words of probe: open, refused, reset-in-path, rejected,
    unreachable or filtered; and, for clear-text SMTP, where the conversation stopped.

    Link types: Ethernet, Linux cooked (SLL, SLL2), raw IP, loopback; hops count from the capture."""
    from mailpath.agent.targets import parse_ports
    from mailpath.probes.errors import InputError
    from mailpath.probes.pcapfile import read

    ports = parse_ports(port or []) or [25, 465, 587]
    connections, info = read(file, ports)
    problem = any(c.verdict != "open" or (c.smtp or {}).get("problem") for c in connections)
    cut = None
    if info.truncated:
        cut = InputError(f"{file!r} is cut short: {info.truncated}; what comes before is shown")
    finish(
        "pcap",
        json_out,
        connections,
        lambda c: c.to_dict(),
        lambda items: print_connections(items, info),
        problem,
        cut,
        info.to_dict(),
    )


def _when(ts: float | None) -> str:
    import datetime as dt

    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _why(c) -> str:
    why = c.reason
    if c.retransmissions:
        why += f"; {c.retransmissions} SYN retransmission{'s' if c.retransmissions > 1 else ''}"
    if c.smtp:
        why += f"; SMTP: {c.smtp['detail']}"
    return why


def print_connections(connections: list, info, console=None) -> None:
    from mailpath.agent.render import VERDICT_STYLE, grid, port_ranges, say
    from rich.console import Console

    console = console or Console()
    links = ", ".join(info.link_types) or "no packet"
    say(console, f"{info.path}: {info.format}, {links}, {info.packets} packets", hang=4)
    if info.first is not None:
        console.print(f"  from {_when(info.first)}, for {info.last - info.first:.1f} s")
    ports = port_ranges(info.ports)
    if not connections:
        console.print(f"no connection attempt to port {ports} in it")
    styles = {"verdict": lambda v: VERDICT_STYLE.get(v, "")}
    if len(connections) > MAX_ROWS:
        groups: dict[tuple, list] = {}
        for c in connections:
            stop = c.smtp["stopped"] if c.smtp else "-"
            groups.setdefault(
                (c.server, c.port, str(c.verdict), c.responder, c.responder_hop, stop), []
            ).append(c)
        rows = [
            [
                server,
                str(p),
                str(len(cs)),
                verdict,
                "-" if who is None else f"{who} (hop {hop})",
                f"{stop} (SMTP)" if stop != "-" else "-",
                f"frame {cs[0].first_frame}: {_why(cs[0])}",
            ]
            for (server, p, verdict, who, hop, stop), cs in groups.items()
        ]
        headers = ["server", "port", "count", "verdict", "answered by", "stopped", "e.g."]
        grid(console, headers, rows, wrap="e.g.", right=("port", "count"), styles=styles)
        console.print("[dim](grouped; --json lists every attempt)[/]")
    elif connections:
        rows = [
            [
                f"{_endpoint(c.server, c.port)}\nfrom {c.client}",
                str(c.verdict),
                str(c.first_frame) + ("" if c.reply_frame is None else f"\n{c.reply_frame}"),
                _why(c),
            ]
            for c in connections
        ]
        headers = ["attempt", "verdict", "frames", "why"]
        grid(console, headers, rows, wrap="why", right=("frames",), styles=styles)
    notes: dict[str, list[int]] = {}
    for c in connections:
        for n in c.limitations:
            notes.setdefault(n, []).append(c.first_frame)
    for n, frames in notes.items():
        shown = ", ".join(map(str, frames[:5])) + (", ..." if len(frames) > 5 else "")
        say(console, f"- {n} (frame {shown})", 0, 2, style="dim")
    if info.unlisted:
        counts = ", ".join(f"{n} {v}" for v, n in sorted(info.unlisted.items()))
        console.print(f"and {sum(info.unlisted.values())} more attempts, counted only: {counts}")
    if info.evicted:
        console.print(f"{info.evicted} attempts were closed early: too many at once to follow")
