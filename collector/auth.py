"""Tokens: create, list, revoke (functions over a session), and the bearer check.

A token is ``mpc_`` and 43 characters of URL-safe base64 (32 random bytes). The database
keeps only its SHA-256 (a slow hash buys nothing for a secret with 256 bits of entropy) and
its first 12 characters, the non-secret prefix that ``token list`` shows and ``token revoke``
takes. Every request looks its token up again, so a revocation holds from the next request.

Requests carry the token in ``Authorization: Bearer …`` or, to read, in the ``mailpath_token``
cookie (HttpOnly, set by the dashboard; never taken to send findings, so no other site can make
a browser send any). Roles: ``agent`` may send findings and read; ``viewer`` may only read.
Findings are stored under the token's agent name, whatever the payload says.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass

from mailpath.collector.db import ROLES, AgentRow, TokenRow, utcnow
from mailpath.collector.errors import ConfigError, NotFound
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

TOKEN_MARK = "mpc_"
PREFIX_LENGTH = 12  # "mpc_" and 8 characters: 48 bits to tell tokens apart, 208 left secret
COOKIE = "mailpath_token"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
MAX_TOKEN = 256  # longer than any token we issue: not even hashed


@dataclass(frozen=True)
class Principal:
    """Who a request is: the token's id, name (the agent's) and role; ``fleet``: the token is
    shared by many hosts, and each host reports as the agent :func:`fleet_agent` names."""

    token_id: int
    agent: str
    role: str
    fleet: bool = False


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: never the token itself."""

    id: int
    prefix: str
    agent: str
    role: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    fleet: bool = False

    def to_json_dict(self) -> dict:
        return {
            "id": self.id,
            "prefix": self.prefix,
            "agent": self.agent,
            "role": self.role,
            "fleet": self.fleet,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _info(row: TokenRow) -> TokenInfo:
    return TokenInfo(row.id, row.prefix, row.agent, row.role, row.created_at, row.revoked_at, bool(row.fleet))


def check_name(name: str) -> str:
    if not NAME.fullmatch(name or ""):
        raise ConfigError(
            f"invalid agent name {name!r}: 1-128 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ConfigError(f"invalid role {role!r}: expected {' or '.join(ROLES)}")
    return role


def create_token(
    session: Session, agent: str, role: str = "agent", *, fleet: bool = False
) -> tuple[str, TokenInfo]:
    """A new token for ``agent`` with ``role``: (the token, shown once, and its record). An
    agent token also registers the agent, so it is listed before it first reports; a fleet
    token (agents only) registers nothing: its hosts appear as they report."""
    check_name(agent)
    check_role(role)
    if fleet and role != "agent":
        raise ConfigError("only an agent token can be a fleet token")
    now = utcnow()
    if role == "agent" and not fleet and session.get(AgentRow, agent) is None:
        session.add(AgentRow(name=agent, created_at=now))
    for _ in range(5):  # a prefix collision is a 1 in 2**48 event; try again rather than fail
        token = TOKEN_MARK + secrets.token_urlsafe(32)
        row = TokenRow(
            prefix=token[:PREFIX_LENGTH],
            hash=token_hash(token),
            agent=agent,
            role=role,
            fleet=fleet,
            created_at=now,
        )
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            continue
        return token, _info(row)
    raise RuntimeError("could not draw a token with an unused prefix")  # pragma: no cover


def list_tokens(session: Session, *, include_revoked: bool = True) -> list[TokenInfo]:
    query = select(TokenRow).order_by(TokenRow.id)
    if not include_revoked:
        query = query.where(TokenRow.revoked_at.is_(None))
    return [_info(row) for row in session.scalars(query)]


def revoke_token(session: Session, prefix_or_id: str) -> tuple[TokenInfo, bool]:
    """Revoke the token with this prefix (as listed; the whole token works too) or id:
    (its record, whether it was revoked just now rather than before)."""
    key = prefix_or_id.strip()
    if key.isdigit():
        row = session.get(TokenRow, int(key))
    elif key.startswith(TOKEN_MARK) and len(key) >= PREFIX_LENGTH:
        row = session.scalars(select(TokenRow).where(TokenRow.prefix == key[:PREFIX_LENGTH])).first()
        if row is not None and len(key) > PREFIX_LENGTH and row.hash != token_hash(key):
            row = None
    else:
        raise ConfigError(
            f"invalid token reference {prefix_or_id!r}: give its id or its prefix "
            f"({TOKEN_MARK}… {PREFIX_LENGTH} characters, as `token list` shows)"
        )
    if row is None:
        raise NotFound(f"no token with id or prefix {prefix_or_id!r}")
    fresh = row.revoked_at is None
    if fresh:
        row.revoked_at = utcnow()
        session.flush()
    return _info(row), fresh


def authenticate(session: Session, token: str) -> Principal | None:
    """The principal of a valid, unrevoked token; None for anything else."""
    if not token or len(token) > MAX_TOKEN or not token.startswith(TOKEN_MARK):
        return None
    row = session.scalars(
        select(TokenRow).where(TokenRow.hash == token_hash(token), TokenRow.revoked_at.is_(None))
    ).first()
    if row is None or not secrets.compare_digest(row.hash, token_hash(token)):
        return None
    return Principal(row.id, row.agent, row.role, bool(row.fleet))


HOSTNAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def fleet_agent(fleet: str, hostnames: set[str]) -> str:
    """The agent a fleet token's batch is stored under: ``HOSTNAME@FLEET``, from the one host
    name its findings carry (``agent.hostname``). ValueError says why a batch cannot be
    placed: several host names, or one that is not a host name or makes the name too long."""
    if len(hostnames) != 1:
        raise ValueError(f"a fleet token's batch comes from one host; this one names {len(hostnames)}")
    (hostname,) = hostnames
    name = f"{hostname.lower()}@{fleet}"
    if not HOSTNAME.fullmatch(hostname) or len(name) > 128:
        raise ValueError(
            f"agent.hostname {hostname[:80]!r} is not a host name (or is too long) for a fleet token"
        )
    return name


def bearer_token(authorization: str | None, cookie: str | None) -> str | None:
    """The token a request carries: ``Authorization: Bearer`` first, else the cookie.
    A header with another scheme counts as no token (and so does an empty one)."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        return (value.strip() or None) if scheme.lower() == "bearer" else None
    return cookie or None
