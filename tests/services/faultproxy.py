"""A fault-injecting HTTP proxy on 127.0.0.1, in front of a real upstream (the collector).

It runs an asyncio event loop in a thread of its own, so tests (and processes they start) talk
to it like to any server. Requests are parsed with h11 (HTTP/1.1, keep-alive) and forwarded
with httpx (trust_env off). Each request takes the next :class:`Fault` of the plan, or the
default one when the plan is empty:

- ``Fault()``: pass (forward, relay the answer);
- ``Fault("status", status=500)``, ``Fault("status", status=429, retry_after=2)``: answer
  that, the upstream never sees the request;
- ``Fault("delay", seconds=5)``: forward, then hold the answer ``seconds`` (past the client's
  timeout: the upstream has the request, the client does not know it);
- ``Fault("close")``: close the connection without an answer (``after_upstream=True``: after
  forwarding it);
- ``Fault("hold")``: forward, then hold the answer until :meth:`FaultProxy.release` (the
  test sees :attr:`FaultProxy.held` set, e.g. to kill the client there).

:meth:`FaultProxy.refuse` closes the listening socket (connections are refused, as when the
service is down); :meth:`FaultProxy.listen` opens it again on the same port. Every request is
recorded in :attr:`FaultProxy.seen` with its time, fault and the finding ids of its body.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import h11
import httpx


@dataclass(frozen=True)
class Fault:
    kind: str = "pass"  # pass, status, delay, close, hold
    status: int = 500
    retry_after: float | None = None
    seconds: float = 0.0
    after_upstream: bool = False


@dataclass
class Seen:
    at: float  # time.monotonic() when the request was read
    method: str
    path: str
    fault: Fault
    ids: list[str] = field(default_factory=list)
    status: int | None = None  # what the client was answered (None: no answer)


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.default = Fault()
        self.seen: list[Seen] = []
        self.held = threading.Event()
        self._plan: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._release: asyncio.Event | None = None
        self._client: httpx.AsyncClient | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()
        self.port = 0

    # -- control (from the test's thread) --------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._setup())
        self.listen()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def plan(self, *faults: Fault) -> None:
        with self._lock:
            self._plan.extend(faults)

    def listen(self) -> None:
        self._call(self._listen())

    def refuse(self) -> None:
        """Stop listening, and drop the connections open (the service is down)."""
        self._call(self._refuse())

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._release.set)  # type: ignore[union-attr]

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._close(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def answered(self, status: int) -> list[Seen]:
        return [s for s in list(self.seen) if s.status == status]

    def _call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- inside the proxy's loop -----------------------------------------------------------

    async def _setup(self) -> None:
        self._release = asyncio.Event()
        self._client = httpx.AsyncClient(trust_env=False, timeout=60)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def _refuse(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()
            self._server = None

    async def _close(self) -> None:
        self._release.set()  # type: ignore[union-attr]
        await self._refuse()
        for task in list(self._tasks):  # connections the clients left open
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()  # type: ignore[union-attr]

    def _next_fault(self) -> Fault:
        with self._lock:
            return self._plan.popleft() if self._plan else self.default

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await _read_request(conn, reader)
                if request is None:
                    return
                fault = self._next_fault()
                seen = Seen(
                    time.monotonic(), request.method.decode(), request.target.decode(), fault, _ids(body)
                )
                self.seen.append(seen)
                answer = await self._answer(request, body, fault)
                if answer is None:
                    return  # closed without an answer
                status, headers, content = answer
                seen.status = status
                writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
                writer.write(conn.send(h11.Data(data=content)))
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()

    async def _answer(self, request: h11.Request, body: bytes, fault: Fault):
        """(status, headers, content), or None to close the connection without an answer."""
        if fault.kind == "status":
            headers = [("content-type", "application/json")]
            if fault.retry_after is not None:
                headers.append(("retry-after", f"{fault.retry_after:g}"))
            content = json.dumps({"detail": f"injected {fault.status}"}).encode()
            return fault.status, [*headers, ("content-length", str(len(content)))], content
        if fault.kind == "close" and not fault.after_upstream:
            return None
        if fault.kind == "delay" and not fault.after_upstream:
            await asyncio.sleep(fault.seconds)
        try:
            r = await self._client.request(  # type: ignore[union-attr]
                request.method.decode(),
                self.upstream + request.target.decode(),
                headers=[(k, v) for k, v in request.headers if k.lower() not in HOP_BY_HOP],
                content=body,
            )
        except httpx.HTTPError:
            return None  # the upstream is down: the client's connection is dropped
        if fault.kind == "delay" and fault.after_upstream:
            await asyncio.sleep(fault.seconds)
        if fault.kind == "hold":
            self.held.set()
            await self._release.wait()  # type: ignore[union-attr]
        if fault.kind == "close":
            return None
        content = r.content  # decoded by httpx: the headers that described the encoding go
        headers = [(k, v) for k, v in r.headers.items() if k.lower() not in {*HOP_BY_HOP, "content-encoding"}]
        return r.status_code, [*headers, ("content-length", str(len(content)))], content


HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te", "upgrade"}


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader):
    """The next request and its body, or (None, b"") when the client closed the connection."""
    request, body = None, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            if not data and request is None:  # closed between two requests
                return None, b""
            conn.receive_data(data)  # b"" mid-request: h11 raises a ProtocolError next
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            return None, b""


def _ids(body: bytes) -> list[str]:
    """The finding ids of a ``POST /v1/findings`` body (gzipped or not), else []."""
    try:
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        return [f["id"] for f in json.loads(body)["findings"]]
    except (ValueError, KeyError, TypeError, OSError):
        return []
