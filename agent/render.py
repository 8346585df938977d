"""Human output: rich tables on stdout. JSON output lives with each command's data."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from probes.classify import Verdict
from probes.result import ProbeResult

VERDICT_STYLE = {
    Verdict.OPEN: "green",
    Verdict.REFUSED: "yellow",
    Verdict.RESET_IN_PATH: "bold red",
    Verdict.REJECTED: "red",
    Verdict.UNREACHABLE: "magenta",
    Verdict.FILTERED: "bold magenta",
}


def _hop(h: int | None) -> str:
    return "-" if h is None else str(h)


def probe_table(results: list[ProbeResult]) -> Table:
    table = Table(header_style="bold", expand=False)
    table.add_column("target", overflow="fold")
    table.add_column("port", justify="right")
    table.add_column("verdict", no_wrap=True)
    table.add_column("answered by", overflow="fold")
    table.add_column("rtt ms", justify="right")
    table.add_column("why", overflow="fold", ratio=1)
    for r in results:
        target = r.address if r.host == r.address else f"{r.host}\n{r.address}"
        by = "-" if r.responder is None else f"{r.responder} (hop {_hop(r.responder_hop)})"
        table.add_row(
            target,
            str(r.port),
            f"[{VERDICT_STYLE[r.verdict]}]{r.verdict}[/]",
            by,
            "-" if r.rtt_ms is None else f"{r.rtt_ms:.1f}",
            r.reason,
        )
    return table


def print_probe(results: list[ProbeResult], console: Console | None = None) -> None:
    console = console or Console()
    console.print(probe_table(results))
    notes = sorted({n for r in results for n in r.limitations})
    if notes:
        console.print("[dim]connect() mode (no raw sockets):[/]")
        for n in notes:
            console.print(f"[dim]  - {n}[/]")
