"""The daemon in this process, on loopback, with the stdout sink: ``once``'s exit codes, what it
keeps in the spool between runs, and a reload that is refused or taken."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from mailpath.agent import diagnose as pipeline
from mailpath.agent.daemon import runner
from mailpath.agent.daemon.config import load
from mailpath.agent.daemon.rounds import load_state
from mailpath.agent.daemon.spool import Spool

from tests.conftest import MAILPATH


@pytest.fixture(autouse=True)
def _no_mailpath_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("MAILPATH_"):
            monkeypatch.delenv(k)


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def write(tmp_path: Path, ports: list[int], extra: str = "", name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(
        f"""
spool_dir = "{tmp_path / "spool"}"
{extra}
[probe]
method = "connect"
timeout = 0.3
retries = 0
min_wait = 0
[cloud]
check = "off"
[[targets]]
target = "127.0.0.1"
ports = {ports}
[stdout]
enabled = true
[metrics]
listen = ""
"""
    )
    return path


def once(path: Path) -> int:
    return asyncio.run(runner.Daemon(load(path), path).once())


def test_once_delivers_to_stdout_and_keeps_what_it_sent(tmp_path, capsys):
    port = closed_port()
    path = write(tmp_path, [port])
    assert once(path) == runner.OK
    (line,) = capsys.readouterr().out.splitlines()
    finding = json.loads(line)
    assert (finding["port"], finding["cause"]) == (port, "service")
    with Spool(tmp_path / "spool" / "spool.db", max_count=10, max_age=60) as s:
        state = load_state(s.get_meta("sent"))
        last = json.loads(s.get_meta("last_round"))
        delivery = json.loads(s.get_meta("last_delivery"))
        assert s.counts().pending == 0
    assert len(state) == 1 and last["number"] == 1 and last["sent_why"] == {"new": 1}
    assert delivery["stdout"]["delivered"]["findings"] == 1
    assert once(path) == runner.OK  # unchanged: nothing sent, the round numbered on
    assert capsys.readouterr().out == ""
    with Spool(tmp_path / "spool" / "spool.db", max_count=10, max_age=60) as s:
        assert json.loads(s.get_meta("last_round"))["number"] == 2


def test_once_exits_3_when_no_target_could_be_diagnosed(tmp_path, monkeypatch):
    async def measure(*args, **kw):
        raise PermissionError("raw sockets need CAP_NET_RAW")

    monkeypatch.setattr(pipeline, "measure", measure)
    assert once(write(tmp_path, [closed_port()])) == runner.CANNOT_RUN


def test_report_all_sends_every_finding_every_round(tmp_path, capsys):
    path = write(tmp_path, [closed_port(), closed_port()], extra='report = "all"')
    assert once(path) == once(path) == runner.OK
    assert len(capsys.readouterr().out.splitlines()) == 4


def test_a_reload_keeps_the_old_configuration_when_the_new_one_is_bad_or_moves_the_spool(tmp_path, caplog):
    path = write(tmp_path, [closed_port()])

    async def scenario():
        d = runner.Daemon(load(path), path)
        d.open()
        try:
            old = d.config
            path.write_text(path.read_text() + "bogus = 1\n")
            assert await d._reload() is False and d.config is old
            path.write_text(path.read_text().replace("bogus = 1\n", "").replace('/spool"', '/other"'))
            assert await d._reload() is False and d.config is old
            write(tmp_path, [closed_port()], extra="interval = 60")
            assert await d._reload() is True and d.config.interval == 60
        finally:
            await d._close()
        return d

    with caplog.at_level("INFO", logger="mailpath"):
        d = asyncio.run(scenario())
    text = caplog.text
    assert f"reload: {path}: metrics.bogus: unknown key" in text
    assert "spool_dir cannot change while the agent runs" in text
    assert "reload: 1 targets (1 ports), every 60 s" in text
    values = {
        s.labels["result"]: s.value
        for s in d.metrics.reloads.collect()[0].samples
        if s.name.endswith("_total")
    }
    assert values == {"failed": 2.0, "ok": 1.0}


def test_run_exits_3_when_the_spool_or_the_metrics_address_cannot_be_had(tmp_path):
    (tmp_path / "file").write_text("")
    bad_spool = write(tmp_path, [closed_port()], name="spool.toml")
    bad_spool.write_text(bad_spool.read_text().replace(str(tmp_path / "spool"), str(tmp_path / "file" / "x")))
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        busy = write(tmp_path, [closed_port()], name="busy.toml")
        busy.write_text(
            busy.read_text().replace('listen = ""', f'listen = "127.0.0.1:{taken.getsockname()[1]}"')
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPATH_")}
        for path, message in (
            (bad_spool, f"mailpath: error: cannot open the spool {tmp_path / 'file' / 'x' / 'spool.db'}: "),
            (
                busy,
                f"mailpath: error: cannot listen on 127.0.0.1:{taken.getsockname()[1]} ([metrics] listen): ",
            ),
        ):
            argv = [MAILPATH, "agent", "run", "--config", str(path)]
            r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
            assert r.returncode == 3 and r.stderr.startswith(message) and len(r.stderr.splitlines()) == 1, (
                r.stderr
            )
    finally:
        taken.close()


def test_a_round_that_fails_is_logged_and_the_daemon_goes_on(tmp_path, monkeypatch, caplog):
    def boom(*args, **kw):
        raise RuntimeError("a bug")

    monkeypatch.setattr(runner, "run_round", boom)
    path = write(tmp_path, [closed_port()])

    async def scenario():
        d = runner.Daemon(load(path), path)
        d.open()
        try:
            return await d._bounded_round()
        finally:
            await d._close()

    with caplog.at_level("INFO", logger="mailpath"):
        assert asyncio.run(scenario()) is None
    assert "round 1 failed: RuntimeError: a bug" in caplog.text


def test_status_lists_dead_letters_with_their_whole_reason(tmp_path):
    from mailpath.agent.daemon.status import read_status, render

    from tests.conftest import validate_document

    path = write(tmp_path, [closed_port()])
    reason = "422 schema-violation: finding 0 is not a valid mailpath.finding/v1: " + "port: too large " * 6
    with Spool(tmp_path / "spool" / "spool.db", max_count=10, max_age=60) as s:
        s.add([{"id": "f-1", "target": "mx.example.com", "port": 25}])
        (item,) = s.pending("collector", 10)
        s.dead_letter("collector", [(item, reason)], ["collector"])
    doc = read_status(load(path))
    assert doc["spool"]["dead"] == 1 and doc["last_round"] is None
    (letter,) = doc["dead_letters"]
    assert (letter["finding_id"], letter["sink"], letter["reason"], letter["port"]) == (
        "f-1",
        "collector",
        reason,
        25,
    )
    validate_document({"schema": "mailpath.agent-status/v1", **doc})
    text = render(doc)
    assert all(len(line) <= 80 for line in text.splitlines()[1:])
    assert " ".join(text.split()).count(" ".join(reason.split())) == 1  # the whole reason, wrapped


def test_status_without_a_spool_is_an_error(tmp_path):
    from mailpath.agent.daemon.status import read_status
    from mailpath.probes.errors import CannotRun

    with pytest.raises(CannotRun, match="no spool at"):
        read_status(load(write(tmp_path, [closed_port()])))
    assert not (tmp_path / "spool").exists()
