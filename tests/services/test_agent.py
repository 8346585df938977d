"""``mailpath agent once`` and ``mailpath agent run`` for real: subprocesses that diagnose
targets on 127.0.0.1 (an SMTP server of the lab's, ``lab.smtpd``, and closed ports; connect()
probes) and deliver to a collector process, also started here on 127.0.0.1.

What is checked: the findings in the collector are those the agent made, none twice, and with
``report = "changes"`` only the changed ones after the first; a collector that is down leaves
them in the spool (exit 4) for the next run; SIGTERM lets a running diagnosis finish (within
its bound) and flushes the spool before exit 0; SIGHUP reloads (a bad file is logged and the
one in use kept); /metrics and /healthz answer; status --json is the published document; no
secret is ever in an output or the spool. Every process is stopped by its pid, even on failure.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from mailpath.agent.daemon.rounds import signature

from tests.conftest import MAILPATH, validate_document
from tests.services.conftest import Collector, pages

ROOT = Path(__file__).resolve().parents[2]


def agent_env(**extra: str) -> dict[str, str]:
    """The environment without any MAILPATH_* setting of the caller's."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MAILPATH_")}, **extra}


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def wait_for(
    what: Callable[[], object], timeout: float, message: str, log: Callable[[], str] = str
) -> object:
    """``what()`` once it is true; else fail after ``timeout`` with ``message`` and ``log()``."""
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out ({timeout} s): {message}\n{log()}")
        time.sleep(0.1)


class Smtpd:
    """``python -m lab.smtpd`` on 127.0.0.1: an aiosmtpd server (or a broken one)."""

    def __init__(self, folder: Path, port: int, behaviour: str = "smtp") -> None:
        spec = folder / f"smtpd-{port}.json"
        spec.write_text(json.dumps([{"address": "127.0.0.1", "port": port, "behaviour": behaviour}]))
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lab.smtpd", str(spec)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        if self.proc.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError("lab.smtpd did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Agent:
    """``mailpath agent run`` in a subprocess, its log (stderr) in a file."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.log_path = config.with_suffix(".log")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Agent:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [MAILPATH, "agent", "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=agent_env(),
        )
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 30, count: int = 1) -> None:
        def seen():
            assert self.proc.poll() is None, f"the agent exited with {self.proc.returncode}:\n{self.log}"
            return self.log.count(text) >= count

        wait_for(seen, timeout, f"{text!r} ×{count} in the agent's log:\n{self.log}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc is not None:
            self._log.close()


@pytest.fixture(scope="module")
def collector(tmp_path_factory) -> Iterator[Collector]:
    """One collector (SQLite) for this module; each test has agents of its own."""
    server = Collector(tmp_path_factory.mktemp("collector"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def processes() -> Iterator[list]:
    """Everything a test starts (Smtpd, Agent, Collector), stopped at its end."""
    started: list = []
    yield started
    for p in reversed(started):
        p.stop()


def config(
    folder: Path,
    collector_url: str,
    token_file: Path,
    targets: list[tuple[str, list[int]]],
    *,
    name: str = "agent.toml",
    extra: str = "",
    delivery: str = "",
    target_extra: str = "",
) -> Path:
    """An agent configuration: connect() probes, no cloud, the collector as its sink."""
    lines = [
        f'spool_dir = "{folder / "spool"}"',
        'agent_name = "loopback-agent"',
        "heartbeat = 3600",
        extra,
        "[probe]",
        'method = "connect"',
        "timeout = 0.3",
        "retries = 0",
        "min_wait = 0",
        "smtp_timeout = 2",
        "[cloud]",
        'check = "off"',
    ]
    for target, ports in targets:
        lines += ["[[targets]]", f'target = "{target}"', f"ports = {ports}", target_extra]
    lines += [
        "[delivery]",
        "retry_attempts = 2",
        "backoff_base = 0.1",
        "backoff_cap = 0.5",
        delivery,
        "[collector]",
        f'url = "{collector_url}"',
        f'token_file = "{token_file}"',
        "[metrics]",
        'listen = "127.0.0.1:0"',
    ]
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def mailpath(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([MAILPATH, *args], capture_output=True, text=True, timeout=timeout, env=agent_env())


def stored(collector: Collector, token: str, agent: str) -> list[dict]:
    with collector.client(token) as c:
        return pages(c, "/v1/findings", agent=agent)


def by_port(items: list[dict]) -> dict[int, list[str]]:
    """port -> causes, oldest first."""
    out: dict[int, list[str]] = {}
    for item in sorted(items, key=lambda i: i["created_at"]):
        out.setdefault(item["port"], []).append(item["cause"])
    return out


def refused_last(items: list[dict], port: int) -> bool:
    """The latest finding of ``port`` says nothing listens there any more."""
    mine = sorted((i for i in items if i["port"] == port), key=lambda i: i["created_at"])
    return bool(mine) and [a["verdict"] for a in mine[-1]["finding"]["addresses"]] == ["refused"]


def status(cfg: Path) -> dict:
    r = mailpath("agent", "status", "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    validate_document(doc)
    return doc


# -- once ------------------------------------------------------------------------------------


def test_once_delivers_then_only_what_changed(collector, name, tmp_path, processes):
    token_file = tmp_path / "token"
    token_file.write_text(collector.token(name) + "\n")
    smtp, closed = free_port(), free_port()
    server = Smtpd(tmp_path, smtp)
    processes.append(server)
    cfg = config(tmp_path, collector.url, token_file, [("127.0.0.1", [smtp, closed])])

    r = mailpath("agent", "once", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # the log is on stderr; stdout is the stdout sink's
    assert "round 1: 1/1 targets, 1/2 problems, 2 sent (2 new)" in r.stderr
    first = stored(collector, token_file.read_text().strip(), name)
    assert by_port(first) == {smtp: ["none"], closed: ["service"]}
    assert {f["finding"]["agent"]["hostname"] for f in first} == {"loopback-agent"}
    doc = status(cfg)
    assert doc["spool"] == {
        "path": str(tmp_path / "spool" / "spool.db"),
        "pending": 0,
        "dead": 0,
        "dropped": 0,
    }
    assert doc["last_round"]["sent"] == 2 and doc["last_round"]["number"] == 1
    assert doc["last_delivery"]["collector"]["delivered"]["findings"] == 2 and doc["dead_letters"] == []

    r = mailpath("agent", "once", "--config", str(cfg))  # nothing changed: nothing sent
    assert r.returncode == 0 and "round 2: 1/1 targets, 1/2 problems, 0 sent" in r.stderr
    assert len(stored(collector, token_file.read_text().strip(), name)) == 2

    server.stop()  # the SMTP server goes away: its port's finding changes
    r = mailpath("agent", "once", "--config", str(cfg))
    assert r.returncode == 0 and "2 sent" not in r.stderr and "1 sent (1 changed)" in r.stderr
    assert f"changed: {smtp} on 127.0.0.1: none -> service\n" in r.stderr
    after = stored(collector, token_file.read_text().strip(), name)
    assert by_port(after) == {smtp: ["none", "service"], closed: ["service"]}
    assert len({f["id"] for f in after}) == 3


def test_once_with_the_collector_down_keeps_the_findings_for_the_next_run(collector, name, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(collector.token(name) + "\n")
    closed = [free_port(), free_port()]
    down = config(tmp_path, f"http://127.0.0.1:{free_port()}", token_file, [("127.0.0.1", closed)])
    r = mailpath("agent", "once", "--config", str(down))
    assert r.returncode == 4, r.stderr
    assert "delivered 0; 2 pending in the spool; collector: " in r.stderr
    doc = status(down)
    assert doc["spool"]["pending"] == 2 and doc["last_delivery"]["collector"]["failed"]["reason"] == "connect"
    human = mailpath("agent", "status", "--config", str(down)).stdout
    assert "  pending  2\n" in human
    assert all(len(line) <= 80 for line in human.splitlines()[1:])  # (the first is the spool's path)

    up = config(tmp_path, collector.url, token_file, [("127.0.0.1", closed)], name="up.toml")
    r = mailpath("agent", "once", "--config", str(up))  # the same spool, the collector up
    assert r.returncode == 0, r.stderr
    assert "0 sent" in r.stderr and "delivered 2; 0 pending" in r.stderr  # the spooled ones, not new ones
    assert by_port(stored(collector, token_file.read_text().strip(), name)) == {
        p: ["service"] for p in closed
    }


def test_no_secret_in_any_output_nor_in_the_spool(collector, name, tmp_path, processes):
    secret = "pw-" + os.urandom(8).hex()
    token = collector.token(name)
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "password").write_text(secret + "\n")
    smtp = free_port()
    processes.append(Smtpd(tmp_path, smtp))
    cfg = config(
        tmp_path,
        collector.url,
        tmp_path / "token",
        [("127.0.0.1", [smtp])],
        target_extra=f'smtp_user = "alice"\nsmtp_password_file = "{tmp_path / "password"}"',
    )
    outputs = [mailpath("agent", "once", "--config", str(cfg), "--verbose")]
    outputs += [
        mailpath("agent", "status", "--config", str(cfg)),
        mailpath("agent", "status", "-c", str(cfg), "--json"),
    ]
    assert outputs[0].returncode == 0, outputs[0].stderr
    text = "".join(o.stdout + o.stderr for o in outputs)
    text += json.dumps(stored(collector, token, name))
    spool = b"".join(p.read_bytes() for p in (tmp_path / "spool").iterdir())
    assert secret not in text and token not in text
    assert secret.encode() not in spool and token.encode() not in spool


# -- run ---------------------------------------------------------------------------------------


def metrics_url(agent: Agent) -> str:
    agent.wait_log("metrics: http://127.0.0.1:")
    line = next(x for x in agent.log.splitlines() if "metrics: http://" in x)
    return line.split("metrics: ", 1)[1].removesuffix("/metrics")


def test_run_sends_changes_reloads_on_sighup_and_exits_0_on_sigterm(collector, name, tmp_path, processes):
    token_file = tmp_path / "token"
    token_file.write_text(collector.token(name) + "\n")
    token = token_file.read_text().strip()
    smtp, closed = free_port(), free_port()
    server = Smtpd(tmp_path, smtp)
    processes.append(server)
    targets = [("127.0.0.1", [smtp, closed])]
    cfg = config(tmp_path, collector.url, token_file, targets, extra="interval = 1.5\njitter = 0")
    agent = Agent(cfg).start()
    processes.append(agent)
    base = metrics_url(agent)
    agent.wait_log("round 1:")
    # (>= 2: on a loaded machine an SMTP check may time out once, a change that is sent too)
    wait_for(lambda: len(stored(collector, token, name)) >= 2, 15, "the first findings", lambda: agent.log)
    smtp_labels = f'host="127.0.0.1",port="{smtp}",target="127.0.0.1"'
    with httpx.Client(base_url=base, trust_env=False, timeout=5) as c:
        text = c.get("/metrics").text
        assert f'mailpath_target_up{{host="127.0.0.1",port="{closed}",target="127.0.0.1"}} 0.0' in text
        assert f'mailpath_target_state{{cause="service",host="127.0.0.1",port="{closed}"' in text
        expected = [
            f'mailpath_target_state{{cause="none",{smtp_labels}}} 1.0',
            f"mailpath_probe_rtt_seconds{{{smtp_labels}}}",
        ]
        wait_for(lambda: all(e in c.get("/metrics").text for e in expected), 10, "the SMTP port's series")
        delivered = re.compile(r'^mailpath_delivered_total\{sink="collector"\} (\S+)$', re.M)
        wait_for(lambda: delivered.search(c.get("/metrics").text), 5, "the delivery counted")
        assert float(delivered.search(c.get("/metrics").text)[1]) >= 2
        assert c.get("/healthz").status_code == 200

    server.stop()  # a change while the agent runs: it arrives within the next round
    changed_at = time.monotonic()
    wait_for(lambda: refused_last(stored(collector, token, name), smtp), 10, "the change", lambda: agent.log)
    assert time.monotonic() - changed_at < 1.5 + 5  # one interval, and a round's length

    cfg.write_text(cfg.read_text() + "bogus = 1\n")
    agent.signal(signal.SIGHUP)
    agent.wait_log("reload: the configuration in use is kept")
    assert f"error: reload: {cfg}: metrics.bogus: unknown key" in agent.log
    rounds = agent.log.count(" round ")
    agent.wait_log(" round ", count=rounds + 1)  # rounds go on with the old configuration

    new_port = free_port()
    config(
        tmp_path,
        collector.url,
        token_file,
        [*targets, ("127.0.0.2", [new_port])],
        extra="interval = 1.5\njitter = 0",
    )
    agent.signal(signal.SIGHUP)
    agent.wait_log("reload: 2 targets (3 ports), every 1.5 s, report changes, to collector")
    wait_for(
        lambda: new_port in by_port(stored(collector, token, name)),
        10,
        "the new target's finding",
        lambda: agent.log,
    )

    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0, agent.log
    assert "SIGTERM: stopping" in agent.log and "stopped: " in agent.log
    found = stored(collector, token, name)
    assert by_port(found)[closed] == ["service"] and by_port(found)[new_port] == ["service"]
    assert by_port(found)[smtp][0] == "none" and refused_last(found, smtp)
    for port in (smtp, closed, new_port):  # each one sent was a change: no signature twice in a row
        sigs = [
            signature(f["finding"]) for f in sorted(found, key=lambda f: f["created_at"]) if f["port"] == port
        ]
        assert all(a != b for a, b in itertools.pairwise(sigs)), sigs
    assert len({f["id"] for f in found}) == len(found)  # none twice
    assert status(cfg)["spool"]["pending"] == 0


class _Unavailable(BaseHTTPRequestHandler):
    """A collector that is "down for maintenance": 503 with a Retry-After of an hour."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.posts += 1
        self.send_response(503)
        self.send_header("Retry-After", "3600")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"detail": "maintenance"}')

    def log_message(self, *args):
        pass


def test_sigterm_flushes_what_the_spool_holds(tmp_path, name, processes):
    """The running delivery waits an hour (Retry-After); the collector comes up; SIGTERM's flush
    delivers at once what the rounds spooled."""
    port = free_port()
    fake = ThreadingHTTPServer(("127.0.0.1", port), _Unavailable)
    fake.posts = 0
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    token_file = tmp_path / "token"
    token_file.write_text("not-yet\n")
    closed = [free_port(), free_port()]
    cfg = config(
        tmp_path,
        f"http://127.0.0.1:{port}",
        token_file,
        [("127.0.0.1", closed)],
        delivery="retry_after_max = 3600",
    )
    agent = Agent(cfg).start()
    processes.append(agent)
    try:
        wait_for(lambda: fake.posts >= 1, 20, "the agent's first delivery attempt")
        agent.wait_log("attempt 1 failed")
    finally:
        fake.shutdown()
        fake.server_close()
    real = Collector(tmp_path / "collector")
    (tmp_path / "collector").mkdir()
    real.listen = f"127.0.0.1:{port}"
    processes.append(real)
    real.start()
    token_file.write_text(real.token(name) + "\n")  # the token is read at each attempt
    assert stored(real, real.tokens[0], name) == []
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0, agent.log
    assert "stopped: delivered 2; 0 pending in the spool" in agent.log
    assert by_port(stored(real, real.tokens[0], name)) == {p: ["service"] for p in closed}


def test_sigterm_lets_a_running_diagnosis_finish(collector, name, tmp_path, processes):
    """A server that never greets holds its diagnosis for smtp_timeout (2 s); SIGTERM during it
    waits (stop_timeout 10 s), and the finding is delivered before exit 0."""
    token_file = tmp_path / "token"
    token_file.write_text(collector.token(name) + "\n")
    silent = free_port()
    processes.append(Smtpd(tmp_path, silent, "never-greet"))
    cfg = config(tmp_path, collector.url, token_file, [("127.0.0.1", [silent])], extra="stop_timeout = 10")
    agent = Agent(cfg).start()
    processes.append(agent)
    agent.wait_log("mailpath agent: ")
    time.sleep(0.5)  # the round is under way: the SMTP check waits for a greeting
    assert "round 1:" not in agent.log
    start = time.monotonic()
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0, agent.log
    assert time.monotonic() - start > 0.5  # it waited for the diagnosis
    assert "round 1: 1/1 targets, 1/1 problems, 1 sent (1 new)" in agent.log
    (found,) = stored(collector, token_file.read_text().strip(), name)
    assert found["port"] == silent and found["cause"] == "service"


def test_sigterm_cancels_a_diagnosis_past_stop_timeout(collector, name, tmp_path, processes):
    token_file = tmp_path / "token"
    token_file.write_text(collector.token(name) + "\n")
    silent = free_port()
    processes.append(Smtpd(tmp_path, silent, "never-greet"))
    cfg = config(
        tmp_path,
        collector.url,
        token_file,
        [("127.0.0.1", [silent])],
        extra="stop_timeout = 0.2\nflush_timeout = 2",
        target_extra="",
    )
    cfg.write_text(cfg.read_text().replace("smtp_timeout = 2", "smtp_timeout = 30"))
    agent = Agent(cfg).start()
    processes.append(agent)
    agent.wait_log("mailpath agent: ")
    time.sleep(0.5)
    start = time.monotonic()
    agent.signal(signal.SIGTERM)
    assert agent.wait(15) == 0, agent.log
    assert time.monotonic() - start < 10  # not the 30 s of the SMTP timeout
    assert "diagnoses still running after 0.2 s are cancelled" in agent.log
    assert "round 1: 0/1 targets" in agent.log and "interrupted" in agent.log
    assert stored(collector, token_file.read_text().strip(), name) == []
