"""The models of every ``--json`` document, and the JSON Schemas published from them.

Each command prints one document (:mod:`mailpath.agent.documents`): ``schema``, its results in
a list under one key, and ``error`` when it could not run. The models here describe those
documents; ``agent/schema/<command>-v1.json`` are generated from them and a test keeps the two
identical, and the lab tests validate every document the commands print against them. A change
to a document is so a visible change to a published file (and a new version when incompatible).

Regenerate the files with ``python -m mailpath.agent.contract agent/schema``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from mailpath.agent.documents import CAPTURES, DOCUMENTS
from mailpath.agent.finding import Finding
from mailpath.agent.finding import json_schema as finding_schema
from pydantic import BaseModel, ConfigDict, Field

Verdict = Literal["open", "refused", "reset-in-path", "rejected", "unreachable", "filtered"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(_Model):
    code: str  # bad-input, unresolvable, usage, no-permission, cannot-run, dependency-failed
    message: str


class Icmp(_Model):
    type: int
    code: int
    name: str


class Problem(_Model):
    code: str
    message: str
    stage: str | None = None


# -- probe ---------------------------------------------------------------------------------


class ProbeResult(_Model):
    host: str
    address: str
    port: int = Field(ge=1, le=65535)
    verdict: Verdict
    method: Literal["raw", "connect"]
    reason: str
    responder: str | None
    responder_hop: int | None
    destination_hop: int | None
    icmp: Icmp | None
    rtt_ms: float | None
    attempts: int
    limitations: list[str]


# -- trace ---------------------------------------------------------------------------------


class Hop(_Model):
    ttl: int
    address: str | None
    reply: str | None
    rtt_ms: float | None
    hop: int | None
    answered: int
    sent: int
    icmp: Icmp | None
    addresses: list[str]


class ControlTrace(_Model):
    kind: Literal["icmp", "tcp"]
    port: int | None
    hops: list[Hop]
    reached_destination: bool
    last_hop: int | None
    furthest_hop: int


class TraceResult(_Model):
    host: str
    address: str
    port: int = Field(ge=1, le=65535)
    source: str
    hops: list[Hop]
    verdict: Verdict
    drop_after_hop: int | None
    reached_destination: bool
    responder: str | None
    responder_hop: int | None
    destination_hop: int | None
    control: ControlTrace | None
    port_specific: bool | None
    reason: str
    complete: bool


# -- dns -----------------------------------------------------------------------------------


class Exchange(_Model):
    preference: int
    host: str
    addresses: list[str]
    implicit: bool


class MailRoute(_Model):
    domain: str
    mx: list[Exchange]
    problems: list[Problem]
    implicit_mx: bool
    null_mx: bool
    nameservers: list[str]


# -- smtp ----------------------------------------------------------------------------------


class Stage(_Model):
    name: str
    ok: bool
    ms: float
    detail: str


class Recipient(_Model):
    address: str
    accepted: bool
    reply: str


class Envelope(_Model):
    mail_from: str
    mail_reply: str | None
    recipients: list[Recipient]


class SmtpSession(_Model):
    host: str
    address: str
    port: int = Field(ge=1, le=65535)
    tls_mode: Literal["implicit", "starttls", "none", "not-reached"]
    expected_tls: str
    stages: list[Stage]
    greeting: str | None
    capabilities: dict[str, list[str]] | None
    capabilities_before_tls: dict[str, list[str]] | None
    tls: dict | None  # version, cipher, verified, trusted, certificate
    auth_mechanisms: list[str]
    auth: dict | None  # user, mechanism, ok, reply (never the password)
    envelope: Envelope | None
    problems: list[Problem]
    transcript: list[str] | None  # with --transcript: "C: ...", "S: ...", "-- ..."


# -- cloud ---------------------------------------------------------------------------------


class Destination(_Model):
    address: str
    port: int


class Blocker(_Model):
    component: str
    direction: str
    id: str | None
    rule: str | None
    code: str
    message: str
    certain: bool


class Checked(_Model):
    component: str
    direction: str
    id: str | None
    result: str
    detail: str


class Unchecked(_Model):
    action: str
    component: str | None
    message: str


class CloudEvaluation(_Model):
    provider: str
    instance: dict
    destination: Destination
    verdict: Literal["allowed", "blocked", "likely-blocked", "unknown"]
    blockers: list[Blocker]
    checked: list[Checked]
    missing_permissions: list[str]
    unchecked: list[Unchecked]


# -- --pcap --------------------------------------------------------------------------------


class Capture(_Model):
    """The file ``--pcap`` wrote: its packets, and the frame numbers (1-based, as Wireshark and
    ``tcpdump -#`` count) of each evidence ref (``probe:ADDR:PORT``, ``trace:ADDR:PORT/ttl=N``)."""

    path: str
    packets: int
    frames: dict[str, list[int]]
    dropped: int  # packets past the recorder's limit, not written


# -- pcap ----------------------------------------------------------------------------------


class SmtpStop(_Model):
    """Where a clear-text SMTP conversation seen in a capture stopped."""

    stopped: Literal[
        "no-greeting",
        "greeting",
        "ehlo",
        "starttls",
        "tls-handshake",
        "tls",
        "auth",
        "mail",
        "rcpt",
        "data",
        "delivered",
        "quit",
        "closed",
        "incomplete",
        "unreadable",
    ]
    problem: bool
    detail: str
    greeting: str | None
    last_command: str | None
    last_reply: str | None
    tls: Literal["implicit", "starttls"] | None
    reset: Literal["reset-by-server", "reset-in-path"] | None
    reset_frame: int | None


class PcapConnection(_Model):
    """One connection attempt to a mail port in a capture, in the probe's vocabulary."""

    client: str
    client_port: int = Field(ge=0, le=65535)
    server: str
    port: int = Field(ge=1, le=65535)
    start: float  # the first SYN, seconds since the epoch
    verdict: Verdict
    reason: str
    responder: str | None
    responder_hop: int | None
    destination_hop: int | None
    icmp: Icmp | None
    rtt_ms: float | None
    syns: int
    retransmissions: int  # SYNs that repeat an earlier SYN's sequence number
    synack_retransmissions: int
    data_retransmissions: int
    first_frame: int  # frame numbers as Wireshark and tcpdump -# count them
    reply_frame: int | None
    smtp: SmtpStop | None
    limitations: list[str]  # what the capture lacks to tell more


class PcapFile(_Model):
    """The capture as read."""

    path: str
    format: str
    link_types: list[str]
    packets: int
    ip_packets: int
    first: float | None
    last: float | None
    ports: list[int]
    connections: int
    unlisted: dict[str, int]  # verdict -> attempts past the listing limit (counted only)
    evicted: int
    truncated: str | None


# -- agent status --------------------------------------------------------------------------


class SpoolState(_Model):
    """The agent's spool file and its counts."""

    path: str
    pending: int  # findings not yet delivered to every sink
    dead: int  # dead letters kept (a sink refused them for good)
    dropped: int  # findings let go by the spool's bounds or a full disk, ever


class LastRound(_Model):
    """The latest round, as the daemon saved it at its end."""

    number: int
    started_at: str
    seconds: float
    targets: int
    diagnosed: int
    findings: int
    problems: int  # findings whose cause is not none
    sent: int  # findings spooled for delivery (report = changes: the new, changed and heartbeats)
    sent_why: dict[str, int]  # new, changed, heartbeat, all -> findings
    errors: list[str]  # "target: why", one per target that could not be diagnosed
    cloud_error: str | None
    interrupted: bool
    spool_error: str | None


class Delivered(_Model):
    at: str
    findings: int


class Failed(_Model):
    at: str
    reason: str  # connect, timeout, tls, http-503...


class SinkDelivery(_Model):
    """One sink: its latest acknowledged batch and its latest failed attempt."""

    delivered: Delivered | None = None
    failed: Failed | None = None


class DeadLetterItem(_Model):
    """A finding a sink refused for good, with its reason."""

    finding_id: str
    sink: str
    reason: str
    at: str
    target: str | None
    port: int | None


class AgentStatus(_Model):
    """What ``agent status`` adds to the envelope (its list is the dead letters)."""

    spool: SpoolState
    last_round: LastRound | None
    last_delivery: dict[str, SinkDelivery] | None


# -- the documents -------------------------------------------------------------------------

ITEMS: dict[str, type[BaseModel]] = {
    "probe": ProbeResult,
    "trace": TraceResult,
    "dns": MailRoute,
    "smtp": SmtpSession,
    "cloud": CloudEvaluation,
    "diagnose": Finding,
    "pcap": PcapConnection,
    "agent-status": DeadLetterItem,
}


def document_schema(command: str) -> dict:
    """The JSON Schema of what ``mailpath <command> --json`` prints."""
    name, key = DOCUMENTS[command]
    item = ITEMS[command]
    items = finding_schema() if item is Finding else item.model_json_schema()
    defs = {**items.pop("$defs", {}), **Error.model_json_schema().get("$defs", {})}
    for drop in ("$id", "$schema"):
        items.pop(drop, None)
    defs[item.__name__] = items
    defs["Error"] = Error.model_json_schema()
    properties = {
        "schema": {"const": name},
        key: {"type": "array", "items": {"$ref": f"#/$defs/{item.__name__}"}},
        "error": {"$ref": "#/$defs/Error"},
    }
    if command in CAPTURES:
        defs["Capture"] = Capture.model_json_schema()
        properties["capture"] = {"$ref": "#/$defs/Capture"}
    elif command == "pcap":
        defs["PcapFile"] = PcapFile.model_json_schema()
        properties["capture"] = {"$ref": "#/$defs/PcapFile"}
    elif command == "agent-status":
        status = AgentStatus.model_json_schema()
        defs.update(status.pop("$defs", {}))
        properties.update(status["properties"])
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://mailpath.invalid/schema/{command}-v1.json",
        "title": f"mailpath {command.replace('-', ' ')} --json",
        "type": "object",
        "additionalProperties": False,
        "required": ["schema", key],
        "properties": properties,
        "$defs": defs,
    }
    return json.loads(json.dumps(schema, sort_keys=True))


def write(folder: Path) -> list[Path]:
    """Write every document schema (and the finding's) into ``folder``."""
    out = []
    for command in DOCUMENTS:
        path = folder / f"{command}-v1.json"
        path.write_text(json.dumps(document_schema(command), indent=2, sort_keys=True) + "\n")
        out.append(path)
    path = folder / "finding-v1.json"
    path.write_text(json.dumps(finding_schema(), indent=2, sort_keys=True) + "\n")
    return [*out, path]


if __name__ == "__main__":
    for p in write(Path(sys.argv[1] if len(sys.argv) > 1 else "agent/schema")):
        print(p)
