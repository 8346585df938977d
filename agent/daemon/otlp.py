"""The OTLP/HTTP logs sink: each finding an OpenTelemetry log event, so findings flow into any
OpenTelemetry Collector (and from there wherever a fleet already sends its logs).

A batch is one ``ExportLogsServiceRequest`` (protobuf, built with ``opentelemetry-proto``),
POSTed to the receiver's ``…/v1/logs``, gzipped. Each finding is a ``LogRecord``:

- ``event_name`` ``mailpath.finding``; ``time_unix_nano`` the finding's ``created_at``,
  ``observed_time_unix_nano`` when it was sent;
- severity from the finding's: info → INFO (9), warning → WARN (13), error → ERROR (17);
- ``body``: the finding, as its JSON text (a ``mailpath.finding/v1`` object);
- attributes (:func:`record_attributes`): ``mailpath.finding.id``, ``mailpath.target``,
  ``mailpath.domain``, ``mailpath.port``, ``server.address``, ``server.port``,
  ``mailpath.cause``, ``mailpath.severity``, ``mailpath.headline``, ``mailpath.location.kind``
  (``.hop``, ``.address``, ``.component``), ``mailpath.addresses`` and ``mailpath.verdicts``
  (two arrays, in the same order);
- the resource (:func:`resource_attributes`): ``service.name`` ``mailpath-agent``,
  ``service.version``, ``host.name``, ``cloud.provider``, ``cloud.region``, ``host.id`` (the
  instance), ``cloud.availability_zone`` when known, plus the configured ``resource``.

Why not the OpenTelemetry SDK's exporter: its ``export()`` retries on its own (six times, its
own backoff) and then answers only SUCCESS or FAILURE, so the spool could not tell a receiver
that is down from one that refuses a record, nor honour the delivery's retry policy. The
answer is read here and classified like the collector's (:func:`~mailpath.agent.daemon.outcome.classify`);
an OTLP partial success (``rejected_log_records``) is logged and counts as delivered, as the
OTLP specification asks (a rejected record must not be sent again).
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from mailpath.agent.daemon.outcome import Accepted, Hold, Outcome, Refused, Retry, classify
from mailpath.agent.daemon.sinks import http_client, transport_reason

if TYPE_CHECKING:
    import httpx
    from mailpath.agent.daemon.delivery import OtlpSettings

log = logging.getLogger("mailpath.agent.delivery")

EVENT_NAME = "mailpath.finding"
SCOPE = "mailpath.agent"
SERVICE_NAME = "mailpath-agent"
# OpenTelemetry severity numbers (logs data model): INFO 9, WARN 13, ERROR 17
SEVERITY: dict[str, tuple[int, str]] = {"info": (9, "INFO"), "warning": (13, "WARN"), "error": (17, "ERROR")}

AttributeValue = str | int | float | bool | list[str]


class Unencodable(ValueError):
    """A finding that cannot be made a log record (``index`` in the batch)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


# -- the mapping (pure) ------------------------------------------------------------------


def severity(finding: Mapping) -> tuple[int, str]:
    """The OpenTelemetry severity number and text of a finding's severity (unknown: 0, as given)."""
    value = finding.get("severity")
    return SEVERITY.get(value, (0, str(value or "")))  # type: ignore[arg-type]


def record_attributes(finding: Mapping) -> dict[str, AttributeValue]:
    """The attributes of a finding's log record (those with no value are left out)."""
    target, port = finding["target"], finding["port"]
    out: dict[str, AttributeValue] = {
        "mailpath.finding.id": str(finding["id"]),
        "mailpath.target": target,
        "mailpath.port": port,
        "server.address": target,
        "server.port": port,
        "mailpath.cause": finding["cause"],
        "mailpath.severity": finding["severity"],
        "mailpath.headline": finding.get("headline", ""),
    }
    if finding.get("domain"):
        out["mailpath.domain"] = finding["domain"]
    location = finding.get("location") or {}
    for key in ("kind", "hop", "address", "component"):
        if location.get(key) is not None:
            out[f"mailpath.location.{key}"] = location[key]
    addresses = finding.get("addresses") or []
    if addresses:
        out["mailpath.addresses"] = [str(a.get("address", "")) for a in addresses]
        out["mailpath.verdicts"] = [str(a.get("verdict", "")) for a in addresses]
    return out


def resource_attributes(agent: Mapping | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The resource of the records of one agent (``finding["agent"]``): who sent them."""
    agent = agent or {}
    cloud = agent.get("cloud") or {}
    out: dict[str, str] = {"service.name": SERVICE_NAME}
    pairs = {
        "service.version": agent.get("version"),
        "host.name": agent.get("hostname"),
        "cloud.provider": cloud.get("provider"),
        "cloud.region": cloud.get("region"),
        "cloud.availability_zone": cloud.get("availability_zone"),
        "host.id": cloud.get("instance_id"),
    }
    out.update({k: str(v) for k, v in pairs.items() if v})
    out.update(extra or {})
    return out


def time_ns(created_at: str) -> int:
    when = dt.datetime.fromisoformat(created_at)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def export_request(
    findings: list[dict], *, resource: Mapping[str, str] | None = None, now_ns: int | None = None
):
    """The ``ExportLogsServiceRequest`` of a batch: one ResourceLogs per agent (in the order
    first seen), its records in the batch's order. Raises :class:`Unencodable` naming the first
    finding that cannot be mapped."""
    from mailpath.agent import __version__
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    observed = now_ns if now_ns is not None else time.time_ns()
    groups: dict[str, tuple[dict, list]] = {}
    for index, finding in enumerate(findings):
        try:
            number, text = severity(finding)
            record = LogRecord(
                time_unix_nano=time_ns(finding["created_at"]),
                observed_time_unix_nano=observed,
                severity_number=number,
                severity_text=text,
                event_name=EVENT_NAME,
                body=_any(json.dumps(finding, separators=(",", ":"))),
                attributes=_key_values(record_attributes(finding)),
            )
            attrs = resource_attributes(finding.get("agent"), resource)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            raise Unencodable(
                index, f"cannot make a log record of this finding: {type(e).__name__}: {e}"
            ) from e
        key = json.dumps(attrs, sort_keys=True)
        groups.setdefault(key, (attrs, []))[1].append(record)
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(attributes=_key_values(attrs)),
                scope_logs=[
                    ScopeLogs(
                        scope=InstrumentationScope(name=SCOPE, version=__version__), log_records=records
                    )
                ],
            )
            for attrs, records in groups.values()
        ]
    )


def _any(value: AttributeValue):
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue

    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[_any(v) for v in value]))
    if isinstance(value, str):
        return AnyValue(string_value=value)
    raise TypeError(f"{type(value).__name__} is not an attribute value")


def _key_values(attrs: Mapping[str, AttributeValue]) -> list:
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue

    return [KeyValue(key=k, value=_any(v)) for k, v in attrs.items()]


def parse_headers(text: str) -> dict[str, str]:
    """Headers written as OTEL_EXPORTER_OTLP_HEADERS has them: ``key=value`` pairs separated by
    commas or new lines, values URL-encoded. Raises ValueError for a pair without ``=``."""
    out: dict[str, str] = {}
    for item in text.replace("\n", ",").split(","):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError("expected key=value pairs")
        out[unquote(key.strip())] = unquote(value.strip())
    return out


# -- the sink ----------------------------------------------------------------------------


class OtlpSink:
    name = "otlp"
    batch_size: int | None = None

    def __init__(self, settings: OtlpSettings) -> None:
        self.settings = settings
        self._client: httpx.AsyncClient | None = None

    def headers(self) -> dict[str, str]:
        """The configured headers, then those of the environment variable, then the file's
        (read at every send, so a rotated secret is used at once; never logged)."""
        out = dict(self.settings.headers)
        if self.settings.headers_env:
            out.update(parse_headers(os.environ.get(self.settings.headers_env, "")))
        if self.settings.headers_file:
            out.update(parse_headers(Path(self.settings.headers_file).read_text()))
        return out

    async def send(self, findings: list[dict], timeout: float) -> Outcome:
        import httpx
        from mailpath.agent.report import answer_of

        try:
            request = export_request(findings, resource=self.settings.resource)
        except Unencodable as e:
            return Refused(e.index, e.reason)
        try:
            headers = self.headers()
        except (OSError, ValueError) as e:
            return Hold(
                "headers", f"cannot read the OTLP headers: {type(e).__name__}"
            )  # no secret in the log
        headers["Content-Type"] = "application/x-protobuf"
        body = request.SerializeToString()
        if self.settings.compression == "gzip":
            body = gzip.compress(body, compresslevel=6)
            headers["Content-Encoding"] = "gzip"
        try:
            if self._client is None:
                self._client = http_client(self.settings.ca_file)
        except OSError as e:
            return Hold("tls-config", f"cannot load the CA file {self.settings.ca_file}: {e}")
        try:
            r = await self._client.post(
                self.settings.endpoint,
                content=body,
                headers=headers,
                timeout=self.settings.timeout or timeout,
            )
        except httpx.HTTPError as e:
            return Retry(
                transport_reason(e), f"could not reach {self.settings.endpoint}: {type(e).__name__}: {e}"
            )
        if 200 <= r.status_code < 300:
            return Accepted(_partial_success(r.content))
        answer = answer_of(r)
        body_dict = (
            answer.body if "json" in r.headers.get("content-type", "") else {"detail": _status_text(r)}
        )
        return classify(r.status_code, body_dict, answer.retry_after, len(findings))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _partial_success(content: bytes) -> str | None:
    """What an ExportLogsServiceResponse says of records it rejected (None: all taken)."""
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

    try:
        response = ExportLogsServiceResponse.FromString(content)
    except DecodeError:
        return None  # a JSON answer or an empty body: accepted all the same
    partial = response.partial_success
    if partial.rejected_log_records or partial.error_message:
        return f"the receiver rejected {partial.rejected_log_records} record(s): {partial.error_message}"[
            :500
        ]
    return None


def _status_text(r) -> str:
    """The message of an OTLP error answer: a google.rpc.Status (protobuf), or its text."""
    ctype = r.headers.get("content-type", "")
    if "protobuf" in ctype:
        try:
            from google.protobuf.message import DecodeError
            from google.rpc.status_pb2 import Status  # googleapis-common-protos, when installed
        except ImportError:
            return f"{len(r.content)} bytes of {ctype}"
        try:
            return Status.FromString(r.content).message[:300]
        except DecodeError:
            return f"{len(r.content)} bytes of {ctype}"
    text = r.text[:300]
    return "".join(c if c.isprintable() else " " for c in text).strip()
