"""``mailpath agent status``: what the spool says, read from its file (the daemon may be
running: SQLite lets a reader in beside it).

The document (``--json``, ``mailpath.agent-status/v1``, models in :mod:`mailpath.agent.contract`):
``spool`` (path, pending, dead, dropped), ``last_round`` (what the daemon saved at the end of
its latest round), ``last_delivery`` (per sink: the latest batch acknowledged, and the latest
failed attempt), and ``dead_letters`` (the newest first, each with the sink's reason).
"""

from __future__ import annotations

import datetime as dt
import json
import textwrap

from mailpath.agent.daemon.config import AgentConfig
from mailpath.agent.daemon.spool import Spool, SpoolError
from mailpath.probes.errors import CannotRun

DEAD_LETTERS_SHOWN = 100


def read_status(config: AgentConfig, limit: int = DEAD_LETTERS_SHOWN) -> dict:
    """The status document's content (without its ``schema``). Raises CannotRun when there is
    no spool to read."""
    path = config.spool_path
    if not path.exists():
        raise CannotRun(f"no spool at {path}: the agent has not run with this configuration")
    try:
        with Spool(
            path, max_count=config.delivery.spool_max_count, max_age=config.delivery.spool_max_age
        ) as s:
            counts = s.counts()
            letters = s.dead_letters(limit)
            last_round = _json(s.get_meta("last_round"))
            last_delivery = _json(s.get_meta("last_delivery"))
    except SpoolError as e:
        raise CannotRun(str(e)) from None
    return {
        "spool": {
            "path": str(path),
            "pending": counts.pending,
            "dead": counts.dead,
            "dropped": counts.dropped,
        },
        "last_round": last_round,
        "last_delivery": last_delivery,
        "dead_letters": [
            {
                "finding_id": d.finding_id,
                "sink": d.sink,
                "reason": d.reason,
                "at": iso(d.at),
                "target": d.finding.get("target"),
                "port": d.finding.get("port"),
            }
            for d in letters
        ],
    }


def _json(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def render(status: dict) -> str:
    """The status for people, in 80 columns."""
    s = status["spool"]
    lines = [
        f"spool      {s['path']}",
        f"  pending  {s['pending']}",
        f"  dead     {s['dead']}",
        f"  dropped  {s['dropped']}",
    ]
    r = status["last_round"]
    if r is None:
        lines.append("last round   none yet")
    else:
        lines.append(f"last round   #{r['number']} at {r['started_at']}, {r['seconds']:.1f} s")
        lines.append(
            f"  {r['diagnosed']}/{r['targets']} targets, {r['problems']}/{r['findings']} problems, "
            f"{r['sent']} sent" + (" (interrupted)" if r.get("interrupted") else "")
        )
        for e in r.get("errors", [])[:10]:
            lines += _wrap(f"failed: {e}", "  ")
        if r.get("cloud_error"):
            lines += _wrap(r["cloud_error"], "  ")
    d = status["last_delivery"] or {}
    if not d:
        lines.append("last delivery  none yet")
    for sink, info in sorted(d.items()):
        ok = info.get("delivered")
        lines.append(f"last delivery  {sink}: " + (f"{ok['findings']} at {ok['at']}" if ok else "none yet"))
        if info.get("failed"):
            f = info["failed"]
            lines += _wrap(f"last failure {f['at']}: {f['reason']}", "  ")
    letters = status["dead_letters"]
    if letters:
        lines.append(f"dead letters (newest first, {len(letters)} shown):")
        for x in letters:
            lines.append(_cut(f"  {x['at']} {x['sink']} {x['port']} on {x['target']}"))
            lines += _wrap(x["reason"], "    ")
            lines.append(f"    finding {x['finding_id']}")
    return "\n".join(lines)


def _wrap(text: str, indent: str) -> list[str]:
    """``text`` whole, in lines of at most 80 columns."""
    return textwrap.wrap(text, 80, initial_indent=indent, subsequent_indent=indent + "  ") or [indent]


def _cut(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
