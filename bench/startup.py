"""Benchmark: the start-up of `mailpath --help` against a bare typer app with as many commands.

The bare app is one ``typer.Typer`` with the same settings as mailpath's (no completion, no
pretty exceptions, help on no arguments), the same ``--version`` callback and N no-op commands,
N being the number of commands `mailpath --help` lists. It is written to a temporary directory
as a script shaped like the ``mailpath`` console script, and both scripts run the same way:
``<venv python> <script> --help``. Runs are interleaved (the order swapped every round) after
warm-ups; the medians and the ratio mailpath / bare are printed, and the exit code is 1 if the
ratio is above 1.3. Also prints the wall time and the import time (``-X importtime``, summed
over every module) of `mailpath probe --help`, with the packages that take most of it.

Usage: ``python -m bench.startup [--runs 20] [--warmups 2] [--max-ratio 1.3]`` (``make bench``;
needs no root and sends nothing).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

MAILPATH = str(Path(sys.executable).with_name("mailpath"))

BARE = '''\
import sys
from typing import Annotated

import typer

app = typer.Typer(name="mailpath", help="A bare app.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)


@app.callback()
def root(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False):
    """A bare app."""

{commands}
if __name__ == "__main__":
    sys.exit(app())
'''

COMMAND = '''
@app.command("{name}")
def {name}():
    """Command {name}: does nothing."""
'''


def listed_commands(help_text: str) -> list[str]:
    """The command names in the Commands panel of typer's help (or click's plain "Commands:")."""
    names, inside = [], False
    for line in help_text.splitlines():
        if re.match(r"^\W*Commands\b", line.strip("│╭╮─ ")):
            inside = True
            continue
        if inside:
            if line.startswith("╰") or not line.strip():
                break
            # A name starts the row right after the border (rich) or the indent (click); wrapped
            # help text is indented further.
            m = re.match(r"^(?:│ |  )([a-z][\w-]*)(?:\s{2,}|\s*│?$)", line)
            if m:
                names.append(m.group(1))
    return names


def _run(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return wall


def import_time(argv: list[str]) -> tuple[float, dict[str, float]]:
    """Total import time of one run (seconds) and each top-level package's share (self times)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True)
    total, by_package = 0.0, defaultdict(float)
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if not m:
            continue
        self_us, cumulative_us, indent, name = int(m[1]), int(m[2]), m[3], m[4]
        by_package[name.split(".")[0]] += self_us / 1e6
        if not indent:  # top level: its cumulative time covers everything below it
            total += cumulative_us / 1e6
    return total, dict(by_package)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmups", type=int, default=2)
    parser.add_argument("--max-ratio", type=float, default=1.3)
    args = parser.parse_args()

    help_text = subprocess.run(
        [sys.executable, MAILPATH, "--help"], capture_output=True, text=True, check=True
    ).stdout
    names = listed_commands(help_text)
    if not names:
        print("could not find the commands in `mailpath --help`", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp) / "mailpath"
        commands = "".join(COMMAND.format(name=f"cmd{i}") for i in range(len(names)))
        bare.write_text(BARE.format(commands=commands))
        cases = {
            "mailpath": [sys.executable, MAILPATH, "--help"],
            "bare": [sys.executable, str(bare), "--help"],
        }
        for _ in range(args.warmups):
            for argv in cases.values():
                _run(argv)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for i in range(args.runs):
            order = list(cases) if i % 2 == 0 else list(reversed(cases))
            for name in order:
                times[name].append(_run(cases[name]))

    probe_help = [sys.executable, MAILPATH, "probe", "--help"]
    for _ in range(args.warmups):
        _run(probe_help)
    probe_wall = statistics.median(_run(probe_help) for _ in range(args.runs))
    imports = [import_time([MAILPATH, "probe", "--help"]) for _ in range(5)]
    probe_import = statistics.median(total for total, _ in imports)
    shares = min(imports, key=lambda r: abs(r[0] - probe_import))[1]
    top = sorted(shares.items(), key=lambda kv: -kv[1])[:6]

    mp, bare_ms = (statistics.median(times[name]) * 1000 for name in ("mailpath", "bare"))
    ratio = mp / bare_ms
    print(
        f"`--help`, {len(names)} commands ({', '.join(names)}); {args.runs} interleaved runs each, "
        f"after {args.warmups} warm-ups; {sys.executable}"
    )
    print(f"mailpath --help               {mp:7.1f} ms  (median)")
    print(f"bare typer app --help         {bare_ms:7.1f} ms  (median)")
    print(f"ratio mailpath / bare         {ratio:7.3f}  (limit {args.max_ratio})")
    print(f"mailpath probe --help         {probe_wall * 1000:7.1f} ms  (median wall)")
    print(f"  import time (-X importtime) {probe_import * 1000:7.1f} ms  (median of 5, all modules)")
    print("  by package (self times):    " + ", ".join(f"{name} {s * 1000:.0f} ms" for name, s in top))
    return 0 if ratio <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
