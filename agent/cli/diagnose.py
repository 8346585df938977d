"""``mailpath diagnose``: one finding per target and port, from every check together."""

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
    Method,
    NameserverOpt,
    PasswordEnvOpt,
    PasswordFileOpt,
    PcapOpt,
    PortsOpt,
    ProviderOpt,
    RetriesOpt,
    ServerNameOpt,
    TimeoutOpt,
    ToOpt,
    UserOpt,
    choice,
    command,
    family,
    finish,
    given,
    pcap_file,
    pem_file,
    refuse_unused,
    save_capture,
    smtp_inputs,
)


@command("diagnose")
def diagnose(
    ctx: typer.Context,
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
    ipv4: Ipv4Opt = False,
    ipv6: Ipv6Opt = False,
    cloud_check: Annotated[
        bool | None,
        typer.Option("--cloud/--no-cloud", help="Run the cloud check (default: when on a cloud host)."),
    ] = None,
    instance_id: Annotated[str | None, typer.Option(help="EC2 instance (off EC2).")] = None,
    eni: Annotated[str | None, typer.Option(help="EC2 network interface (off EC2).")] = None,
    region: Annotated[str | None, typer.Option(help="AWS region.")] = None,
    provider: ProviderOpt = None,
    ca_file: CaFileOpt = None,
    server_name: ServerNameOpt = None,
    ehlo: EhloOpt = None,
    mail_from: FromOpt = None,
    rcpt_to: ToOpt = None,
    user: UserOpt = None,
    password_env: PasswordEnvOpt = None,
    password_file: PasswordFileOpt = None,
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
    report: Annotated[
        str | None, typer.Option(help="Also send the findings to this collector (https://host:port).")
    ] = None,
    token_file: Annotated[
        str | None, typer.Option(help="The collector's agent token, from this file.")
    ] = None,
    report_ca_file: Annotated[
        str | None, typer.Option(help="Trust the CAs in this PEM file for the collector's TLS.")
    ] = None,
    pcap: PcapOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Why mail does not go out, and where: one finding per target and port.

    Resolves TARGET, probes every address and port, traces what is not open, checks
    SMTP/TLS/AUTH on what is, and reads the cloud configuration when on a cloud host."""
    from mailpath.agent.diagnose import DiagnoseOptions
    from mailpath.agent.diagnose import diagnose as run_diagnose
    from mailpath.agent.render import print_findings
    from mailpath.agent.report import post_findings, read_token
    from mailpath.agent.targets import parse_nameserver, parse_ports, parse_target
    from mailpath.cloud.check import CloudOptions
    from mailpath.probes.errors import DependencyFailed, InputError

    choice(provider, (None, "aws", "gcp", "azure"), "--provider")
    pcap_file(pcap, method.value)
    if pcap:
        method = Method.raw  # packets are recorded by the raw engines only
    host, given_port = parse_target(target)
    if cloud_check is False:
        refuse_unused(
            given(ctx, "instance_id", "eni", "region", "provider"),
            "--no-cloud turns the cloud check off",
        )
    if provider in ("gcp", "azure"):
        refuse_unused(given(ctx, "instance_id", "eni", "region"), f"AWS only, not {provider}")
    cloud = None
    if cloud_check is not False:
        cloud = CloudOptions(
            provider=provider or "auto",
            instance_id=instance_id,
            eni=eni,
            region=region,
            required=bool(cloud_check or instance_id or eni),
        )
    opts = DiagnoseOptions(
        ports=[given_port] if given_port else (parse_ports(port or []) or [25, 465, 587]),
        method=method.value,
        timeout=timeout,
        retries=retries,
        min_wait=min_wait,
        smtp_timeout=smtp_timeout,
        follow_mx=mx,
        nameservers=[parse_nameserver(n) for n in nameserver or []],
        family=family(ipv4, ipv6),
        cloud=cloud,
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
    token = None
    if report:
        if not report.startswith(("http://", "https://")):
            raise InputError(f"invalid --report {report!r}: expected an http:// or https:// URL")
        if not token_file:
            raise InputError("--report needs --token-file")
        token = read_token(token_file)
        pem_file(report_ca_file, "--report-ca-file")
    else:
        refuse_unused(given(ctx, "token_file", "report_ca_file"), "they go with --report")
    recorder = None
    if pcap:
        from mailpath.probes.capture import Recorder

        recorder = Recorder()
    found = run_diagnose(host, opts, recorder=recorder)
    capture, failed = save_capture(recorder, pcap)
    problem = not all(f.cause == "none" for f in found)
    if report:
        try:
            answer = post_findings(report, token, [f.to_json_dict() for f in found], ca_file=report_ca_file)
            if not answer.ok:
                detail = answer.body.get("detail", answer.body)
                failed = DependencyFailed(
                    f"the collector at {report} refused the findings ({answer.status}): {detail}"
                )
        except DependencyFailed as e:
            failed = e
    finish("diagnose", json_out, found, lambda f: f.to_json_dict(), print_findings, problem, failed, capture)
