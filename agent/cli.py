"""The ``mailpath`` command line. Heavy modules are imported inside commands so --help stays fast."""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from typing import Annotated

import typer

from agent import __version__

app = typer.Typer(
    name="mailpath",
    help="Find out why mail cannot leave this host: what is wrong, and where on the path.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Exit codes (DESIGN.md): 0 nothing wrong, 1 a problem found, 2 bad usage, 3 could not run.
OK, PROBLEM, USAGE, CANNOT_RUN = 0, 1, 2, 3


class Method(StrEnum):
    auto = "auto"
    raw = "raw"
    connect = "connect"


def fail(message: str, code: int = USAGE) -> typer.Exit:
    """Print a one-line error and return the Exit to raise."""
    print(f"mailpath: error: {message}", file=sys.stderr)
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        print(f"mailpath {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


PortsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "-p",
        "--port",
        help="Ports for targets given without one: 25,465,587 or 30000-30100 "
        "(repeatable). Default 25,465,587.",
    ),
]
TimeoutOpt = Annotated[float, typer.Option(min=0.01, max=120, help="Seconds to wait for each try.")]
RetriesOpt = Annotated[int, typer.Option(min=0, max=20, help="Tries after the first.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout, nothing else.")]


@app.command()
def probe(
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
    json_out: JsonOpt = False,
) -> None:
    """Send one SYN per address and port and say what answered: open, refused, reset-in-path,
    rejected, unreachable or filtered."""
    from agent.render import print_probe
    from agent.targets import InputError, expand, parse_ports
    from probes import Options, RawUnavailable
    from probes import probe as run_probe

    try:
        found = expand(targets, parse_ports(port or []))
    except InputError as e:
        raise fail(str(e)) from None
    options = Options(
        timeout=timeout, retries=retries, rate=rate, icmp_interval=icmp_interval, min_wait=min_wait
    )
    try:
        results = run_probe(found, method=method.value, options=options)
    except RawUnavailable:
        raise fail(
            "raw sockets need CAP_NET_RAW (run as root, or use --method connect)", CANNOT_RUN
        ) from None
    if json_out:
        print(json.dumps({"results": [r.to_dict() for r in results]}, indent=2))
    else:
        print_probe(results)
    raise typer.Exit(OK if all(r.verdict == "open" for r in results) else PROBLEM)


@app.command()
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
    ipv4: Annotated[bool, typer.Option("-4", help="Trace IPv4 addresses only.")] = False,
    ipv6: Annotated[bool, typer.Option("-6", help="Trace IPv6 addresses only.")] = False,
    icmp_interval: Annotated[
        float, typer.Option(min=0, max=60, help="Seconds a router needs to earn one ICMP error (Linux: 1).")
    ] = 1.0,
    min_wait: Annotated[
        float,
        typer.Option(
            min=0, max=60, help="How long the final silence check listens (a late host-unreachable)."
        ),
    ] = 3.5,
    json_out: JsonOpt = False,
) -> None:
    """TCP SYN traceroute on the real port: which hop drops, rejects or forges a RST.

    A control trace (ICMP echo, or another TCP port) runs alongside, to tell a drop of this
    port from a path that goes silent anyway."""
    from agent.render import print_traces
    from agent.targets import InputError, expand, parse_target
    from probes.trace import TraceOptions, trace_raw

    try:
        host, given_port = parse_target(target)
        found = expand([target], [given_port or port])
    except InputError as e:
        raise fail(str(e)) from None
    if control not in ("icmp", "none") and not (control.isdigit() and 1 <= int(control) <= 65535):
        raise fail(f"invalid --control {control!r}: expected icmp, none or a port 1-65535")
    if ipv4 != ipv6:
        found = [t for t in found if t.family == (4 if ipv4 else 6)]
        if not found:
            raise fail(f"{host!r} has no IPv{4 if ipv4 else 6} address")
    options = TraceOptions(
        max_hops=max_hops,
        probes=probes,
        timeout=timeout,
        max_silent=max_silent,
        icmp_interval=icmp_interval,
        min_wait=min_wait,
    )
    ctl = None if control == "none" else (control if control == "icmp" else int(control))
    try:
        results = trace_raw(found, options, ctl)
    except PermissionError:
        raise fail("trace sends raw packets: it needs CAP_NET_RAW (run as root)", CANNOT_RUN) from None
    if json_out:
        docs = [r.to_dict() for r in results]
        print(json.dumps(docs[0] if len(docs) == 1 else {"traces": docs}, indent=2))
    else:
        print_traces(results)
    raise typer.Exit(OK if all(r.verdict == "open" for r in results) else PROBLEM)


def main() -> None:
    """Entry point: usage errors (click's, ours) become one line on stderr with exit 2.

    Errors are recognised by shape, not class: typer vendors click under a private name.
    """
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        code = 130
    except Exception as e:
        message, exit_code = getattr(e, "format_message", None), getattr(e, "exit_code", None)
        if type(e).__name__ == "Abort":
            code = 130
        elif type(e).__name__ == "NoArgsIsHelpError":
            print(message(), file=sys.stderr)
            code = USAGE
        elif callable(message) and isinstance(exit_code, int):
            print(f"mailpath: error: {' '.join(message().split())}", file=sys.stderr)
            code = exit_code
        elif os.environ.get("MAILPATH_DEBUG"):
            raise
        else:  # a bug: one line; the traceback only when asked for
            print(
                f"mailpath: internal error: {type(e).__name__}: {e} (MAILPATH_DEBUG=1 shows the traceback)",
                file=sys.stderr,
            )
            code = CANNOT_RUN
    sys.exit(code or 0)
