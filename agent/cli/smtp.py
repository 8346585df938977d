"""``mailpath smtp``: the SMTP conversation on every address of a target."""

from __future__ import annotations

from typing import Annotated

import typer
from mailpath.agent.cli.common import (
    CaFileOpt,
    EhloOpt,
    FromOpt,
    Ipv4Opt,
    Ipv6Opt,
    JsonOpt,
    NameserverOpt,
    PasswordEnvOpt,
    PasswordFileOpt,
    Port25Opt,
    ServerNameOpt,
    TlsMode,
    TlsOpt,
    ToOpt,
    UserOpt,
    command,
    finish,
    given,
    one_family,
    refuse_unused,
    smtp_inputs,
)


@command("smtp")
def smtp(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            metavar="TARGET",
            help="HOST, HOST:PORT, IPv4:PORT or [IPv6]:PORT; a name is checked on all its addresses.",
        ),
    ],
    port: Port25Opt = None,
    tls: TlsOpt = TlsMode.auto,
    ca_file: CaFileOpt = None,
    server_name: ServerNameOpt = None,
    ehlo: EhloOpt = None,
    mail_from: FromOpt = None,
    rcpt_to: ToOpt = None,
    user: UserOpt = None,
    password_env: PasswordEnvOpt = None,
    password_file: PasswordFileOpt = None,
    allow_auth_in_clear: Annotated[bool, typer.Option(help="Send the password even without TLS.")] = False,
    timeout: Annotated[float, typer.Option(min=0.1, max=300, help="Seconds for each stage.")] = 10.0,
    nameserver: NameserverOpt = None,
    ipv4: Ipv4Opt = False,
    ipv6: Ipv6Opt = False,
    transcript: Annotated[
        bool, typer.Option("-v", "--transcript", help="Show the conversation (AUTH payloads redacted).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """The SMTP conversation on every address, up to AUTH; never sends mail.

    Greeting, EHLO, STARTTLS or implicit TLS, the certificate, AUTH (only with --user), QUIT."""
    import asyncio

    from mailpath.agent.render import print_sessions
    from mailpath.agent.targets import parse_nameserver, parse_ports, parse_target
    from mailpath.probes.dns import resolve_host
    from mailpath.probes.result import Target
    from mailpath.probes.smtp import SmtpOptions, check_targets

    if not user:
        refuse_unused(given(ctx, "allow_auth_in_clear"), "without --user there is no AUTH test")
    opts = SmtpOptions(
        tls=tls.value,
        timeout=timeout,
        allow_auth_in_clear=allow_auth_in_clear,
        transcript=transcript,
        **smtp_inputs(
            ca_file=ca_file,
            server_name=server_name,
            ehlo=ehlo,
            mail_from=mail_from,
            rcpt_to=rcpt_to,
            user=user,
            password_env=password_env,
            password_file=password_file,
        ),
    )
    host, given_port = parse_target(target)
    ports = [given_port] if given_port else (parse_ports(port or []) or [25])
    servers = [parse_nameserver(n) for n in nameserver or []]

    async def run():
        addresses = await resolve_host(host, servers, timeout)
        addresses = one_family(addresses, ipv4, ipv6, host, lambda a: 6 if ":" in a else 4)
        return await check_targets([Target(host, a, p) for a in addresses for p in ports], opts)

    results = asyncio.run(run())
    finish("smtp", json_out, results, lambda r: r.to_dict(), print_sessions, any(r.problems for r in results))
