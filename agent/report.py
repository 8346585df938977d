"""Send findings to a collector: ``POST /v1/findings`` with the document ``diagnose --json``
prints, gzip-compressed, with a bearer token. The one-shot path of ``diagnose --report``; the
agent daemon delivers through its spool with retries on top of :func:`post_findings`."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass

from mailpath.agent.documents import envelope
from mailpath.probes.errors import DependencyFailed, InputError


@dataclass(frozen=True)
class Answer:
    """What the collector said: its HTTP status and JSON body (or text)."""

    status: int
    body: dict
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def read_token(path: str) -> str:
    """A bearer token from a file (never from the command line); one line, whitespace trimmed."""
    try:
        with open(path) as f:
            token = f.read().strip()
    except OSError as e:
        raise InputError(f"cannot read the token file {path!r}: {e.strerror}") from None
    if not token or any(c.isspace() for c in token):
        raise InputError(f"the token file {path!r} does not hold one token")
    return token


def post_findings(
    url: str,
    token: str,
    findings: list[dict],
    *,
    ca_file: str | None = None,
    timeout: float = 10.0,
    client=None,
) -> Answer:
    """POST one batch; connection errors and timeouts raise DependencyFailed. ``client``: an
    httpx.Client to reuse (the daemon's), else one is made for this call."""
    import httpx

    body = gzip.compress(json.dumps(envelope("diagnose", findings)).encode())
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }
    endpoint = url.rstrip("/") + "/v1/findings"
    try:
        if client is not None:
            r = client.post(endpoint, content=body, headers=headers, timeout=timeout)
        else:
            with httpx.Client(verify=ca_file or True, timeout=timeout) as c:
                r = c.post(endpoint, content=body, headers=headers)
    except httpx.HTTPError as e:
        raise DependencyFailed(f"could not reach the collector at {url}: {type(e).__name__}: {e}") from None
    try:
        payload = r.json()
    except ValueError:
        payload = {"detail": r.text[:200]}
    return Answer(
        r.status_code, payload if isinstance(payload, dict) else {"detail": payload}, _retry_after(r)
    )


def _retry_after(r) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    value = r.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import datetime as dt
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())
