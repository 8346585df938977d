"""What a fresh interpreter loads: the finding models on their own, one CLI command, and ``--help``.

Each check runs in a new interpreter (``sys.executable -c``), so nothing this test process has
already imported counts, and writes ``sorted(sys.modules)`` to a file (stdout belongs to the
command). The layer contracts in pyproject.toml (``lint-imports``) say which module may import
which; these tests say what a real run ends up loading, third-party imports and lazy ones included.

The only packet sent is the probe of 127.0.0.1 port 9 (closed) with ``connect()``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Imports MODULE, or runs the CLI with the given arguments, then writes sorted(sys.modules) to OUT.
# Usage: python -c SCRIPT OUT (--import MODULE | ARGS...)
SCRIPT = """
import json, sys
out, args = sys.argv[1], sys.argv[2:]
try:
    if args[0] == "--import":
        __import__(args[1])
    else:
        sys.argv = ["mailpath", *args]
        from mailpath.agent.cli import main
        try:
            main()
        except SystemExit as exc:
            sys.stderr.write(f"exit code: {exc.code}\\n")
finally:
    with open(out, "w") as f:
        json.dump(sorted(sys.modules), f)
"""

# A fresh CLI process may load any of these only if the command needs it.
HEAVY_FOR_PROBE = (
    "boto3",
    "botocore",
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "httpx",
    "scapy",
    "mailpath.collector",
    "mailpath.cloud",
    "pydantic",  # typer 0.27+ would load it for option coercion: pyproject keeps typer below that
)


def _loaded(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    out = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.exists(), proc.stderr
    return proc, json.loads(out.read_text())


def _under(modules: list[str], name: str) -> list[str]:
    """The loaded modules that are NAME or inside it."""
    return [m for m in modules if m == name or m.startswith(name + ".")]


def test_finding_models_load_nothing_of_the_engine_the_cloud_or_the_cli(tmp_path):
    proc, modules = _loaded(tmp_path, "--import", "mailpath.agent.finding")
    assert proc.returncode == 0, proc.stderr
    assert "mailpath.agent.finding" in modules
    for name in ("mailpath.probes", "mailpath.cloud", "typer", "rich", "boto3", "botocore", "scapy"):
        assert not _under(modules, name), f"importing mailpath.agent.finding loads {_under(modules, name)}"


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    args = ("probe", "127.0.0.1", "-p", "9", "--method", "connect", "--timeout", "0.2", "--retries", "0")
    proc, modules = _loaded(tmp_path_factory.mktemp("probe"), *args, "--json")
    # The command really ran (a usage error would load less and prove nothing).
    doc = json.loads(proc.stdout)
    assert "error" not in doc, doc
    assert [(r["address"], r["port"]) for r in doc["results"]] == [("127.0.0.1", 9)], doc
    return modules


@pytest.mark.parametrize("name", HEAVY_FOR_PROBE)
def test_probe_command_loads_no_cloud_collector_web_or_packet_library(probe_run, name):
    assert not _under(probe_run, name), f"`mailpath probe` loads {_under(probe_run, name)}"


@pytest.fixture(scope="module")
def help_run(tmp_path_factory):
    proc, modules = _loaded(tmp_path_factory.mktemp("help"), "--help")
    assert "exit code: 0" in proc.stderr, proc.stderr
    assert "probe" in proc.stdout
    return modules


@pytest.mark.parametrize(
    "name",
    [
        "dns",
        "pydantic",
        "boto3",
        "mailpath.probes.syn",
        "mailpath.agent.render",
        "mailpath.collector",
        "fastapi",
        "starlette",
        "sqlalchemy",
        "uvicorn",
        "alembic",
        "prometheus_client",
    ],
)
def test_help_loads_no_resolver_models_cloud_probe_engine_or_collector(help_run, name):
    # (typer itself renders --help with rich tables: that is the bare app's cost too, see bench.startup)
    assert not _under(help_run, name), f"`mailpath --help` loads {_under(help_run, name)}"
