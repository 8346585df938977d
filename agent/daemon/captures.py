"""Packet evidence kept by the agent: with ``[capture] dir`` set, each target's raw probes and
traces are recorded (:class:`mailpath.probes.capture.Recorder`) and, when one of its findings
changed, written there as ``round-NNNNNN-TARGET.pcapng`` (Wireshark and tcpdump read it; each
packet's comment names the evidence ref of the finding it backs). Unchanged rounds keep
nothing. The folder is bounded: at most ``keep`` files and ``max_bytes`` in all, the oldest
going first (:func:`doomed`, pure).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("mailpath.agent")

SUFFIX = ".pcapng"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def file_name(round_number: int, target: str) -> str:
    """``round-000012-mx.example.com.pcapng``: sortable by round, safe as a file name."""
    safe = _UNSAFE.sub("_", target).strip("._") or "target"
    return f"round-{round_number:06d}-{safe[:100]}{SUFFIX}"


def doomed(files: Iterable[tuple[str, int]], keep: int, max_bytes: int) -> list[str]:
    """The files to remove, given (name, size) of every capture: the oldest (names sort by
    round) until at most ``keep`` remain and their sizes add up to at most ``max_bytes``. The
    newest file is never removed, even alone over ``max_bytes``: it is the evidence just kept."""
    ordered = sorted(files)
    total = sum(size for _, size in ordered)
    out: list[str] = []
    while len(ordered) > 1 and (len(ordered) > keep or total > max_bytes):
        name, size = ordered.pop(0)
        total -= size
        out.append(name)
    return out


def keep_capture(folder: Path, round_number: int, target: str, recorder, keep: int, max_bytes: int):
    """Write ``recorder`` for ``target`` into ``folder``, then trim the folder; returns what
    was written (:class:`mailpath.probes.capture.Written`), or None when it could not be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        written = recorder.write(str(folder / file_name(round_number, target)))
        files = [(p.name, p.stat().st_size) for p in folder.glob(f"round-*{SUFFIX}")]
        for name in doomed(files, keep, max_bytes):
            (folder / name).unlink(missing_ok=True)
    except OSError as e:
        log.error("%s: cannot keep the capture in %s: %s", target, folder, e.strerror or e)
        return None
    log.info("%s: changed; its packets are in %s (%d)", target, written.path, written.packets)
    return written
