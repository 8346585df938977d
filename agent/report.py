"""Send findings to a collector: ``POST /v1/findings`` with the document ``diagnose --json``
prints, gzip-compressed, with a bearer token. The one-shot path of ``diagnose --report`` is
:func:`post_findings`; the agent daemon delivers through its spool with retries on top of
:func:`post_findings_async` (same body, same headers, same :class:`Answer`)."""

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
    httpx.Client to reuse, else one is made for this call."""
    import httpx

    body, headers = encode_batch(findings, token)
    endpoint = findings_endpoint(url)
    try:
        if client is not None:
            r = client.post(endpoint, content=body, headers=headers, timeout=timeout)
        else:
            with httpx.Client(verify=ca_file or True, timeout=timeout) as c:
                r = c.post(endpoint, content=body, headers=headers)
    except httpx.HTTPError as e:
        raise DependencyFailed(f"could not reach the collector at {url}: {type(e).__name__}: {e}") from None
    return answer_of(r)


async def post_findings_async(
    url: str, token: str, findings: list[dict], *, client, timeout: float
) -> Answer:
    """POST one batch with an ``httpx.AsyncClient``. Connection errors and timeouts raise
    DependencyFailed whose ``__cause__`` is httpx's exception (the caller tells a timeout from
    a refused connection by it); any answer, whatever its status, is returned."""
    import httpx

    body, headers = encode_batch(findings, token)
    try:
        r = await client.post(findings_endpoint(url), content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as e:
        raise DependencyFailed(f"could not reach the collector at {url}: {type(e).__name__}: {e}") from e
    return answer_of(r)


def findings_endpoint(url: str) -> str:
    return url.rstrip("/") + "/v1/findings"


def encode_batch(findings: list[dict], token: str) -> tuple[bytes, dict[str, str]]:
    """The body (the ``diagnose --json`` document, gzipped) and headers of one batch."""
    body = gzip.compress(json.dumps(envelope("diagnose", findings)).encode(), compresslevel=6)
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }
    return body, headers


def answer_of(r) -> Answer:
    """An httpx response as an :class:`Answer` (a body that is not a JSON object is put under
    ``detail``)."""
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
