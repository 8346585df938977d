"""The JSON documents the commands print with ``--json``: one object per run, with a ``schema``
name and the results always in a list under one key, however many there are. An error is the
same object with an ``error`` (code and message) and an empty list.

Light on purpose (no pydantic): ``mailpath probe`` imports it. The models of each document, and
their published JSON Schemas, are in :mod:`mailpath.agent.contract`.
"""

from __future__ import annotations

# command -> (schema name, the key of its results)
DOCUMENTS: dict[str, tuple[str, str]] = {
    "probe": ("mailpath.probe/v1", "results"),
    "trace": ("mailpath.trace/v1", "traces"),
    "dns": ("mailpath.dns/v1", "routes"),
    "smtp": ("mailpath.smtp/v1", "sessions"),
    "cloud": ("mailpath.cloud/v1", "evaluations"),
    "diagnose": ("mailpath.diagnose/v1", "findings"),
    "pcap": ("mailpath.pcap/v1", "connections"),
    "agent-status": ("mailpath.agent-status/v1", "dead_letters"),  # mailpath agent status
}


# commands whose document may say where their packets were written (--pcap)
CAPTURES = ("probe", "trace", "diagnose")


def envelope(command: str, items: list[dict], error: dict | None = None, capture: dict | None = None) -> dict:
    """The document ``command`` prints: ``{"schema", <key>: [...]}`` (+ ``error``, + ``capture``:
    the file ``--pcap`` wrote and the frame numbers of each evidence ref, or for ``pcap`` the
    capture that was read)."""
    schema, key = DOCUMENTS.get(command, (f"mailpath.{command}/v1", "results"))
    doc: dict = {"schema": schema, key: items}
    if capture is not None:
        doc["capture"] = capture
    if error is not None:
        doc["error"] = error
    return doc
