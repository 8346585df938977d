"""``make demo``: the whole product in a lab, as a newcomer would use it.

A lab of network namespaces on this machine (``client -> r1 -> r2 -> server``, see
:mod:`lab.network`) with the mail world of :mod:`lab.mail` on the server (DNS with MX records,
SMTP servers good and broken, Exim, a private CA) and, in the client namespace, the cloud
emulation of :mod:`lab.cloud` (moto and an IMDSv2: the client is an EC2 instance whose
security group lets out 25 and 587 only, :mod:`lab.demo_cloud`). Then, each as the command
typed and its output, run in the client namespace:

1. ``dns``: where mail for lab.test goes;
2. ``probe``: every transport verdict, from faults on r1 and r2 (a RST forged at hop 2, an
   ICMP reject at hop 1, a silent drop, no route, nothing listening);
3. ``trace``: the hop that forges the RST;
4. ``smtp``: an expired certificate;
5. ``cloud``: the security group and the provider's port-25 policy, read from moto;
6. ``diagnose``: all of it joined into findings, r1 dropping what the cloud would drop;
7. the collector on SQLite (in the client namespace, on its 127.0.0.1) and its tokens;
8. ``agent once``, round after round, while faults are switched on and off: each round's
   findings one line per target and port;
9. the agent's delivery through a collector outage: the round spools, the spool's counts
   before and after the collector is back, the spooled findings in the collector;
10. the collector's view (``GET /v1/targets``);
11. on a terminal, the dashboard through :class:`lab.relay.Relay` on the host's 127.0.0.1,
    with a viewer token, until Ctrl-C; without one, the demo ends there.

What each part showed is checked against what its faults should make it show; the exit code
is 0 when everything was as expected, 1 otherwise (or on an error), 130 on Ctrl-C, 143 on
SIGTERM. The lab (its namespaces, every process started in them, the work folder) is torn
down in every case: at the end, on an error, on Ctrl-C and on SIGTERM. Output fits 80
columns (child commands get ``COLUMNS``; any longer line is wrapped) and is plain text off a
terminal.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MAILPATH = str(Path(sys.executable).with_name("mailpath"))
WIDTH = 80
AGENT = "demo-agent"
DATABASE = "sqlite:///collector.db"  # in the work folder, the commands' working directory
GOOD, PLAIN = "good.lab.test", "plain.lab.test"
FAST = ["--timeout", "0.5", "--retries", "1"]  # the lab answers in milliseconds
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
FINDING = re.compile(r"(\d+) on ([\w.-]+): [^—]*? — ([\w-]+)")  # a report's headline


@dataclass
class Shown:
    """A command the demo showed: its exit code and output."""

    code: int
    out: str
    err: str = ""

    @property
    def flat(self) -> str:
        """stdout and stderr on one line, runs of white space as one space (wrapping undone)."""
        return " ".join(f"{self.out} {self.err}".split())


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d ")  # the agent's log: a timestamp first


def say(text: str = "", width: int = WIDTH) -> None:
    """Print ``text``; a line wider than ``width`` is wrapped at spaces with a hanging indent
    (a log line's under its message, after the timestamp)."""
    for line in text.splitlines() or [""]:
        line = line.rstrip()
        if len(line) <= width:
            print(line)
            continue
        if LOG_LINE.match(line):
            hang = " " * 22
        else:
            lead = re.match(r"\s*", line).group()
            hang = lead + "    " if len(lead) + 24 < width else ""
        print("\n".join(textwrap.wrap(line, width, subsequent_indent=hang, break_on_hyphens=False)))


def command(argv: Sequence[str], width: int = WIDTH) -> str:
    """``$ ARGV`` as typed; a long one continues on the next lines after a backslash, never
    between an option and its value."""
    units: list[str] = []
    for word in argv:
        if units and units[-1].startswith("-") and " " not in units[-1] and not word.startswith("-"):
            units[-1] += " " + word
        else:
            units.append(word)
    lines, line = [], "$"
    for unit in units:
        if len(line) + 1 + len(unit) > width - 2 and line != "$":
            lines.append(line + " \\")
            line = "   "
        line += " " + unit
    return "\n".join([*lines, line])


class Failed(Exception):
    """A step the rest of the demo depends on did not work."""


class Demo:
    def __init__(
        self, lab, workdir: Path, env: dict[str, str], width: int, ids: dict, interactive: bool
    ) -> None:
        self.lab, self.workdir, self.env, self.width = lab, workdir, env, width
        self.ids = ids  # the EC2 world: instance, sg, eni
        self.interactive = interactive
        self.failures: list[str] = []
        self.checks = 0
        self.collector = None
        self.relay = None
        self.port = 0  # the collector's, in the client namespace
        self.tokens: dict[str, str] = {}
        self.final: dict[tuple[str, int], str] = {}  # the agent's last findings: cause by target, port
        self._log_offset = 0

    # -- output ------------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        say(text, self.width)

    def prose(self, text: str) -> None:
        print(textwrap.fill(text, self.width, break_on_hyphens=False))

    def heading(self, title: str) -> None:
        self.say(f"\n{title}\n{'=' * min(len(title), self.width)}")

    def note(self, text: str) -> None:
        """A comment on what follows, as a shell comment."""
        for line in textwrap.wrap(text, self.width - 2, break_on_hyphens=False):
            self.say(f"# {line}")

    def expect(self, ok: bool, what: str) -> bool:
        """Record a check of what was shown; a failed one is said at once and at the end."""
        self.checks += 1
        if not ok:
            self.failures.append(what)
            self.say(f"!! not as expected: {what}")
        return ok

    # -- running things in the client namespace ----------------------------------------------

    def run(self, argv: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", self.lab.ns("client"), *argv],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
        )

    def show(self, args: Sequence[str], *, typed: str | None = None, stdout_to: str | None = None) -> Shown:
        """``$ mailpath ARGS`` as typed, then its output (stdout, then stderr, or only stderr
        when stdout goes to the file ``stdout_to``), then its exit code."""
        self.say(command(typed.split() if typed else ["mailpath", *args], self.width))
        r = self.run([MAILPATH, *args])
        if stdout_to is not None:
            (self.workdir / stdout_to).write_text(r.stdout)
        else:
            self.say(r.stdout.rstrip("\n"))
        if r.stderr.strip():
            self.say(r.stderr.rstrip("\n"))
        self.say(f"(exit {r.returncode})")
        return Shown(r.returncode, r.stdout, r.stderr)

    # -- the collector -----------------------------------------------------------------------

    def start_collector(self, listen: str) -> None:
        from lab.relay import Relay

        argv = ["collector", "serve", "--database", DATABASE, "--listen", listen]
        self.say(command(["mailpath", *argv, "&"], self.width))
        log = self.workdir / "collector.log"
        self._log_offset = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as f:
            self.collector = self.lab.popen(
                "client",
                [MAILPATH, *argv],
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self.env,
            )
        deadline = time.monotonic() + 60
        while not (found := LISTENING.search(log.read_bytes()[self._log_offset :].decode(errors="replace"))):
            if self.collector.poll() is not None or time.monotonic() > deadline:
                raise Failed(f"the collector did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)
        self.port = int(found.group(1))
        if self.relay is None:
            self.relay = Relay(self.lab.ns("client"), ("127.0.0.1", self.port))
        while True:  # the port is bound before the application has started
            with contextlib.suppress(Exception):
                if self.http("GET", "/readyz").status_code == 200:
                    break
            if self.collector.poll() is not None or time.monotonic() > deadline:
                raise Failed("the collector did not become ready")
            time.sleep(0.1)
        self.say(f"  listening on http://127.0.0.1:{self.port} (in the client namespace)")

    def stop_collector(self) -> None:
        self.say("$ kill %1    # the collector stops (SIGTERM)")
        self.collector.terminate()
        self.collector.wait(20)
        self.say("  the collector has stopped")

    def http(self, method: str, path: str, token: str | None = None, headers: dict | None = None, **kw):
        """A request to the collector through the relay on the host's 127.0.0.1."""
        import httpx

        headers = dict(headers or {}) | ({"Authorization": f"Bearer {token}"} if token else {})
        with httpx.Client(trust_env=False, timeout=10) as c:
            return c.request(method, f"http://127.0.0.1:{self.relay.port}{path}", headers=headers, **kw)


# -- the parts ---------------------------------------------------------------------------------


def part_setup(d: Demo) -> None:
    lab, ids = d.lab, d.ids
    d.say(f"mailpath demo: lab {lab.prefix}, work folder {d.workdir}")
    d.prose(
        f"The lab: client -> r1 (hop 1, {lab.addr('r1')}) -> r2 (hop 2, {lab.addr('r2')}) -> "
        "server (hop 3), network namespaces on this machine with addresses from "
        "198.18.0.0/15 and 2001:db8::/32; nothing sent here leaves the lab."
    )
    d.prose(
        "The server hosts the mail world of lab.test: dnsmasq (MX 10 good.lab.test, MX 20 "
        "plain.lab.test, ...), SMTP servers good and broken (aiosmtpd, Exim, OpenSSL), "
        "certificates from a private CA (ca.pem here)."
    )
    d.prose(
        f"The client is EC2 instance {ids['instance']} to mailpath: moto (the EC2 API) and "
        f"an IMDSv2 run on its 127.0.0.1; its security group {ids['sg']} lets out TCP 25 "
        "and 587 only. Every command below runs in the client namespace."
    )


def part_dns(d: Demo) -> None:
    d.heading("1. dns: where mail for lab.test goes")
    r = d.show(["dns", "lab.test"])
    d.expect(r.code == 0, f"dns exits 0 (it exited {r.code})")
    d.expect(GOOD in r.out and PLAIN in r.out, "dns lists the MX hosts good.lab.test and plain.lab.test")


def part_probe(d: Demo) -> None:
    lab = d.lab
    d.heading("2. probe: what answers a SYN, port by port")
    lab.block("r2", 465, "tcp-reset")
    lab.block("r1", 587, "admin-prohibited")
    lab.block("r2", 2525, "drop")
    for family in (4, 6):
        lab.route("r2", "unreachable", port=2527, family=family)
    d.note(
        "faults: r2 (hop 2) forges a RST for 465, r1 (hop 1) rejects 587 with ICMP "
        "admin-prohibited, r2 drops 2525 silently and has no route for TCP to 2527; "
        "nothing listens on 2526."
    )
    r = d.show(["probe", GOOD, "-p", "25,465,587,2525-2527", *FAST])
    d.expect(r.code == 1, f"probe exits 1, a problem found (it exited {r.code})")
    for verdict in ("open", "reset-in-path", "rejected", "filtered", "refused", "unreachable"):
        d.expect(re.search(rf"\b{verdict}\b", r.out) is not None, f"probe shows the verdict {verdict}")


def part_trace(d: Demo) -> None:
    lab = d.lab
    d.heading("3. trace: which hop forged that RST")
    r = d.show(["trace", GOOD, "-p", "465", "-4", "--timeout", "0.5"])
    d.expect(r.code == 1, f"trace exits 1 (it exited {r.code})")
    d.expect(
        "reset-in-path" in r.flat and f"hop 2 ({lab.addr('r2')})" in r.flat,
        "trace places the forged RST at hop 2",
    )
    lab.reset_faults()


def part_smtp(d: Demo) -> None:
    d.heading("4. smtp: the conversation, up to AUTH")
    d.note("expired.lab.test serves a certificate that expired 30 days ago.")
    r = d.show(["smtp", "expired.lab.test", "-p", "465", "--ca-file", "ca.pem"])
    d.expect(r.code == 1, f"smtp exits 1 (it exited {r.code})")
    d.expect("cert-expired" in r.out, "smtp reports cert-expired")


def part_cloud(d: Demo) -> None:
    ids = d.ids
    d.heading("5. cloud: what the EC2 configuration lets out")
    d.note(
        "read from moto through the instance's IMDSv2, as on EC2: 465 is not in the security "
        "group, 25 is, but AWS blocks 25 by default, which no API shows."
    )
    from lab.mail import HOSTS, v4

    r = d.show(["cloud", "--dest", v4(HOSTS["good"]), "-p", "25,465"])
    d.expect(r.code == 1, f"cloud exits 1, something blocks (it exited {r.code})")
    d.expect("PROVIDER_PORT_25_BLOCK" in r.out, "cloud names the provider's port-25 policy for 25")
    d.expect("ENI_SG_RULES_MISMATCH" in r.out and ids["sg"] in r.out, f"cloud names {ids['sg']} for 465")


def part_diagnose(d: Demo) -> None:
    lab = d.lab
    d.heading("6. diagnose: every check joined, one finding per target and port")
    lab.block("r1", 25, "drop")
    lab.block("r1", 465, "drop")
    d.note(
        "from here on r1 does what the cloud would: it drops 25 (AWS's block) and 465 (the security group)."
    )
    r = d.show(
        ["diagnose", "lab.test", "--ca-file", "ca.pem", *FAST, "--smtp-timeout", "5", "--min-wait", "1"]
    )
    d.expect(r.code == 1, f"diagnose exits 1 (it exited {r.code})")
    found = {(host, int(port)): cause for port, host, cause in FINDING.findall(r.flat)}
    want = {
        (GOOD, 25): "cloud-policy",
        (GOOD, 465): "cloud-config",
        (GOOD, 587): "ok",
        (PLAIN, 25): "cloud-policy",
        (PLAIN, 465): "cloud-config",
        (PLAIN, 587): "tls",
    }
    d.expect(found == want, f"diagnose finds {_causes(want)} (it found {_causes(found)})")


def _causes(by_key: dict) -> str:
    return ", ".join(f"{p} on {h.split('.')[0]}: {c}" for (h, p), c in sorted(by_key.items()))


def part_collector(d: Demo) -> None:
    d.heading("7. The collector: findings from every agent, on SQLite here")
    d.start_collector("127.0.0.1:0")
    create = ["collector", "token", "create", "--agent", AGENT, "--database", DATABASE]
    d.show(create, typed=" ".join(["mailpath", *create, ">", "agent.token"]), stdout_to="agent.token")
    token = (d.workdir / "agent.token").read_text().strip()
    viewer = ["collector", "token", "create", "--agent", "you", "--role", "viewer", "--database", DATABASE]
    r = d.run([MAILPATH, *viewer, "--json"])
    if r.returncode or not token:
        raise Failed(f"could not create the tokens: {r.stderr.strip()}")
    d.tokens = {"agent": token, "viewer": json.loads(r.stdout)["token"]}


AGENT_TOML = """\
agent_name = "{agent}"
report = "changes"   # send a finding when its cause, place or verdicts change
spool_dir = "spool"  # every finding is written here before it is sent
flush_timeout = 5

[probe]              # the lab answers in milliseconds
timeout = 0.5
retries = 1
min_wait = 1
smtp_timeout = 5
max_hops = 5

[[targets]]
target = "lab.test"  # a mail domain: its MX hosts are followed
ports = [25, 465, 587]
tls_ca_file = "ca.pem"

[collector]
url = "http://127.0.0.1:{port}"
token_file = "agent.token"

[delivery]
retry_attempts = 2
backoff_cap = 1.0

[stdout]             # and one JSON finding per line on stdout
enabled = true

[metrics]
listen = ""
"""


@dataclass
class Round:
    code: int
    sent: list[dict]  # the findings this round sent (the stdout sink's lines)


class Agent:
    """``mailpath agent once`` round after round; what it sent, kept per target and port."""

    def __init__(self, d: Demo) -> None:
        self.d = d
        self.number = 0
        self.state: dict[tuple[str, int], dict] = {}

    def round(self, faults: str) -> Round:
        d = self.d
        self.number += 1
        d.say(f"\n--- round {self.number}: {faults}")
        r = d.show(["agent", "once", "--config", "agent.toml"], stdout_to=f"round-{self.number}.jsonl")
        sent = []
        for line in r.out.splitlines():
            with contextlib.suppress(ValueError):
                sent.append(json.loads(line))
        why = {}
        for f in sent:
            key = (f["target"], f["port"])
            why[key] = "changed" if key in self.state else "new"
            self.state[key] = f
        self.table(why)
        return Round(r.code, sent)

    def table(self, why: dict) -> None:
        d = self.d
        room = max(10, d.width - 36 - 9)
        d.say(f"  {'target:port':<18}  {'cause':<12}  {'where, or what':<{room}}  sent")
        for key in sorted(self.state):
            f = self.state[key]
            what = _what(f)
            mark = why.get(key, "")
            if len(what) > room:
                what = what[: room - 1] + "…"
            d.say(f"  {key[0] + ':' + str(key[1]):<18}  {f['cause']:<12}  {what:<{room}}  {mark}".rstrip())

    def causes(self) -> dict[tuple[str, int], str]:
        return {k: f["cause"] for k, f in self.state.items()}

    def status(self) -> dict:
        d = self.d
        d.show(["agent", "status", "--config", "agent.toml"])
        r = d.run([MAILPATH, "agent", "status", "--config", "agent.toml", "--json"])
        return json.loads(r.stdout)


def _what(f: dict) -> str:
    """Where the finding places the problem, or what its headline says."""
    loc = f.get("location") or {}
    where = f"{f['port']} on {f['target']}: "
    summary = f["headline"].removeprefix(where).rsplit(" — ", 1)[0].split(";")[0]
    if loc.get("kind") == "cloud":
        return f"cloud: {loc.get('component')}"
    if loc.get("kind") == "hop" and f["cause"] in ("firewall", "network"):
        kinds = [a.get("verdict") for a in f.get("addresses", [])]
        return f"hop {loc.get('hop')} ({loc.get('address')}): {', '.join(sorted(set(kinds)))}"
    return summary


def part_agent(d: Demo) -> None:
    lab = d.lab
    d.heading("8. The agent: rounds while faults come and go")
    (d.workdir / "agent.toml").write_text(AGENT_TOML.format(agent=AGENT, port=d.port))
    d.say("$ cat agent.toml")
    d.say((d.workdir / "agent.toml").read_text().rstrip("\n"))
    agent = Agent(d)

    # round 1: the cloud's blocks, as in part 6
    rnd = agent.round("r1 drops 25 (AWS's block) and 465 (the security group)")
    want = {
        (GOOD, 25): "cloud-policy",
        (GOOD, 465): "cloud-config",
        (GOOD, 587): "none",
        (PLAIN, 25): "cloud-policy",
        (PLAIN, 465): "cloud-config",
        (PLAIN, 587): "tls",
    }
    d.expect(rnd.code == 0, f"round 1 delivers everything, exit 0 (it exited {rnd.code})")
    d.expect(agent.causes() == want, f"round 1 finds {_causes(want)} (it found {_causes(agent.causes())})")
    d.expect(len(rnd.sent) == 6, f"round 1 sends 6 new findings (it sent {len(rnd.sent)})")

    # round 2: AWS lifts the block on 25; a firewall at hop 2 forges RSTs for 587
    lab.reset_faults()
    lab.block("r1", 465, "drop")
    lab.block("r2", 587, "tcp-reset")
    rnd = agent.round("AWS lifts its block on 25; r2 (hop 2) starts forging RSTs for 587")
    want |= {(GOOD, 25): "none", (PLAIN, 25): "tls", (GOOD, 587): "firewall", (PLAIN, 587): "firewall"}
    d.expect(rnd.code == 0, f"round 2 exits 0 (it exited {rnd.code})")
    d.expect(agent.causes() == want, f"round 2 finds {_causes(want)} (it found {_causes(agent.causes())})")
    d.expect(len(rnd.sent) == 4, f"round 2 sends the 4 changes only (it sent {len(rnd.sent)})")
    d.expect(
        all(agent.state[(h, 587)]["location"]["hop"] == 2 for h in (GOOD, PLAIN)),
        "round 2 places the forged RSTs at hop 2",
    )

    # rounds 3 and 4: the delivery through a collector outage
    d.heading("9. Delivery through a collector outage")
    d.note("the collector goes down; the RSTs for 587 stop; r2 starts rejecting 25 (ICMP).")
    d.stop_collector()
    lab.reset_faults()
    lab.block("r1", 465, "drop")
    lab.block("r2", 25, "admin-prohibited")
    rnd = agent.round("collector down; r2 rejects 25 with ICMP, 587 gets through again")
    want |= {(GOOD, 25): "firewall", (PLAIN, 25): "firewall", (GOOD, 587): "none", (PLAIN, 587): "tls"}
    spooled = [f["id"] for f in rnd.sent]
    d.expect(rnd.code == 4, f"round 3 exits 4, findings left in the spool (it exited {rnd.code})")
    d.expect(agent.causes() == want, f"round 3 finds {_causes(want)} (it found {_causes(agent.causes())})")
    d.expect(len(spooled) == 4, f"round 3 spools its 4 changes (it spooled {len(spooled)})")
    before = agent.status()["spool"]["pending"]
    d.expect(before == len(spooled), f"the spool holds the {len(spooled)} findings (pending: {before})")

    d.note("the collector comes back, on the same address; the next round delivers the spool.")
    d.start_collector(f"127.0.0.1:{d.port}")
    back = dt.datetime.now(dt.UTC)
    rnd = agent.round("collector back; nothing changed")
    d.expect(rnd.code == 0, f"round 4 delivers everything, exit 0 (it exited {rnd.code})")
    d.expect(not rnd.sent, f"round 4 finds nothing new to send (it sent {len(rnd.sent)})")
    after = agent.status()["spool"]["pending"]
    d.expect(after == 0, f"the spool is empty after the collector came back (pending: {after})")

    d.say("\nthe findings spooled during the outage, read back from the collector:")
    d.say("  target:port         cause         created (UTC)  received (UTC)")
    arrived = 0
    for fid in spooled:
        got = d.http("GET", f"/v1/findings/{fid}", d.tokens["viewer"])
        if got.status_code != 200:
            d.say(f"  {fid}: {got.status_code}")
            continue
        item = got.json()
        created, received = _time(item["created_at"]), _time(item["received_at"])
        key = f"{item['target']}:{item['port']}"
        d.say(f"  {key:<18}  {item['cause']:<12}  {created:%H:%M:%S}       {received:%H:%M:%S}")
        arrived += created < back <= received
    d.expect(
        arrived == len(spooled),
        f"all {len(spooled)} spooled findings arrived after the collector came back ({arrived} did)",
    )
    d.final = want


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def part_view(d: Demo) -> None:
    d.heading("10. The collector's view: GET /v1/targets")
    items, cursor = [], None
    while True:
        r = d.http("GET", "/v1/targets", d.tokens["viewer"], params={"cursor": cursor} if cursor else {})
        if r.status_code != 200:
            raise Failed(f"GET /v1/targets: {r.status_code} {r.text[:200]}")
        items += r.json()["items"]
        cursor = r.json().get("next_cursor")
        if not cursor:
            break
    d.say("agent       target:port         cause         since (UTC)")
    for i in sorted(items, key=lambda i: (i["agent"], i["target"], i["port"])):
        key = f"{i['target']}:{i['port']}"
        d.say(f"{i['agent']:<10}  {key:<18}  {i['cause']:<12}  {_time(i['since']):%H:%M:%S}")
    got = {(i["target"], i["port"]): i["cause"] for i in items if i["agent"] == AGENT}
    d.expect(got == d.final, f"the collector holds {_causes(d.final)} (it holds {_causes(got)})")


def part_dashboard(d: Demo) -> None:
    d.heading("11. The dashboard")
    page = d.http("GET", "/", headers={"Cookie": f"mailpath_token={d.tokens['viewer']}"})
    d.expect(page.status_code == 200 and AGENT in page.text, "the dashboard shows the agent")
    login = d.http("GET", "/login")
    d.expect(login.status_code == 200, f"the dashboard's login page answers (status {login.status_code})")
    if not d.interactive:
        d.say("(no terminal: the dashboard is not left running; on a terminal it stays open until Ctrl-C)")
        return
    url = f"http://127.0.0.1:{d.relay.port}/"
    d.say(f"open {url} and sign in with this viewer token:")
    d.say(f"  {d.tokens['viewer']}")
    d.say(f"(from another machine: ssh -L {d.relay.port}:127.0.0.1:{d.relay.port} this-host)")
    d.say("Ctrl-C stops the demo and tears the lab down.")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            signal.pause()


PARTS = (
    part_setup,
    part_dns,
    part_probe,
    part_trace,
    part_smtp,
    part_cloud,
    part_diagnose,
    part_collector,
    part_agent,
    part_view,
    part_dashboard,
)


# -- the whole run -------------------------------------------------------------------------------


@contextlib.contextmanager
def _stderr_to_devnull():
    """This process's stderr on /dev/null for a while, so the processes it starts meanwhile
    inherit that (a Ctrl-C on the terminal reaches the whole foreground process group)."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def child_env(width: int, cloud_env: dict[str, str]) -> dict[str, str]:
    """The environment of the demo's commands: the cloud emulation's (IMDS, moto), the width,
    plain text, and no proxy (everything is on the client namespace's loopback or the lab)."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.pop("FORCE_COLOR", None)
    return env | cloud_env | {"COLUMNS": str(width), "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8"}


def main() -> int:
    from lab import Lab, sweep
    from lab import cloud as lab_cloud
    from lab.mail import setup_mail

    with contextlib.suppress(Exception):
        sys.stdout.reconfigure(line_buffering=True, errors="replace")
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    width = min(WIDTH, shutil.get_terminal_size((WIDTH, 24)).columns) if interactive else WIDTH
    if os.geteuid() != 0:
        print("make demo needs root (network namespaces, raw sockets): run it with sudo", file=sys.stderr)
        return 2
    sweep()  # namespaces left by a demo or test run that was killed
    started = time.monotonic()
    d: Demo | None = None
    workdir: Path | None = None
    try:
        with Lab() as lab:
            workdir = Path(tempfile.mkdtemp(prefix=f"mailpath-demo-{lab.prefix}-"))
            lab.on_down(lambda: shutil.rmtree(workdir, ignore_errors=True))
            say(f"building the lab {lab.prefix} (namespaces, DNS, SMTP servers, moto, IMDS)...", width)
            mail = setup_mail(lab)
            shutil.copy(mail.ca_file, workdir / "ca.pem")
            cloud = lab_cloud.start(lab)
            with _stderr_to_devnull():  # lab.imds inherits it: no traceback of it on Ctrl-C
                ids = cloud.world("open")
            lab.exec(
                "client",
                [sys.executable, "-m", "lab.demo_cloud", cloud.endpoint, ids["sg"], "25,587"],
                env={**os.environ, **cloud.env},
            )
            d = Demo(lab, workdir, child_env(width, cloud.env), width, ids, interactive)
            try:
                for part in PARTS:
                    part(d)
            except Failed as e:
                d.expect(False, str(e))
            finally:
                if d.relay is not None:
                    d.relay.close()
    except KeyboardInterrupt:
        say("\ninterrupted: the lab is torn down", width)
        return 130
    except SystemExit:  # SIGTERM: lab.network's handler has torn the lab down
        say("\nstopped (SIGTERM): the lab is torn down", width)
        raise
    except Exception:  # a bug, or the lab could not be built: said whole, after the teardown
        traceback.print_exc()
        say(f"\nthe demo failed (above); the lab is torn down ({workdir or 'no work folder yet'}).", width)
        return 1
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    say(f"\nthe lab is torn down: its namespaces, their processes, {workdir}.", width)
    seconds = time.monotonic() - started
    if d.failures:
        say(f"{seconds:.0f} s; {len(d.failures)} of {d.checks} checks were not as expected:", width)
        for f in d.failures:
            say(f"  - {f}", width)
        return 1
    say(f"{seconds:.0f} s; all {d.checks} checks as expected: every part behaved.", width)
    return 0


if __name__ == "__main__":
    sys.exit(main())
