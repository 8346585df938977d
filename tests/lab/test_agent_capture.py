"""[capture] dir: the agent keeps the packets of a target's round when its findings changed,
and only then; the file is pcapng that scapy and tcpdump read, its comments naming the
changed finding's evidence refs."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.conftest import mailpath

pytestmark = pytest.mark.lab


def test_a_changed_round_keeps_its_packets_and_an_unchanged_one_does_not(faults, tmp_path):
    lab = faults
    captures = tmp_path / "captures"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'spool_dir = "{tmp_path / "spool"}"\n'
        "[[targets]]\n"
        'target = "198.18.3.2"\n'
        "ports = [25]\n"
        "[probe]\ntimeout = 0.5\nretries = 1\nsmtp_timeout = 2\n"
        '[cloud]\ncheck = "off"\n'
        "[stdout]\nenabled = true\n"
        f'[capture]\ndir = "{captures}"\nkeep = 5\n'
    )

    def once() -> list[dict]:
        run = mailpath(lab, "agent", "once", "--config", str(config), timeout=120)
        assert run.code == 0, run.stderr
        return [json.loads(line) for line in run.stdout.splitlines()]

    first = once()  # new, not changed: nothing kept
    assert [f["cause"] for f in first] != [] and not captures.exists()
    lab.block("r2", 25, "tcp-reset")
    (changed,) = once()
    assert changed["addresses"][0]["verdict"] == "reset-in-path"
    (kept,) = sorted(captures.iterdir())
    assert kept.name.startswith("round-") and kept.suffix == ".pcapng"

    from scapy.utils import RawPcapNgReader

    comments = []
    with RawPcapNgReader(str(kept)) as reader:
        for _data, meta in reader:
            comments += [c.decode() if isinstance(c, bytes) else str(c) for c in (meta.comments or [])]
    refs = {e["ref"] for a in changed["addresses"] for e in a.get("evidence", []) if e.get("ref")}
    refs |= {e["ref"] for e in changed.get("evidence", []) if e.get("ref")}
    probe_refs = {r for r in refs if r.startswith("probe:")}
    assert probe_refs, changed
    for ref in probe_refs:
        assert any(ref in c for c in comments), (ref, comments[:5])
    if shutil.which("tcpdump"):
        r = subprocess.run(["tcpdump", "-nr", str(kept)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "198.18.3.2.25" in r.stdout, r.stderr

    again = once()  # unchanged: heartbeat not due, nothing sent, nothing more kept
    assert again == [] and len(list(captures.iterdir())) == 1
