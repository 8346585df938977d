"""Measurements: transport probes (raw SYN or connect()), and later trace, SMTP and DNS checks.

The public surface is small: build :class:`Target` objects, call :func:`probe`, read
:class:`ProbeResult` objects whose ``verdict`` is a :class:`Verdict`.
"""

from __future__ import annotations

from mailpath.probes.classify import Verdict
from mailpath.probes.errors import PermissionDenied
from mailpath.probes.result import ProbeResult, Target
from mailpath.probes.syn import Options


def probe(
    targets: list[Target], *, method: str = "auto", options: Options | None = None, progress=None
) -> list[ProbeResult]:
    """Probe every target in one batch. ``method``: ``raw``, ``connect`` or ``auto``
    (raw when CAP_NET_RAW is held, else connect()); ``raw`` without it raises
    :class:`PermissionDenied`. ``progress(done, total)`` is called now
    and then during a raw batch."""
    options = options or Options()
    if method in ("auto", "raw"):
        try:
            from mailpath.probes.syn import probe_raw

            return probe_raw(targets, options, progress)
        except PermissionDenied:
            if method == "raw":
                raise
    from mailpath.probes.connect import probe_connect

    return probe_connect(targets, timeout=options.timeout, retries=options.retries)


__all__ = ["Options", "ProbeResult", "Target", "Verdict", "probe"]
