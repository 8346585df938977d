"""lab.relay: the host's loopback reaches a service in the client namespace (the demo's
dashboard), and only through the relay: the namespace's loopback is not the host's."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from lab.relay import Relay

pytestmark = pytest.mark.lab


def test_the_relay_reaches_a_server_in_the_namespace(lab):
    port = 18765
    lab.popen(
        "client",
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    relay = Relay(lab.ns("client"), ("127.0.0.1", port))
    try:
        with httpx.Client(trust_env=False, timeout=5) as c:
            deadline = time.monotonic() + 10
            while True:
                try:
                    r = c.get(f"http://127.0.0.1:{relay.port}/")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the relay never reached the server"
                    time.sleep(0.1)
            assert r.status_code == 200 and "Directory listing" in r.text
            with pytest.raises(httpx.TransportError):
                c.get(f"http://127.0.0.1:{port}/")  # not on the host's own loopback
    finally:
        relay.close()
