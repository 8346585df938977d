"""Measurements: transport probes (raw SYN or connect()), trace, SMTP and DNS checks.

The public surface is small: build :class:`Target` objects, call :func:`probe`, read
:class:`ProbeResult` objects whose ``verdict`` is a :class:`Verdict`. Nothing is imported
here until it is used, so ``mailpath.probes.errors`` and the pure modules load alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailpath.probes.classify import Verdict
    from mailpath.probes.result import ProbeResult, Target
    from mailpath.probes.syn import Options

_LAZY = {
    "Verdict": "mailpath.probes.classify",
    "ProbeResult": "mailpath.probes.result",
    "Target": "mailpath.probes.result",
    "Options": "mailpath.probes.syn",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mailpath.probes' has no attribute {name!r}")


def probe(
    targets: list[Target],
    *,
    method: str = "auto",
    options: Options | None = None,
    progress=None,
    recorder=None,
) -> list[ProbeResult]:
    """Probe every target in one batch. ``method``: ``raw``, ``connect`` or ``auto``
    (raw when CAP_NET_RAW is held, else connect()); ``raw`` without it raises
    :class:`~mailpath.probes.errors.PermissionDenied`. ``progress(done, total)`` is called
    now and then during a raw batch. ``recorder`` (:class:`mailpath.probes.capture.Recorder`)
    keeps the packets of a raw batch; connect() sends through the kernel and records nothing."""
    from mailpath.probes.errors import PermissionDenied
    from mailpath.probes.syn import Options

    options = options or Options()
    if method in ("auto", "raw"):
        try:
            from mailpath.probes.syn import probe_raw

            return probe_raw(targets, options, progress, recorder)
        except PermissionDenied:
            if method == "raw":
                raise
    from mailpath.probes.connect import probe_connect

    return probe_connect(targets, timeout=options.timeout, retries=options.retries)


__all__ = ["Options", "ProbeResult", "Target", "Verdict", "probe"]
