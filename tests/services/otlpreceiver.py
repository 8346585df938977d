"""A small OTLP/HTTP logs receiver on 127.0.0.1 for the tests: ``POST /v1/logs`` with an
``ExportLogsServiceRequest`` in protobuf (gzipped or not), decoded with opentelemetry-proto as
an OpenTelemetry Collector's otlp receiver would, its records kept. It answers as the OTLP
specification says: 200 with an ``ExportLogsServiceResponse``; or, as a test asks, a status
(with ``Retry-After``), a 400 with a ``google.rpc.Status`` for a request holding a record whose
body contains a given text, or a partial success."""

from __future__ import annotations

import gzip
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)


def any_value(v):
    """An AnyValue as Python (str, int, float, bool, list)."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


@dataclass
class Record:
    """One log record as received, with its resource's attributes."""

    resource: dict
    scope: str
    event_name: str
    severity_number: int
    severity_text: str
    time_unix_nano: int
    observed_time_unix_nano: int
    attributes: dict
    body: object

    @property
    def finding(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    records: list[Record] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)  # headers of each request
    statuses: deque = field(default_factory=deque)  # (status, retry_after) for the next requests
    poison: str | None = None  # a request with a record whose body holds this gets a 400
    reject: int = 0  # partial success: reject this many records of every request
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/logs"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(dict(self.headers.items()))
                if self.path != "/v1/logs":
                    return self._send(404, b"not found", "text/plain")
                if receiver.statuses:
                    status, retry_after = receiver.statuses.popleft()
                    return self._send(status, b"injected", "text/plain", retry_after)
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.headers.get("Content-Type") != "application/x-protobuf":
                    return self._send(415, b"protobuf only", "text/plain")
                request = ExportLogsServiceRequest.FromString(body)
                records = list(_records(request))
                if receiver.poison and any(receiver.poison in str(r.body) for r in records):
                    return self._send(400, _rpc_status(3, "a record is poisoned"), "application/x-protobuf")
                receiver.records += records
                partial = ExportLogsPartialSuccess(
                    rejected_log_records=min(receiver.reject, len(records)),
                    error_message="rejected on purpose" if receiver.reject else "",
                )
                response = ExportLogsServiceResponse(partial_success=partial)
                self._send(200, response.SerializeToString(), "application/x-protobuf")

            def _send(
                self, status: int, content: bytes, ctype: str, retry_after: float | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(content)))
                if retry_after is not None:
                    self.send_header("Retry-After", f"{retry_after:g}")
                self.end_headers()
                self.wfile.write(content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _records(request: ExportLogsServiceRequest):
    for rl in request.resource_logs:
        resource = {kv.key: any_value(kv.value) for kv in rl.resource.attributes}
        for sl in rl.scope_logs:
            for r in sl.log_records:
                yield Record(
                    resource=resource,
                    scope=sl.scope.name,
                    event_name=r.event_name,
                    severity_number=r.severity_number,
                    severity_text=r.severity_text,
                    time_unix_nano=r.time_unix_nano,
                    observed_time_unix_nano=r.observed_time_unix_nano,
                    attributes={kv.key: any_value(kv.value) for kv in r.attributes},
                    body=any_value(r.body),
                )


def _rpc_status(code: int, message: str) -> bytes:
    """A google.rpc.Status: field 1 code (varint), field 2 message (string)."""
    data = message.encode()
    assert code < 128 and len(data) < 128
    return bytes([0x08, code, 0x12, len(data)]) + data
