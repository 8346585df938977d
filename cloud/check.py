"""The cloud check, in one place for ``mailpath cloud``, ``diagnose`` and the agent.

:func:`read_cloud` finds out where this host runs and reads the configuration once;
:meth:`CloudRead.evaluate` then judges any destination and port against it, without I/O.
boto3 is imported only when AWS is actually read.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Literal

from mailpath.cloud.evaluate import Context, Evaluation, Interface, evaluate, missing_permissions, policy_only
from mailpath.probes.errors import CannotRun, DependencyFailed, InputError

PROVIDERS = ("aws", "gcp", "azure")


@dataclass
class CloudOptions:
    """What to read. ``provider``: ``auto`` (IMDS, then the DMI tables), or one of PROVIDERS.
    ``required``: the caller asked for the cloud check, so not finding a cloud is an error and
    IMDS is always asked in ``auto``; otherwise IMDS is asked only where it can answer (the DMI
    tables say AWS, or an IMDS endpoint is configured) and no cloud means no cloud check."""

    provider: Literal["auto", "aws", "gcp", "azure"] = "auto"
    instance_id: str | None = None
    eni: str | None = None
    region: str | None = None
    ephemeral: tuple[int, int] | None = None  # the client's source ports; default: this host's
    imds_timeout: float = 1.0
    required: bool = False


@dataclass
class CloudRead:
    """The cloud configuration that applies to this host, read once."""

    provider: str
    identity: dict  # instance, interface, region... (what was found)
    context: Context
    destinations: dict[str, Interface | None] = field(default_factory=dict)
    missing: list[dict] = field(default_factory=list)  # {"action", "component", "message"}

    def evaluate(self, address: str, port: int) -> Evaluation:
        """Judge TCP ``port`` to ``address`` against what was read (pure)."""
        return evaluate(
            dataclasses.replace(self.context, destination=self.destinations.get(address)), address, port
        )

    def document(self, address: str, port: int) -> dict:
        """One evaluation as ``mailpath cloud --json`` lists it."""
        return {
            "provider": self.provider,
            "instance": self.identity,
            **self.evaluate(address, port).to_dict(),
            "missing_permissions": sorted({m["action"] for m in self.missing}),
            "unchecked": self.missing,
        }


def read_cloud(options: CloudOptions, addresses: list[str]) -> CloudRead | None:
    """Read the configuration that applies to this host and to ``addresses``.

    Returns None when this is not a cloud host and the check was not required. Raises
    :class:`CannotRun` when it was required and no cloud is found, :class:`InputError` for a
    missing region, :class:`DependencyFailed` when the cloud's API cannot be read.
    """
    from mailpath.cloud.provider import detect

    eph = options.ephemeral or _ephemeral()
    explicit = options.instance_id or options.eni
    dmi = None if explicit or options.provider != "auto" else detect()
    ask_imds = options.provider == "aws" or (
        options.provider == "auto"
        and (options.required or dmi == "aws" or bool(os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT")))
    )
    identity = None
    if options.provider in ("auto", "aws"):
        from mailpath.cloud.aws import find_identity

        identity = find_identity(
            options.instance_id,
            options.eni,
            options.region,
            ask_imds=ask_imds,
            imds_timeout=options.imds_timeout,
        )
    provider = options.provider if options.provider != "auto" else ("aws" if identity else dmi)
    if provider == "aws":
        if identity is not None:
            return _read_aws(identity, addresses, eph)
        if options.required:
            raise CannotRun("no EC2 instance metadata here: give --instance-id or --eni (and --region)")
    if provider in PROVIDERS:  # configuration not read: the provider's egress policy still applies
        return CloudRead(
            provider, {"provider": provider}, policy_only(provider, eph), dict.fromkeys(addresses)
        )
    if options.required:
        raise CannotRun(
            "not on a recognised cloud host (no IMDS, no cloud DMI vendor): "
            "give --instance-id/--eni or --provider"
        )
    return None


def _read_aws(identity, addresses: list[str], eph: tuple[int, int]) -> CloudRead:
    from botocore.exceptions import BotoCoreError, ClientError, NoRegionError
    from mailpath.cloud.aws import Reader, read_context

    try:
        ctx, dests, reader = read_context(identity, addresses, eph, Reader(identity.region))
    except NoRegionError:
        raise InputError("no AWS region: give --region or set AWS_DEFAULT_REGION") from None
    except (BotoCoreError, ClientError) as e:
        raise DependencyFailed(f"could not read the EC2 configuration: {e}") from None
    return CloudRead("aws", identity.to_dict(), ctx, dests, missing_permissions(ctx, reader.missing))


def _ephemeral() -> tuple[int, int]:
    from mailpath.probes.local import ephemeral_ports

    return ephemeral_ports()
