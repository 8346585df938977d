"""``make demo``: build a lab, break the mail path in the ways mailpath tells apart, and run
the two main commands on it: ``probe`` (packet-level verdicts) and ``diagnose`` (findings).

Part 1, on the lab's plain server: it listens on 587 only; r1 drops 25 (as a cloud
provider's port-25 block would), r2 forges RSTs for 2525, r1 rejects 2526 with ICMP
admin-prohibited, r2 has no route for TCP to 2527, and nothing listens on 465.
Part 2, the mail world of ``lab.mail`` (DNS with MX records, real SMTP servers, a private
CA): ``mailpath diagnose lab.test`` with r2 dropping 465. Everything runs inside the lab.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lab import Lab
from lab.mail import setup_mail

MAILPATH = str(Path(sys.executable).with_name("mailpath"))


def _show(lab: Lab, argv: list[str]) -> int:
    """Print the command as typed, run it in the client namespace, return its exit code."""
    print("$ " + " ".join(argv), flush=True)
    return subprocess.run(["ip", "netns", "exec", lab.ns("client"), MAILPATH, *argv[1:]]).returncode


def main() -> int:
    with Lab() as lab:
        lab.add_host("mail.lab.test", lab.server4, lab.server6)
        listener = lab.listen([587])
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
        code = _show(lab, argv)
        print(f"\nexit code {code} (1: a problem was found)\n", flush=True)

        listener.terminate()  # part 2 brings real SMTP servers
        listener.wait()
        lab.reset_faults()
        mail = setup_mail(lab)
        lab.block("r2", 465, "drop")
        argv = [
            "mailpath",
            "diagnose",
            "lab.test",
            "--ca-file",
            str(mail.ca_file),
            "--timeout",
            "0.5",
            "--retries",
            "1",
            "--smtp-timeout",
            "2",
        ]
        code2 = _show(lab, argv)
        print(f"exit code {code2}; the lab is torn down now.")
    return 0 if code == code2 == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
