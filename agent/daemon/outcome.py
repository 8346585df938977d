"""What a sink's answer means for a batch, and how long to wait before the next attempt (pure).

Every sink turns its answer into one :data:`Outcome`; :class:`~mailpath.agent.daemon.delivery.Delivery`
acts on it. HTTP answers (the collector's and an OTLP receiver's) go through :func:`classify`:

=============================================  ==============================================
answer                                         outcome
=============================================  ==============================================
2xx                                            Accepted: the findings leave the spool (for this sink)
connection error, timeout, 408, 429, 5xx       Retry, with backoff (``Retry-After`` as the wait)
401, 403, 404, 405, 415; 422 ``unknown-schema``  Hold: a configuration problem (token, URL,
without an index                               versions); nothing is dead-lettered, the batch
                                               is retried at the backoff cap
413                                            TooLarge: the batch is split in halves; one
                                               finding alone too large is dead-lettered
422 (or any 4xx) with ``index``                Refused(index): that finding is dead-lettered
                                               with the receiver's reason, the rest re-sent
any other 4xx without an index (400, 409,      Refused(None): the batch is split until the
422 ``not-a-batch``...)                        finding at fault is alone, then dead-lettered
=============================================  ==============================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

REASON_MAX = 500  # characters of a dead letter's reason


@dataclass(frozen=True)
class Accepted:
    """The sink has the batch. ``note``: what it said besides (an OTLP partial success)."""

    note: str | None = None


@dataclass(frozen=True)
class Retry:
    """A transient failure: try again after a backoff, or after ``retry_after`` seconds.
    ``reason`` is short and stable (a metric label: ``connect``, ``timeout``, ``http-503``...);
    ``detail`` is for the log."""

    reason: str
    detail: str = ""
    retry_after: float | None = None


@dataclass(frozen=True)
class Hold:
    """The sink refuses us for a reason no resend of these findings can fix (a rejected
    token, a wrong URL): keep them, wait the backoff cap, try again, and say so in the log."""

    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Refused:
    """A permanent refusal of one finding (``index`` in the batch) or of the batch as a whole
    (``index`` None: the finding at fault is found by splitting)."""

    index: int | None
    reason: str


@dataclass(frozen=True)
class TooLarge:
    """The batch is over the receiver's size limit."""

    reason: str


Outcome = Accepted | Retry | Hold | Refused | TooLarge

HOLD_STATUSES = {401, 403, 404, 405, 415}


def classify(status: int, body: dict, retry_after: float | None, size: int) -> Outcome:
    """The outcome of an HTTP answer to a batch of ``size`` findings. ``body`` is the answer's
    JSON object (the collector's ``{"detail", "reason", "index"}``), or ``{"detail": text}``."""
    detail = _text(body.get("detail"))
    code = body.get("reason") if isinstance(body.get("reason"), str) else None
    if 200 <= status < 300:
        return Accepted()
    if status in (408, 429) or status >= 500:
        return Retry(f"http-{status}", f"{status} {detail}".strip(), retry_after)
    if status == 413:
        return TooLarge(_reason(status, code, detail))
    if status in HOLD_STATUSES:
        return Hold(f"http-{status}", f"{status} {detail}".strip())
    if not 400 <= status < 500:  # 1xx, 3xx (redirects are not followed): tried again later
        return Retry(f"http-{status}", f"unexpected status {status} {detail}".strip(), retry_after)
    index = body.get("index")
    if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < size:
        return Refused(index, _reason(status, code, detail))
    if code == "unknown-schema":  # the whole document's schema: a collector of another version
        return Hold(f"http-{status}", f"{status} {detail}".strip())
    return Refused(None, _reason(status, code, detail))


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _reason(status: int, code: str | None, detail: str) -> str:
    """A dead letter's reason: the HTTP status, the receiver's reason code and its words."""
    head = f"{status} {code}" if code else str(status)
    return f"{head}: {detail}"[:REASON_MAX] if detail else head


def split(size: int) -> tuple[int, int]:
    """Where a batch of ``size`` (at least 2) is cut in two: the halves' sizes."""
    first = size // 2
    return first, size - first


def backoff_window(attempt: int, base: float, cap: float) -> float:
    """The upper bound of the full-jitter wait after attempt ``attempt`` (1 = the first):
    ``min(cap, base · 2^(attempt-1))`` (what tenacity's ``wait_random_exponential`` uses)."""
    try:
        return min(cap, base * 2 ** (attempt - 1))
    except OverflowError:
        return cap


def choose_wait(
    outcome: Outcome, *, cap: float, retry_after_max: float, backoff: Callable[[], float]
) -> float:
    """Seconds to wait after an attempt that ended in ``outcome``: the receiver's
    ``Retry-After`` when it gave one (at most ``retry_after_max``), the backoff cap for a
    :class:`Hold`, else ``backoff()`` (the delivery passes tenacity's full-jitter wait, a
    random wait in ``[0, backoff_window]``), never more than ``cap``."""
    if isinstance(outcome, Hold):
        return cap
    if isinstance(outcome, Retry) and outcome.retry_after is not None:
        return max(0.0, min(outcome.retry_after, retry_after_max))
    return max(0.0, min(backoff(), cap))
