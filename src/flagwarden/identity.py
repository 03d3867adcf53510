"""Who may change what: API tokens, roles and the identity a change is recorded under.

A token is ``fwt_<id>_<secret>``: printed once when created, never stored. The state store
keeps, per token id, its name (the identity changes are recorded under), its role and a slow
hash of the secret (stdlib :func:`hashlib.scrypt`, random salt), so a stolen copy of the store
does not give working tokens. Roles are ordered: ``viewer`` < ``operator`` (transitions) <
``approver`` (four-eyes approvals) < ``admin`` (tokens).

Checking a token reads its record each time (a revoke works at once) and runs scrypt only the
first time a given token is seen by this process: the verified digest is remembered by a
SHA-256 of the token, so a busy service does not pay ~50 ms per request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from enum import IntEnum
from typing import TYPE_CHECKING

from flagwarden.errors import FlagwardenError

if TYPE_CHECKING:
    from flagwarden.governance.state import StateStore

__all__ = [
    "TOKEN_ENV",
    "AccessDenied",
    "Identity",
    "InvalidToken",
    "Role",
    "TokenRecord",
    "TokenStore",
]

TOKEN_ENV = "FLAGWARDEN_TOKEN"
_KIND = "token"
_TOKEN = re.compile(r"^fwt_([0-9a-f]{16})_([A-Za-z0-9_-]{20,100})$")
# scrypt at n=2**14, r=8: 16 MiB and ~50 ms per check here; the verified cache spares repeats.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_VERIFIED_MAX = 1024
RESERVED = frozenset({"flagwarden-watch"})  # actors flagwarden itself records changes as
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")


class Role(IntEnum):
    VIEWER = 1
    OPERATOR = 2
    APPROVER = 3
    ADMIN = 4

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls[value.strip().upper()]
        except KeyError:
            names = ", ".join(r.label for r in cls)
            raise ValueError(f"role must be one of {names}, not {value!r}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


class InvalidToken(FlagwardenError):
    """The token is malformed, unknown or revoked (which one is not said to the client)."""


class AccessDenied(FlagwardenError):
    """The identity's role is too weak for the action."""


@dataclass(frozen=True)
class Identity:
    """An authenticated caller: ``name`` is what the audit log records."""

    name: str
    role: Role
    token_id: str

    def require(self, role: Role, action: str) -> None:
        if self.role < role:
            raise AccessDenied(
                f"{self.name} is {self.role.label}: {action} needs {role.label} or above"
            )


@dataclass(frozen=True)
class TokenRecord:
    """What the store keeps of a token (never the token)."""

    id: str
    name: str
    role: str
    created_at: str
    created_by: str
    salt: str
    digest: str
    revoked_at: str | None = None
    revoked_by: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public(self) -> dict[str, str | None]:
        """The record without its hash: what ``token list`` and the API show."""
        doc = asdict(self)
        del doc["salt"], doc["digest"]
        return doc


def _hash(secret: str, salt: bytes) -> str:
    return hashlib.scrypt(secret.encode(), salt=salt, dklen=32, **_SCRYPT).hex()


class TokenStore:
    """Tokens kept in the state store (the ``token`` documents)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._verified: OrderedDict[str, str] = OrderedDict()  # sha256(token) -> digest
        self._lock = threading.Lock()

    def records(self) -> list[TokenRecord]:
        found = []
        for raw in self.store.documents(_KIND).values():
            try:
                found.append(TokenRecord(**json.loads(raw)))
            except (ValueError, TypeError):
                continue  # not ours to read: never an identity
        return sorted(found, key=lambda r: (r.created_at, r.id))

    def create(self, name: str, role: Role, *, created_by: str) -> tuple[TokenRecord, str]:
        """A new token for ``name``: the record, and the token (shown once, never stored)."""
        if name in RESERVED:
            raise ValueError(f"token name {name!r} is reserved (flagwarden's own actors)")
        if not _NAME.match(name):
            raise ValueError(
                f"token name {name!r}: 1-64 letters, digits or . _ @ + - (it is the identity "
                "the audit log records)"
            )
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        salt = os.urandom(16)
        record = TokenRecord(
            id=token_id,
            name=name,
            role=role.label,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            created_by=created_by,
            salt=salt.hex(),
            digest=_hash(secret, salt),
        )
        if not self.store.put_document(_KIND, token_id, json.dumps(asdict(record)), expected=None):
            raise FlagwardenError("token id collision: try again")
        return record, f"fwt_{token_id}_{secret}"

    def revoke(self, which: str, *, by: str) -> list[TokenRecord]:
        """Revoke the token with id ``which``, or every active token named ``which``."""
        revoked = []
        raws = self.store.documents(_KIND)
        for record in self.records():
            if record.active and which in (record.id, record.name):
                done = replace(
                    record,
                    revoked_at=datetime.now(UTC).isoformat(timespec="seconds"),
                    revoked_by=by,
                )
                if self.store.put_document(
                    _KIND, record.id, json.dumps(asdict(done)), expected=raws[record.id]
                ):
                    revoked.append(done)
        return revoked

    def identity(self, token_id: str) -> Identity | None:
        """The identity of an active token by id (None: unknown or revoked)."""
        raw = self.store.documents(_KIND).get(token_id)
        try:
            record = TokenRecord(**json.loads(raw)) if raw else None
            if record is None or not record.active:
                return None
            return Identity(record.name, Role.parse(record.role), record.id)
        except (ValueError, TypeError):
            return None

    def is_known(self, token: str) -> bool:
        """Whether ``token`` was verified by this process before (no scrypt, no store read:
        :meth:`authenticate` still checks it is active)."""
        seen = hashlib.sha256(token.strip().encode()).hexdigest()
        with self._lock:
            return seen in self._verified

    def authenticate(self, token: str) -> Identity:
        """The identity of ``token``; :class:`InvalidToken` if it is not a valid, active one."""
        match = _TOKEN.match(token.strip())
        if match is None:
            raise InvalidToken("not a flagwarden token")
        token_id, secret = match.groups()
        raw = self.store.documents(_KIND).get(token_id)
        if raw is None:
            raise InvalidToken("unknown or revoked token")
        try:
            record = TokenRecord(**json.loads(raw))
            role = Role.parse(record.role)
        except (ValueError, TypeError):
            raise InvalidToken("unknown or revoked token") from None
        if not record.active:
            raise InvalidToken("unknown or revoked token")
        seen = hashlib.sha256(token.strip().encode()).hexdigest()
        with self._lock:
            known = self._verified.get(seen)
        if known is None or not hmac.compare_digest(known, record.digest):
            digest = _hash(secret, bytes.fromhex(record.salt))
            if not hmac.compare_digest(digest, record.digest):
                raise InvalidToken("unknown or revoked token")
            with self._lock:
                self._verified[seen] = digest
                while len(self._verified) > _VERIFIED_MAX:
                    self._verified.popitem(last=False)
        return Identity(record.name, role, record.id)
