"""The collector's errors: one-line, user-facing reasons it cannot do what was asked.

The CLI (``mailpath.agent.cli.collector``) maps them to exit codes: :class:`ConfigError` and
:class:`NotFound` are bad input (2), :class:`CannotStart` is "could not run" (3). The collector
imports nothing of mailpath but the finding models, so it has its own small tree.
"""

from __future__ import annotations


class CollectorError(Exception):
    """Base: a one-line message for the person running the collector."""


class ConfigError(CollectorError, ValueError):
    """A bad setting or argument: a database URL, a listen address, an agent name, a role."""


class NotFound(CollectorError, LookupError):
    """What was named does not exist (a token prefix or id to revoke)."""


class CannotStart(CollectorError):
    """The environment does not allow it: the database is unreachable or has a newer schema,
    the address cannot be bound."""
