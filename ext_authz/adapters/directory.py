"""Local identities from the configuration's `directory` (SPEC §3, §5 `directory`).

Verifies Basic passwords against a user's `app_passwords` and bearer tokens against
the users' `tokens`, all argon2id hashes. argon2 is deliberately slow, so every run
goes to the bounded, fair `HashPool` (never asyncio's default executor), and the
event loop keeps serving other checks meanwhile.

Cost (SPEC §5 "Cost and abuse"): one unknown credential costs at most one argon2 run,
whatever the size of the directory.
- A static token is found by the keyed digest its hash carries as salt
  (`ext_authz.crypto`): a token no hash was made for costs one HMAC and no argon2 run;
  a configured one exactly one run.
- A Basic password is checked against that user's own hashes only, each in constant
  time (argon2's comparison) and all of them, so the time does not say which matched.

Timing: an unknown username still costs one argon2 verification, against a dummy
hash made with the same parameters as the configured hashes, so response times do
not reveal which usernames exist.

Sessions made from a directory credential (SPEC §5 "Sessions from header auth") end
when that user, app password or token leaves the directory: a verified identity
carries `credential_ref`, an HMAC under the server secret of the username and the
matched hash (never the password or token), and `is_current` says whether the
directory of *this* start-up still holds it.
"""

from __future__ import annotations

import threading
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

from ext_authz.core.claims import merge_attributes
from ext_authz.core.model import Identity, Rejected, Unavailable, Verified, VerifyOutcome
from ext_authz.crypto import hmac_hex, token_hash_salt, token_lookup_salt
from ext_authz.hash_pool import HashPool, PoolBusy

if TYPE_CHECKING:
    from ext_authz.config import Directory, DirectoryUser

__all__ = ["DirectoryVerifier"]

_DUMMY_PASSWORD = "ext-authz: a password no user has"
PROVIDER = "directory"


class DirectoryVerifier:
    """Basic passwords and static bearer tokens of the configured directory users."""

    def __init__(
        self,
        directory: Directory,
        *,
        secret: bytes,
        pool: HashPool | None = None,
        provider: str = PROVIDER,
    ) -> None:
        self._provider = provider
        self._secret = secret
        self._pool = pool if pool is not None else HashPool()
        self._users: dict[str, DirectoryUser] = {u.username: u for u in directory.users}
        self._group_attributes: dict[str, dict[str, Any]] = {
            name: dict(group.attributes) for name, group in directory.groups.items()
        }
        # Static tokens by the lookup key their hash carries as salt. The config refuses
        # hashes made otherwise, and a token configured twice.
        self._tokens: dict[bytes, tuple[DirectoryUser, str]] = {}
        refs: set[str] = set()
        for user in directory.users:
            for item in user.tokens:
                hashed = item.get_secret_value()
                salt = token_hash_salt(hashed)
                if salt is not None:
                    self._tokens.setdefault(salt, (user, hashed))
                refs.add(self._reference(user.username, hashed))
            for item in user.app_passwords:
                refs.add(self._reference(user.username, item.get_secret_value()))
        self._refs = frozenset(refs)
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
        try:
            matched = await self._pool.run(lambda: self._check_password(hashes, password))
        except PoolBusy as exc:
            return Unavailable(str(exc))
        if user is None or matched is None:
            return Rejected("invalid credentials")
        return Verified(self._identity(user, matched), ttl=None)

    async def verify_token(self, token: str) -> VerifyOutcome:
        """Find the user one of whose static `tokens` this is."""
        # A dict lookup by an HMAC output: the attacker chooses the token, not its
        # digest, so the lookup's timing tells nothing about configured tokens.
        entry = self._tokens.get(token_lookup_salt(self._secret, token))
        if entry is None:
            return Rejected("invalid token")
        user, hashed = entry
        try:
            ok = await self._pool.run(lambda: self._verify(hashed, token))
        except PoolBusy as exc:
            return Unavailable(str(exc))
        if not ok:  # an HMAC collision (or a tampered hash): the argon2 run decides
            return Rejected("invalid token")
        # A static token is no JWT: X-authentik-jwt must not carry it (token="").
        return Verified(self._identity(user, hashed), ttl=None)

    def is_current(self, identity: Identity) -> bool:
        """False for an identity made from a directory credential this directory no
        longer holds (user, app password or token removed or changed), and for a
        directory identity that predates credential references; True otherwise."""
        if identity.credential_ref:
            return identity.credential_ref in self._refs
        return identity.provider != self._provider

    # --- in a pool thread ----------------------------------------------------------

    def _check_password(self, hashes: list[str], password: str) -> str | None:
        if not hashes:
            self._verify(self._dummy_hash(), password)
            return None
        # Every hash is checked, so the time taken does not depend on which one matched.
        matched = None
        for hashed in hashes:
            if self._verify(hashed, password) and matched is None:
                matched = hashed
        return matched

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

    # --- identities ------------------------------------------------------------------

    def _reference(self, username: str, hashed: str) -> str:
        return hmac_hex(self._secret, "directory-credential", username, hashed)

    def _identity(self, user: DirectoryUser, hashed: str) -> Identity:
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
            credential_ref=self._reference(user.username, hashed),
        )
