"""AWS in a box: moto in server mode (a real HTTP endpoint), an IMDSv2 endpoint served by the
test, and a proxy that answers AccessDenied for chosen actions. boto3 runs unchanged, pointed
at them through the standard environment variables; nothing leaves loopback."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

import pytest

from lab.imds import IMDS, serve

REGION = "eu-west-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_url():
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(5)


@pytest.fixture
def imds():
    server_imds = IMDS()
    server, server_imds.url = serve(server_imds.handler())
    yield server_imds
    server.shutdown()


@dataclass
class Denier:
    """A proxy in front of moto that answers UnauthorizedOperation for the actions in ``deny``."""

    upstream: str
    deny: set[str] = field(default_factory=set)
    url: str = ""

    def handler(self):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                action = urllib.parse.parse_qs(body.decode()).get("Action", [""])[0]
                if action in proxy.deny:
                    xml = (
                        b"<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not "
                        b"authorized to perform this operation.</Message></Error></Errors>"
                        b"<RequestID>1</RequestID></Response>"
                    )
                    self.send_response(403)
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
                }
                req = urllib.request.Request(
                    proxy.upstream + self.path, data=body, headers=headers, method="POST"
                )
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        status, data, ctype = r.status, r.read(), r.headers.get("Content-Type", "text/xml")
                except urllib.error.HTTPError as e:
                    status, data, ctype = e.code, e.read(), e.headers.get("Content-Type", "text/xml")
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


@pytest.fixture
def aws(moto_url, monkeypatch):
    """A clean moto account and an environment where boto3 and botocore only reach loopback."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"), timeout=10)
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL_EC2": moto_url,
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9/",  # closed: never the real IMDS
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import boto3

    return boto3.client("ec2", region_name=REGION, endpoint_url=moto_url)


@pytest.fixture
def denier(moto_url, monkeypatch):
    d = Denier(moto_url)
    server, d.url = serve(d.handler())
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", d.url)
    yield d
    server.shutdown()
