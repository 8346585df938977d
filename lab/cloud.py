"""Cloud emulation inside the lab: the client namespace looks like an EC2 instance.

moto in server mode (the EC2 API) and an IMDSv2 endpoint (:mod:`lab.imds`) run on the client
namespace's own loopback; :mod:`lab.world` builds a VPC, subnet, security group and instance
in moto and gives the IMDS paths that describe that instance. Nothing leaves the namespace.

Scenarios (:func:`lab.world.main`): ``open`` (the security group allows all egress: the
provider's port-25 policy explains a drop) and ``no-25`` (the group allows 587 but not 25).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MOTO_PORT = 5000


@dataclass
class Cloud:
    """The emulation running in one lab: the environment a mailpath process needs to see it."""

    lab: object
    endpoint: str
    ids: dict = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    _imds: subprocess.Popen | None = None

    def world(self, scenario: str) -> dict:
        """A fresh world for ``scenario`` (moto reset first) and an IMDS describing it."""
        self._python(
            "import urllib.request; urllib.request.urlopen(urllib.request."
            f"Request('{self.endpoint}/moto-api/reset', method='POST'))"
        )
        run = self.lab.exec("client", [sys.executable, "-m", "lab.world", self.endpoint, scenario])
        self.ids = json.loads(run.stdout)
        if self._imds is not None:
            self._imds.terminate()
            self._imds.wait(5)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(self.ids["imds"], f)
        self._imds = self.lab.popen(
            "client",
            [sys.executable, "-m", "lab.imds", f.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # a Ctrl-C on a terminal: no traceback of the helper
            text=True,
        )
        _ready, port = self._imds.stdout.readline().split()
        Path(f.name).unlink()
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_ENDPOINT_URL_EC2": self.endpoint,
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{port}/",
        }
        return self.ids

    def _python(self, code: str) -> subprocess.CompletedProcess:
        return self.lab.exec("client", [sys.executable, "-c", code], check=False)


def start(lab, timeout: float = 30) -> Cloud:
    """Start moto in ``lab``'s client namespace (stopped with the lab) and wait for it."""
    lab.popen(
        "client",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(MOTO_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cloud = Cloud(lab, f"http://127.0.0.1:{MOTO_PORT}")
    deadline = time.monotonic() + timeout
    probe = f"import urllib.request; urllib.request.urlopen('{cloud.endpoint}/moto-api/', timeout=1)"
    while cloud._python(probe).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError("moto did not start in the client namespace")
        time.sleep(0.3)
    return cloud
