"""The daemon: rounds on a schedule, delivery beside them, metrics, and the signals.

``run``: a round every ``interval`` seconds (× 1 ± ``jitter``, at random, counted from the
start of the previous round; a round that overruns is followed at once by the next), while
the delivery (:meth:`Delivery.run`) sends what the rounds spool. Rounds never overlap.

- SIGTERM (and SIGINT): no new round and no new target; the targets being diagnosed get
  ``stop_timeout`` seconds to finish (what they find is spooled), then are cancelled; the
  delivery flushes what it can within ``flush_timeout`` seconds; exit 0.
- SIGHUP: the configuration file is read again. A bad one is logged, line by line, and the one
  in use is kept; a good one takes effect at once between rounds, or when the running round
  ends (new sinks: the delivery restarts; a new metrics address: the server moves). The spool
  folder cannot change while the agent runs (restart it).

``once``: one round, one flush, exit: 0 when everything is delivered, 4 when findings remain
in the spool (or were dead-lettered in this run), 3 when no target could be diagnosed.

Logs go to stderr, one line per round, and a line for each changed finding, each error, each
delivery problem; secrets are never in them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mailpath.agent.daemon.captures import keep_capture
from mailpath.agent.daemon.config import AgentConfig, ConfigError, load
from mailpath.agent.daemon.delivery import Delivery, make_sinks, wait_any
from mailpath.agent.daemon.metrics import Metrics, MetricsServer
from mailpath.agent.daemon.rounds import Round, TargetResult, dump_state, load_state, prune, run_round, select
from mailpath.agent.daemon.spool import Spool, SpoolError
from mailpath.probes.errors import CannotRun

log = logging.getLogger("mailpath.agent")

OK, CANNOT_RUN, UNDELIVERED = 0, 3, 4
TICK = 1.0  # seconds between the health ticks of the loop
SPOOL_REFRESH = 5.0  # seconds between two reads of the spool's counts for the metrics


class _Format(logging.Formatter):
    """``2026-11-28T20:05:51 round 3: ...``; the level only when it is not INFO."""

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        text = record.getMessage()
        if record.exc_info and logging.getLogger("mailpath").isEnabledFor(logging.DEBUG):
            text += "\n" + self.formatException(record.exc_info)
        return f"{when} {level}{text}"


def setup_logging(verbose: bool = False) -> None:
    """The agent's log on stderr (the delivery's too: both are under ``mailpath``)."""
    root = logging.getLogger("mailpath")
    root.handlers[:] = []
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


class _Events:
    """The delivery's events: counted in the metrics, and each sink's latest acknowledged
    batch and latest failure kept in the spool's meta (``last_delivery``, for ``status``)."""

    def __init__(self, metrics: Metrics, spool: Spool) -> None:
        self.metrics, self.spool = metrics, spool
        try:
            last = json.loads(spool.get_meta("last_delivery") or "{}")
        except (ValueError, SpoolError):
            last = {}
        self.last: dict = last if isinstance(last, dict) else {}

    def _note(self, sink: str, what: str, value: dict) -> None:
        from mailpath.agent.daemon.status import iso

        self.last.setdefault(sink, {})[what] = {"at": iso(time.time()), **value}
        try:
            self.spool.set_meta("last_delivery", json.dumps(self.last, sort_keys=True))
        except SpoolError as e:
            log.debug("cannot note the delivery in the spool: %s", e)
        self.metrics.refresh_spool()

    def delivered(self, sink: str, n: int) -> None:
        self.metrics.delivered(sink, n)
        self._note(sink, "delivered", {"findings": n})

    def retried(self, sink: str, reason: str) -> None:
        self.metrics.retried(sink, reason)
        self._note(sink, "failed", {"reason": reason})

    def dead(self, sink: str, n: int) -> None:
        self.metrics.dead(sink, n)
        self.metrics.refresh_spool()

    def dropped(self, n: int) -> None:
        self.metrics.dropped(n)
        self.metrics.refresh_spool()


class Daemon:
    def __init__(self, config: AgentConfig, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = Metrics()
        self.spool: Spool | None = None
        self.delivery: Delivery | None = None
        self.server: MetricsServer | None = None
        self.state: dict = {}
        self.number = 0
        self.stop = asyncio.Event()
        self.reload = asyncio.Event()
        self._delivery_stop: asyncio.Event | None = None
        self._delivery_task: asyncio.Task | None = None
        self._sent: Counter = Counter()
        self._spool_error: str | None = None

    # -- opening and closing ---------------------------------------------------------------------

    def open(self) -> None:
        """The spool and what was saved in it. Raises CannotRun."""
        from mailpath.agent.diagnose import agent_info

        c = self.config
        try:
            self.spool = Spool(
                c.spool_path, max_count=c.delivery.spool_max_count, max_age=c.delivery.spool_max_age
            )
            self.state = load_state(self.spool.get_meta("sent"))
            last = json.loads(self.spool.get_meta("last_round") or "{}")
        except SpoolError as e:
            raise CannotRun(str(e)) from None
        except ValueError:
            last = {}
        self.number = int(last.get("number", 0)) if isinstance(last, dict) else 0
        self.metrics.watch_spool(self.spool)
        self.agent = agent_info(c.agent_name)

    def serve_metrics(self) -> None:
        """Start the metrics server at ``[metrics] listen``. Raises CannotRun."""
        address = self.config.metrics.address()
        if address is None:
            return
        try:
            self.server = MetricsServer(self.metrics, *address)
        except OSError as e:
            raise CannotRun(
                f"cannot listen on {self.config.metrics.listen} ([metrics] listen): {e.strerror or e}"
            ) from None
        log.info("metrics: %s/metrics", self.server.url)

    def _new_delivery(self) -> Delivery:
        c = self.config
        events = _Events(self.metrics, self.spool)
        return Delivery(self.spool, make_sinks(c.collector, c.otlp, c.stdout), c.delivery, events=events)

    def _start_delivery(self) -> None:
        self.delivery = self._new_delivery()
        self._delivery_stop = asyncio.Event()
        self._delivery_task = asyncio.create_task(self.delivery.run(self._delivery_stop), name="delivery")

    async def _stop_delivery(self, bound: float) -> None:
        """Stop the continuous delivery: its request under way may finish within ``bound``."""
        if self._delivery_task is None:
            return
        self._delivery_stop.set()
        done, _ = await asyncio.wait({self._delivery_task}, timeout=bound)
        if not done:
            self._delivery_task.cancel()
            await asyncio.gather(self._delivery_task, return_exceptions=True)
        self._delivery_task = None

    async def _close(self) -> None:
        if self.delivery is not None:
            await self.delivery.aclose()
        if self.server is not None:
            self.server.close()
        if self.spool is not None:
            self.metrics.refresh_spool()
            self.spool.close()

    # -- the loop --------------------------------------------------------------------------------

    def _signals(self, loop: asyncio.AbstractEventLoop, *, hup: bool) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop, sig)
        if hup:
            loop.add_signal_handler(signal.SIGHUP, self._on_hup)

    def _on_stop(self, sig: int) -> None:
        if not self.stop.is_set():
            log.info(
                "%s: stopping (no new round; running diagnoses may take %g s)",
                signal.Signals(sig).name,
                self.config.stop_timeout,
            )
        self.stop.set()

    def _on_hup(self) -> None:
        log.info("SIGHUP: reloading the configuration")
        self.reload.set()

    def _executor(self, loop: asyncio.AbstractEventLoop) -> None:
        """Threads for the probes (each target's measurements run a few at once)."""
        loop.set_default_executor(ThreadPoolExecutor(max_workers=min(512, self.config.concurrency * 3 + 4)))

    async def _ticker(self) -> None:
        last_refresh = 0.0
        while True:
            self.metrics.tick()
            if time.monotonic() - last_refresh >= SPOOL_REFRESH:
                self.metrics.refresh_spool()
                last_refresh = time.monotonic()
            await asyncio.sleep(TICK)

    async def run(self) -> int:
        """The daemon, until SIGTERM. Raises CannotRun before anything runs when the spool or
        the metrics address cannot be had."""
        loop = asyncio.get_running_loop()
        self._executor(loop)
        self.open()
        try:
            self.serve_metrics()
        except CannotRun:
            self.spool.close()
            raise
        self._signals(loop, hup=True)
        log.info("mailpath agent: %s", self.config.summary())
        self._start_delivery()
        ticker = asyncio.create_task(self._ticker(), name="ticker")
        next_at = loop.time()
        try:
            while not self.stop.is_set():
                await _until(next_at, self.stop, self.reload)
                if self.stop.is_set():
                    break
                if self.reload.is_set():
                    self.reload.clear()
                    await self._reload()
                    continue
                started = loop.time()
                await self._bounded_round()
                c = self.config
                next_at = started + c.interval * random.uniform(1 - c.jitter, 1 + c.jitter)
                if loop.time() > next_at and not self.stop.is_set():
                    log.warning(
                        "the round took longer than the interval (%g s): the next starts now", c.interval
                    )
        finally:
            ticker.cancel()
            await self._shutdown()
        return OK

    async def _bounded_round(self) -> Round | None:
        """One round; on SIGTERM its running targets get ``stop_timeout`` seconds."""
        task = asyncio.create_task(self.round(), name=f"round-{self.number + 1}")
        stopping = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                done, _ = await asyncio.wait({task}, timeout=self.config.stop_timeout)
                if not done:
                    log.warning(
                        "stopping: diagnoses still running after %g s are cancelled", self.config.stop_timeout
                    )
                    task.cancel()
            (result,) = await asyncio.gather(task, return_exceptions=True)
        finally:
            stopping.cancel()
        if isinstance(result, Exception):  # a bug: logged, and the daemon goes on with the next round
            log.error("round %d failed: %s: %s", self.number, type(result).__name__, result, exc_info=result)
        return result if isinstance(result, Round) else None

    async def _shutdown(self) -> None:
        c = self.config
        deadline = time.monotonic() + c.flush_timeout
        await self._stop_delivery(min(c.flush_timeout, c.delivery.timeout * 3 + 1))
        if self.delivery is not None and self.spool is not None:
            report = await self.delivery.flush(deadline=deadline)
            pending = self.spool.counts().pending
            log.info("stopped: %s", _flush_line(report, pending))
        await self._close()

    # -- a round -----------------------------------------------------------------------------------

    async def round(self) -> Round:
        """One round: every target diagnosed, what is to be sent spooled as each target is done,
        the state and the round saved in the spool (also when the round is cancelled)."""
        self.number += 1
        self._sent = Counter()
        self._spool_error = None
        rnd = Round(number=self.number, started_at=time.time(), targets=len(self.config.targets))
        try:
            rnd, _ = await run_round(
                self.config, self.number, agent=self.agent, stop=self.stop, on_result=self._on_result
            )
        except asyncio.CancelledError:
            rnd.interrupted = True
            rnd.seconds = time.time() - rnd.started_at
            raise
        finally:
            rnd.sent = self._sent
            rnd.spool_error = self._spool_error
            self._finish(rnd)
        return rnd

    def _on_result(self, result: TargetResult) -> None:
        name = result.target.target
        self.metrics.target_done(name, result.facts, result.error)
        if result.error is not None:
            log.warning("%s: not diagnosed: %s", name, result.error)
            return
        c = self.config
        now = time.time()
        docs = [f.to_json_dict() for f in result.findings]
        decisions, after = select(
            docs, self.state, report=c.report, now=now, heartbeat=c.heartbeat, slack=c.interval / 2
        )
        if not decisions:
            return
        try:
            self.spool.add([d.finding for d in decisions])
        except SpoolError as e:  # not spooled: not "sent" either, so the next round tries again
            self._spool_error = str(e)
            log.error("%s", e)
            return
        for d in decisions:
            if d.why == "changed":
                before = json.loads(self.state[_key(d.finding)].signature)["cause"]
                for line in _change(d.finding, before):
                    log.info("%s", line)
        capture = c.capture
        changed = any(d.why == "changed" for d in decisions)
        if changed and capture.dir is not None and result.recorder is not None:
            keep_capture(capture.dir, self.number, name, result.recorder, capture.keep, capture.max_bytes)
        self.state = after
        self._sent.update(d.why for d in decisions)

    def _finish(self, rnd: Round) -> None:
        now = time.time()
        self.state = prune(self.state, now, 3 * max(self.config.heartbeat, self.config.interval))
        try:
            self.spool.set_meta("sent", dump_state(self.state))
            self.spool.set_meta("last_round", json.dumps(rnd.to_json()))
        except SpoolError as e:
            log.error("cannot save the round in the spool: %s", e)
        self.metrics.round_done(rnd.seconds, dict(rnd.sent))
        self.metrics.refresh_spool()
        log.info("%s", rnd.line())
        if rnd.cloud:
            log.warning("%s", _cut(rnd.cloud))

    # -- reload ------------------------------------------------------------------------------------

    async def _reload(self) -> bool:
        if self.config_path is None:
            return False
        try:
            new = load(self.config_path)
        except ConfigError as e:
            for line in e.lines:
                log.error("reload: %s", line)
            log.error("reload: the configuration in use is kept")
            self.metrics.reloads.labels("failed").inc()
            return False
        old = self.config
        if new.spool_dir != old.spool_dir:
            log.error(
                "reload: spool_dir cannot change while the agent runs (restart it); "
                "the configuration in use is kept"
            )
            self.metrics.reloads.labels("failed").inc()
            return False
        self.config = new
        self.spool.max_count, self.spool.max_age = new.delivery.spool_max_count, new.delivery.spool_max_age
        if (new.delivery, new.collector, new.otlp, new.stdout) != (
            old.delivery,
            old.collector,
            old.otlp,
            old.stdout,
        ):
            await self._stop_delivery(new.delivery.timeout * 3 + 1)
            await self.delivery.aclose()
            self._start_delivery()
        if new.metrics.listen != old.metrics.listen:
            if self.server is not None:
                self.server.close()
                self.server = None
            try:
                self.serve_metrics()
            except CannotRun as e:
                log.error("reload: %s", e)
        self.metrics.keep_targets(t.target for t in new.targets)
        if new.agent_name != old.agent_name:
            from mailpath.agent.diagnose import agent_info

            self.agent = agent_info(new.agent_name)
        self.metrics.reloads.labels("ok").inc()
        log.info("reload: %s", new.summary())
        return True

    # -- once --------------------------------------------------------------------------------------

    async def once(self) -> int:
        """One round, one flush: 0 delivered, 4 findings left undelivered, 3 nothing diagnosed."""
        loop = asyncio.get_running_loop()
        self._executor(loop)
        self.open()
        self._signals(loop, hup=False)
        dead_before = self.spool.counts().dead
        self.delivery = self._new_delivery()
        try:
            rnd = await self._bounded_round()
            report = await self.delivery.flush(deadline=time.monotonic() + self.config.flush_timeout)
            counts = self.spool.counts()
            log.info("%s", _flush_line(report, counts.pending))
        finally:
            await self._close()
        if rnd is not None and rnd.targets and rnd.diagnosed == 0:
            return CANNOT_RUN
        if counts.pending or counts.dead > dead_before:
            return UNDELIVERED
        return OK


def _key(finding: dict) -> str:
    from mailpath.agent.daemon.rounds import finding_key

    return finding_key(finding)


def _change(finding: dict, before: str) -> list[str]:
    """``  changed: 25 on mx.example.com: none -> firewall``, then what the headline says."""
    where = f"{finding['port']} on {finding['target']}"
    summary = finding["headline"].removeprefix(f"{where}: ").rsplit(" — ", 1)[0]
    return [f"  changed: {where}: {before} -> {finding['cause']}", _cut(f"    {summary}", 60)]


def _cut(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _flush_line(report, pending: int) -> str:
    delivered = sum(report.delivered.values())
    parts = [f"delivered {delivered}"]
    if report.dead:
        parts.append(f"dead-lettered {sum(report.dead.values())}")
    if report.dropped:
        parts.append(f"dropped {report.dropped}")
    parts.append(f"{pending} pending in the spool")
    for sink, why in sorted(report.failed.items()):
        parts.append(f"{sink}: {why}")
    return "; ".join(parts)


async def _until(when: float, *events: asyncio.Event) -> None:
    """Sleep until the loop's time ``when``, or until one of ``events`` is set."""
    loop = asyncio.get_running_loop()
    delay = when - loop.time()
    if delay <= 0 or any(e.is_set() for e in events):
        return
    await wait_any(events, delay)


def run(config_path: Path, *, verbose: bool = False) -> int:
    """``mailpath agent run``. Raises ConfigError, CannotRun."""
    config = load(config_path)
    setup_logging(verbose)
    return asyncio.run(Daemon(config, config_path).run())


def once(config_path: Path, *, verbose: bool = False) -> int:
    """``mailpath agent once``. Raises ConfigError, CannotRun."""
    config = load(config_path)
    setup_logging(verbose)
    return asyncio.run(Daemon(config, config_path).once())
