"""Verdicts on a busy host: every core burning while mailpath probes and checks the lab.

A busy host may cost time, never a verdict. Each test runs CPU burners (one busy process
more than there are cores, twice over) that stop by themselves after a bounded time and are
killed when the test ends, whatever happens. Under them: the probe matrix (every kind of
verdict, IPv4 and IPv6), a batch of 5,000 probes, and SMTP checks (many sessions at once);
and, on real sockets, a driver starved of CPU whose receive queue overflows: the replies the
kernel dropped are asked again, never reported as filtered.

``python -m tests.lab.test_load_lab ADDRESS FIRST COUNT RCVBUF`` is that starved driver, and
``python -m tests.lab.test_load_lab smtp CA_FILE TIMEOUT ROUNDS SESSIONS_JSON`` the SMTP
sessions; the tests run them inside the lab's client namespace. Each prints one JSON
line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from tests.conftest import mailpath
from tests.lab.test_probe_lab import CASES, _apply

pytestmark = pytest.mark.lab

BURN_MAX = 240  # seconds a burner runs at most, even if nobody stops it


@contextmanager
def burning(seconds: float = 120):
    """Keep every core busy: 2 × (cores + 1) busy-loop processes, each ending by itself after
    ``seconds`` (at most BURN_MAX), all killed when the block ends."""
    n = 2 * ((os.cpu_count() or 2) + 1)
    until = min(seconds, BURN_MAX)
    code = f"import time\nend = time.monotonic() + {until}\nwhile time.monotonic() < end:\n    pass\n"
    burners = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
    try:
        time.sleep(0.3)  # let them take the cores
        assert all(b.poll() is None for b in burners), "the CPU burners did not start"
        yield burners
    finally:
        for b in burners:
            b.kill()
        for b in burners:
            b.wait()


def test_every_verdict_holds_with_every_core_busy(faults):
    lab = faults
    for port in CASES:
        _apply(lab, port)
    ports = ",".join(map(str, CASES))
    with burning():
        run = mailpath(
            lab, "probe", "mail.lab.test", "-p", ports, "--timeout", "0.5", "--retries", "1", "--json"
        )
    results = run.json["results"]
    assert len(results) == 2 * len(CASES), run.stderr
    for r in results:
        _, _, _, verdict, hop, *_ = CASES[r["port"]]
        where = f"{r['address']}:{r['port']}: {r['reason']}"
        assert (r["verdict"], r["responder_hop"]) == (verdict, hop), where


def test_a_5000_probe_batch_holds_with_every_core_busy():
    """2,500 ports dropped by r2, 2,500 refused by the server, one retry (as the benchmark)."""
    from lab import Lab

    n = 2500
    with Lab() as lab:
        lab.block("r2", f"20000:{20000 + n - 1}", "drop", family=4)
        with burning():
            start = time.monotonic()
            run = mailpath(
                lab,
                "probe",
                lab.server4,
                "-p",
                f"20000-{20000 + n - 1},30000-{30000 + n - 1}",
                "--retries",
                "1",
                "--json",
            )
            took = time.monotonic() - start
    got = {r["port"]: r["verdict"] for r in run.json["results"]}
    wrong = {p: v for p, v in got.items() if v != ("filtered" if p < 30000 else "refused")}
    assert len(got) == 2 * n and not wrong, (len(wrong), sorted(wrong.items())[:10])
    assert took < 60


def test_smtp_checks_hold_with_every_core_busy(tmp_path):
    """36 sessions at once in one event loop (good and Exim; 25, 587 and 465; IPv4 and IPv6),
    twice, with a 1 s stage timeout: none may time out, each completes clean. (Before stage
    timeouts counted only the time the loop could run, most of them did.)"""
    from lab import Lab
    from lab.mail import setup_mail

    with Lab() as lab:
        mail = setup_mail(lab)
        sessions = [  # Exim takes 20 connections at once (smtp_accept_max), aiosmtpd any number
            (f"{host}.lab.test", address, port)
            for host, times in (("good", 4), ("exim", 2))
            for address in mail.addresses(host)
            for port in (25, 587, 465)
            for _ in range(times)
        ]
        spec = tmp_path / "sessions.json"
        spec.write_text(json.dumps(sessions))
        with burning():
            start = time.monotonic()
            argv = ["smtp", str(mail.ca_file), "1", "2", str(spec)]
            r = lab.exec("client", [sys.executable, "-m", "tests.lab.test_load_lab", *argv], timeout=300)
            took = time.monotonic() - start
    out = json.loads(r.stdout)
    assert out["sessions"] == 2 * len(sessions)
    assert out["problems"] == [], out["problems"][:5]
    assert took < 90


def test_replies_the_kernel_drops_are_asked_again():
    """A driver starved of CPU (it sleeps instead of reading, four times) with a small receive
    queue: the kernel drops hundreds of RSTs. Each refused port must still read refused."""
    from lab import Lab

    with Lab() as lab:
        r = lab.exec(
            "client",
            [sys.executable, "-m", "tests.lab.test_load_lab", lab.server4, "30000", "2000", str(32 << 10)],
            timeout=120,
        )
    out = json.loads(r.stdout)
    assert out["drops"] > 100, out  # the test proves nothing unless the kernel did drop
    assert out["verdicts"] == {"refused": 2000}, out
    assert 100 < out["reported"] <= out["drops"], out  # the drops reached the machine


def _starved(address: str, first: int, count: int, rcvbuf: int) -> dict:
    """One raw batch with a small receive queue whose driver sleeps 0.3 s instead of reading,
    four times, as a process starved of CPU does."""
    from mailpath.probes.local import route
    from mailpath.probes.rawsock import RawNet, drive
    from mailpath.probes.result import Target
    from mailpath.probes.syn import Options, SynBatch

    targets = [Target(address, address, p) for p in range(first, first + count)]
    with RawNet({4}, rcvbuf) as net:
        receive, calls = net.receive, [0]

        def starved(timeout: float, limit: int = 4096):
            calls[0] += 1
            if 3 <= calls[0] <= 6:
                time.sleep(0.3)
            return receive(timeout, limit)

        net.receive = starved
        batch = SynBatch(targets, {address: route(address)}, Options(retries=0, timeout=0.5))
        drive(batch, net)
        drops = net.drops(fresh=True)
    verdicts: dict[str, int] = {}
    for r in batch.results():
        verdicts[r.verdict.value] = verdicts.get(r.verdict.value, 0) + 1
    return {"drops": drops, "reported": batch.drops, "verdicts": verdicts}


def _smtp(ca_file: str, timeout: float, rounds: int, sessions: list) -> dict:
    """Every session at once in one event loop, ``rounds`` times; the problems found."""
    import asyncio

    from mailpath.probes.result import Target
    from mailpath.probes.smtp import SmtpOptions, check_targets

    targets = [Target(host, address, port) for host, address, port in sessions]
    problems = []
    for _ in range(rounds):
        results = asyncio.run(check_targets(targets, SmtpOptions(timeout=timeout, ca_file=ca_file)))
        for r in results:
            for p in r.problems:
                problems.append([r.address, r.port, p.code, p.message, [s.to_dict() for s in r.stages]])
            if not r.problems and r.tls_mode != ("implicit" if r.port == 465 else "starttls"):
                problems.append([r.address, r.port, "tls-mode", r.tls_mode, []])
    return {"sessions": rounds * len(targets), "problems": problems}


if __name__ == "__main__":
    if sys.argv[1] == "smtp":
        ca, seconds, rounds, spec = sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        with open(spec) as f:
            print(json.dumps(_smtp(ca, seconds, rounds, json.load(f))))
    else:
        address, first, count, rcvbuf = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
        print(json.dumps(_starved(address, first, count, rcvbuf)))
