"""Run a command as an unprivileged user (nobody) holding CAP_NET_RAW or no capability at all,
with setpriv: the proof that mailpath needs nothing else.

The interpreter may live under a directory that user cannot enter (pyenv in root's home, mode
0700). Rather than loosen that directory, the command runs in a private mount namespace where a
world-traversable tmpfs covers it and only the needed child is bind-mounted back in; the
namespace ends with the command, and nothing of the host's mounts changes."""

from __future__ import annotations

import os
import shlex
import stat
import sys
from pathlib import Path

NOBODY = 65534


def _hidden(paths: list[Path]) -> list[tuple[Path, str]]:
    """(directory, child) pairs: a directory others cannot enter, and the entry below it on
    the way to one of ``paths``."""
    out: dict[Path, str] = {}
    for path in paths:
        parts = path.resolve().parts
        for i in range(1, len(parts) - 1):
            d = Path(*parts[: i + 1])
            if not os.stat(d).st_mode & stat.S_IXOTH:
                out.setdefault(d, parts[i + 1])
    return list(out.items())


def command(argv: list[str], *, net_raw: bool, stash: Path) -> list[str]:
    """``argv`` wrapped to run as nobody with CAP_NET_RAW only (or nothing), through the
    private mount namespace when the interpreter is out of nobody's reach. ``stash``: an empty
    directory for the covered directories' bind mounts."""
    caps = "-all,+net_raw" if net_raw else "-all"
    setpriv = [
        "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        f"--inh-caps={caps}", f"--ambient-caps={caps}", f"--bounding-set={caps}", "--",
        "env", "HOME=/nonexistent", *argv,
    ]  # fmt: skip
    hidden = _hidden([Path(sys.executable), Path(sys.base_prefix) / "bin", Path(argv[0])])
    if not hidden:
        return setpriv
    script = ["set -e"]
    for n, (directory, child) in enumerate(hidden):
        keep = stash / str(n)
        script += [
            f"mkdir -p {keep}",
            f"mount --bind {shlex.quote(str(directory))} {keep}",
            f"mount -t tmpfs -o mode=0755,size=64k mailpath-cover {shlex.quote(str(directory))}",
            f"mkdir {shlex.quote(str(directory / child))}",
            f"mount --bind {keep}/{shlex.quote(child)} {shlex.quote(str(directory / child))}",
        ]
    script.append("exec " + shlex.join(setpriv))
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", "\n".join(script)]
