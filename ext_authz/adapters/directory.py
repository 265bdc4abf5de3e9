"""Local identities from the configuration's `directory` (SPEC §3, §5 `directory`).

Verifies Basic passwords against a user's `app_passwords` and bearer tokens against
every user's `tokens`, all argon2id hashes. argon2 is deliberately slow, so each
verification runs in a worker thread (`asyncio.to_thread`) and the event loop keeps
serving other checks meanwhile.

Timing: an unknown username still costs one argon2 verification, against a dummy
hash made with the same parameters as the configured hashes, so response times do
not reveal which usernames exist.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

from ext_authz.core.claims import merge_attributes
from ext_authz.core.model import Identity, Rejected, Verified, VerifyOutcome

if TYPE_CHECKING:
    from ext_authz.config import Directory, DirectoryUser

__all__ = ["DirectoryVerifier"]

_DUMMY_PASSWORD = "ext-authz: a password no user has"


class DirectoryVerifier:
    """Basic passwords and static bearer tokens of the configured directory users."""

    def __init__(self, directory: Directory, *, provider: str = "directory") -> None:
        self._provider = provider
        self._users: dict[str, DirectoryUser] = {u.username: u for u in directory.users}
        self._group_attributes: dict[str, dict[str, Any]] = {
            name: dict(group.attributes) for name, group in directory.groups.items()
        }
        self._hasher = PasswordHasher()
        self._dummy: str | None = None
        self._dummy_lock = threading.Lock()
        self._sample_hash = next(
            (h.get_secret_value() for u in directory.users for h in u.app_passwords), None
        )

    async def verify_password(self, username: str, password: str) -> VerifyOutcome:
        """Check `password` against the user's app passwords."""
        user = self._users.get(username)
        hashes = [h.get_secret_value() for h in user.app_passwords] if user is not None else []
        matched = await asyncio.to_thread(self._check_password, hashes, password)
        if user is None or not matched:
            return Rejected("invalid credentials")
        return Verified(self._identity(user), ttl=None)

    async def verify_token(self, token: str) -> VerifyOutcome:
        """Find the user one of whose static `tokens` this is."""
        candidates = [
            (user, h.get_secret_value()) for user in self._users.values() for h in user.tokens
        ]
        if not candidates:
            return Rejected("invalid token")
        user = await asyncio.to_thread(self._find_token_owner, candidates, token)
        if user is None:
            return Rejected("invalid token")
        # A static token is no JWT: X-authentik-jwt must not carry it (token="").
        return Verified(self._identity(user), ttl=None)

    def _check_password(self, hashes: list[str], password: str) -> bool:
        if not hashes:
            self._verify(self._dummy_hash(), password)
            return False
        # Every hash is checked, so the time taken does not depend on which one matched.
        results = [self._verify(h, password) for h in hashes]
        return any(results)

    def _find_token_owner(
        self, candidates: Iterable[tuple[DirectoryUser, str]], token: str
    ) -> DirectoryUser | None:
        owner: DirectoryUser | None = None
        for user, hashed in candidates:
            if self._verify(hashed, token) and owner is None:
                owner = user
        return owner

    def _verify(self, hashed: str, secret: str) -> bool:
        try:
            return self._hasher.verify(hashed, secret)
        except (VerificationError, InvalidHashError):
            return False

    def _dummy_hash(self) -> str:
        with self._dummy_lock:
            if self._dummy is None:
                hasher = self._hasher
                if self._sample_hash is not None:
                    try:
                        params = extract_parameters(self._sample_hash)
                        hasher = PasswordHasher.from_parameters(params)
                    except (InvalidHashError, ValueError):
                        pass
                self._dummy = hasher.hash(_DUMMY_PASSWORD)
            return self._dummy

    def _identity(self, user: DirectoryUser) -> Identity:
        attributes = merge_attributes(self._group_attributes, user.groups, user.attributes)
        return Identity(
            sub=user.username,
            preferred_username=user.username,
            email=user.email or "",
            name=user.name or "",
            groups=tuple(user.groups),
            attributes=MappingProxyType(attributes),
            token="",
            provider=self._provider,
        )
