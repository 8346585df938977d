"""Finding schema v1: the diagnosis of one mail target and port, as agents report it.

These pydantic models are the contract between ``mailpath diagnose``, the agent's spool and
the collector. The JSON Schema generated from them is published in the repository at
``agent/schema/finding-v1.json``; a test keeps the two identical, so a change to the models
is a visible change to the published schema (and a new version when it is incompatible).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_ID = "mailpath.finding/v1"

Cause = Literal[
    "dns", "network", "firewall", "service", "tls", "auth", "cloud-config", "cloud-policy", "none"
]
Severity = Literal["info", "warning", "error"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Location(_Model):
    """Where the cause sits: this host, a hop on the path, the destination, or a cloud component."""

    kind: Literal["local", "hop", "destination", "cloud"]
    hop: int | None = None
    address: str | None = None
    component: str | None = None  # e.g. sg-0abc, acl-0def, rtb-0123, provider-policy


class Evidence(_Model):
    """One fact, traceable to the measurement it came from (``ref``)."""

    source: Literal["dns", "probe", "trace", "smtp", "cloud"]
    ref: str  # e.g. "probe:198.18.3.2:25", "trace:198.18.3.2:25/ttl=2", "cloud:sg-0abc"
    fact: str


class Candidate(_Model):
    """A cause the evidence leaves open, and what would tell it apart from the others."""

    cause: Cause
    reason: str
    how_to_tell: str


class TraceHop(_Model):
    ttl: int
    address: str | None = None
    reply: str | None = None  # time-exceeded, syn-ack, rst, echo-reply, prohibited, unreachable


class TraceSummary(_Model):
    verdict: str
    drop_after_hop: int | None
    reached_destination: bool
    responder_hop: int | None = None
    destination_hop: int | None = None
    port_specific: bool | None = None
    hops: list[TraceHop] = Field(default_factory=list)


class SmtpSummary(_Model):
    tls_mode: str
    greeting: str | None = None
    tls_version: str | None = None
    auth_mechanisms: list[str] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)


class AddressResult(_Model):
    address: str
    verdict: str  # the probe vocabulary: open, refused, reset-in-path, rejected, unreachable, filtered
    method: str = "raw"  # raw (SYN probes) or connect (no CAP_NET_RAW)
    limitations: list[str] = Field(default_factory=list)  # what this method cannot tell apart
    responder: str | None = None
    responder_hop: int | None = None
    destination_hop: int | None = None
    trace: TraceSummary | None = None
    smtp: SmtpSummary | None = None


class Agent(_Model):
    hostname: str
    version: str
    cloud: dict | None = None  # provider, instance id, region... when known


class Finding(_Model):
    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    schema_: Literal["mailpath.finding/v1"] = Field(SCHEMA_ID, alias="schema")
    created_at: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
    agent: Agent
    target: str  # the host probed (an MX host, or what was given)
    domain: str | None = None  # the mail domain, when the target came from its MX records
    port: int = Field(ge=1, le=65535)
    addresses: list[AddressResult] = Field(default_factory=list)
    cause: Cause
    location: Location | None = None
    headline: str
    evidence: list[Evidence] = Field(default_factory=list)
    remediation: list[str] = Field(default_factory=list)
    severity: Severity
    candidates: list[Candidate] = Field(default_factory=list)

    def to_json_dict(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)


def json_schema() -> dict:
    schema = Finding.model_json_schema(by_alias=True)
    schema["$id"] = "https://mailpath.invalid/schema/finding-v1.json"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
