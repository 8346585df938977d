"""Human output: rich tables on stdout. JSON output lives with each command's data."""

from __future__ import annotations

import textwrap
from collections.abc import Callable

from mailpath.probes.classify import Verdict
from mailpath.probes.dns import MailRoute
from mailpath.probes.result import ProbeResult
from mailpath.probes.smtp import SmtpResult
from mailpath.probes.trace import Hop, TraceResult
from rich.console import Console
from rich.table import Table
from rich.text import Text

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


Style = Callable[[str], str]


def grid(
    console: Console,
    headers: list[str],
    rows: list[list[str]],
    *,
    wrap: str | None = None,
    right: tuple[str, ...] = (),
    styles: dict[str, Style] | None = None,
) -> None:
    """Rows as a table when every cell fits whole (only the ``wrap`` column wraps, at spaces);
    else, on a narrow terminal or for long addresses, one block per row, so that no word and no
    address is ever split."""
    styles = styles or {}
    widths = [
        max([len(h)] + [len(line) for r in rows for line in r[i].split("\n")]) for i, h in enumerate(headers)
    ]
    fixed = sum(w for h, w in zip(headers, widths, strict=True) if h != wrap) + 2 * len(headers)
    longest_word = max(
        (len(w) for r in rows for i, h in enumerate(headers) if h == wrap for w in r[i].split()), default=0
    )
    room = console.width - fixed
    need = 0 if wrap is None else max(longest_word, min(12, widths[headers.index(wrap)]))
    if room >= need:
        table = Table(header_style="bold underline", box=None, padding=(0, 2, 0, 0))
        for h, w in zip(headers, widths, strict=True):
            table.add_column(
                h,
                justify="right" if h in right else "left",
                no_wrap=h != wrap,
                min_width=None if h == wrap else w,
            )
        for r in rows:
            table.add_row(
                *(
                    Text(c, style=styles[h](c)) if h in styles else Text(c)
                    for h, c in zip(headers, r, strict=True)
                )
            )
        console.print(table)
        return
    for r in rows:
        first = r[0].replace("\n", " ")
        say(console, first, hang=4, style="bold")
        for h, c in zip(headers[1:], r[1:], strict=True):
            say(console, f"{h}: {c.replace(chr(10), ' ')}", 2, 4, style=styles[h](c) if h in styles else "")


def _verdict_style(v: str) -> str:
    return VERDICT_STYLE.get(Verdict(v), "") if v in set(Verdict) else ""


def _by(responder: str | None, hop: int | None) -> str:
    return "-" if responder is None else f"{responder} (hop {_hop(hop)})"


def probe_rows(results: list[ProbeResult]) -> list[list[str]]:
    return [
        [
            r.address if r.host == r.address else f"{r.host}\n{r.address}",
            str(r.port),
            str(r.verdict),
            _by(r.responder, r.responder_hop),
            "-" if r.rtt_ms is None else f"{r.rtt_ms:.1f}",
            r.reason,
        ]
        for r in results
    ]


def port_ranges(ports: list[int]) -> str:
    """[25, 26, 27, 587] -> "25-27,587"."""
    out, ports = [], sorted(ports)
    start = prev = ports[0]
    for p in [*ports[1:], None]:
        if p is not None and p == prev + 1:
            prev = p
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if p is not None:
            start = prev = p
    return ",".join(out)


def summary_rows(results: list[ProbeResult]) -> list[list[str]]:
    """Many results: one row per address, verdict and reason, with the ports as ranges."""
    groups: dict[tuple, list[int]] = {}
    for r in results:
        key = (r.host, r.address, str(r.verdict), r.responder, r.responder_hop, r.reason.split(";")[0])
        groups.setdefault(key, []).append(r.port)
    return [
        [
            address if host == address else f"{host}\n{address}",
            port_ranges(ports),
            str(len(ports)),
            verdict,
            _by(responder, hop),
            why,
        ]
        for (host, address, verdict, responder, hop, why), ports in groups.items()
    ]


def print_probe(results: list[ProbeResult], console: Console | None = None) -> None:
    console = console or Console()
    styles = {"verdict": _verdict_style}
    if len(results) > 40:
        headers = ["target", "ports", "count", "verdict", "answered by", "why"]
        grid(console, headers, summary_rows(results), wrap="why", right=("count",), styles=styles)
        console.print("[dim](grouped by verdict; --json lists every port)[/]")
    else:
        headers = ["target", "port", "verdict", "answered by", "rtt ms", "why"]
        grid(console, headers, probe_rows(results), wrap="why", right=("port", "rtt ms"), styles=styles)
    notes = sorted({n for r in results for n in r.limitations})
    if notes:
        console.print("[dim]connect() mode (no raw sockets):[/]")
        for n in notes:
            say(console, f"- {n}", 2, 2, style="dim")


def _cell(row: Hop | None) -> tuple[str, str, str]:
    if row is None or row.reply is None:
        return "*", "-", "-"
    return row.address or "*", row.reply, f"{row.rtt_ms:.1f}"


def print_trace_table(r: TraceResult, console: Console) -> None:
    ctl = r.control
    headers = ["ttl", "address", "reply", "rtt ms"]
    if ctl:
        headers += [f"control ({'echo' if ctl.kind == 'icmp' else f'port {ctl.port}'})", "control reply"]
    ctl_rows = {row.ttl: row for row in ctl.hops} if ctl else {}
    main_rows = {row.ttl: row for row in r.hops}
    rows = []
    for ttl in sorted(set(main_rows) | set(ctl_rows)):
        cells = [str(ttl), *_cell(main_rows.get(ttl))]
        if ctl:
            address, reply, _ = _cell(ctl_rows.get(ttl))
            cells += [address, reply]
        rows.append(cells)
    grid(console, headers, rows, right=("ttl", "rtt ms"))


def trace_summary(r: TraceResult) -> str:
    style = VERDICT_STYLE[r.verdict]
    line = f"[{style}]{r.verdict}[/]: {r.reason}"
    ctl = r.control
    if ctl and r.port_specific is not None:
        reach = (
            f"reaches the destination at hop {ctl.furthest_hop}"
            if ctl.reached_destination
            else f"goes silent after hop {ctl.furthest_hop}"
        )
        verdict = (
            "so this port is singled out"
            if r.port_specific
            else "so the path itself stops there, not just this port"
        )
        line += f"; the control {reach}, {verdict}"
    return line


def print_traces(results: list[TraceResult], console: Console | None = None) -> None:
    console = console or Console()
    for r in results:
        name = r.address if r.host == r.address else f"{r.host} ({r.address})"
        console.print(f"[bold]trace to {name} port {r.port}[/] from {r.source or 'this host'}")
        if r.hops:
            print_trace_table(r, console)
        console.print(trace_summary(r))
        if not r.complete:
            console.print("[yellow]stopped at the time limit: the trace is incomplete[/]")
        console.print()


def _problems(console: Console, problems) -> None:
    for p in problems:
        where = f" ({p.stage})" if getattr(p, "stage", None) else ""
        say(console, f"{p.code}{where}: {p.message}", 2, 4)


def print_route(route: MailRoute, console: Console | None = None) -> None:
    console = console or Console()
    console.print(
        f"[bold]mail for {route.domain}[/] (nameservers: {', '.join(route.nameservers) or 'system'})"
    )
    if route.mx:
        table = Table(header_style="bold")
        for col in ("pref", "exchange", "addresses"):
            table.add_column(col, justify="right" if col == "pref" else "left")
        for x in route.mx:
            host = f"{x.host} [dim](implicit MX)[/]" if x.implicit else x.host
            table.add_row(str(x.preference), host, "\n".join(x.addresses) or "[red]none[/]")
        console.print(table)
    if route.problems:
        _problems(console, route.problems)
    else:
        console.print("[green]no problem found[/]")


def print_sessions(results: list[SmtpResult], console: Console | None = None) -> None:
    console = console or Console()
    for r in results:
        name = r.address if r.host == r.address else f"{r.host} ({r.address})"
        tls = (
            r.tls and f"{r.tls['version']}, certificate {'verified' if r.tls['verified'] else 'NOT verified'}"
        )
        mode = "not reached" if r.tls_mode == "not-reached" else r.tls_mode
        console.print(f"[bold]SMTP {name} port {r.port}[/]: TLS {mode}" + (f" ({tls})" if tls else ""))
        rows = [[st.name, "yes" if st.ok else "no", f"{st.ms:.1f}", st.detail] for st in r.stages]
        ok = {"ok": lambda v: "green" if v == "yes" else "red"}
        grid(console, ["stage", "ok", "ms", "detail"], rows, wrap="detail", right=("ms",), styles=ok)
        if r.auth_mechanisms:
            console.print(f"  AUTH mechanisms: {' '.join(r.auth_mechanisms)}")
        if r.envelope:
            console.print(
                f"  MAIL FROM:<{r.envelope['mail_from']}>: {r.envelope['mail_reply']}", markup=False
            )
            for rc in r.envelope["recipients"]:
                console.print(f"  RCPT TO:<{rc['address']}>: {rc['reply']}", markup=False)
        if r.transcript is not None:
            console.print("  transcript:")
            for line in r.transcript:
                console.print(f"    {line}", markup=False, highlight=False)
        if r.problems:
            _problems(console, r.problems)
        else:
            console.print("  [green]no problem found[/]")
        console.print()


def print_evaluations(docs: list[dict], console: Console | None = None) -> None:
    """``mailpath cloud``'s evaluations; a policy that only probably applies (``likely-blocked``,
    ``certain: false``) reads as "likely blocked: provider policy", never as blocked."""
    console = console or Console()
    colour = {"allowed": "green", "blocked": "red", "likely-blocked": "yellow", "unknown": "yellow"}
    for d in docs:
        dest = d["destination"]
        verdict = d["verdict"]
        if verdict == "likely-blocked":
            likely = dict.fromkeys(
                b["component"].replace("-", " ") for b in d["blockers"] if not b["certain"]
            )
            verdict = "likely blocked: " + ", ".join(likely)
        source = d["instance"].get("instance_id") or d["instance"].get("eni_id") or "this host"
        say(
            console,
            f"TCP {dest['port']} to {dest['address']} from {source} ({d['provider']}): {verdict}",
            hang=4,
            style=f"bold {colour.get(d['verdict'], 'yellow')}",
        )
        for b in d["blockers"]:
            what = f"{b['component']} {b['id'] or ''}".strip() + (f" rule {b['rule']}" if b["rule"] else "")
            style = "red" if b["certain"] else "yellow"  # the message of an uncertain one says so
            say(console, f"{b['code']} {what} ({b['direction']}): {b['message']}", 2, 4, style=style)
        rows = [
            [c["component"], c["direction"], c["id"] or "-", c["result"], c["detail"]] for c in d["checked"]
        ]
        grid(console, ["checked", "direction", "id", "result", "detail"], rows, wrap="detail")
        for m in d["unchecked"]:
            say(console, m["message"], 2, 4, style="yellow")
        console.print()


CAUSE_STYLE = {
    "none": "green",
    "dns": "magenta",
    "network": "magenta",
    "firewall": "red",
    "service": "yellow",
    "tls": "yellow",
    "auth": "yellow",
    "cloud-config": "red",
    "cloud-policy": "red",
}


def say(console: Console, text: str, indent: int = 0, hang: int = 2, style: str = "", keep: str = "") -> None:
    """Print ``text`` wrapped at spaces to the console's width (80 in a log file), with a hanging
    indent, never splitting a word or an address; ``keep`` (a suffix of text) stays on one line."""
    glue = "\x00"
    if keep and text.endswith(keep):
        text = text[: -len(keep)] + keep.replace(" ", glue)
    lines = textwrap.wrap(
        text,
        width=max(console.width, 40),
        initial_indent=" " * indent,
        subsequent_indent=" " * (indent + hang),
        break_long_words=False,
        break_on_hyphens=False,
    )
    for line in lines or [""]:
        console.print(Text(line.replace(glue, " "), style=style), soft_wrap=True)


def _where(loc) -> str:
    return {
        "local": "this host",
        "destination": f"the destination {loc.address or ''}".strip()
        + (f" (hop {loc.hop})" if loc.hop else ""),
        "hop": f"hop {loc.hop}" + (f" ({loc.address})" if loc.address else ""),
        "cloud": f"cloud component {loc.component}",
    }[loc.kind]


def _grouped(findings) -> list[tuple[list[int], object]]:
    """Findings with the ports they stand for: a DNS failure of one target is told once, for
    all its ports (its findings differ only in the port)."""
    out: list[tuple[list[int], object]] = []
    for f in findings:
        if out and f.cause == "dns" and out[-1][1].cause == "dns" and out[-1][1].target == f.target:
            out[-1][0].append(f.port)
        else:
            out.append(([f.port], f))
    return out


def print_findings(findings, console: Console | None = None) -> None:
    """The human report: a headline per target and port, then evidence and what to do, and one
    summary line. Deterministic for given findings (no times, ids or round-trip times): a
    golden file test holds it still."""
    console = console or Console()
    for ports, f in _grouped(findings):
        headline = f.headline
        if len(ports) > 1:
            headline = f"{', '.join(map(str, ports))}{headline[len(str(f.port)) :]}"
        cause = headline.rsplit(" — ", 1)[-1]
        say(console, headline, hang=4, style=f"bold {CAUSE_STYLE[f.cause]}", keep=f" — {cause}")
        if f.addresses:
            say(console, "addresses: " + ", ".join(f"{a.address} {a.verdict}" for a in f.addresses), 2, 4)
        connect = next((a for a in f.addresses if a.method == "connect"), None)
        if connect is not None:
            say(console, "method: connect() (no CAP_NET_RAW); " + "; ".join(connect.limitations), 2, 4)
        if f.location is not None and f.cause != "none":
            say(console, f"where: {_where(f.location)}", 2, 4)
        if f.evidence:
            console.print("  evidence:")
            for e in f.evidence:
                say(console, f"- {e.ref} {e.fact}", 4, 2)
        if f.remediation:
            console.print("  what to do:")
            for n, step in enumerate(f.remediation, 1):
                say(console, f"{n}. {step}", 4, 3)
        if f.candidates:
            console.print("  causes the evidence leaves open:")
            for c in f.candidates:
                say(console, f"- {c.cause}: {c.reason} (to tell: {c.how_to_tell})", 4, 2)
        console.print()
    for error in dict.fromkeys(
        f.agent.cloud["error"] for f in findings if (f.agent.cloud or {}).get("error")
    ):
        say(console, f"cloud check: {error}", hang=4, style="yellow")
    say(console, summary_line(findings))


def summary_line(findings) -> str:
    """ "3 targets, 9 ports: 6 ok, 3 with a problem (firewall 2, tls 1)"."""
    targets = {f.target for f in findings}
    bad = [f.cause for f in findings if f.cause != "none"]
    counts = ", ".join(f"{c} {bad.count(c)}" for c in sorted(set(bad), key=lambda c: (-bad.count(c), c)))
    text = (
        f"{len(targets)} target{'s' * (len(targets) != 1)}, {len(findings)} "
        f"port{'s' * (len(findings) != 1)}: {len(findings) - len(bad)} ok"
    )
    return text + (f", {len(bad)} with a problem ({counts})" if bad else "")
