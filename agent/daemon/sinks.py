"""Where findings go from the spool: the collector (``POST /v1/findings``) and stdout (JSON
lines). The OTLP/HTTP logs sink is in :mod:`mailpath.agent.daemon.otlp`.

A sink sends one batch and says what came of it as an :data:`~mailpath.agent.daemon.outcome.Outcome`;
it never retries and never raises for what the network or the receiver did: retries, dead
letters and the spool are the delivery's (:mod:`mailpath.agent.daemon.delivery`).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

from mailpath.agent.daemon.outcome import Accepted, Hold, Outcome, Retry, classify
from mailpath.agent.report import post_findings_async, read_token
from mailpath.probes.errors import DependencyFailed, InputError

if TYPE_CHECKING:
    import httpx
    from mailpath.agent.daemon.delivery import CollectorSettings


class Sink(Protocol):
    name: str  # unique among the sinks: the spool tracks deliveries by it
    batch_size: int | None  # at most this many findings a batch (None: the delivery's setting)

    async def send(self, findings: list[dict], timeout: float) -> Outcome: ...

    async def aclose(self) -> None: ...


def transport_reason(exc: BaseException | None) -> str:
    """A short label for an httpx transport error: ``timeout``, ``tls``, ``connect`` or
    ``transport`` (the connection broke or the answer was not HTTP)."""
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "tls" if "CERTIFICATE" in str(exc).upper() or "SSL" in str(exc).upper() else "connect"
    return "transport"


def http_client(ca_file: Path | None) -> httpx.AsyncClient:
    """An HTTP client for a sink: TLS verified (against ``ca_file`` when given, else the
    system's CAs), no proxy from the environment, a few connections kept alive."""
    import httpx

    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    return httpx.AsyncClient(
        verify=verify,
        trust_env=False,
        limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
        follow_redirects=False,
    )


class CollectorSink:
    """``POST /v1/findings`` to the collector, gzipped, with the bearer token read from its file
    at every attempt (a rotated token is used at once; the token is never logged)."""

    name = "collector"
    batch_size: int | None = None

    def __init__(self, settings: CollectorSettings) -> None:
        self.settings = settings
        self._client: httpx.AsyncClient | None = None

    async def send(self, findings: list[dict], timeout: float) -> Outcome:
        try:
            token = read_token(str(self.settings.token_file))
        except InputError as e:
            return Hold("token", str(e))
        try:
            if self._client is None:
                self._client = http_client(self.settings.ca_file)
        except (OSError, ssl.SSLError) as e:
            return Hold("tls-config", f"cannot load the CA file {self.settings.ca_file}: {e}")
        try:
            answer = await post_findings_async(
                self.settings.url, token, findings, client=self._client, timeout=timeout
            )
        except DependencyFailed as e:
            return Retry(transport_reason(e.__cause__), str(e))
        return classify(answer.status, answer.body, answer.retry_after, len(findings))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class StdoutSink:
    """One finding per line, as compact JSON, flushed; acknowledged once written. A write that
    fails (a closed pipe) is retried; lines written before the failure may come again."""

    name = "stdout"
    batch_size: int | None = None

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    async def send(self, findings: list[dict], timeout: float) -> Outcome:
        text = "".join(json.dumps(f, separators=(",", ":")) + "\n" for f in findings)
        try:
            await asyncio.to_thread(self._write, text)
        except (OSError, ValueError) as e:  # ValueError: the stream is closed
            return Retry("write", f"cannot write to stdout: {e}")
        return Accepted()

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stdout
        stream.write(text)
        stream.flush()

    async def aclose(self) -> None:
        return None
