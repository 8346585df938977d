"""What every command shares: the app, common options, the JSON envelope, and the one place
where errors become a message and an exit code.

Exit codes (part of the contract): 0 no problem found, 1 a problem was found, 2 usage or
configuration error, 3 could not run. Under ``--json`` every outcome, an error included, is one
JSON object on stdout (see :mod:`mailpath.agent.documents`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Annotated, NoReturn

import typer
from mailpath.agent import __version__
from mailpath.agent.documents import envelope
from mailpath.probes.errors import CannotRun, InputError, MailpathError

OK, PROBLEM, USAGE, CANNOT_RUN = 0, 1, 2, 3

app = typer.Typer(
    name="mailpath",
    help="Find out why mail cannot leave this host: what is wrong, and where on the path.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def exit_code(error: MailpathError) -> int:
    """The one mapping from the error tree to exit codes: bad input 2, everything else 3."""
    return USAGE if isinstance(error, InputError) else CANNOT_RUN


class Method(StrEnum):
    auto = "auto"
    raw = "raw"
    connect = "connect"


def _ports(default: str) -> object:
    return Annotated[
        list[str] | None,
        typer.Option(
            "-p",
            "--port",
            help="Ports for targets given without one: 25,465,587 or 30000-30100 "
            f"(repeatable). Default {default}.",
        ),
    ]


PortsOpt = _ports("25,465,587")
Port25Opt = _ports("25")
TimeoutOpt = Annotated[float, typer.Option(min=0.01, max=120, help="Seconds to wait for each try.")]
RetriesOpt = Annotated[int, typer.Option(min=0, max=20, help="Tries after the first.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout, nothing else.")]
NameserverOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--nameserver",
        help="Ask this DNS server (ADDR, ADDR:PORT, [IPv6]:PORT; repeatable) "
        "instead of the system's resolver.",
    ),
]
Ipv4Opt = Annotated[bool, typer.Option("-4", help="IPv4 addresses only.")]
Ipv6Opt = Annotated[bool, typer.Option("-6", help="IPv6 addresses only.")]
CaFileOpt = Annotated[str | None, typer.Option(help="Trust the CAs in this PEM file for SMTP TLS.")]
ServerNameOpt = Annotated[
    str | None,
    typer.Option(
        help="Name the certificate must carry (default: what was dialled: the host, or the address)."
    ),
]
EhloOpt = Annotated[str | None, typer.Option(help="EHLO name (default: this host's address as a literal).")]
FromOpt = Annotated[
    str | None,
    typer.Option("--from", help='Envelope test: MAIL FROM this address ("" for the null sender).'),
]
ToOpt = Annotated[
    list[str] | None,
    typer.Option("--to", help="Envelope test: RCPT TO this address (repeatable); then RSET, never DATA."),
]


class TlsMode(StrEnum):
    auto = "auto"
    starttls = "starttls"
    implicit = "implicit"
    none = "none"


TlsOpt = Annotated[
    TlsMode,
    typer.Option(
        case_sensitive=False,
        help="auto: implicit TLS on 465, STARTTLS when offered elsewhere (expected on 587).",
    ),
]
UserOpt = Annotated[str | None, typer.Option(help="Test AUTH as this user.")]
PasswordEnvOpt = Annotated[str | None, typer.Option(help="Environment variable holding the password.")]
PasswordFileOpt = Annotated[str | None, typer.Option(help="File holding the password.")]
ProviderOpt = Annotated[str | None, typer.Option(help="aws, gcp or azure, instead of detecting it.")]
PcapOpt = Annotated[
    str | None,
    typer.Option(
        "--pcap",
        metavar="FILE",
        help="Write every packet sent and every reply to them to FILE (pcapng, for Wireshark or "
        "tcpdump), each named after its probe or trace. Needs raw sockets.",
    ),
]


def command(name: str) -> Callable:
    """Register a command whose body returns nothing but raises: a :class:`MailpathError`
    becomes one line on stderr (or, under --json, one error object on stdout) and its exit code."""

    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except MailpathError as e:
                fail(name, e, json_out=kwargs.get("json_out", False))

        return app.command(name)(run)

    return register


def fail(name: str, error: MailpathError, json_out: bool) -> NoReturn:
    if json_out:
        print(json.dumps(envelope(name, [], error={"code": error.code, "message": str(error)}), indent=2))
    else:
        print(f"mailpath: error: {error}", file=sys.stderr)
    raise typer.Exit(exit_code(error))


def finish(
    name: str,
    json_out: bool,
    items: list,
    to_json: Callable,
    show: Callable,
    problem: bool,
    error: MailpathError | None = None,
    capture: dict | None = None,
) -> NoReturn:
    """The tail of every command: the JSON document or the human report, then the exit code.
    ``error``: what failed after the results were in (they are shown all the same).
    ``capture``: what ``--pcap`` wrote (``probes.capture.Written.to_dict()``)."""
    if json_out:
        report = {"code": error.code, "message": str(error)} if error else None
        doc = envelope(name, [to_json(x) for x in items], error=report, capture=capture)
        print(json.dumps(doc, indent=2))
    else:
        show(items)
        if capture and "frames" in capture:  # what --pcap wrote (pcap tells of what it read itself)
            print(f"capture: {capture['packets']} packets written to {capture['path']}")
            print("  (pcapng; each packet's comment names the probe or trace it belongs to)")
        if error:
            print(f"mailpath: error: {error}", file=sys.stderr)
    raise typer.Exit(exit_code(error) if error else PROBLEM if problem else OK)


@contextlib.contextmanager
def progress(what: str, total: int):
    """A progress bar on stderr for long runs, when stderr is a terminal; else nothing."""
    if total < 100 or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda done, _total: bar.update(task, completed=done)


def one_family(items: list, ipv4: bool, ipv6: bool, host: str, family_of: Callable) -> list:
    """Keep one address family when exactly one of -4/-6 was given."""
    if ipv4 == ipv6:
        return items
    want = 4 if ipv4 else 6
    kept = [x for x in items if family_of(x) == want]
    if not kept:
        raise InputError(f"{host!r} has no IPv{want} address")
    return kept


def family(ipv4: bool, ipv6: bool) -> int | None:
    return (4 if ipv4 else 6) if ipv4 != ipv6 else None


def password(env: str | None, file: str | None, user: str | None) -> str | None:
    """The AUTH password, from an environment variable or a file; never from the command line."""
    if env and file:
        raise InputError("give --password-env or --password-file, not both")
    secret = None
    if env:
        if env not in os.environ:
            raise InputError(f"environment variable {env!r} (--password-env) is not set")
        secret = os.environ[env]
    elif file:
        try:
            with open(file) as f:
                secret = f.read().rstrip("\r\n")
        except OSError as e:
            raise InputError(f"cannot read --password-file {file!r}: {e.strerror}") from None
    if user and secret is None:
        raise InputError("--user needs --password-env or --password-file")
    if secret is not None and not user:
        raise InputError("a password was given (--password-env/--password-file) but no --user")
    return secret


def pem_file(path: str | None, option: str) -> str | None:
    """A CA file that exists and holds PEM certificates, checked before any network work."""
    if not path:
        return path
    import ssl

    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise InputError(f"cannot read {option} {path!r}")
    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except (ssl.SSLError, ValueError):
        raise InputError(f"{option} {path!r} holds no PEM certificate") from None
    return path


def mailbox(address: str | None, option: str) -> str | None:
    """An envelope address: local@domain (or "" for the null sender with --from)."""
    if address is None or address == "":
        return address
    local, at, domain = address.strip("<>").rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in address):
        raise InputError(f"invalid {option} {address!r}: expected local@domain")
    return address.strip("<>")


def choice(value: str | None, allowed: Iterable[str | None], option: str) -> str | None:
    if value not in allowed:
        raise InputError(f"invalid {option} {value!r}: expected {', '.join(a for a in allowed if a)}")
    return value


def smtp_inputs(
    *,
    ca_file: str | None,
    server_name: str | None,
    ehlo: str | None,
    mail_from: str | None,
    rcpt_to: list[str] | None,
    user: str | None,
    password_env: str | None,
    password_file: str | None,
) -> dict:
    """The SMTP options ``smtp`` and ``diagnose`` share, checked (CA file, envelope addresses,
    the password's source) before anything is sent; keyword arguments for SmtpOptions and
    DiagnoseOptions alike."""
    return {
        "ca_file": pem_file(ca_file, "--ca-file"),
        "server_name": server_name,
        "ehlo": ehlo,
        "mail_from": mailbox(mail_from, "--from"),
        "rcpt_to": [mailbox(r, "--to") for r in rcpt_to or []],
        "user": user,
        "password": password(password_env, password_file, user),
    }


def pcap_file(path: str | None, method: str = "raw") -> str | None:
    """A --pcap FILE that can be written (checked before anything is sent); packets are only
    recorded by the raw engines, so ``--method connect`` refuses it."""
    if path is None:
        return None
    if method == "connect":
        raise InputError("--pcap records raw SYN probes: it cannot go with --method connect")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise InputError(f"cannot write --pcap {path!r}")
    return path


def save_capture(recorder, path: str | None) -> tuple[dict | None, MailpathError | None]:
    """Write what ``recorder`` kept to ``path``: what was written, or the error (exit 3)."""
    if recorder is None or path is None:
        return None, None
    try:
        return recorder.write(path).to_dict(), None
    except OSError as e:
        return None, CannotRun(f"cannot write --pcap {path!r}: {e.strerror or e}")


def given(ctx: typer.Context, *names: str) -> list[str]:
    """The options among ``names`` (parameter names) that the user typed."""
    sources = {n: ctx.get_parameter_source(n) for n in names}
    return [n for n, src in sources.items() if src is not None and src.name in ("COMMANDLINE", "ENVIRONMENT")]


def refuse_unused(names: list[str], why: str) -> None:
    """Every option given is used or refused: refuse those that ``why`` makes pointless."""
    if names:
        options = ", ".join("--" + n.replace("_", "-") for n in names)
        raise InputError(f"{options}: {why}")


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


def _command_name(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main() -> None:
    """Entry point: usage errors (click's, ours) become one line on stderr, or one JSON error
    object under --json, with exit 2. Errors are recognised by shape, not class: typer vendors
    click under a private name."""
    argv = sys.argv[1:]
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        code = 130
    except Exception as e:
        message, exit_ = getattr(e, "format_message", None), getattr(e, "exit_code", None)
        if type(e).__name__ == "Abort":
            code = 130
        elif type(e).__name__ == "NoArgsIsHelpError":
            print(message(), file=sys.stderr)
            code = USAGE
        elif callable(message) and isinstance(exit_, int):
            text = " ".join(message().split())
            name = _command_name(argv)
            if "--json" in argv and name:
                print(json.dumps(envelope(name, [], error={"code": "usage", "message": text}), indent=2))
            else:
                print(f"mailpath: error: {text}", file=sys.stderr)
            code = exit_
        elif os.environ.get("MAILPATH_DEBUG"):
            raise
        else:  # a bug: one line; the traceback only when asked for
            print(
                f"mailpath: internal error: {type(e).__name__}: {e} (MAILPATH_DEBUG=1 shows the traceback)",
                file=sys.stderr,
            )
            code = CANNOT_RUN
    sys.exit(code or 0)
