"""Run one command and report its wall time and peak RSS (of it and its children).

Usage: ``python -m bench.measure -- CMD ARGS...``; prints the command's stdout, and one JSON
line ``{"wall_s": ..., "max_rss_kb": ..., "code": ...}`` on stderr. Run inside a lab namespace
with ``ip netns exec`` so each command is measured on its own.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE)
    wall = time.perf_counter() - start
    sys.stdout.buffer.write(proc.stdout)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"wall_s": round(wall, 3), "max_rss_kb": rss, "code": proc.returncode}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[sys.argv.index("--") + 1 :]))
