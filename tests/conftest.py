"""Shared fixtures. Lab tests (marker ``lab``) need root; elsewhere they skip and say why."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

MAILPATH = str(Path(sys.executable).with_name("mailpath"))

# No test may ever reach a real metadata service (169.254.169.254 is outside every lab):
# botocore and mailpath's IMDS client read this endpoint; tests that need IMDS serve their own.
os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = "http://127.0.0.1:9/"
os.environ.setdefault("AWS_CONFIG_FILE", os.devnull)
os.environ.setdefault("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(
        reason="lab test: needs root for network namespaces and raw sockets (CI runs as root)"
    )
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(skip)


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        """The --json document, checked against its published schema (agent/schema/)."""
        doc = json.loads(self.stdout)
        validate_document(doc)
        return doc

    @property
    def items(self) -> list[dict]:
        """The results of the document, whatever its command (the one list it holds)."""
        doc = self.json
        (key,) = [k for k in doc if k not in ("schema", "error", "capture")]
        return doc[key]

    @property
    def one(self) -> dict:
        (item,) = self.items
        return item


SCHEMAS = Path(__file__).resolve().parents[1] / "agent" / "schema"


def validate_document(doc: dict) -> None:
    """Validate a command's JSON document against the schema it names (mailpath.<cmd>/v1)."""
    import jsonschema

    command, version = doc["schema"].removeprefix("mailpath.").split("/")
    schema = json.loads((SCHEMAS / f"{command}-{version}.json").read_text())
    jsonschema.validate(doc, schema, format_checker=jsonschema.FormatChecker())


def mailpath(lab, *args: str, node: str = "client", wrap: tuple[str, ...] = (), timeout: float = 600) -> Run:
    """Run the installed ``mailpath`` command inside a lab namespace."""
    r = lab.exec(node, [*wrap, MAILPATH, *args], check=False, timeout=timeout)
    return Run(r.returncode, r.stdout, r.stderr)


@pytest.fixture(scope="module")
def lab():
    """One lab per test module, with listeners on 25, 465 and 587; faults are reset per test."""
    from lab import Lab

    with Lab() as net:
        net.add_host("mail.lab.test", net.server4, net.server6)
        net.add_host("v4only.lab.test", net.server4)
        net.listen([25, 465, 587])
        yield net


@pytest.fixture
def faults(lab):
    """The module's lab, with every fault the test adds removed afterwards."""
    yield lab
    lab.reset_faults()
