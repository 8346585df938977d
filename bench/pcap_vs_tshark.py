"""Benchmark: ``mailpath pcap`` beside ``tshark -r`` and ``tcpdump -r`` reading the same capture,
generated here, in the same run: packets per second and peak RSS of each.

The capture (Ethernet, classic pcap) holds SMTP sessions that deliver a message of 1400-byte
segments each, and between them attempts that meet faults (a RST, a forged RST, silence): the
shape of a capture taken on a busy sending host. No packet is sent anywhere: the file is written
by ``tests.pcapgen`` with the project's wire builders.

Usage: ``python -m bench.pcap_vs_tshark [--mb 300] [--keep FILE]`` (``make bench``). tshark is
installed with apt when it is missing (Debian's ``tshark``; noninteractive).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mailpath.probes import wire

from tests import pcapgen as g

MAILPATH = str(Path(sys.executable).with_name("mailpath"))
CLIENT, SERVER, OTHER = "198.18.1.1", "198.18.3.2", "198.18.3.3"


def generate(path: Path, megabytes: int) -> tuple[int, int]:
    """Write the capture; returns (packets, connection attempts)."""
    body = b"x" * 1398 + b"\r\n"
    target = megabytes * 1_000_000
    size = packets = attempts = 0
    with open(path, "wb") as f:
        f.write(g.pcap_header(g.ETHERNET))
        i = 0
        while size < target:
            port = 1024 + i % 60000
            s = g.Session(CLIENT, port, SERVER, 25, t=1_700_000_000.0 + i * 5.0).handshake()
            s.server(b"220 mx ESMTP\r\n").client(b"EHLO me\r\n").server(b"250-mx\r\n250 STARTTLS\r\n")
            s.client(b"MAIL FROM:<a@b.test>\r\n").server(b"250 ok\r\n").client(b"RCPT TO:<c@d.test>\r\n")
            s.server(b"250 ok\r\n").client(b"DATA\r\n").server(b"354 go\r\n")
            for _ in range(200):
                s.client(body)
            s.client(b".\r\n").server(b"250 queued\r\n").client(b"QUIT\r\n").server(
                b"221 bye\r\n"
            ).fin_from_client()
            syn = g.tcp(CLIENT, OTHER, port, 25, i)  # refused
            s.packets += [
                (s.t, syn),
                (s.t + 0.001, g.tcp(OTHER, CLIENT, 25, port, 0, ack=i + 1, flags=0x14, ttl=62)),
            ]
            syn = g.tcp(CLIENT, SERVER, port, 587, i)  # reset in path (hop 2)
            s.packets += [
                (s.t, syn),
                (s.t + 0.001, g.tcp(SERVER, CLIENT, 587, port, 0, ack=i + 1, flags=0x14, ttl=63)),
            ]
            s.packets += [
                (s.t + k, g.tcp(CLIENT, SERVER, port, 465, i, flags=wire.SYN)) for k in (0, 1, 3)
            ]  # filtered
            for ts, p in s.packets:
                record = g.pcap_record(ts, g.frame(g.ETHERNET, p))
                f.write(record)
                size += len(record)
            packets += len(s.packets)
            attempts += 4
            i += 1
    return packets, attempts


def measured(argv: list[str]) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "bench.measure", "--", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return json.loads(r.stderr.strip().splitlines()[-1])


def ensure_tshark() -> str | None:
    if shutil.which("tshark"):
        return shutil.which("tshark")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "tshark"], env=env, capture_output=True
    )
    return shutil.which("tshark")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=300, help="size of the generated capture (default 300 MB)")
    ap.add_argument("--keep", help="write the capture here and keep it")
    args = ap.parse_args()
    tshark = ensure_tshark()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep or Path(tmp) / "bench.pcap")
        packets, attempts = generate(path, args.mb)
        size = path.stat().st_size
        print(f"capture: {size / 1e6:.0f} MB, {packets} packets, {attempts} connection attempts")
        tools = {"mailpath pcap": [MAILPATH, "pcap", str(path), "--json"]}
        if tshark:
            tools["tshark -r"] = [tshark, "-r", str(path), "-n"]
        tools["tcpdump -r"] = ["tcpdump", "-r", str(path), "-n"]
        rows = {}
        for name, argv in tools.items():
            stats = measured(argv)
            rows[name] = stats
            pps = packets / stats["wall_s"]
            print(
                f"{name:14s} {stats['wall_s']:8.2f} s  {pps / 1000:8.0f} k packets/s  "
                f"peak RSS {stats['max_rss_kb'] / 1024:6.0f} MiB  (exit {stats['code']})"
            )
        check = subprocess.run([MAILPATH, "pcap", str(path), "--json"], capture_output=True, text=True)
        doc = json.loads(check.stdout)
        seen = {}
        for c in doc["connections"]:
            seen[(c["port"], c["verdict"])] = seen.get((c["port"], c["verdict"]), 0) + 1
        for v, n in doc["capture"]["unlisted"].items():
            seen[("unlisted", v)] = n
        print("verdicts:", ", ".join(f"{p}/{v}: {n}" for (p, v), n in sorted(seen.items(), key=str)))
        print(json.dumps({"packets": packets, "bytes": size, **{k: v for k, v in rows.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
