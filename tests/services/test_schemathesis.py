"""Schemathesis against the published OpenAPI document (the one the collector serves: see
test_openapi.py), over HTTP, on the running collector (SQLite and PostgreSQL): for every
operation, with an agent token and with none, requests generated from the document (valid and
invalid ones) never get a 5xx; every answer's status is documented, its content type and body
match the document; and a request the document calls valid is accepted (2xx; 401 without a
token, 404 for an unknown id). Strings are generated without NUL: the collector refuses those
(the request body's description says so; test_ingest and test_queries send them). Bounded:
``EXAMPLES`` examples per operation and mode, derandomized (the same cases each run), besides
schemathesis's own boundary cases (its coverage phase)."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

PUBLISHED = Path(__file__).resolve().parents[2] / "collector" / "openapi.json"
EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    positive_data_acceptance,
]

schema = schemathesis.openapi.from_path(PUBLISHED)
schema.config.generation.update(allow_x00=False)


@pytest.fixture(scope="module")
def http():
    """A requests session that never asks a proxy (trust_env off): 127.0.0.1 only."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


@pytest.fixture(scope="module")
def tokens(collector):
    return {"agent": collector.token("schemathesis"), "none": None}


@pytest.mark.parametrize("auth", ["agent", "none"])
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_keeps_its_document(case, auth, collector, tokens, http):
    headers = {"Authorization": f"Bearer {tokens[auth]}"} if tokens[auth] else {}
    checks = CHECKS
    if (case.query or {}).get("cursor") is not None:
        # a cursor is opaque: only one the collector handed out is valid, others are a 400
        checks = [check for check in CHECKS if check is not positive_data_acceptance]
    case.call_and_validate(base_url=collector.url, session=http, headers=headers, checks=checks, timeout=30)
