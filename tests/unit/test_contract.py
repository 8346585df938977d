"""The published JSON documents: one object per command, kept identical to their models, and
what the commands print validates against them (lab tests validate every document they read)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from mailpath.agent.contract import document_schema
from mailpath.agent.documents import DOCUMENTS

from tests.conftest import MAILPATH, SCHEMAS, validate_document

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", sorted(DOCUMENTS))
def test_published_schema_is_the_models_schema(command):
    published = json.loads((SCHEMAS / f"{command}-v1.json").read_text())
    assert published == document_schema(command), (
        f"agent/schema/{command}-v1.json is stale: run `python -m mailpath.agent.contract agent/schema` "
        "(and bump the version if the change is incompatible)"
    )


def _run(*args: str) -> tuple[int, dict]:
    r = subprocess.run([MAILPATH, *args], capture_output=True, text=True, timeout=60)
    return r.returncode, json.loads(r.stdout)


def test_a_probe_document_validates_and_has_its_results_in_a_list():
    code, doc = _run(
        "probe", "127.0.0.1:9", "--method", "connect", "--timeout", "0.3", "--retries", "0", "--json"
    )
    validate_document(doc)
    assert code == 1 and doc["schema"] == "mailpath.probe/v1" and doc["results"][0]["verdict"] == "refused"


@pytest.mark.parametrize(
    ("args", "code", "error"),
    [
        (["probe", "127.0.0.1:99999"], 2, "bad-input"),
        (["probe", "--no-such-option", "x"], 2, "usage"),
        (["trace", "127.0.0.1", "--control", "udp"], 2, "bad-input"),
        (["dns", "bad..name"], 2, "bad-input"),
        (["smtp", "127.0.0.1", "--tls", "maybe"], 2, "usage"),
        (["diagnose", "127.0.0.1", "--provider", "ovh"], 2, "bad-input"),
        (["cloud", "--dest", "127.0.0.1", "--provider", "ovh"], 2, "bad-input"),
        # every option given is used, or refused before anything is sent
        (["probe", "127.0.0.1", "--method", "connect", "--rate", "10"], 2, "bad-input"),
        (["smtp", "127.0.0.1", "--allow-auth-in-clear"], 2, "bad-input"),
        (["smtp", "127.0.0.1", "--password-env", "HOME"], 2, "bad-input"),
        (["smtp", "127.0.0.1", "--ca-file", "/etc/hostname"], 2, "bad-input"),
        (["smtp", "127.0.0.1", "--to", "not-an-address"], 2, "bad-input"),
        (["diagnose", "127.0.0.1", "--no-cloud", "--region", "eu-west-1"], 2, "bad-input"),
        (["diagnose", "127.0.0.1", "--ca-file", "/nonexistent.pem"], 2, "bad-input"),
        (["cloud", "--dest", "127.0.0.1", "--provider", "gcp", "--eni", "eni-1"], 2, "bad-input"),
    ],
)
def test_an_error_is_one_document_too(args, code, error):
    got, doc = _run(*args, "--json")
    validate_document(doc)
    command = args[0]
    schema, key = DOCUMENTS[command]
    assert got == code and doc["schema"] == schema and doc[key] == [] and doc["error"]["code"] == error
    assert doc["error"]["message"]


def test_each_command_has_a_document_and_a_published_schema():
    from mailpath.agent.cli import app

    commands = {c.name for c in app.registered_commands}
    # a command of a group (mailpath agent status) names its document GROUP-COMMAND
    grouped = {
        f"{g.name}-{c.name}" for g in app.registered_groups for c in g.typer_instance.registered_commands
    }
    assert commands == set(DOCUMENTS) - grouped and set(DOCUMENTS) - commands <= grouped
    assert {p.name for p in SCHEMAS.glob("*-v1.json")} == {f"{c}-v1.json" for c in [*DOCUMENTS, "finding"]}
