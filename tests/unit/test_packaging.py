"""The wheel installs one import name, ``mailpath``, and leaves the lab, benchmarks and tests out."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("agent", "probes", "cloud", "collector")  # installed as mailpath.<folder>


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the working tree (the build leaves nothing in the checkout)."""
    src = tmp_path_factory.mktemp("src") / "mailpath"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache"),
    )
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, src],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("mailpath-*.whl")
    return whl


def _expected_files() -> set[str]:
    want = set()
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*"):
            rel = path.relative_to(ROOT)
            if "__pycache__" in rel.parts or not path.is_file():
                continue
            published = path.suffix == ".json" and (
                "schema" in rel.parts or rel.as_posix() == "collector/openapi.json"
            )
            dashboard = rel.parts[:2] == ("collector", "dashboard") and (
                (rel.parts[2:3] == ("templates",) and path.suffix == ".html")
                or (rel.parts[2:3] == ("static",) and path.suffix in (".css", ".svg"))
            )
            if path.suffix == ".py" or published or dashboard:
                want.add(f"mailpath/{rel.as_posix()}")
    return want


def test_the_wheel_holds_mailpath_and_nothing_else(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"mailpath"}
    files = {n for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert files == _expected_files()
    assert not any(n.startswith(("mailpath/lab", "mailpath/tests", "mailpath/bench")) for n in names)


def test_the_wheel_declares_the_console_script(wheel):
    with zipfile.ZipFile(wheel) as z:
        (ep,) = [n for n in z.namelist() if n.endswith("entry_points.txt")]
        text = z.read(ep).decode()
    assert "mailpath = mailpath.agent.cli:main" in text


def test_the_installed_wheel_imports_from_its_own_files(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel],
        check=True,
        capture_output=True,
    )
    code = (
        "import importlib.util, mailpath.agent.finding, mailpath.probes.syn, mailpath.cloud.evaluate, "
        "mailpath.collector; print(mailpath.agent.finding.__file__); "
        "print(importlib.util.find_spec('lab'), importlib.util.find_spec('agent'))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    first, second = r.stdout.splitlines()
    assert first.startswith(str(site))
    assert second == "None None"
