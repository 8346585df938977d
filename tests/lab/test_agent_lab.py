"""``mailpath agent run`` in the lab: the agent and a collector run inside the client namespace
(the collector on the namespace's own 127.0.0.1; the test reads it through ``lab.relay``), the
targets are the mail lab's (``lab.test``: its MX hosts good and plain, behind r1 and r2, raw
probes). A fault switched on while the agent runs (r2 drops port 25) reaches the collector as
a changed finding within one interval (and the round that saw it); switched off, the next
change comes back the same way. Nothing that did not change is sent again."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lab.relay import Relay
from tests.conftest import MAILPATH

pytestmark = pytest.mark.lab

INTERVAL = 8.0
LISTENING = r"listening on http://127\.0\.0\.1:(\d+)"
ROUND = re.compile(r" round (\d+): .*, ([\d.]+) s$", re.M)


@pytest.fixture(scope="module")
def mail():
    from lab import Lab
    from lab.mail import setup_mail

    with Lab() as lab:
        yield setup_mail(lab)


class InLab:
    """A process in the client namespace, its output in a file, stopped by its pid."""

    def __init__(self, mail, argv: list[str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = mail.lab.popen("client", argv, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.log, re.M)
            if found:
                return found
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.log}"
            assert time.monotonic() < deadline, f"{pattern!r} not in the log:\n{self.log}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


@pytest.fixture
def world(mail, tmp_path) -> Iterator[dict]:
    """A collector in the client namespace, reachable from here through a relay; a token."""
    from mailpath.collector import admin

    db = f"sqlite:///{tmp_path / 'collector.db'}"
    collector = InLab(
        mail,
        [MAILPATH, "collector", "serve", "--database", db, "--listen", "127.0.0.1:0"],
        tmp_path / "c.log",
    )
    relays: list[Relay] = []
    try:
        port = int(collector.wait_log(LISTENING).group(1))
        relay = Relay(mail.lab.ns("client"), ("127.0.0.1", port))
        relays.append(relay)
        token, _ = admin.create_token(admin.settings_for(db), "lab-agent", "agent")
        (tmp_path / "token").write_text(token + "\n")
        yield {"inner": f"http://127.0.0.1:{port}", "outer": f"http://127.0.0.1:{relay.port}", "token": token}
    finally:
        for r in relays:
            r.close()
        collector.stop()
        mail.lab.reset_faults()


def findings(world: dict) -> list[dict]:
    headers = {"Authorization": f"Bearer {world['token']}"}
    with httpx.Client(base_url=world["outer"], headers=headers, trust_env=False, timeout=10) as c:
        items, cursor = [], None
        while True:
            r = c.get("/v1/findings", params={"agent": "lab-agent", **({"cursor": cursor} if cursor else {})})
            assert r.status_code == 200, r.text
            items += r.json()["items"]
            cursor = r.json()["next_cursor"]
            if not cursor:
                return sorted(items, key=lambda i: i["created_at"])


def causes(items: list[dict]) -> dict[tuple[str, int], list[str]]:
    out: dict[tuple[str, int], list[str]] = {}
    for i in items:
        out.setdefault((i["target"], i["port"]), []).append(i["cause"])
    return out


def wait_until(world: dict, predicate, timeout: float, what: str) -> tuple[list[dict], float]:
    """Poll the collector until ``predicate(findings)``; the findings and when they were there."""
    deadline = time.monotonic() + timeout
    while True:
        items = findings(world)
        if predicate(items):
            return items, time.monotonic()
        assert time.monotonic() < deadline, f"{what}: {causes(items)}"
        time.sleep(0.2)


def test_a_fault_switched_on_reaches_the_collector_within_one_interval(mail, world, tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""
agent_name = "lab-agent"
interval = {INTERVAL}
jitter = 0
heartbeat = 3600
spool_dir = "{tmp_path / "spool"}"
[probe]
method = "raw"
timeout = 0.5
retries = 1
min_wait = 1
smtp_timeout = 2
max_hops = 5
[cloud]
check = "off"
[[targets]]
target = "lab.test"
ports = [25, 587]
tls_ca_file = "{mail.ca_file}"
[collector]
url = "{world["inner"]}"
token_file = "{tmp_path / "token"}"
[metrics]
listen = "127.0.0.1:0"
"""
    )
    agent = InLab(mail, [MAILPATH, "agent", "run", "--config", str(cfg)], tmp_path / "agent.log")
    try:
        metrics_port = int(agent.wait_log(r"metrics: http://127\.0\.0\.1:(\d+)/metrics").group(1))
        keys = {(h, p) for h in ("good.lab.test", "plain.lab.test") for p in (25, 587)}
        before, _ = wait_until(world, lambda i: set(causes(i)) == keys, 60, "the first round's findings")
        assert causes(before)[("good.lab.test", 25)] == ["none"] and len(before) == 4
        assert {i["finding"]["domain"] for i in before} == {"lab.test"}

        # the fault: r2 drops every SYN to port 25
        agent.wait_log(r" round 2: ")  # (a round that finds nothing new sends nothing)
        assert len(findings(world)) == 4
        mail.lab.block("r2", 25, "drop")
        switched = time.monotonic()
        after, arrived = wait_until(
            world,
            lambda i: all(causes(i)[(h, 25)][-1] == "firewall" for h in ("good.lab.test", "plain.lab.test")),
            3 * INTERVAL + 60,
            "the changed findings",
        )
        longest = max(float(s) for _, s in ROUND.findall(agent.log))
        assert arrived - switched <= INTERVAL + longest + 2, (arrived - switched, longest, agent.log)
        for item in after[4:]:
            f = item["finding"]
            assert (f["port"], f["cause"], f["location"]["kind"], f["location"]["hop"]) == (
                25,
                "firewall",
                "hop",
                2,
            )
            assert {a["verdict"] for a in f["addresses"]} == {"filtered"}
        assert len(after) == 6  # 587 did not change: not sent again
        assert "changed: 25 on good.lab.test: none -> firewall\n" in agent.log

        relay = Relay(mail.lab.ns("client"), ("127.0.0.1", metrics_port))
        try:
            with httpx.Client(trust_env=False, timeout=10) as c:
                text = c.get(f"http://127.0.0.1:{relay.port}/metrics").text
        finally:
            relay.close()
        good25 = 'host="good.lab.test",port="25",target="lab.test"'
        good587 = 'host="good.lab.test",port="587",target="lab.test"'
        assert f'mailpath_target_state{{cause="firewall",{good25}}} 1.0' in text
        assert (
            f"mailpath_target_up{{{good25}}} 0.0" in text and f"mailpath_target_up{{{good587}}} 1.0" in text
        )
        assert f'mailpath_target_addresses{{{good25},verdict="filtered"}} 2.0' in text
        expiry = re.search(rf"mailpath_ssl_earliest_cert_expiry{{{good587}}} (\S+)", text)
        assert expiry and float(expiry.group(1)) > time.time()  # the lab CA's certificate, valid
        assert re.search(rf"mailpath_probe_rtt_seconds{{{good587}}} \S+", text)

        mail.lab.reset_faults()  # and back: the next change arrives the same way
        healed = time.monotonic()
        final, back = wait_until(
            world, lambda i: causes(i)[("good.lab.test", 25)][-1] == "none", 3 * INTERVAL + 60, "the repair"
        )
        longest = max(float(s) for _, s in ROUND.findall(agent.log))
        assert back - healed <= INTERVAL + longest + 2
        assert len({i["id"] for i in final}) == len(final) == 8

        agent.proc.send_signal(signal.SIGTERM)
        assert agent.proc.wait(60) == 0, agent.log
        assert "stopped: " in agent.log
    finally:
        agent.stop()
