"""mailpath needs nothing but CAP_NET_RAW: as the unprivileged user nobody holding only that
capability, `mailpath probe` gets raw-socket verdicts (a forged RST told from the host's own
refusal, an ICMP reject with its sender); holding nothing, it falls back to connect() and says
what that cannot tell apart. Also: a permitted-only file capability (the container image's
``setcap cap_net_raw+p``) is raised by mailpath itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import MAILPATH, Run
from tests.lab import unprivileged

pytestmark = pytest.mark.lab

# port -> (where, fault) and the verdict with raw sockets / with connect()
CASES = {
    25: (None, None, "open", "open"),
    26: (None, None, "refused", "refused"),
    27: ("r1", "tcp-reset", "reset-in-path", "refused"),
    30: ("r2", "admin-prohibited", "rejected", "rejected"),
}


def run_as_nobody(lab, tmp_path, args: list[str], *, net_raw: bool) -> Run:
    argv = unprivileged.command([MAILPATH, *args], net_raw=net_raw, stash=tmp_path)
    r = lab.exec("client", argv, check=False, timeout=120)
    return Run(r.returncode, r.stdout, r.stderr)


@pytest.fixture
def blocked(faults):
    for where, fault, *_ in CASES.values():
        if where:
            faults.block(where, next(p for p, c in CASES.items() if c[:2] == (where, fault)), fault)
    return faults


def probe_args() -> list[str]:
    ports = ",".join(map(str, CASES))
    return ["probe", "198.18.3.2", "-p", ports, "--timeout", "0.5", "--retries", "1", "--json"]


def test_nobody_with_only_net_raw_gets_raw_socket_verdicts(blocked, tmp_path):
    run = run_as_nobody(blocked, tmp_path, probe_args(), net_raw=True)
    assert run.code == 1, run.stderr
    got = {r["port"]: r for r in run.items}
    for port, (_, _, raw, _) in CASES.items():
        assert got[port]["method"] == "raw", got[port]
        assert got[port]["verdict"] == raw, got[port]
    assert got[27]["responder_hop"] == 1
    assert "connect()" not in run.stderr


def test_nobody_without_a_capability_falls_back_to_connect_and_says_so(blocked, tmp_path):
    run = run_as_nobody(blocked, tmp_path, probe_args(), net_raw=False)
    assert run.code == 1, run.stderr
    got = {r["port"]: r for r in run.items}
    for port, (_, _, _, plain) in CASES.items():
        assert got[port]["method"] == "connect", got[port]
        assert got[port]["verdict"] == plain, got[port]
        assert got[port]["limitations"], got[port]
    # the forged RST cannot be told from the host's refusal without raw sockets
    assert any("forged" in text for text in got[27]["limitations"])


@pytest.fixture
def netraw_python():
    """This venv with its interpreter replaced by a copy that carries ``cap_net_raw+p``, in a
    directory anyone may enter (the venv's pyvenv.cfg and lib/ make it the same environment)."""
    root = Path(tempfile.mkdtemp(prefix="mailpath-caps-"))
    try:
        root.chmod(0o755)
        venv = Path(sys.prefix)
        (root / "bin").mkdir(mode=0o755)
        shutil.copy2(venv / "pyvenv.cfg", root / "pyvenv.cfg")
        (root / "lib").symlink_to(venv / "lib")
        python = root / "bin" / "python"
        shutil.copy2(Path(sys.executable).resolve(), python)
        subprocess.run(["setcap", "cap_net_raw+p", str(python)], check=True)
        yield python
    finally:
        shutil.rmtree(root)


@pytest.mark.skipif(shutil.which("setcap") is None, reason="setcap (libcap2-bin) is not installed")
def test_a_permitted_only_file_capability_is_raised_by_mailpath(lab, tmp_path, netraw_python):
    """The image's arrangement: setcap cap_net_raw+p on the interpreter, no ambient capability
    (the bounding set keeps NET_RAW, as a container given NET_RAW has)."""
    code = (
        "import socket\n"
        "def raw():\n"
        "    try:\n"
        "        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP).close()\n"
        "        return True\n"
        "    except PermissionError:\n"
        "        return False\n"
        "before = raw()\n"
        "from mailpath.probes.caps import raise_net_raw\n"
        "print(before, raise_net_raw(), raw())\n"
    )
    argv = unprivileged.command([str(netraw_python), "-c", code], net_raw=True, stash=tmp_path)
    argv = [a.replace("-caps=-all,+net_raw", "-caps=-all") for a in argv]  # inheritable, ambient
    r = lab.exec("client", argv, check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True", "True"]


def test_an_agent_round_as_nobody_with_only_net_raw(blocked, tmp_path):
    """`mailpath agent once` as nobody holding only CAP_NET_RAW: raw-socket verdicts in its
    findings (a forged RST placed at hop 1), the spool in a folder of its own."""
    state = Path(tempfile.mkdtemp(prefix="mailpath-agent-"))
    try:
        os.chown(state, unprivileged.NOBODY, unprivileged.NOBODY)
        config = state / "agent.toml"
        config.write_text(
            f'spool_dir = "{state / "spool"}"\n'
            'agent_name = "nobody-agent"\n'
            "[[targets]]\n"
            'target = "198.18.3.2"\n'
            "ports = [25, 27]\n"
            "[probe]\ntimeout = 0.5\nretries = 1\nsmtp_timeout = 2\n"
            '[cloud]\ncheck = "off"\n'
            "[stdout]\nenabled = true\n"
        )
        config.chmod(0o644)
        run = run_as_nobody(blocked, tmp_path, ["agent", "once", "--config", str(config)], net_raw=True)
        assert run.code == 0, run.stderr
        findings = {f["port"]: f for f in map(json.loads, run.stdout.splitlines())}
        assert findings[25]["cause"] in ("none", "service")  # a listener, not an SMTP server
        (address,) = findings[27]["addresses"]
        assert address["verdict"] == "reset-in-path" and address["method"] == "raw", address
        assert findings[27]["location"]["hop"] == 1
        assert (state / "spool").stat().st_uid == unprivileged.NOBODY
    finally:
        shutil.rmtree(state)
