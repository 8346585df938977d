"""``make demo``: build a lab, break the mail path in every way mailpath tells apart, probe it.

The server listens on 587 only. r1 drops 25 (as a cloud provider's port-25 block would),
r2 forges RSTs for 2525, r1 rejects 2526 with ICMP admin-prohibited, r2 has no route for
TCP to 2527, and nothing listens on 465. Everything runs inside the lab's namespaces.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lab import Lab

MAILPATH = str(Path(sys.executable).with_name("mailpath"))


def main() -> int:
    with Lab() as lab:
        lab.add_host("mail.lab.test", lab.server4, lab.server6)
        lab.listen([587])
        lab.block("r1", 25, "drop")
        lab.block("r2", 2525, "tcp-reset")
        lab.block("r1", 2526, "admin-prohibited")
        for family in (4, 6):
            lab.route("r2", "unreachable", port=2527, family=family)
        print(
            f"lab {lab.prefix}: client -> r1 (hop 1) -> r2 (hop 2) -> server {lab.server4} / "
            f"{lab.server6} (hop 3)\n",
            flush=True,
        )
        argv = [
            "mailpath",
            "probe",
            "mail.lab.test",
            "-p",
            "25,465,587,2525-2527",
            "--timeout",
            "0.5",
            "--retries",
            "1",
        ]
        print("$ " + " ".join(argv), flush=True)
        code = subprocess.run(["ip", "netns", "exec", lab.ns("client"), MAILPATH, *argv[1:]]).returncode
        print(f"\nexit code {code} (1: a problem was found); the lab is torn down now.")
    return 0 if code == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
