"""The OpenAPI document: the one published at collector/openapi.json is the one served."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = ROOT / "collector" / "openapi.json"


def test_the_published_openapi_is_the_served_one(collector):
    with collector.client() as c:
        served = c.get("/openapi.json").json()
    assert json.loads(PUBLISHED.read_text()) == served, (
        "collector/openapi.json is stale: run `python -m mailpath.collector.openapi collector/openapi.json`"
    )


def test_the_published_openapi_is_what_the_generator_writes():
    from mailpath.collector.openapi import text

    assert PUBLISHED.read_text() == text()


def test_the_openapi_documents_every_route_and_the_batch():
    doc = json.loads(PUBLISHED.read_text())
    assert set(doc["paths"]) == {
        "/v1/findings",
        "/v1/findings/{finding_id}",
        "/v1/targets",
        "/v1/agents",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    post = doc["paths"]["/v1/findings"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/FindingBatch")
    assert {"200", "400", "401", "403", "413", "415", "422"} <= set(post["responses"])
    assert "Finding" in doc["components"]["schemas"]
    assert {"HTTPBearer", "APIKeyCookie"} <= set(doc["components"]["securitySchemes"])
