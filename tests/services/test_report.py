"""The agent's side of the contract, for real: ``mailpath diagnose --report`` sends its findings
to the running collector, which stores them under the token's agent. The only probe is a
connect() to 127.0.0.1 port 9 (closed); the cloud check is off."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import MAILPATH
from tests.services.conftest import clean_env


def test_diagnose_report_lands_in_the_collector(collector, name, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(collector.token(name) + "\n")
    args = ["diagnose", "127.0.0.1", "-p", "9", "--method", "connect", "--no-cloud", "--timeout", "0.3"]
    args += ["--retries", "0", "--min-wait", "0", "--json"]
    args += ["--report", collector.url, "--token-file", str(token_file)]
    r = subprocess.run([MAILPATH, *args], capture_output=True, text=True, timeout=60, env=clean_env())
    assert r.returncode == 1, r.stderr  # a problem found (nothing listens on 9), and delivered
    (sent,) = json.loads(r.stdout)["findings"]
    with collector.client(token_file.read_text().strip()) as c:
        stored = c.get(f"/v1/findings/{sent['id']}").json()
        (state,) = c.get("/v1/targets", params={"agent": name}).json()["items"]
    assert stored["agent"] == name and stored["finding"] == sent
    assert (state["target"], state["port"], state["cause"]) == ("127.0.0.1", 9, "service")
