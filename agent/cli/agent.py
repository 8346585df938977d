"""``mailpath agent``: the deployed form of mailpath, run by systemd, a container or a
Kubernetes DaemonSet: diagnosis rounds over the configured targets on a schedule, every
finding spooled on local disk before it is delivered (collector, OTLP, stdout).

``run`` is the daemon (foreground, logs on stderr; SIGTERM stops it cleanly, SIGHUP reloads
the configuration), ``once`` one round and one flush, ``status`` what the spool holds. The
daemon (:mod:`mailpath.agent.daemon`) is imported inside the commands.

Exit codes: 0 done (``once``: everything delivered), 2 a bad configuration (one line per
problem, before anything runs), 3 could not run (the spool or the metrics address cannot be
had; ``once``: no target could be diagnosed), 4 (``once``) findings were left undelivered:
they stay in the spool for the next run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from mailpath.agent.cli.common import CANNOT_RUN, USAGE, JsonOpt, app
from mailpath.agent.documents import envelope

agent_app = typer.Typer(
    name="agent",
    help="The agent: diagnose configured targets on a schedule, deliver every finding.",
    no_args_is_help=True,
)
app.add_typer(agent_app, name="agent")

ConfigOpt = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        help="The agent's TOML configuration (MAILPATH_* variables override it).",
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log more (debug).")]
DEFAULT_CONFIG = Path("/etc/mailpath/agent.toml")


def _guarded(fn: Callable[[], int], json_out: bool = False) -> NoReturn:
    """Run ``fn``; its exit code, or a configuration error (exit 2, one line per problem) or an
    error that keeps it from running (exit 3), as one line each on stderr or one JSON document."""
    from mailpath.agent.daemon.config import ConfigError
    from mailpath.probes.errors import InputError, MailpathError

    try:
        code = fn()
    except ConfigError as e:
        _fail("bad-input", e.lines, USAGE, json_out)
    except MailpathError as e:
        _fail(e.code, [str(e)], USAGE if isinstance(e, InputError) else CANNOT_RUN, json_out)
    raise typer.Exit(code)


def _fail(code: str, lines: list[str], exit_code: int, json_out: bool) -> NoReturn:
    if json_out:
        doc = envelope("agent-status", [], error={"code": code, "message": "\n".join(lines)})
        print(json.dumps(doc, indent=2))
    else:
        for line in lines:
            print(f"mailpath: error: {line}", file=sys.stderr)
    raise typer.Exit(exit_code)


@agent_app.command("run")
def run(config: ConfigOpt = DEFAULT_CONFIG, verbose: VerboseOpt = False) -> None:
    """Run the agent in the foreground: a round every interval, delivery all along.

    SIGTERM: no new round; running diagnoses get stop_timeout seconds, the spool is
    flushed for flush_timeout seconds; exit 0. SIGHUP: reload the configuration (a bad
    one is logged and the one in use kept)."""
    from mailpath.agent.daemon import runner

    _guarded(lambda: runner.run(config, verbose=verbose))


@agent_app.command("once")
def once(config: ConfigOpt = DEFAULT_CONFIG, verbose: VerboseOpt = False) -> None:
    """One round, deliver what can be delivered, exit.

    Exit 0 when everything was delivered, 4 when findings stay in the spool (the next run
    delivers them), 3 when no target could be diagnosed."""
    from mailpath.agent.daemon import runner

    _guarded(lambda: runner.once(config, verbose=verbose))


@agent_app.command("status")
def status(config: ConfigOpt = DEFAULT_CONFIG, json_out: JsonOpt = False) -> None:
    """What the spool holds (pending, dead letters and why, dropped), the last round and delivery."""

    def show() -> int:
        from mailpath.agent.daemon.config import load
        from mailpath.agent.daemon.status import read_status, render

        doc = read_status(load(config))
        if json_out:
            letters = doc.pop("dead_letters")
            out = envelope("agent-status", letters)
            print(json.dumps({"schema": out["schema"], **doc, "dead_letters": letters}, indent=2))
        else:
            print(render(doc))
        return 0

    _guarded(show, json_out)
