"""The error tree every layer of mailpath shares (it lives in the bottom layer, probes).

A check that *finds* a problem does not raise: the problem is its result. These errors are
for the cases where mailpath itself cannot do what was asked. Each kind maps to one exit code
and one JSON error code in one place, the CLI (``mailpath.agent.cli.common``):

=====================  ===  =============================================================
kind                   exit  when
=====================  ===  =============================================================
``InputError``          2   bad input: a target, port, option or file the user gave
``PermissionDenied``    3   the process lacks a privilege (CAP_NET_RAW for raw sockets)
``CannotRun``           3   the environment does not allow the check (no cloud host found)
``DependencyFailed``    3   a service mailpath relies on failed (the cloud API, a resolver)
=====================  ===  =============================================================
"""

from __future__ import annotations


class MailpathError(Exception):
    """Base of every error mailpath reports to its user: a one-line, user-facing message."""

    code = "error"  # stable, part of the JSON error object


class InputError(MailpathError, ValueError):
    """Bad user input; the message names the bad value."""

    code = "bad-input"


class ResolveError(InputError):
    """A name that does not resolve. ``kind``: nxdomain, nodata, servfail, timeout or
    unresolvable (the system resolver said no without saying why)."""

    code = "unresolvable"

    def __init__(self, host: str, kind: str, why: str) -> None:
        super().__init__(f"cannot resolve {host!r}: {why}")
        self.host, self.kind = host, kind


class PermissionDenied(MailpathError, PermissionError):
    """The process lacks a privilege the operation needs."""

    code = "no-permission"


class CannotRun(MailpathError):
    """The environment does not allow the check (e.g. not on a cloud host)."""

    code = "cannot-run"


class DependencyFailed(MailpathError):
    """A service mailpath depends on failed (the cloud API, credentials, a resolver)."""

    code = "dependency-failed"


NO_RAW = "raw sockets need CAP_NET_RAW (run as root, or use --method connect)"
