"""``make demo`` as CI runs it: ``python -m lab.demo`` with no terminal. It shows every part
(each command as typed, then its output), the agent's findings reaching the collector after
an outage, fits 80 columns in a log file, exits 0 because every part showed what its faults
should make it show, and leaves nothing behind: no namespace, no registry entry, no process,
no work folder."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]

PARTS = [
    ("1. dns", "$ mailpath dns lab.test"),
    ("2. probe", "$ mailpath probe good.lab.test"),
    ("3. trace", "$ mailpath trace good.lab.test -p 465"),
    ("4. smtp", "$ mailpath smtp expired.lab.test -p 465"),
    ("5. cloud", "$ mailpath cloud --dest 198.18.3.10"),
    ("6. diagnose", "$ mailpath diagnose lab.test"),
    ("7. The collector", "$ mailpath collector serve --database sqlite:///collector.db"),
    ("8. The agent", "$ mailpath agent once --config agent.toml"),
    ("9. Delivery through a collector outage", "$ mailpath agent status --config agent.toml"),
    ("10. The collector's view", "demo-agent  good.lab.test:465   cloud-config"),
    ("11. The dashboard", "(no terminal: the dashboard is not left running"),
]


def _session_members(sid: int) -> list[str]:
    """Live (not zombie) processes of session ``sid``, as 'pid command'."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, _ppid, _pgrp, session = text.rsplit(")", 1)[1].split()[:4]
        if int(session) == sid and state != "Z":
            found.append(f"{stat.parent.name} {text.split(' ', 1)[1].split(')')[0]}")
    return found


def _mentioning(word: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if word in text:
            found.append(f"{cmdline.parent.name} {text}")
    return found


def _left_behind(out: str, sid: int) -> list[str]:
    """What the run whose output is ``out`` left: namespaces, its registry entry, /etc/netns
    folders, its work folder, processes of its session or naming its lab."""
    prefix = re.search(r"building the lab (mp[0-9a-f]{6})", out).group(1)
    left = [
        ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    ]
    left = [ns for ns in left if ns.startswith(f"{prefix}-")]
    left += [str(p) for p in (Path("/run/mailpath-lab") / prefix,) if p.exists()]
    left += [str(p) for p in Path("/etc/netns").glob(f"{prefix}-*")]
    if found := re.search(r"work folder (\S+)", out):
        left += [found.group(1)] if os.path.exists(found.group(1)) else []
    deadline = time.monotonic() + 5  # processes killed at the teardown may take a moment to go
    while (procs := _session_members(sid) + _mentioning(prefix)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left + procs


def test_make_demo_without_a_terminal():
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.demo"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        start_new_session=True,  # its session id is its pid: what it leaves running is found by it
    )
    try:
        out, _ = proc.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the demo tears its lab down on SIGTERM
        out, _ = proc.communicate(timeout=60)
        pytest.fail(f"the demo took over 420 s:\n{out[-5000:]}")
    tail = out[-6000:]
    assert proc.returncode == 0, tail
    assert re.search(r"all \d+ checks as expected", out), tail

    for heading, shown in PARTS:
        assert f"\n{heading}" in out, heading
        assert shown in out, shown
    assert "\x1b[" not in out  # no colour in a log file
    wide = [line for line in out.splitlines() if len(line) > 80]
    assert not wide, wide

    # the outage: the round without the collector exits 4 and leaves 4 findings in the spool;
    # once it is back they are delivered, and the collector has them, received after they were made
    outage = out[out.index("\n9. Delivery through a collector outage") :]
    assert "collector down" in outage and "(exit 4)" in outage
    before, after = re.findall(r"^  pending  (\d+)$", outage, re.M)
    assert (before, after) == ("4", "0"), outage
    table = outage[outage.index("the findings spooled during the outage") :].splitlines()[2:6]
    rows = [re.fullmatch(r"  (\S+)\s+(\S+)\s+(\d\d:\d\d:\d\d)\s+(\d\d:\d\d:\d\d)", line) for line in table]
    assert all(rows), table
    assert {r.group(1) for r in rows} == {
        f"{h}.lab.test:{p}" for h in ("good", "plain") for p in (25, 587)
    }, table
    for r in rows:  # received after it was made, once the collector was back (seconds later)
        created, received = (
            sum(int(x) * m for x, m in zip(t.split(":"), (3600, 60, 1), strict=True)) for t in r.groups()[2:]
        )
        assert 0 < (received - created) % 86400 < 600, table

    assert not _left_behind(out, proc.pid)


def test_ctrl_c_on_a_terminal_tears_everything_down():
    """On a terminal, Ctrl-C (SIGINT to the whole foreground process group, the lab's
    processes included) in the middle of the demo: exit 130, everything removed."""
    pid, fd = pty.fork()  # a new session whose controlling terminal is the pty
    if pid == 0:  # the child: the demo, on a terminal
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "lab.demo"])
    out = b""
    status = None

    def read(seconds: float) -> bool:
        """Read what the demo wrote within ``seconds``; False once the terminal is closed."""
        nonlocal out
        if select.select([fd], [], [], seconds)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: every process on the terminal has closed it
                return False
            out += chunk
            return bool(chunk)
        return True

    try:
        deadline = time.monotonic() + 180
        while b"$ mailpath probe" not in out and time.monotonic() < deadline and read(0.5):
            pass
        assert b"$ mailpath probe" in out, out.decode(errors="replace")[-3000:]
        os.write(fd, b"\x03")  # Ctrl-C, through the terminal's line discipline
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            open_ = read(0.5)
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
            if not open_:
                time.sleep(0.2)
        while read(0.1) and select.select([fd], [], [], 0)[0]:
            pass  # the rest of its output
    finally:
        if status is None:
            os.kill(pid, 15)  # the demo tears down on SIGTERM too
            _, status = os.waitpid(pid, 0)
        os.close(fd)
    text = out.decode(errors="replace").replace("\r", "")
    assert os.waitstatus_to_exitcode(status) == 130, text[-3000:]
    assert "interrupted: the lab is torn down" in text
    assert "Traceback" not in text, text  # nor any of its processes' on the terminal
    assert not _left_behind(text, pid)
