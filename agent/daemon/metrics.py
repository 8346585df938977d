"""The agent's metrics, in a registry of its own, served with ``/healthz`` on ``[metrics] listen``.

Per target and port (labels ``target``: as configured, ``host``: the host probed, an MX host
or the target itself, ``port``), from the latest diagnosis:

- ``mailpath_target_state{cause}`` 1 for the current cause (one series per target and port)
- ``mailpath_target_up`` 1 when mail can go (cause ``none``), else 0
- ``mailpath_target_addresses{verdict}`` the addresses with each transport verdict
- ``mailpath_probe_rtt_seconds`` the fastest answer to a probe (an open port), when there is one
- ``mailpath_ssl_earliest_cert_expiry`` when the earliest certificate expires (Unix time, as
  blackbox_exporter's ``probe_ssl_earliest_cert_expiry``), and
  ``mailpath_ssl_earliest_cert_expiry_seconds_left`` the seconds left at the scrape
- ``mailpath_target_last_diagnosis_timestamp_seconds``

and ``mailpath_target_errors_total{target}`` (diagnoses that failed). Rounds:
``mailpath_round_duration_seconds`` (histogram), ``mailpath_last_round_timestamp_seconds``.
The spool: ``mailpath_spool_pending``, ``mailpath_spool_dead_letters``,
``mailpath_spool_dropped_total`` (the spool file's counts), ``mailpath_findings_spooled_total{why}``.
Delivery (the :class:`~mailpath.agent.daemon.delivery.Events` the delivery reports):
``mailpath_delivered_total{sink}``, ``mailpath_delivery_retries_total{sink,reason}``,
``mailpath_dead_letters_total{sink}``. And ``mailpath_config_reloads_total{result}``,
``mailpath_agent_info{version}``.

Labels stay bounded: targets and ports come from the configuration, hosts from its targets'
MX records (a target's series are replaced as a whole after each of its diagnoses, and those of
a target taken out of the configuration are removed), causes and verdicts are fixed
vocabularies, sinks are three, and retry reasons short fixed labels (``connect``, ``timeout``,
``http-503``...).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from mailpath.agent import __version__
from mailpath.agent.daemon.rounds import PortFacts
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("mailpath.agent")

ROUND_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
STALE_LOOP = 30.0  # /healthz fails when the event loop has not ticked for this long


class _Targets(Collector):
    """The per-target series, built at each scrape from the latest facts (so a target's series
    are replaced as a whole, and the seconds left are computed at the scrape)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._facts: dict[str, tuple[float, list[PortFacts]]] = {}  # target -> (when, facts)

    def update(self, target: str, facts: list[PortFacts], at: float) -> None:
        with self._lock:
            self._facts[target] = (at, list(facts))

    def keep(self, targets: Iterable[str]) -> None:
        keep = set(targets)
        with self._lock:
            for t in [t for t in self._facts if t not in keep]:
                del self._facts[t]

    def collect(self):
        labels = ["target", "host", "port"]
        state = GaugeMetricFamily(
            "mailpath_target_state",
            "1 for the current cause of each target and port",
            labels=[*labels, "cause"],
        )
        up = GaugeMetricFamily("mailpath_target_up", "1 when mail can go (cause none), else 0", labels=labels)
        addresses = GaugeMetricFamily(
            "mailpath_target_addresses", "Addresses by transport verdict", labels=[*labels, "verdict"]
        )
        rtt = GaugeMetricFamily(
            "mailpath_probe_rtt_seconds", "The fastest answer to a probe of an open port", labels=labels
        )
        expiry = GaugeMetricFamily(
            "mailpath_ssl_earliest_cert_expiry",
            "Unix time at which the earliest TLS certificate seen expires",
            labels=labels,
        )
        left = GaugeMetricFamily(
            "mailpath_ssl_earliest_cert_expiry_seconds_left",
            "Seconds until the earliest TLS certificate seen expires (negative: expired)",
            labels=labels,
        )
        last = GaugeMetricFamily(
            "mailpath_target_last_diagnosis_timestamp_seconds",
            "Unix time of the latest diagnosis of the target and port",
            labels=labels,
        )
        now = time.time()
        with self._lock:
            items = sorted(self._facts.items())
        for target, (at, facts) in items:
            for f in facts:
                key = [target, f.host, str(f.port)]
                state.add_metric([*key, f.cause], 1)
                up.add_metric(key, 1 if f.cause == "none" else 0)
                for verdict, n in sorted(f.verdicts.items()):
                    addresses.add_metric([*key, verdict], n)
                if f.rtt is not None:
                    rtt.add_metric(key, f.rtt)
                if f.cert_not_after is not None:
                    expiry.add_metric(key, f.cert_not_after)
                    left.add_metric(key, f.cert_not_after - now)
                last.add_metric(key, at)
        yield from (state, up, addresses, rtt, expiry, left, last)


class _Spool(Collector):
    """The spool's counts, as last read from the file (by the daemon's loop)."""

    def __init__(self) -> None:
        self.pending = self.dead = self.dropped = 0

    def collect(self):
        yield GaugeMetricFamily(
            "mailpath_spool_pending", "Findings in the spool, not yet delivered", self.pending
        )
        yield GaugeMetricFamily("mailpath_spool_dead_letters", "Dead letters kept in the spool", self.dead)
        yield CounterMetricFamily(
            "mailpath_spool_dropped",
            "Findings let go by the spool's bounds (count, age) or a full disk, since the spool was made",
            self.dropped,
        )


class Metrics:
    """Every metric of the agent; also the delivery's ``Events`` (delivered, retried, dead,
    dropped)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.targets = _Targets()
        self.spool = _Spool()
        r.register(self.targets)
        r.register(self.spool)
        Info("mailpath_agent", "The agent", registry=r).info({"version": __version__})
        self.target_errors = Counter(
            "mailpath_target_errors", "Diagnoses of a target that failed", ["target"], registry=r
        )
        self.round_duration = Histogram(
            "mailpath_round_duration_seconds", "Duration of each round", buckets=ROUND_BUCKETS, registry=r
        )
        self.last_round = Gauge(
            "mailpath_last_round_timestamp_seconds", "Unix time the latest round ended", registry=r
        )
        self.spooled = Counter(
            "mailpath_findings_spooled",
            "Findings put in the spool, by why they were sent",
            ["why"],
            registry=r,
        )
        self.delivered_total = Counter(
            "mailpath_delivered", "Findings a sink acknowledged", ["sink"], registry=r
        )
        self.retries = Counter(
            "mailpath_delivery_retries", "Batches tried again, by reason", ["sink", "reason"], registry=r
        )
        self.dead_total = Counter(
            "mailpath_dead_letters", "Findings a sink refused for good", ["sink"], registry=r
        )
        self.reloads = Counter(
            "mailpath_config_reloads", "Configuration reloads (SIGHUP), by result", ["result"], registry=r
        )
        self.alive_at = time.monotonic()
        self.last_round_at: float | None = None
        self._spool_source = None
        self._failed: set[str] = set()  # targets with a mailpath_target_errors_total series

    # -- rounds ----------------------------------------------------------------------------------

    def target_done(self, target: str, facts: list[PortFacts] | None, error: str | None) -> None:
        """A target's diagnosis: its facts replace its series; a failure is counted and keeps
        the previous facts (the last known state)."""
        if error is not None:
            self.target_errors.labels(target).inc()
            self._failed.add(target)
            return
        self.targets.update(target, facts or [], time.time())

    def round_done(self, seconds: float, sent: dict[str, int]) -> None:
        self.round_duration.observe(seconds)
        self.last_round.set(time.time())
        self.last_round_at = time.monotonic()
        for why, n in sent.items():
            self.spooled.labels(why).inc(n)

    def keep_targets(self, targets: Iterable[str]) -> None:
        """Remove every series of targets not in ``targets`` (after a reload)."""
        targets = list(targets)
        self.targets.keep(targets)
        for target in self._failed - set(targets):
            self.target_errors.remove(target)
            self._failed.discard(target)

    # -- the spool -------------------------------------------------------------------------------

    def watch_spool(self, spool) -> None:
        self._spool_source = spool
        self.refresh_spool()

    def refresh_spool(self) -> None:
        """Read the spool's counts (the daemon's loop calls this after each change and every few
        seconds; never from the scrape's thread, which could wait on the spool's lock)."""
        if self._spool_source is None:
            return
        try:
            c = self._spool_source.counts()
        except Exception as e:  # the spool's own errors: the metrics keep the last counts
            log.warning("cannot read the spool's counts: %s", e)
            return
        self.spool.pending, self.spool.dead, self.spool.dropped = c.pending, c.dead, c.dropped

    # -- the delivery's events -------------------------------------------------------------------

    def delivered(self, sink: str, n: int) -> None:
        self.delivered_total.labels(sink).inc(n)

    def retried(self, sink: str, reason: str) -> None:
        self.retries.labels(sink, reason).inc()

    def dead(self, sink: str, n: int) -> None:
        self.dead_total.labels(sink).inc(n)

    def dropped(self, n: int) -> None:
        log.warning("spool: %d finding(s) dropped (the spool's bounds or a full disk)", n)

    # -- health ----------------------------------------------------------------------------------

    def tick(self) -> None:
        self.alive_at = time.monotonic()

    def health(self) -> tuple[bool, str]:
        stalled = time.monotonic() - self.alive_at
        if stalled > STALE_LOOP:
            return False, f"the agent's event loop has not run for {stalled:.0f} s"
        if self.last_round_at is None:
            return True, "ok: no round finished yet"
        return True, f"ok: last round ended {time.monotonic() - self.last_round_at:.0f} s ago"

    def wsgi_app(self):
        metrics = make_wsgi_app(self.registry)

        def app(environ, start_response):
            path = environ.get("PATH_INFO", "")
            if path == "/metrics":
                return metrics(environ, start_response)
            if path == "/healthz":
                ok, text = self.health()
                start_response(
                    "200 OK" if ok else "503 Service Unavailable",
                    [("Content-Type", "text/plain; charset=utf-8")],
                )
                return [(text + "\n").encode()]
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: /metrics and /healthz are here\n"]

        return app


# -- the HTTP server -------------------------------------------------------------------------------


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args):  # no access log on stderr: the agent's log is its own
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """``/metrics`` and ``/healthz`` on ``host:port`` (port 0: any free port), in a thread."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        cls = _Server6 if ":" in host else _Server
        self.server = make_server(host, port, metrics.wsgi_app(), server_class=cls, handler_class=_Quiet)
        self.host = host
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
