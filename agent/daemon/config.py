"""The agent's configuration: a TOML file, with environment overrides (``MAILPATH_`` prefix,
``__`` between nested keys: ``MAILPATH_INTERVAL=60``, ``MAILPATH_COLLECTOR__TOKEN_FILE=...``;
a list is given whole, as JSON: ``MAILPATH_TARGETS='[{"target": "example.com"}]'``).

Every key is checked before anything runs; an unknown key is an error. :func:`load` raises
:class:`ConfigError` with one line per problem, ``FILE: key: what is wrong`` (or the
environment variable's name instead of the file, when the value came from there). Values are
never repeated in these lines: a misplaced secret stays out of the log.

Secrets are never in the file: the SMTP password comes from ``smtp_password_file`` or the
variable ``smtp_password_env`` names, the collector token from ``[collector] token_file``,
OTLP headers from ``headers_file`` or ``headers_env``. They are read when used (a rotated
secret is taken at the next round or delivery) and never logged.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from mailpath.agent.daemon.delivery import CollectorSettings, DeliverySettings, OtlpSettings, StdoutSettings
from mailpath.probes.errors import InputError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORTS = (25, 465, 587)
ENV_PREFIX = "MAILPATH_"

Port = Annotated[int, Field(ge=1, le=65535)]


class ConfigError(Exception):
    """A configuration that cannot be used: one line per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _value_error(e: InputError) -> ValueError:
    return ValueError(str(e))


def _pem(path: Path | None) -> Path | None:
    """A CA file that exists and holds PEM certificates."""
    if path is None:
        return None
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ValueError(f"cannot read {path}")
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(path))
    except (ssl.SSLError, ValueError):
        raise ValueError(f"{path} holds no PEM certificate") from None
    return path


def _mailbox(address: str) -> str:
    local, at, domain = address.strip("<>").rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in address):
        raise ValueError("expected local@domain")
    return address.strip("<>")


class TargetConfig(_Strict):
    """``[[targets]]``: one mail domain, host name or address, and how to diagnose it (the
    options of ``mailpath diagnose``)."""

    target: str
    ports: list[Port] = Field(default_factory=lambda: list(DEFAULT_PORTS), min_length=1)
    follow_mx: bool = True
    nameservers: list[str] = Field(default_factory=list)  # ADDR, ADDR:PORT, [IPv6]:PORT
    family: Literal[4, 6] | None = None
    tls_ca_file: Path | None = None
    server_name: str | None = None
    ehlo: str | None = None
    mail_from: str | None = None  # "" is the null sender
    rcpt_to: list[str] = Field(default_factory=list)
    smtp_user: str | None = None
    smtp_password_file: Path | None = None
    smtp_password_env: str | None = None

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        from mailpath.agent.targets import parse_target

        try:
            _, port = parse_target(value)
        except InputError as e:
            raise _value_error(e) from None
        if port is not None:
            raise ValueError("give the host alone, and its ports in ports = [...]")
        return value.strip()

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: list[int]) -> list[int]:
        return sorted(set(value))

    @field_validator("nameservers")
    @classmethod
    def _nameservers(cls, value: list[str]) -> list[str]:
        from mailpath.agent.targets import parse_nameserver

        for n in value:
            try:
                parse_nameserver(n)
            except InputError as e:
                raise _value_error(e) from None
        return value

    _ca = field_validator("tls_ca_file")(_pem)

    @field_validator("mail_from")
    @classmethod
    def _from(cls, value: str | None) -> str | None:
        return value if not value else _mailbox(value)

    @field_validator("rcpt_to")
    @classmethod
    def _to(cls, value: list[str]) -> list[str]:
        return [_mailbox(a) for a in value]

    @model_validator(mode="after")
    def _password(self) -> TargetConfig:
        f, env = self.smtp_password_file, self.smtp_password_env
        if f is not None and env is not None:
            raise ValueError("give smtp_password_file or smtp_password_env, not both")
        if (f is not None or env is not None) and not self.smtp_user:
            raise ValueError("a password source is given but no smtp_user")
        if self.smtp_user and f is None and env is None:
            raise ValueError("smtp_user needs smtp_password_file or smtp_password_env")
        if f is not None and (not f.is_file() or not os.access(f, os.R_OK)):
            raise ValueError(f"cannot read smtp_password_file {f}")
        if env is not None and env not in os.environ:
            raise ValueError(f"smtp_password_env: the environment variable {env} is not set")
        return self

    @property
    def host(self) -> str:
        from mailpath.agent.targets import parse_target

        return parse_target(self.target)[0]

    def nameserver_addresses(self) -> list[tuple[str, int]]:
        from mailpath.agent.targets import parse_nameserver

        return [parse_nameserver(n) for n in self.nameservers]

    def smtp_password(self) -> str | None:
        """The SMTP password, read now from its file or variable (never logged)."""
        if self.smtp_password_file is not None:
            try:
                return self.smtp_password_file.read_text().rstrip("\r\n")
            except OSError as e:
                raise InputError(
                    f"cannot read smtp_password_file {self.smtp_password_file}: {e.strerror}"
                ) from None
        if self.smtp_password_env is not None:
            if self.smtp_password_env not in os.environ:
                raise InputError(f"the environment variable {self.smtp_password_env} is not set")
            return os.environ[self.smtp_password_env]
        return None


class ProbeConfig(_Strict):
    """``[probe]``: how every target is probed (``mailpath diagnose``'s options)."""

    method: Literal["auto", "raw", "connect"] = "auto"
    timeout: float = Field(1.0, ge=0.01, le=120)
    retries: int = Field(2, ge=0, le=20)
    min_wait: float = Field(3.5, ge=0, le=60)
    smtp_timeout: float = Field(10.0, ge=0.1, le=300)
    max_hops: int = Field(30, ge=1, le=64)
    dns_timeout: float = Field(5.0, ge=0.1, le=60)


class CloudConfig(_Strict):
    """``[cloud]``: ``check`` auto (when on a cloud host), on (required), off."""

    check: Literal["auto", "on", "off"] = "auto"
    provider: Literal["auto", "aws", "gcp", "azure"] = "auto"
    instance_id: str | None = None
    eni: str | None = None
    region: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> CloudConfig:
        given = [k for k in ("instance_id", "eni", "region") if getattr(self, k) is not None]
        if self.check == "off" and (given or self.provider != "auto"):
            raise ValueError(
                f'check = "off" turns the cloud check off: remove {", ".join(given) or "provider"}'
            )
        if self.provider in ("gcp", "azure") and given:
            raise ValueError(f"{', '.join(given)}: AWS only, not {self.provider}")
        return self

    def options(self):
        """The ``CloudOptions`` of a round's cloud read, or None when the check is off."""
        if self.check == "off":
            return None
        from mailpath.cloud.check import CloudOptions

        return CloudOptions(
            provider=self.provider,
            instance_id=self.instance_id,
            eni=self.eni,
            region=self.region,
            required=self.check == "on" or bool(self.instance_id or self.eni),
        )


class CaptureConfig(_Strict):
    """``[capture]``: keep the packets of a target's round when its findings changed (pcapng,
    in ``dir``; unset keeps none), at most ``keep`` files and ``max_bytes`` in all, and at most
    ``max_packets`` packets per target and round."""

    dir: Path | None = None
    keep: int = Field(20, ge=1, le=100_000)
    max_bytes: int = Field(100 * 1024 * 1024, ge=1024)
    max_packets: int = Field(100_000, ge=10, le=10_000_000)


class MetricsConfig(_Strict):
    """``[metrics]``: ``listen`` ADDRESS:PORT for /metrics and /healthz (an IP address, not a
    name; port 0 takes any free port); "" serves no metrics."""

    listen: str = "127.0.0.1:9464"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value:
            parse_listen(value)
        return value

    def address(self) -> tuple[str, int] | None:
        return parse_listen(self.listen) if self.listen else None


def parse_listen(value: str) -> tuple[str, int]:
    """``127.0.0.1:9464``, ``[::1]:9464`` -> (address, port); names are refused (no resolver)."""
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected ADDRESS:PORT, e.g. 127.0.0.1:9464 or [::1]:9464")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError("the address must be an IP address (127.0.0.1, 0.0.0.0, [::1])") from None
    return host, int(port)


class AgentConfig(BaseSettings):
    """The whole configuration. Precedence: the environment, then the file, then the defaults."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    agent_name: str | None = Field(None, min_length=1, max_length=253)  # findings' agent; default: host name
    interval: float = Field(300, ge=1, le=86_400)  # seconds between the starts of two rounds
    jitter: float = Field(0.1, ge=0, le=0.5)  # each interval is interval × (1 ± jitter), at random
    report: Literal["changes", "all"] = "changes"
    heartbeat: float = Field(600, ge=1)  # report = changes: resend an unchanged finding this old
    concurrency: int = Field(8, ge=1, le=1024)  # targets diagnosed at once
    spool_dir: Path = Path("/var/lib/mailpath")
    stop_timeout: float = Field(20, ge=0, le=3600)  # SIGTERM: seconds running diagnoses may take
    flush_timeout: float = Field(20, ge=0, le=3600)  # SIGTERM, once: seconds for the last delivery
    targets: list[TargetConfig] = Field(min_length=1)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    cloud: CloudConfig = Field(default_factory=CloudConfig)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    collector: CollectorSettings | None = None
    otlp: OtlpSettings | None = None
    stdout: StdoutSettings | None = None
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    capture: CaptureConfig = Field(default_factory=CaptureConfig)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        return (env_settings, init_settings)  # the environment overrides the file

    @field_validator("targets")
    @classmethod
    def _unique(cls, value: list[TargetConfig]) -> list[TargetConfig]:
        seen: set[str] = set()
        for t in value:
            key = t.host.rstrip(".").lower()
            if key in seen:
                raise ValueError(f"{t.target} is listed twice")
            seen.add(key)
        return value

    @model_validator(mode="after")
    def _a_sink(self) -> AgentConfig:
        if self.collector is None and self.otlp is None and not (self.stdout and self.stdout.enabled):
            raise ValueError("no sink: give [collector], [otlp], or [stdout] with enabled = true")
        return self

    @property
    def spool_path(self) -> Path:
        return self.spool_dir / "spool.db"

    def summary(self) -> str:
        """The configuration in one line for the log (no secret, no URL credentials)."""
        sinks = [n for n, on in (("collector", self.collector), ("otlp", self.otlp)) if on is not None]
        if self.stdout is not None and self.stdout.enabled:
            sinks.append("stdout")
        ports = sum(len(t.ports) for t in self.targets)
        return (
            f"{len(self.targets)} targets ({ports} ports), every {self.interval:g} s, "
            f"report {self.report}, to {'+'.join(sinks)}"
        )


# -- loading -------------------------------------------------------------------------------------


def load(path: str | Path) -> AgentConfig:
    """The configuration in ``path`` with the environment's overrides; :class:`ConfigError`
    (one line per problem) when it cannot be used."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror or e}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: not TOML: {e}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not TOML: not UTF-8 text"]) from None
    try:
        return AgentConfig(**data)
    except ValidationError as e:
        raise ConfigError(problems(path, e, os.environ)) from None


HINTS = {  # (section, unknown key) people write -> where the thing goes
    ("targets", "smtp_password"): "passwords go in smtp_password_file or smtp_password_env",
    ("targets", "password"): "passwords go in smtp_password_file or smtp_password_env",
    ("targets", "port"): "ports = [...]",
    ("collector", "token"): "the token goes in a file: token_file",
    ("metrics", "port"): 'listen = "ADDRESS:PORT"',
}


def problems(path: Path, error: ValidationError, environ: Mapping[str, str]) -> list[str]:
    """One line per validation error: ``FILE: key: what`` (or ``MAILPATH_...: what`` for a
    value from the environment). The value itself is never shown."""
    env = {k.upper() for k in environ}
    lines = []
    for e in error.errors(include_url=False, include_input=False):
        loc = e["loc"]
        key = dotted(loc)
        if e["type"] == "extra_forbidden":
            hint = HINTS.get((str(loc[0]), str(loc[-1]))) if loc else None
            what = "unknown key" + (f" ({hint})" if hint else "")
        elif e["type"] == "missing":
            what = "missing (required)"
        else:
            what = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        source = _from_env(loc, env)
        if source:
            lines.append(f"{source}: {what}")
        else:
            lines.append(f"{path}: {key}: {what}" if key else f"{path}: {what}")
    return lines


def dotted(loc: tuple) -> str:
    """``('targets', 0, 'ports', 1)`` -> ``targets[0].ports[1]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _from_env(loc: tuple, env: set[str]) -> str | None:
    for k in range(len(loc), 0, -1):
        name = ENV_PREFIX + "__".join(str(p).upper() for p in loc[:k])
        if name in env:
            return name
    return None
