"""Benchmark: what an idle agent costs: its RSS and CPU between two rounds.

Starts a collector (``mailpath collector serve``, a temporary SQLite file, 127.0.0.1) and
``mailpath agent run`` with the default interval (300 s), one target on loopback (127.0.0.1
port 9, closed; connect() probes) and its metrics on 127.0.0.1. Once the first round is done
and delivered, it samples the agent every second for ``--duration`` seconds (default 60):
resident memory (VmRSS) and CPU time (utime + stime, /proc/PID/stat), with a scrape of
``/metrics`` every ``--scrape`` seconds (15, as Prometheus would; 0: none). The reference is
the interpreter itself: ``python -c "import time; time.sleep(...)"``, measured the same way.

Prints RSS (at the start of the window, its peak, at the end), CPU seconds and percent over
the window, threads, and one JSON line. Needs no root; sends nothing off loopback.
Usage: ``python -m bench.agent_idle [--duration 60] [--scrape 15]`` (``make bench``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

MAILPATH = str(Path(sys.executable).with_name("mailpath"))
TICK = os.sysconf("SC_CLK_TCK")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPATH_")}
    env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = "http://127.0.0.1:9/"  # never a real metadata service
    return env


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15)


def status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def sample(pid: int, duration: float, scrape: float, url: str | None) -> dict:
    """RSS and CPU of ``pid`` over ``duration`` seconds, one sample a second."""
    rss, threads = [], []
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    next_scrape = t0
    with httpx.Client(trust_env=False, timeout=5) as c:
        while time.monotonic() - t0 < duration:
            if url and scrape and time.monotonic() >= next_scrape:
                assert c.get(url).status_code == 200
                next_scrape += scrape
            rss.append(status(pid, "VmRSS"))
            threads.append(status(pid, "Threads"))
            time.sleep(1)
    cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - t0
    return {
        "rss_start_kib": rss[0],
        "rss_max_kib": max(rss),
        "rss_end_kib": rss[-1],
        "cpu_s": round(cpu, 3),
        "cpu_percent": round(100 * cpu / wall, 3),
        "threads": max(threads),
        "window_s": round(wall, 1),
    }


def wait_log(path: Path, pattern: str, proc: subprocess.Popen, timeout: float = 60) -> re.Match:
    deadline = time.monotonic() + timeout
    while True:
        found = re.search(pattern, path.read_text(errors="replace"), re.M)
        if found:
            return found
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{pattern!r} not seen:\n{path.read_text(errors='replace')}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen) -> float:
    start = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return time.monotonic() - start


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60, help="seconds of the window (default 60)")
    p.add_argument("--scrape", type=float, default=15, help="seconds between scrapes of /metrics; 0: none")
    args = p.parse_args(argv)
    from mailpath.collector import admin

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db = f"sqlite:///{work / 'collector.db'}"
        clog, alog = work / "collector.log", work / "agent.log"
        procs: list[subprocess.Popen] = []
        try:
            with open(clog, "wb") as out:
                collector = subprocess.Popen(
                    [MAILPATH, "collector", "serve", "--database", db, "--listen", "127.0.0.1:0"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=_env(),
                )
            procs.append(collector)
            url = (
                "http://127.0.0.1:" + wait_log(clog, r"listening on http://127\.0\.0\.1:(\d+)", collector)[1]
            )
            token, _ = admin.create_token(admin.settings_for(db), "idle-bench", "agent")
            (work / "token").write_text(token + "\n")
            config = work / "agent.toml"
            config.write_text(
                f'spool_dir = "{work / "spool"}"\n[probe]\nmethod = "connect"\n[cloud]\ncheck = "off"\n'
                '[[targets]]\ntarget = "127.0.0.1"\nports = [9]\n'
                f'[collector]\nurl = "{url}"\ntoken_file = "{work / "token"}"\n'
                '[metrics]\nlisten = "127.0.0.1:0"\n'
            )
            with open(alog, "wb") as err:
                agent = subprocess.Popen(
                    [MAILPATH, "agent", "run", "--config", str(config)],
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    env=_env(),
                )
            procs.append(agent)
            metrics = wait_log(alog, r"metrics: (http://\S+)", agent)[1]
            wait_log(alog, r"round 1: ", agent)
            time.sleep(2)  # the delivery of the first round's finding
            idle = sample(agent.pid, args.duration, args.scrape, metrics)
            stop_s = stop(agent)
            ref = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({args.duration + 5})"])
            procs.append(ref)
            time.sleep(1)
            bare = sample(ref.pid, min(args.duration, 10), 0, None)
        finally:
            for proc in reversed(procs):
                stop(proc)
    print(f"idle agent over {idle['window_s']:.0f} s (interval 300 s, a scrape every {args.scrape:g} s)")
    print(
        f"RSS start / peak / end  {idle['rss_start_kib'] / 1024:6.1f} / {idle['rss_max_kib'] / 1024:.1f}"
        f" / {idle['rss_end_kib'] / 1024:.1f} MiB   (python alone: {bare['rss_max_kib'] / 1024:.1f} MiB)"
    )
    print(
        f"CPU                     {idle['cpu_s']:6.2f} s = {idle['cpu_percent']:.2f} %"
        f" of one core   (python alone: {bare['cpu_percent']:.2f} %)"
    )
    print(f"threads                 {idle['threads']:6d}")
    print(f"SIGTERM to exit         {stop_s:6.2f} s")
    print(json.dumps({"agent": idle, "python": bare, "sigterm_exit_s": round(stop_s, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
