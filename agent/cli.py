"""The ``mailpath`` command line. Heavy modules are imported inside commands so --help stays fast."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from enum import StrEnum
from typing import Annotated

import typer
from mailpath.agent import __version__

app = typer.Typer(
    name="mailpath",
    help="Find out why mail cannot leave this host: what is wrong, and where on the path.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Exit codes (DESIGN.md): 0 nothing wrong, 1 a problem found, 2 bad usage, 3 could not run.
OK, PROBLEM, USAGE, CANNOT_RUN = 0, 1, 2, 3
NO_RAW = "raw sockets need CAP_NET_RAW (run as root, or use --method connect)"


class Method(StrEnum):
    auto = "auto"
    raw = "raw"
    connect = "connect"


@contextlib.contextmanager
def _progress(what: str, total: int):
    """A progress bar on stderr for long runs, when stderr is a terminal; else nothing."""
    if total < 100 or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda done, _total: bar.update(task, completed=done)


def _one_family(items: list, ipv4: bool, ipv6: bool, host: str, family_of) -> list:
    """Keep one address family when exactly one of -4/-6 was given."""
    if ipv4 == ipv6:
        return items
    want = 4 if ipv4 else 6
    kept = [x for x in items if family_of(x) == want]
    if not kept:
        raise fail(f"{host!r} has no IPv{want} address")
    return kept


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
    json_out: JsonOpt = False,
) -> None:
    """Send one SYN per address and port and say what answered: open, refused, reset-in-path,
    rejected, unreachable or filtered."""
    from mailpath.agent.render import print_probe
    from mailpath.agent.targets import InputError, expand, parse_ports
    from mailpath.probes import Options, RawUnavailable
    from mailpath.probes import probe as run_probe

    try:
        found = expand(targets, parse_ports(port or []))
    except InputError as e:
        raise fail(str(e)) from None
    options = Options(
        timeout=timeout,
        retries=retries,
        rate=rate,
        icmp_interval=icmp_interval,
        min_wait=min_wait,
        pace_budget=pace_budget,
    )
    try:
        with _progress("probing", len(found)) as tick:
            results = run_probe(found, method=method.value, options=options, progress=tick)
    except RawUnavailable:
        raise fail(NO_RAW, CANNOT_RUN) from None
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
    from mailpath.agent.render import print_traces
    from mailpath.agent.targets import InputError, expand, parse_target
    from mailpath.probes.trace import TraceOptions, trace_raw

    try:
        host, given_port = parse_target(target)
        found = expand([target], [given_port or port])
    except InputError as e:
        raise fail(str(e)) from None
    if control not in ("icmp", "none") and not (control.isdigit() and 1 <= int(control) <= 65535):
        raise fail(f"invalid --control {control!r}: expected icmp, none or a port 1-65535")
    found = _one_family(found, ipv4, ipv6, host, lambda t: t.family)
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


NameserverOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--nameserver",
        help="Ask this DNS server (ADDR, ADDR:PORT, [IPv6]:PORT; repeatable) "
        "instead of the system's resolver.",
    ),
]


@app.command()
def dns(
    domain: Annotated[str, typer.Argument(help="The mail domain, e.g. example.com.")],
    nameserver: NameserverOpt = None,
    timeout: Annotated[float, typer.Option(min=0.1, max=120, help="Seconds for the whole lookup.")] = 5.0,
    json_out: JsonOpt = False,
) -> None:
    """Where mail for DOMAIN goes: MX records by preference and their A/AAAA addresses
    (the domain's own addresses when it has no MX; nothing for a null MX)."""
    from mailpath.agent.render import print_route
    from mailpath.agent.targets import InputError, parse_domain, parse_nameserver
    from mailpath.probes.dns import lookup_route

    try:
        name = parse_domain(domain)
        servers = [parse_nameserver(n) for n in nameserver or []]
    except InputError as e:
        raise fail(str(e)) from None
    route = lookup_route(name, servers, timeout)
    if json_out:
        print(json.dumps(route.to_dict(), indent=2))
    else:
        print_route(route)
    raise typer.Exit(PROBLEM if route.problems else OK)


def _password(env: str | None, file: str | None) -> str | None:
    """The AUTH password, from an environment variable or a file; never from the command line."""
    if env and file:
        raise fail("give --password-env or --password-file, not both")
    if env:
        if env not in os.environ:
            raise fail(f"environment variable {env!r} (--password-env) is not set")
        return os.environ[env]
    if file:
        try:
            with open(file) as f:
                return f.read().rstrip("\r\n")
        except OSError as e:
            raise fail(f"cannot read --password-file {file!r}: {e.strerror}") from None
    return None


@app.command()
def smtp(
    target: Annotated[
        str,
        typer.Argument(
            metavar="TARGET",
            help="HOST, HOST:PORT, IPv4:PORT or [IPv6]:PORT; a name is checked on all its addresses.",
        ),
    ],
    port: PortsOpt = None,
    tls: Annotated[
        str,
        typer.Option(
            help="auto (implicit TLS on 465, STARTTLS when offered elsewhere), starttls, implicit or none."
        ),
    ] = "auto",
    ca_file: Annotated[str | None, typer.Option(help="Trust the CAs in this PEM file.")] = None,
    server_name: Annotated[
        str | None, typer.Option(help="Name the certificate must carry (default: the host as given).")
    ] = None,
    user: Annotated[str | None, typer.Option(help="Test AUTH as this user.")] = None,
    password_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the password.")
    ] = None,
    password_file: Annotated[str | None, typer.Option(help="File holding the password.")] = None,
    allow_auth_in_clear: Annotated[bool, typer.Option(help="Send the password even without TLS.")] = False,
    timeout: Annotated[float, typer.Option(min=0.1, max=300, help="Seconds for each stage.")] = 10.0,
    nameserver: NameserverOpt = None,
    ipv4: Annotated[bool, typer.Option("-4", help="IPv4 addresses only.")] = False,
    ipv6: Annotated[bool, typer.Option("-6", help="IPv6 addresses only.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """The SMTP conversation on every address: greeting, EHLO, STARTTLS or implicit TLS, the
    certificate, AUTH (only with --user), QUIT. Never sends mail."""
    import asyncio

    from mailpath.agent.render import print_sessions
    from mailpath.agent.targets import InputError, parse_nameserver, parse_ports, parse_target, resolve
    from mailpath.probes.dns import resolve_host
    from mailpath.probes.local import route
    from mailpath.probes.smtp import SmtpOptions, check_address

    if tls not in ("auto", "starttls", "implicit", "none"):
        raise fail(f"invalid --tls {tls!r}: expected auto, starttls, implicit or none")
    password = _password(password_env, password_file)
    if user and password is None:
        raise fail("--user needs --password-env or --password-file")
    if ca_file and not os.path.isfile(ca_file):
        raise fail(f"cannot read --ca-file {ca_file!r}")
    try:
        host, given_port = parse_target(target)
        ports = [given_port] if given_port else (parse_ports(port or []) or [25])
        servers = [parse_nameserver(n) for n in nameserver or []]
        if servers:
            addresses, why = asyncio.run(resolve_host(host, servers, timeout))
            if not addresses:
                raise InputError(f"cannot resolve {host!r}: {why}")
        else:
            addresses = resolve(host)
    except InputError as e:
        raise fail(str(e)) from None
    addresses = _one_family(addresses, ipv4, ipv6, host, lambda a: 6 if ":" in a else 4)
    opts = SmtpOptions(
        tls=tls,
        timeout=timeout,
        server_name=server_name,
        ca_file=ca_file,
        user=user,
        password=password,
        allow_auth_in_clear=allow_auth_in_clear,
    )

    async def run_all():
        checks = []
        for a in addresses:
            source = route(a)
            for p in ports:
                checks.append(check_address(host, a, p, opts, source if isinstance(source, str) else ""))
        return await asyncio.gather(*checks)

    results = asyncio.run(run_all())
    if json_out:
        docs = [r.to_dict() for r in results]
        print(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))  # a list when several
    else:
        print_sessions(results)
    raise typer.Exit(PROBLEM if any(r.problems for r in results) else OK)


@app.command()
def diagnose(
    target: Annotated[
        str,
        typer.Argument(
            metavar="TARGET", help="A mail domain (its MX hosts are followed), a host name or an address."
        ),
    ],
    port: PortsOpt = None,
    timeout: TimeoutOpt = 1.0,
    retries: RetriesOpt = 2,
    method: Annotated[Method, typer.Option(help="raw, connect, or auto.")] = Method.auto,
    mx: Annotated[bool, typer.Option("--mx/--no-mx", help="Follow the MX records of TARGET.")] = True,
    nameserver: NameserverOpt = None,
    ipv4: Annotated[bool, typer.Option("-4", help="IPv4 addresses only.")] = False,
    ipv6: Annotated[bool, typer.Option("-6", help="IPv6 addresses only.")] = False,
    cloud_check: Annotated[
        bool | None,
        typer.Option("--cloud/--no-cloud", help="Run the cloud check (default: when on a cloud host)."),
    ] = None,
    instance_id: Annotated[str | None, typer.Option(help="EC2 instance (off EC2).")] = None,
    eni: Annotated[str | None, typer.Option(help="EC2 network interface (off EC2).")] = None,
    region: Annotated[str | None, typer.Option(help="AWS region.")] = None,
    provider: Annotated[str | None, typer.Option(help="aws, gcp or azure, instead of detecting it.")] = None,
    ca_file: Annotated[str | None, typer.Option(help="Trust the CAs in this PEM file for SMTP TLS.")] = None,
    user: Annotated[str | None, typer.Option(help="Test AUTH as this user.")] = None,
    password_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the password.")
    ] = None,
    password_file: Annotated[str | None, typer.Option(help="File holding the password.")] = None,
    smtp_timeout: Annotated[
        float, typer.Option(min=0.1, max=300, help="Seconds for each SMTP stage.")
    ] = 10.0,
    min_wait: Annotated[
        float,
        typer.Option(
            min=0,
            max=60,
            help="Least seconds to wait for a late host-unreachable before calling a port filtered.",
        ),
    ] = 3.5,
    json_out: JsonOpt = False,
) -> None:
    """Why mail does not go out, and where: resolves TARGET, probes every address and port,
    traces what is not open, checks SMTP/TLS/AUTH on what is, reads the cloud configuration
    when on a cloud host, and gives one finding per target and port."""
    from mailpath.agent.diagnose import DiagnoseOptions
    from mailpath.agent.diagnose import diagnose as run_diagnose
    from mailpath.agent.render import print_findings
    from mailpath.agent.targets import InputError, parse_nameserver, parse_ports, parse_target
    from mailpath.probes import RawUnavailable

    if provider not in (None, "aws", "gcp", "azure"):
        raise fail(f"invalid --provider {provider!r}: expected aws, gcp or azure")
    if ca_file and not os.path.isfile(ca_file):
        raise fail(f"cannot read --ca-file {ca_file!r}")
    password = _password(password_env, password_file)
    if user and password is None:
        raise fail("--user needs --password-env or --password-file")
    try:
        host, given_port = parse_target(target)
        ports = [given_port] if given_port else (parse_ports(port or []) or [25, 465, 587])
        servers = [parse_nameserver(n) for n in nameserver or []]
    except InputError as e:
        raise fail(str(e)) from None
    opts = DiagnoseOptions(
        ports=ports,
        method=method.value,
        timeout=timeout,
        retries=retries,
        min_wait=min_wait,
        smtp_timeout=smtp_timeout,
        follow_mx=mx,
        nameservers=servers,
        family=(4 if ipv4 else 6) if ipv4 != ipv6 else None,
        cloud="yes" if instance_id or eni or cloud_check else ("auto" if cloud_check is None else "no"),
        instance_id=instance_id,
        eni=eni,
        region=region,
        provider=provider,
        ca_file=ca_file,
        user=user,
        password=password,
    )
    try:
        found = run_diagnose(host, opts)
    except RawUnavailable:
        raise fail(NO_RAW, CANNOT_RUN) from None
    if json_out:
        print(json.dumps({"findings": [f.to_json_dict() for f in found]}, indent=2))
    else:
        print_findings(found)
    raise typer.Exit(OK if all(f.cause == "none" for f in found) else PROBLEM)


@app.command()
def cloud(
    dest: Annotated[list[str], typer.Option("--dest", help="Destination address or name (repeatable).")],
    port: PortsOpt = None,
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
    """Which security group, network ACL, route or provider policy blocks mail from this
    host to DEST: an evaluation of the cloud's configuration, read with read-only calls."""
    from mailpath.agent.render import print_evaluations
    from mailpath.agent.targets import InputError, parse_ports, resolve
    from mailpath.cloud.evaluate import evaluate, missing_permissions, policy_only
    from mailpath.probes.local import ephemeral_ports

    if provider not in ("auto", "aws", "gcp", "azure"):
        raise fail(f"invalid --provider {provider!r}: expected auto, aws, gcp or azure")
    try:
        ports = parse_ports(port or []) or [25]
        addresses = [a for d in dest for a in resolve(d)]
        if ephemeral:
            span = parse_ports([ephemeral])
            eph = (span[0], span[-1])
        else:
            eph = ephemeral_ports()
    except InputError as e:
        raise fail(str(e)) from None
    from mailpath.cloud.aws import find_identity

    identity = find_identity(
        instance_id, eni, region, ask_imds=provider in ("auto", "aws"), imds_timeout=imds_timeout
    )
    if provider == "auto":
        from mailpath.cloud.provider import detect

        provider = "aws" if identity else (detect() or "")
    missing: list[dict] = []
    instance: dict = {}
    if provider == "aws":
        if identity is None:
            raise fail(
                "no EC2 instance metadata here: give --instance-id or --eni (and --region)", CANNOT_RUN
            )
        ctx, dests, reader = _read_aws(identity, addresses, eph)
        missing = missing_permissions(ctx, reader.missing)
        instance = identity.to_dict()
    elif provider in ("gcp", "azure"):
        ctx, dests = policy_only(provider, eph), dict.fromkeys(addresses)
    else:
        raise fail(
            "not on a recognised cloud host (no IMDS, no cloud DMI vendor): give --instance-id/--eni "
            "or --provider",
            CANNOT_RUN,
        )
    results = []
    for address in addresses:
        ctx.destination = dests.get(address)
        for p in ports:
            doc = {
                "provider": provider,
                "instance": instance,
                **evaluate(ctx, address, p).to_dict(),
                "missing_permissions": sorted({m["action"] for m in missing}),
                "unchecked": missing,
            }
            results.append(doc)
    if json_out:
        print(json.dumps(results[0] if len(results) == 1 else {"evaluations": results}, indent=2))
    else:
        print_evaluations(results)
    raise typer.Exit(OK if all(r["verdict"] == "allowed" for r in results) else PROBLEM)


def _read_aws(identity, addresses: list[str], eph: tuple[int, int]):
    """Read the EC2 configuration; credential, region and endpoint errors end the run (exit 3)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoRegionError
    from mailpath.cloud.aws import Reader, read_context

    try:
        return read_context(identity, addresses, eph, Reader(identity.region))
    except NoRegionError:
        raise fail("no AWS region: give --region or set AWS_DEFAULT_REGION") from None
    except LookupError as e:
        raise fail(str(e), CANNOT_RUN) from None
    except (BotoCoreError, ClientError) as e:
        raise fail(f"could not read the EC2 configuration: {e}", CANNOT_RUN) from None


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
