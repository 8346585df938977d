"""``POST /v1/findings``: from the request body to stored rows.

Three steps, each its own function: :func:`decode` (size limits and gzip: the declared and the
decompressed size are both bounded, so a gzip bomb is never inflated past the limit), then
:func:`parse` (JSON, the document, each finding through ``mailpath.agent.finding.Finding``),
then :func:`store` (one transaction: findings inserted once by id, the agent's row and the
latest state per target and port updated with them). Any rejection is a :class:`Rejected`
carrying the HTTP status, a reason code, a message and, for a finding, its index in the batch;
nothing of a rejected batch is stored.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import math
import re
import uuid
import zlib
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from mailpath.agent.finding import SCHEMA_ID as FINDING_SCHEMA
from mailpath.agent.finding import Finding
from mailpath.collector.db import AgentRow, FindingRow, JSONText, LatestRow, as_utc, utcnow
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import bindparam, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

DOCUMENT_SCHEMA = "mailpath.diagnose/v1"
MAX_DEPTH = 32  # nesting of the JSON document; a finding needs about 8
MAX_TARGET = 255  # a host name is at most 253 characters


@dataclass
class Rejected(Exception):
    """Why a batch was refused: the answer is ``status`` with ``{"detail", "reason", "index"}``."""

    status: int
    reason: str  # too-large, bad-encoding, unsupported-media-type, malformed-json, not-a-batch,
    # unknown-schema, schema-violation, wrong-host (also the label of findings_rejected_total)
    detail: str
    index: int | None = None
    errors: list[dict] | None = None

    def body(self) -> dict:
        out: dict = {"detail": self.detail, "reason": self.reason, "index": self.index}
        if self.errors is not None:
            out["errors"] = self.errors
        return out


def finding_row(f: Finding, agent: str, received_at: dt.datetime) -> dict[str, Any]:
    """The ``findings`` row of one finding (the document as pydantic serializes it)."""
    return {
        "id": f.id,
        "agent": agent,
        "target": f.target,
        "port": f.port,
        "cause": f.cause,
        "severity": f.severity,
        "created_at": f.created_at,
        "received_at": received_at,
        "doc": JSONText(f.model_dump_json(by_alias=True)),
    }


def _too_large(limit: int, what: str) -> Rejected:
    return Rejected(413, "too-large", f"the {what} is over the limit of {limit} bytes")


# -- decode ------------------------------------------------------------------------------


async def read_body(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    """The raw body, refused as soon as it is over ``limit`` (by its Content-Length, before
    reading anything, or while reading a body that did not declare its length)."""
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _too_large(limit, "body")
        except ValueError:
            raise Rejected(400, "bad-encoding", "Content-Length is not a number") from None
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise _too_large(limit, "body")
    return bytes(body)


def decode(body: bytes, content_encoding: str | None, content_type: str | None, limit: int) -> bytes:
    """The JSON bytes of the body: gunzipped when ``Content-Encoding: gzip`` (every member),
    never inflated past ``limit``."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if media not in ("application/json", ""):
        raise Rejected(415, "unsupported-media-type", f"Content-Type {media!r}: send application/json")
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise Rejected(415, "unsupported-media-type", f"Content-Encoding {encoding!r}: send gzip or none")
    out = bytearray()
    data = body
    try:
        while data:
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            out += inflater.decompress(data, limit + 1 - len(out))
            if len(out) > limit or inflater.unconsumed_tail:
                raise _too_large(limit, "decompressed body")
            if not inflater.eof:
                raise Rejected(400, "bad-encoding", "the gzip body is truncated")
            data = inflater.unused_data  # the next gzip member, if any
    except zlib.error as e:
        raise Rejected(400, "bad-encoding", f"the body is not valid gzip: {e}") from None
    return bytes(out)


# -- parse -------------------------------------------------------------------------------


def _constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a number")
    return value


def loads(data: bytes) -> object:
    """JSON with the bounds the database needs: finite numbers only, bounded nesting."""
    try:
        text = data.decode("utf-8-sig")  # JSON between systems is UTF-8 (RFC 8259 §8.1)
    except UnicodeDecodeError:
        raise Rejected(400, "malformed-json", "the body is not UTF-8 text") from None
    try:
        doc = json.loads(text, parse_constant=_constant, parse_float=_finite)
    except json.JSONDecodeError as e:
        raise Rejected(400, "malformed-json", f"malformed JSON: {e}") from None
    except (ValueError, RecursionError) as e:  # NaN, huge numbers, absurd nesting
        raise Rejected(400, "malformed-json", f"malformed JSON: {str(e) or type(e).__name__}") from None
    depth = _depth(doc)
    if depth > MAX_DEPTH:
        raise Rejected(400, "malformed-json", f"the JSON is nested {depth} levels deep (at most {MAX_DEPTH})")
    return doc


def _depth(doc: object) -> int:
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                return depth
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _bad_text(doc: object) -> str | None:
    """A string (key or value) the databases cannot store: a NUL or a lone surrogate."""
    stack = [doc]
    while stack:
        node = stack.pop()
        strings: Iterable = ()
        if isinstance(node, dict):
            strings = node.keys()
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str):
            strings = (node,)
        for s in strings:
            if "\x00" in s:
                return "a string holds a NUL character"
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                return "a string holds an unpaired surrogate"
    return None


def _errors(e: ValidationError) -> list[dict]:
    return [
        {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
        for err in e.errors(include_url=False, include_input=False, include_context=False)
    ]


class _Batch(BaseModel):
    """A well-formed batch, for the fast path: pydantic validates it from the bytes at once."""

    model_config = ConfigDict(extra="forbid")
    schema_: Literal["mailpath.diagnose/v1"] = Field(DOCUMENT_SCHEMA, alias="schema")
    findings: list[Finding]
    error: Any = None  # ignored, as below


# an escaped NUL or UTF-16 surrogate: the slow path looks at the strings one by one
_SUSPECT = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def parse(data: bytes) -> list[Finding]:
    """The findings of a ``mailpath.diagnose/v1`` document, each validated; the first bad one
    rejects the whole batch with its index. A usual batch takes the fast path (about twice
    as fast); anything else, the step-by-step one, which accepts exactly the same documents
    and names what is wrong."""
    findings = _parse_fast(data)
    return findings if findings is not None else _parse_checked(data)


def _parse_fast(data: bytes) -> list[Finding] | None:
    """The findings of a batch pydantic validates straight from the JSON bytes, when nothing
    in it needs a closer look; else None. What the models leave open is checked as the slow
    path does: the free-form parts (``agent.cloud``, ``error``: depth, finite numbers), NUL
    and surrogates (only written as escapes in valid UTF-8 JSON), the target's length and
    ``created_at``'s range."""
    if _SUSPECT.search(data):
        return None
    try:
        batch = _Batch.model_validate_json(data)
    except ValidationError:
        return None
    if batch.error is not None and not _plain(batch.error, MAX_DEPTH - 1):
        return None
    for finding in batch.findings:
        cloud = finding.agent.cloud
        if len(finding.target) > MAX_TARGET or (cloud is not None and not _plain(cloud, MAX_DEPTH - 4)):
            return None
        try:
            finding.created_at = as_utc(finding.created_at)
        except (OverflowError, ValueError):
            return None
    return batch.findings


def _plain(value: object, depth: int) -> bool:
    """Nested at most ``depth`` levels, and every number finite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict | list):
        return depth > 0 and all(
            _plain(v, depth - 1) for v in (value.values() if isinstance(value, dict) else value)
        )
    return True


def _parse_checked(data: bytes) -> list[Finding]:
    """:func:`parse`, step by step: the first problem found is the answer."""
    doc = loads(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("findings"), list):
        raise Rejected(422, "not-a-batch", 'expected a JSON object {"findings": [...]}')
    extra = sorted(set(doc) - {"schema", "findings", "error"})
    if extra:
        raise Rejected(422, "not-a-batch", f"unexpected key(s) in the document: {', '.join(extra)}")
    if "schema" in doc and doc["schema"] != DOCUMENT_SCHEMA:
        raise Rejected(
            422,
            "unknown-schema",
            f"document schema {doc['schema']!r}: this collector takes {DOCUMENT_SCHEMA}",
        )
    findings = []
    for index, item in enumerate(doc["findings"]):
        if isinstance(item, dict) and "schema" in item and item["schema"] != FINDING_SCHEMA:
            raise Rejected(
                422,
                "unknown-schema",
                f"finding {index} has schema {item['schema']!r}: this collector takes {FINDING_SCHEMA}",
                index,
            )
        try:
            finding = Finding.model_validate(item)
        except ValidationError as e:
            errors = _errors(e)
            summary = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'finding'}: {err['msg']}" for err in errors[:3]
            )
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            raise Rejected(
                422,
                "schema-violation",
                f"finding {index} is not a valid {FINDING_SCHEMA}: {summary}{more}",
                index,
                errors,
            ) from None
        problem = _bad_text(item)
        if problem is None and len(finding.target) > MAX_TARGET:
            problem = f"target is longer than {MAX_TARGET} characters"
        if problem is None:
            try:
                finding.created_at = as_utc(finding.created_at)
            except (OverflowError, ValueError):
                problem = "created_at is out of range"
        if problem:
            raise Rejected(422, "schema-violation", f"finding {index}: {problem}", index)
        findings.append(finding)
    return findings


# -- store -------------------------------------------------------------------------------


def _state_of(finding: Finding) -> tuple:
    """What makes a state, as a hashable value: the cause, where it is, and each address's
    verdict. ``since`` is when a target's state last changed."""
    loc = finding.location
    return (
        finding.cause,
        None if loc is None else (loc.kind, loc.hop, loc.address, loc.component),
        tuple(sorted((a.address, a.verdict) for a in finding.addresses)),
    )


@functools.lru_cache(maxsize=4096)
def _digest(state: tuple) -> str:
    cause, loc, verdicts = state
    location = None if loc is None else dict(zip(("kind", "hop", "address", "component"), loc, strict=True))
    doc = {"cause": cause, "location": location, "verdicts": verdicts}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def signature(finding: Finding) -> str:
    """The digest of a finding's state (stored with the latest state, compared with the next
    one's); a fleet repeats few states, so each is hashed once."""
    return _digest(_state_of(finding))


def _insert(session: Session, table):
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(table)


def store(session: Session, agent: str, findings: list[Finding], now: dt.datetime | None = None) -> int:
    """Store a validated batch under ``agent`` (the token's name); returns how many were new.
    Findings already stored (same id) are left alone; only new ones move the latest states.
    ``received_at`` is read once the agent's row is locked (on SQLite, once the write lock is
    held), so a batch that waited its turn is not stamped earlier than the one before it."""
    row = _lock_agent(session, agent)  # batches of one agent queue here
    now = now or utcnow()
    unique: dict[uuid.UUID, Finding] = {}
    for f in findings:
        unique.setdefault(f.id, f)
    row.last_seen = now
    if unique:
        newest = max(unique.values(), key=lambda f: f.created_at)
        if row.finding_at is None or newest.created_at >= row.finding_at:
            row.finding_at = newest.created_at
            row.version = newest.agent.version
            row.hostname = newest.agent.hostname
            row.cloud = newest.agent.cloud
    session.flush()
    if not unique:
        return 0
    rows = [
        finding_row(f, agent, now)
        # in id order: two batches that share ids take their row locks in one order (PostgreSQL),
        # so they queue instead of deadlocking
        for f in sorted(unique.values(), key=lambda f: f.id)
    ]
    table = FindingRow.__table__
    statement = _insert(session, table).on_conflict_do_nothing(index_elements=["id"]).returning(table.c.id)
    inserted = set(session.execute(statement, rows).scalars())
    fresh = [f for f in unique.values() if f.id in inserted]
    _advance(session, agent, fresh)
    return len(fresh)


def _lock_agent(session: Session, agent: str) -> AgentRow:
    """The agent's row, made if missing, locked for this transaction (FOR UPDATE on PostgreSQL)."""
    session.execute(
        _insert(session, AgentRow.__table__).values(name=agent, created_at=utcnow()).on_conflict_do_nothing()
    )
    return session.scalars(select(AgentRow).where(AgentRow.name == agent).with_for_update()).one()


KEYS_PER_QUERY = 500  # bound parameters per statement stay far below SQLite's limit


def _advance(session: Session, agent: str, fresh: list[Finding]) -> None:
    """Move the latest state of each (agent, target, port) through the new findings, oldest
    first; a finding older than a state's newest (a late redelivery) leaves it alone. Set-wise:
    the missing states are inserted, every state concerned is read (and locked, on PostgreSQL),
    the changed ones are updated, each in one statement per KEYS_PER_QUERY keys."""
    by_key: dict[tuple[str, int], list[Finding]] = defaultdict(list)
    for f in sorted(fresh, key=lambda f: (f.created_at, str(f.id))):
        by_key[(f.target, f.port)].append(f)
    signatures = {f.id: signature(f) for f in fresh}
    keys = sorted(by_key)
    table = LatestRow.__table__
    c = table.c
    for start in range(0, len(keys), KEYS_PER_QUERY):
        chunk = keys[start : start + KEYS_PER_QUERY]
        firsts = [by_key[k][0] for k in chunk]
        session.execute(
            _insert(session, table).on_conflict_do_nothing(),
            [
                {"agent": agent, "target": f.target, "port": f.port, **_state(f, f.created_at, signatures)}
                for f in firsts
            ],
        )
        rows = session.execute(
            select(c.target, c.port, c.finding_id, c.created_at, c.signature, c.since)
            .where(c.agent == agent, tuple_(c.target, c.port).in_(chunk))
            .with_for_update()
        )
        changes = []
        for target, port, finding_id, created_at, sig, since in rows:
            latest = None
            for f in by_key[(target, port)]:
                if f.id == finding_id or f.created_at < created_at:
                    continue
                new_sig = signatures[f.id]
                if new_sig != sig:
                    since = f.created_at
                sig, created_at, finding_id, latest = new_sig, f.created_at, f.id, f
            if latest is not None:
                changes.append({"k_target": target, "k_port": port, **_state(latest, since, signatures)})
        if changes:
            session.execute(
                update(table)
                .where(c.agent == agent, c.target == bindparam("k_target"), c.port == bindparam("k_port"))
                .values({name: bindparam(name) for name in changes[0] if not name.startswith("k_")}),
                changes,
            )


def _state(f: Finding, since: dt.datetime, signatures: dict[uuid.UUID, str]) -> dict:
    return {
        "finding_id": f.id,
        "created_at": f.created_at,
        "cause": f.cause,
        "severity": f.severity,
        "headline": f.headline,
        "location": f.location.model_dump(mode="json") if f.location else None,
        "signature": signatures[f.id],
        "since": since,
    }
