"""``mailpath collector``: run the central findings service and manage its tokens.

``serve`` runs the HTTP API (:mod:`mailpath.collector`); ``token create|list|revoke`` manage
the bearer tokens agents and viewers use. The collector (FastAPI, SQLAlchemy, uvicorn,
Alembic) is imported inside the commands, so ``mailpath --help`` does not load it.

Exit codes: 0 done, 2 bad input (a database URL, listen address, agent name, role, or a token
that does not exist), 3 could not run (the database is unreachable or has a newer schema, the
address cannot be bound).
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Annotated, NoReturn

import typer
from mailpath.agent.cli.common import CANNOT_RUN, USAGE, JsonOpt, app

collector_app = typer.Typer(
    name="collector",
    help="The central findings service: serve its API, manage its tokens.",
    no_args_is_help=True,
)
token_app = typer.Typer(
    help="Bearer tokens: agents send findings, viewers read them.",
    no_args_is_help=True,
)
collector_app.add_typer(token_app, name="token")
app.add_typer(collector_app, name="collector")

DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database",
        metavar="URL",
        help="sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB "
        "(default: $MAILPATH_COLLECTOR_DATABASE_URL, else collector.db in the data directory).",
    ),
]


class Role(StrEnum):
    agent = "agent"
    viewer = "viewer"


def _fail(code: str, message: str, exit_code: int, json_out: bool) -> NoReturn:
    if json_out:
        print(json.dumps({"error": {"code": code, "message": message}}, indent=2))
    else:
        print(f"mailpath: error: {message}", file=sys.stderr)
    raise typer.Exit(exit_code)


@contextlib.contextmanager
def _collector_errors(json_out: bool) -> Iterator[None]:
    """The collector's errors as one line (or one JSON error object) and an exit code."""
    from mailpath.collector.errors import CollectorError, ConfigError, NotFound

    try:
        yield
    except (ConfigError, NotFound) as e:
        _fail("bad-input", str(e), USAGE, json_out)
    except CollectorError as e:
        _fail("cannot-run", str(e), CANNOT_RUN, json_out)


def _guarded(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with _collector_errors(kwargs.get("json_out", False)):
            return fn(*args, **kwargs)

    return run


@collector_app.command("serve")
@_guarded
def serve(
    database: DatabaseOpt = None,
    listen: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="Address to listen on, [IPv6]:PORT for IPv6; port 0 takes a free one "
            "(default: $MAILPATH_COLLECTOR_LISTEN, else 127.0.0.1:8080).",
        ),
    ] = None,
    data_dir: Annotated[
        str | None,
        typer.Option(
            metavar="DIR",
            help="Where the default SQLite database lives (default: $MAILPATH_COLLECTOR_DATA_DIR, "
            "else the working directory).",
        ),
    ] = None,
) -> None:
    """Serve the collector's HTTP API until stopped (SIGINT, SIGTERM).

    The database is migrated to this version's schema first; one newer than this version
    knows is refused. Other settings come from MAILPATH_COLLECTOR_* variables (body limit,
    retention age and interval, access log): see the README."""
    from mailpath.collector.server import serve as run
    from mailpath.collector.settings import load_settings

    run(load_settings(database_url=database, listen=listen, data_dir=data_dir))


@token_app.command("create")
@_guarded
def token_create(
    agent: Annotated[str, typer.Option("--agent", metavar="NAME", help="The agent's (or viewer's) name.")],
    role: Annotated[
        Role, typer.Option(case_sensitive=False, help="agent: sends findings and reads; viewer: reads.")
    ] = Role.agent,
    fleet: Annotated[
        bool,
        typer.Option(
            "--fleet",
            help="One agent token for many hosts (a DaemonSet): each host's findings are stored "
            "under the agent HOSTNAME@NAME, from the host name they carry.",
        ),
    ] = False,
    database: DatabaseOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a token and print it, once: only its hash is kept.

    The token alone goes to stdout (`... > token-file` stores it); what it is goes to stderr.
    With --json: {"token", "agent", "role", "fleet"}."""
    from mailpath.collector import admin

    token, info = admin.create_token(admin.settings_for(database), agent, role.value, fleet=fleet)
    if json_out:
        doc = {"token": token, "agent": info.agent, "role": info.role, "fleet": info.fleet}
        print(json.dumps(doc, indent=2))
        return
    print(token)
    kind = f"fleet of agents *@{info.agent}" if info.fleet else f"{info.role} {info.agent!r}"
    print(
        f"token {info.id} for {kind}: shown once, store it now "
        f"(revoke with: mailpath collector token revoke {info.prefix})",
        file=sys.stderr,
    )


@token_app.command("list")
@_guarded
def token_list(database: DatabaseOpt = None, json_out: JsonOpt = False) -> None:
    """List the tokens (id, prefix, name, role, created, revoked); never a token itself."""
    from mailpath.collector import admin

    tokens = admin.list_tokens(admin.settings_for(database))
    if json_out:
        print(json.dumps({"tokens": [t.to_json_dict() for t in tokens]}, indent=2))
        return
    rows = [("ID", "PREFIX", "NAME", "ROLE", "CREATED", "REVOKED")]
    for t in tokens:
        revoked = t.revoked_at.strftime("%Y-%m-%d %H:%M:%SZ") if t.revoked_at else "-"
        role = f"{t.role} (fleet)" if t.fleet else t.role
        rows.append(
            (str(t.id), t.prefix, t.agent, role, t.created_at.strftime("%Y-%m-%d %H:%M:%SZ"), revoked)
        )
    if len(rows) == 1:
        print("no tokens", file=sys.stderr)
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


@token_app.command("revoke")
@_guarded
def token_revoke(
    prefix_or_id: Annotated[
        str, typer.Argument(metavar="PREFIX_OR_ID", help="The token's prefix or id, as `token list` shows.")
    ],
    database: DatabaseOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Revoke a token: the collector refuses it from its next request on."""
    from mailpath.collector import admin

    info, fresh = admin.revoke_token(admin.settings_for(database), prefix_or_id)
    if json_out:
        print(json.dumps({**info.to_json_dict(), "revoked_now": fresh}, indent=2))
        return
    when = "revoked" if fresh else "was already revoked"
    print(f"token {info.id} ({info.prefix}, {info.role} {info.agent!r}) {when}", file=sys.stderr)
