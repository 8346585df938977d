"""Delivery: from the spool to every sink, with retries, dead letters and a bounded spool.

Each sink is delivered on its own, oldest findings first, in batches. A batch is sent, and its
answer (:mod:`mailpath.agent.daemon.outcome`) decides:

- accepted: the findings are done for that sink; a finding leaves the spool once every sink
  is done with it;
- a transient failure (connection error, timeout, 408, 429, 5xx): the batch is sent again after
  a wait, through tenacity: exponential backoff with full jitter (a random wait between 0 and
  ``min(backoff_cap, backoff_base · 2^(attempt-1))``), or the receiver's ``Retry-After`` (at
  most ``retry_after_max``);
- a configuration problem (401, 403, 404, 405, 415, a collector of another schema version):
  nothing is dead-lettered, the error is logged and the batch retried every ``backoff_cap``;
- a refused finding (the collector's 422 names it by ``index``): it goes to the dead-letter
  table with the collector's reason, and the rest of the batch is sent again at once;
- 413, or a refusal that names no finding: the batch is split in halves, down to the one
  finding at fault, which is dead-lettered.

:meth:`Delivery.run` delivers continuously, each sink in a task of its own, retrying without
end (the spool is bounded, not the retries) until ``stop`` is set; :meth:`Delivery.flush`
delivers what is in the spool now, ``retry_attempts`` attempts a batch, within a deadline (for
``mailpath agent once`` and the last flush at SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from mailpath.agent.daemon.outcome import (
    Accepted,
    Hold,
    Outcome,
    Refused,
    Retry,
    TooLarge,
    choose_wait,
    split,
)
from mailpath.agent.daemon.sinks import CollectorSink, Sink, StdoutSink
from mailpath.agent.daemon.spool import Spool, Spooled, SpoolError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    stop_when_event_set,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

log = logging.getLogger("mailpath.agent.delivery")

# -- settings ----------------------------------------------------------------------------


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1].strip("/")) == 0:
        raise ValueError("expected an http:// or https:// URL")
    return value


class DeliverySettings(_Settings):
    """``[delivery]``: batches, timeouts, retries, and the spool's bounds."""

    batch_size: int = Field(500, ge=1, le=10_000, description="Findings per request, at most.")
    timeout: float = Field(10.0, gt=0, le=600, description="Seconds for one request.")
    retry_attempts: int = Field(
        5,
        ge=1,
        le=1000,
        description="Attempts per batch in one flush (agent once, SIGTERM); run retries forever.",
    )
    backoff_base: float = Field(0.5, gt=0, le=3600, description="First backoff window, seconds.")
    backoff_cap: float = Field(30.0, gt=0, le=3600, description="Longest backoff, seconds.")
    retry_after_max: float = Field(
        300.0, ge=0, le=86_400, description="Longest Retry-After honoured, seconds."
    )
    poll_interval: float = Field(5.0, gt=0, le=3600, description="Seconds between looks at an idle spool.")
    spool_max_count: int = Field(100_000, ge=1, description="Findings the spool keeps, at most.")
    spool_max_age: float = Field(7 * 86_400, gt=0, description="Seconds a finding is kept, at most.")

    @model_validator(mode="after")
    def _backoff(self) -> DeliverySettings:
        if self.backoff_base > self.backoff_cap:
            raise ValueError("backoff_base must not be over backoff_cap")
        return self


class CollectorSettings(_Settings):
    """``[collector]``: where findings go, and the agent's token (a file, re-read at each
    attempt)."""

    url: str
    token_file: Path
    ca_file: Path | None = None

    _url = field_validator("url")(_http_url)


class OtlpSettings(_Settings):
    """``[otlp]``: an OTLP/HTTP logs receiver (an OpenTelemetry Collector's ``…/v1/logs``)."""

    endpoint: str = Field(description="The full URL, e.g. http://127.0.0.1:4318/v1/logs")
    headers: dict[str, str] = Field(default_factory=dict, description="Headers to send (no secrets here).")
    headers_env: str | None = Field(
        None, description="An environment variable holding headers as key=value,key2=value2 (secrets)."
    )
    headers_file: Path | None = Field(
        None, description="A file holding headers as key=value lines (secrets)."
    )
    ca_file: Path | None = None
    timeout: float | None = Field(None, gt=0, le=600, description="Seconds; default: the delivery's.")
    compression: Literal["gzip", "none"] = "gzip"
    resource: dict[str, str] = Field(default_factory=dict, description="More resource attributes.")

    _endpoint = field_validator("endpoint")(_http_url)


class StdoutSettings(_Settings):
    """``[stdout]``: findings as JSON lines on standard output."""

    enabled: bool = False


def make_sinks(
    collector: CollectorSettings | None, otlp: OtlpSettings | None, stdout: StdoutSettings | None
) -> list[Sink]:
    """The sinks the configuration names, in this order: collector, otlp, stdout."""
    sinks: list[Sink] = []
    if collector is not None:
        sinks.append(CollectorSink(collector))
    if otlp is not None:
        from mailpath.agent.daemon.otlp import OtlpSink

        sinks.append(OtlpSink(otlp))
    if stdout is not None and stdout.enabled:
        sinks.append(StdoutSink())
    return sinks


# -- what delivery reports ---------------------------------------------------------------


class Events(Protocol):
    """What the delivery tells as it goes (the daemon's metrics)."""

    def delivered(self, sink: str, n: int) -> None: ...

    def retried(self, sink: str, reason: str) -> None: ...

    def dead(self, sink: str, n: int) -> None: ...

    def dropped(self, n: int) -> None: ...


@dataclass
class FlushReport:
    """What one flush did, per sink; ``failed`` names each sink that stopped before it had
    everything (why), ``pending`` is what the spool holds afterwards."""

    delivered: dict[str, int] = field(default_factory=dict)
    dead: dict[str, int] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    dropped: int = 0
    pending: int = 0

    @property
    def complete(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict:
        return {
            "delivered": self.delivered,
            "dead": self.dead,
            "retries": self.retries,
            "failed": self.failed,
            "dropped": self.dropped,
            "pending": self.pending,
        }


class _Transient(Exception):
    def __init__(self, outcome: Retry | Hold) -> None:
        super().__init__(outcome.detail or outcome.reason)
        self.outcome = outcome


class _GaveUp(Exception):
    def __init__(self, outcome: Retry | Hold) -> None:
        super().__init__(outcome.detail or outcome.reason)
        self.outcome = outcome


class _Stopped(Exception):
    pass


class _StopBeforeDeadline(stop_base):
    """Stop when the next wait would end past ``deadline`` (time.monotonic())."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() + retry_state.upcoming_sleep >= self.deadline


class _Wait(wait_base):
    """Retry-After when the receiver gave one, the cap for a Hold, else full jitter."""

    def __init__(self, settings: DeliverySettings) -> None:
        self.settings = settings
        self.jitter = wait_random_exponential(multiplier=settings.backoff_base, max=settings.backoff_cap)

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        outcome = exc.outcome if isinstance(exc, _Transient) else Retry("error")
        return choose_wait(
            outcome,
            cap=self.settings.backoff_cap,
            retry_after_max=self.settings.retry_after_max,
            backoff=lambda: self.jitter(retry_state),
        )


class _Null:
    def delivered(self, sink: str, n: int) -> None: ...

    def retried(self, sink: str, reason: str) -> None: ...

    def dead(self, sink: str, n: int) -> None: ...

    def dropped(self, n: int) -> None: ...


# -- delivery ----------------------------------------------------------------------------


class Delivery:
    def __init__(
        self, spool: Spool, sinks: list[Sink], settings: DeliverySettings, events: Events | None = None
    ) -> None:
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"two sinks have one name: {names}")
        self.spool = spool
        self.sinks = list(sinks)
        self.settings = settings
        self.events: Events = events or _Null()
        self._names = names
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakes: dict[str, asyncio.Event] = {}
        self._flush_dropped = 0
        spool.subscribe(on_add=self._wake_all, on_drop=self._on_drop)

    # -- the interface ---------------------------------------------------------------------

    async def flush(self, deadline: float | None = None) -> FlushReport:
        """Deliver what the spool holds now (not what is added meanwhile), each sink at once,
        ``retry_attempts`` attempts a batch; stop a sink at its first batch that fails that
        often, and everything at ``deadline`` (a ``time.monotonic()`` value; None: no limit).
        What was not delivered stays in the spool."""
        report = FlushReport()
        self._flush_dropped = 0
        try:
            self.spool.expire()
            upto = self.spool.last_seq()
        except SpoolError as e:
            report.failed = {name: f"spool: {e}" for name in self._names}
            return report
        await asyncio.gather(*(self._drain(sink, report, upto, deadline) for sink in self.sinks))
        report.dropped = self._flush_dropped
        with contextlib.suppress(SpoolError):
            report.pending = self.spool.counts().pending
        return report

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver continuously until ``stop`` is set: each sink in a task of its own, woken
        when findings are added (and every ``poll_interval``), retrying without end. A request
        under way when ``stop`` is set is let finish (its timeout bounds it) and its answer
        recorded."""
        self._loop = asyncio.get_running_loop()
        tasks = [
            asyncio.create_task(self._follow(sink, stop), name=f"deliver-{sink.name}") for sink in self.sinks
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop = None
            self._wakes.clear()

    async def aclose(self) -> None:
        """Close the sinks' connections, and let go of the spool's hooks."""
        self.spool.unsubscribe(self._wake_all, self._on_drop)
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                await sink.aclose()

    # -- one sink --------------------------------------------------------------------------

    async def _drain(self, sink: Sink, report: FlushReport, upto: int, deadline: float | None) -> None:
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                if self._has_pending(sink, upto):
                    report.failed[sink.name] = "the flush ran out of time"
                return
            try:
                batch = self.spool.pending(sink.name, self._batch_size(sink), upto=upto)
                if not batch:
                    return
                await self._deliver(
                    sink, batch, report, stop=None, deadline=deadline, attempts=self.settings.retry_attempts
                )
            except _GaveUp as e:
                report.failed[sink.name] = e.outcome.detail or e.outcome.reason
                log.warning(
                    "%s: not delivered in this flush (%s); the findings stay in the spool",
                    sink.name,
                    e.outcome.detail or e.outcome.reason,
                )
                return
            except SpoolError as e:
                report.failed[sink.name] = f"spool: {e}"
                log.error("%s: %s", sink.name, e)
                return

    async def _follow(self, sink: Sink, stop: asyncio.Event) -> None:
        wake = self._wakes[sink.name] = asyncio.Event()
        report = FlushReport()  # counts of the run: nobody reads them, events tell
        while not stop.is_set():
            wake.clear()
            try:
                self.spool.expire()
                batch = self.spool.pending(sink.name, self._batch_size(sink))
                if batch:
                    await self._deliver(sink, batch, report, stop=stop, deadline=None, attempts=None)
                    continue
            except (_Stopped, _GaveUp):
                return
            except SpoolError as e:
                log.error("%s: %s; trying again in %.0f s", sink.name, e, self.settings.poll_interval)
            await wait_any((wake, stop), self.settings.poll_interval)

    def _batch_size(self, sink: Sink) -> int:
        return min(self.settings.batch_size, sink.batch_size or self.settings.batch_size)

    def _has_pending(self, sink: Sink, upto: int) -> bool:
        try:
            return bool(self.spool.pending(sink.name, 1, upto=upto))
        except SpoolError:
            return True

    async def _deliver(
        self,
        sink: Sink,
        batch: list[Spooled],
        report: FlushReport,
        *,
        stop: asyncio.Event | None,
        deadline: float | None,
        attempts: int | None,
    ) -> None:
        """Settle one batch: delivered or dead-lettered, finding by finding. Raises _GaveUp
        when the retries ran out (the rest stays pending), _Stopped, SpoolError."""
        parts = [batch]
        while parts:
            part = parts.pop()
            outcome = await self._attempts(
                sink, part, report, stop=stop, deadline=deadline, attempts=attempts
            )
            if isinstance(outcome, Accepted):
                self.spool.ack(sink.name, [s.seq for s in part], self._names)
                _add(report.delivered, sink.name, len(part))
                self.events.delivered(sink.name, len(part))
                if outcome.note:
                    log.warning("%s: %s", sink.name, outcome.note)
            elif isinstance(outcome, Refused) and outcome.index is not None:
                bad = part[outcome.index]
                self._dead(sink, [(bad, outcome.reason)], report)
                rest = part[: outcome.index] + part[outcome.index + 1 :]
                if rest:
                    parts.append(rest)
            elif isinstance(outcome, Refused | TooLarge):
                if len(part) == 1:
                    self._dead(sink, [(part[0], outcome.reason)], report)
                else:
                    first, _ = split(len(part))
                    parts.append(part[first:])
                    parts.append(part[:first])  # popped next: the order is kept

    def _dead(self, sink: Sink, items: list[tuple[Spooled, str]], report: FlushReport) -> None:
        self.spool.dead_letter(sink.name, items, self._names)
        _add(report.dead, sink.name, len(items))
        self.events.dead(sink.name, len(items))
        for spooled, reason in items:
            log.error("%s: finding %s dead-lettered: %s", sink.name, spooled.finding_id, reason)

    async def _attempts(
        self,
        sink: Sink,
        part: list[Spooled],
        report: FlushReport,
        *,
        stop: asyncio.Event | None,
        deadline: float | None,
        attempts: int | None,
    ) -> Outcome:
        """Send ``part`` until an answer that is not transient (tenacity does the waiting)."""
        stops: list[stop_base] = []
        if attempts is not None:
            stops.append(stop_after_attempt(attempts))
        if stop is not None:
            stops.append(stop_when_event_set(stop))  # type: ignore[arg-type]  # asyncio.Event has is_set()
        if deadline is not None:
            stops.append(_StopBeforeDeadline(deadline))
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            wait=_Wait(self.settings),
            stop=functools.reduce(operator.or_, stops, stop_never),
            sleep=_sleeper(stop),
            before_sleep=functools.partial(self._before_sleep, sink, report),
            reraise=True,
        )
        findings = [s.finding for s in part]
        outcome: Outcome = Retry("none")
        try:
            async for attempt in retrying:
                with attempt:
                    if stop is not None and stop.is_set():
                        raise _Stopped
                    outcome = await self._send(sink, findings, deadline)
                    if isinstance(outcome, Retry | Hold):
                        raise _Transient(outcome)
        except _Transient as e:
            raise _GaveUp(e.outcome) from None
        return outcome

    async def _send(self, sink: Sink, findings: list[dict], deadline: float | None) -> Outcome:
        timeout = self.settings.timeout
        if deadline is not None:
            timeout = max(0.05, min(timeout, deadline - time.monotonic()))
        try:
            # the sink's own timeouts are per phase (connect, write, read): this bounds the whole
            return await asyncio.wait_for(sink.send(findings, timeout), timeout * 3 + 1)
        except TimeoutError:
            return Retry("timeout", f"{sink.name}: no answer within {timeout * 3 + 1:.0f} s")
        except Exception as e:  # a bug in a sink must not end delivery; it is retried, and logged
            log.exception("%s: sending failed", sink.name)
            return Retry("error", f"{type(e).__name__}: {e}")

    def _before_sleep(self, sink: Sink, report: FlushReport, retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        outcome = exc.outcome if isinstance(exc, _Transient) else Retry("error")
        _add(report.retries, sink.name, 1)
        self.events.retried(sink.name, outcome.reason)
        wait = retry_state.upcoming_sleep
        if isinstance(outcome, Hold):
            log.error(
                "%s: %s: a configuration problem (token, URL, versions); the findings stay in the spool,"
                " next try in %.0f s",
                sink.name,
                outcome.detail or outcome.reason,
                wait,
            )
        else:
            log.warning(
                "%s: attempt %d failed (%s); next try in %.1f s",
                sink.name,
                retry_state.attempt_number,
                outcome.detail or outcome.reason,
                wait,
            )

    # -- hooks -----------------------------------------------------------------------------

    def _wake_all(self) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(_set_all, list(self._wakes.values()))

    def _on_drop(self, n: int) -> None:
        self._flush_dropped += n
        self.events.dropped(n)


def _add(counts: dict[str, int], key: str, n: int) -> None:
    counts[key] = counts.get(key, 0) + n


def _set_all(events: list[asyncio.Event]) -> None:
    for event in events:
        event.set()


async def wait_any(events: tuple[asyncio.Event, ...], timeout: float) -> None:
    """Until one of ``events`` is set, or ``timeout`` seconds."""
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def _sleeper(stop: asyncio.Event | None) -> Callable[[float], object]:
    """tenacity's sleep: asyncio.sleep, cut short when ``stop`` is set."""
    if stop is None:
        return asyncio.sleep

    async def sleep(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    return sleep
