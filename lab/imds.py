"""A test IMDSv2 endpoint: a token must be PUT first, and every GET must carry it.

Runnable inside a lab namespace: ``python -m lab.imds PATHS.json`` serves the paths
on 127.0.0.1 and prints ``ready PORT``.
"""

from __future__ import annotations

import http.server
import json
import sys
import threading
import uuid
from dataclasses import dataclass, field


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def serve(handler) -> tuple[_Server, str]:
    """Serve ``handler`` on a free loopback port in a thread; returns the server and its URL."""
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@dataclass
class IMDS:
    """An IMDSv2 endpoint: PUT a token first; every GET must carry it."""

    paths: dict[str, str] = field(default_factory=dict)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    log: list[tuple[str, str, bool]] = field(default_factory=list)  # (method, path, had a good token)
    url: str = ""

    def handler(self):
        imds = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                ok = self.path == "/latest/api/token" and self.headers.get(
                    "X-aws-ec2-metadata-token-ttl-seconds"
                )
                imds.log.append(("PUT", self.path, bool(ok)))
                self._reply(200, imds.token) if ok else self._reply(400)

            def do_GET(self):
                good = self.headers.get("X-aws-ec2-metadata-token") == imds.token
                imds.log.append(("GET", self.path, good))
                if not good:
                    return self._reply(401)
                body = imds.paths.get(self.path.removeprefix("/latest/"))
                self._reply(200, body) if body is not None else self._reply(404)

        return Handler


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        imds = IMDS(paths=json.load(f))
    server, imds.url = serve(imds.handler())
    print("ready", server.server_address[1], flush=True)
    threading.Event().wait()
