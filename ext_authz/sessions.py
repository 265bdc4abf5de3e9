"""The repositories the service keeps its state in: sessions, cached credentials and
login states, each sealed before it reaches the ByteStore (SPEC §5 "Cache", §6, §8).

What is stored where (namespaces from `ext_authz.ports.Namespace`):

    session        SESSION     sha256(cookie value)            cookie value, b"session"
    per-sub index  SUB_INDEX   hmac(secret, "sub", app, sub)   (set of session keys)
    per-sid index  SID_INDEX   hmac(secret, "sid", sid)        (set of session keys)
    credential     CREDENTIAL  hmac(secret, app, header)       header value, b"credential"
    login state    LOGIN       hmac(secret, "login", app,      state + login cookie,
                               state, login cookie)            b"login"

(columns: record, namespace, store key, sealed with: HKDF material and context)

The per-sid index spans applications: `sid` is the IdP's session (authentik's, one
per browser sign-in at authentik, shared by every application signed in from it), so
authentik's SESSION_END for it ends that user's sessions everywhere. Sessions whose
identity has no `sid` are in no sid index.

The server `secret` is also the HKDF salt of every seal, so a store copy alone does
not allow offline guessing of a weak Basic password against a cached credential.
Consequence: rotating `secret` ends every session and empties every cache.

Every key gets a TTL: the session's and index's = time until the session expires,
the credential's = the caller's ttl (already bounded by the token's exp), the login
state's = 10 minutes. Expiry is checked again on read against the wall clock.

Faults (SPEC §8): a session or credential seen within `local_ttl` is answered from
the in-process cache even while the store is down; otherwise reads raise
`StoreUnavailable` and the service answers 503 (sessions) or verifies against the IdP
(credentials). Writes raise `StoreUnavailable`; the service logs it and carries on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from ext_authz.core.model import Identity, Rejected, Verified
from ext_authz.crypto import (
    credential_cache_key,
    hmac_hex,
    new_session_id,
    open_sealed,
    seal,
    session_key_id,
)
from ext_authz.local_cache import LocalCache
from ext_authz.ports import ByteStore, Namespace

__all__ = [
    "CachedCredential",
    "CredentialCache",
    "LoginStateRepository",
    "SessionRecord",
    "SessionRepository",
]

_FORMAT = 1
# A cookie or state longer than this is not one of ours: do not even hash it.
_MAX_TOKEN_LEN = 512
_SESSION = b"session"
_CREDENTIAL = b"credential"
_LOGIN = b"login"


def _dumps(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _loads(plaintext: bytes | None) -> dict[str, Any] | None:
    if plaintext is None:
        return None
    try:
        data = json.loads(plaintext)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("v") != _FORMAT:
        return None
    return data


# --- sessions -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session as stored. `key` is the store key (sha256 of the cookie value); the
    cookie value itself is never kept anywhere server-side. `memo` holds what the
    service derives from the identity once (its upstream headers per application):
    it lives and dies with this in-process copy."""

    app: str
    identity: Identity
    created_at: float
    expires_at: float
    key: str
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


class _Expiring(Protocol):
    @property
    def expires_at(self) -> float: ...


V = TypeVar("V", bound=_Expiring)


class _LocallyCached(Generic[V]):
    """What both repositories share: the store, the server secret, the wall clock and
    an in-process cache of decrypted values in front of the store."""

    def __init__(
        self,
        store: ByteStore,
        *,
        secret: bytes,
        local_ttl: float,
        clock_wall: Callable[[], float] = time.time,
        clock_mono: Callable[[], float] = time.monotonic,
        local_max_entries: int = 10_000,
    ) -> None:
        self._store = store
        self._secret = secret
        self._wall = clock_wall
        self._local: LocalCache[str, V] = LocalCache(
            local_ttl, max_entries=local_max_entries, clock=clock_mono
        )

    def _peek(self, key: str) -> V | None:
        """The live in-process copy at `key`, or None (never the store: no waiting)."""
        cached = self._local.get(key)
        if cached is None:
            return None
        if cached.expires_at > self._wall():
            return cached
        self._local.delete(key)
        return None

    async def _lookup(
        self,
        namespace: str,
        key: str,
        *,
        material: str,
        context: bytes,
        decode: Callable[[dict[str, Any] | None], V | None],
    ) -> V | None:
        """The live value at `key`: the local copy while it lasts, else the store's,
        unsealed with `material` (the cookie or header value) and decoded; None when
        absent, expired, tampered or sealed for something else."""
        cached = self._peek(key)
        if cached is not None:
            return cached
        now = self._wall()
        blob = await self._store.get(namespace, key)
        if blob is None:
            return None
        value = decode(
            _loads(open_sealed(material.encode("utf-8"), blob, context=context, salt=self._secret))
        )
        if value is None or value.expires_at <= now:
            return None
        self._local.put(key, value, value.expires_at - now)
        return value


class SessionRepository(_LocallyCached[SessionRecord]):
    def _sub_key(self, app: str, sub: str) -> str:
        return hmac_hex(self._secret, "sub", app, sub)

    def _sid_key(self, sid: str) -> str:
        return hmac_hex(self._secret, "sid", sid)

    async def create(self, app: str, identity: Identity, expires_at: float) -> str:
        """Store a new session; return its cookie value (the only copy of it).

        ValueError when `expires_at` is not in the future."""
        now = self._wall()
        ttl = expires_at - now
        if ttl <= 0:
            raise ValueError("session would already be expired")
        cookie_value = new_session_id()
        key = session_key_id(cookie_value)
        blob = seal(
            cookie_value.encode("utf-8"),
            _dumps(
                {
                    "v": _FORMAT,
                    "app": app,
                    "identity": identity.to_dict(),
                    "created_at": now,
                    "expires_at": expires_at,
                }
            ),
            context=_SESSION,
            salt=self._secret,
        )
        # Index first: an index entry without its session is harmless, a session
        # missing from its index would survive "sign out everywhere".
        await self._store.index_add(Namespace.SUB_INDEX, self._sub_key(app, identity.sub), key, ttl)
        if identity.sid:
            await self._store.index_add(Namespace.SID_INDEX, self._sid_key(identity.sid), key, ttl)
        await self._store.set(Namespace.SESSION, key, blob, ttl)
        record = SessionRecord(app, identity, now, expires_at, key)
        self._local.put(key, record, ttl)
        return cookie_value

    def peek(self, app: str, cookie_value: str) -> SessionRecord | None:
        """The session of `app` for this cookie value if this process holds it (within
        `local_ttl`), else None: the store may still have it (call `get`)."""
        if not cookie_value or len(cookie_value) > _MAX_TOKEN_LEN:
            return None
        record = self._peek(session_key_id(cookie_value))
        return record if record is not None and record.app == app else None

    async def get(self, app: str, cookie_value: str) -> SessionRecord | None:
        """The live session of `app` for this cookie value, or None.

        Raises StoreUnavailable only when the store is down and this replica has not
        seen the session within `local_ttl`."""
        if not cookie_value or len(cookie_value) > _MAX_TOKEN_LEN:
            return None
        key = session_key_id(cookie_value)
        record = await self._lookup(
            Namespace.SESSION,
            key,
            material=cookie_value,
            context=_SESSION,
            decode=lambda data: _session_from(data, key),
        )
        return record if record is not None and record.app == app else None

    async def end(self, cookie_value: str) -> None:
        """End one session (its index entry expires by itself)."""
        if not cookie_value or len(cookie_value) > _MAX_TOKEN_LEN:
            return
        key = session_key_id(cookie_value)
        self._local.delete(key)
        await self._store.delete(Namespace.SESSION, key)
        await self._store.publish_invalidation([key])

    async def end_all_for(self, app: str, sub: str) -> int:
        """End every session of `sub` in `app`, on every replica; return how many
        were still live."""
        return await self._end_indexed(Namespace.SUB_INDEX, self._sub_key(app, sub))

    async def end_all_for_sid(self, sid: str) -> int:
        """End every session made from the IdP session `sid`, in every application and
        on every replica (authentik's SESSION_END); return how many were still live.
        An empty `sid` ends nothing (sessions without one are in no index)."""
        if not sid:
            return 0
        return await self._end_indexed(Namespace.SID_INDEX, self._sid_key(sid))

    async def _end_indexed(self, namespace: str, index_key: str) -> int:
        """End the sessions of one index: taken from the store, dropped from this
        replica's local cache and, through the invalidation channel, from the others'."""
        keys = await self._store.index_pop_all(namespace, index_key)
        ended = 0
        for key in keys:
            self._local.delete(key)
            if await self._store.take(Namespace.SESSION, key) is not None:
                ended += 1
        if keys:
            await self._store.publish_invalidation(keys)
        return ended

    async def start_invalidation_listener(self) -> None:
        """Drop sessions ended on other replicas from this one's local cache.

        Raises StoreUnavailable when not subscribed yet; the store keeps trying."""
        await self._store.subscribe_invalidations(self._on_invalidation)

    def _on_invalidation(self, keys: list[str]) -> None:
        for key in keys:
            self._local.delete(key)

    def forget_local(self) -> None:
        """Empty the in-process cache (tests, and after a long disconnect)."""
        self._local.clear()


def _session_from(data: dict[str, Any] | None, key: str) -> SessionRecord | None:
    if data is None:
        return None
    try:
        return SessionRecord(
            app=str(data["app"]),
            identity=Identity.from_dict(data["identity"]),
            created_at=float(data["created_at"]),
            expires_at=float(data["expires_at"]),
            key=key,
        )
    except (KeyError, TypeError, ValueError):
        return None


# --- credential cache -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CachedCredential:
    """What a replica learnt about a credential: the verifier's outcome (`Verified`
    with `cached=True`, or `Rejected` with a reason for logs; never the credential
    itself), until `expires_at`. `memo`: as in `SessionRecord`."""

    outcome: Verified | Rejected
    expires_at: float = 0.0
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def identity(self) -> Identity | None:
        return self.outcome.identity if isinstance(self.outcome, Verified) else None


class CredentialCache(_LocallyCached["CachedCredential"]):
    """Verified and rejected credentials, shared by all replicas (SPEC §5 "Cache").

    `get` raises StoreUnavailable when the store is down and the local cache has
    nothing: the caller then verifies against the IdP (and should not fail the
    request). `put_*` raise StoreUnavailable: the caller logs it and carries on.
    """

    def peek(self, app: str, header_value: str) -> CachedCredential | None:
        """The cached answer for this credential if this process holds it (within
        `local_ttl`), else None: the store may still have it (call `get`)."""
        return self._live_credential(
            self._peek(credential_cache_key(self._secret, app, header_value))
        )

    async def get(self, app: str, header_value: str) -> CachedCredential | None:
        key = credential_cache_key(self._secret, app, header_value)
        return await self._lookup(
            Namespace.CREDENTIAL,
            key,
            material=header_value,
            context=_CREDENTIAL,
            decode=lambda data: self._live_credential(_credential_from(data, app)),
        )

    def _live_credential(self, entry: CachedCredential | None) -> CachedCredential | None:
        """An entry whose identity's own token has not expired (the cache TTL was
        bounded by it when written; this covers clock skew between replicas)."""
        if entry is None or entry.identity is None or entry.identity.expires_at is None:
            return entry
        return entry if entry.identity.expires_at > self._wall() else None

    async def put_verified(
        self, app: str, header_value: str, identity: Identity, ttl: float
    ) -> None:
        """Cache a verified credential for `ttl` seconds (the caller bounds it by the
        token's exp); nothing happens when ttl <= 0."""
        await self._put(app, header_value, Verified(identity, cached=True), ttl)

    async def put_rejected(self, app: str, header_value: str, reason: str, ttl: float) -> None:
        await self._put(app, header_value, Rejected(reason or "rejected (cached)"), ttl)

    async def claim(self, app: str, header_value: str, ttl: float) -> bool:
        """Claim the verification of this credential for `ttl` seconds, across every
        replica: True for the one that should ask the IdP; the others wait for its
        answer in the cache. Raises StoreUnavailable (then everyone verifies)."""
        key = credential_cache_key(self._secret, app, header_value)
        return await self._store.claim(Namespace.CLAIM, key, ttl)

    async def release(self, app: str, header_value: str) -> None:
        key = credential_cache_key(self._secret, app, header_value)
        await self._store.delete(Namespace.CLAIM, key)

    async def _put(
        self, app: str, header_value: str, outcome: Verified | Rejected, ttl: float
    ) -> None:
        if ttl <= 0:
            return
        key = credential_cache_key(self._secret, app, header_value)
        expires_at = self._wall() + ttl
        # Locally first: if the store is down, this replica still avoids asking the
        # IdP again for the same credential.
        self._local.put(key, CachedCredential(outcome, expires_at), ttl)
        verified = isinstance(outcome, Verified)
        payload = {
            "v": _FORMAT,
            "app": app,
            "verdict": "ok" if verified else "rejected",  # the stored form's words
            "identity": outcome.identity.to_dict() if isinstance(outcome, Verified) else None,
            "reason": outcome.reason if isinstance(outcome, Rejected) else "",
            "expires_at": expires_at,
        }
        blob = seal(
            header_value.encode("utf-8"), _dumps(payload), context=_CREDENTIAL, salt=self._secret
        )
        await self._store.set(Namespace.CREDENTIAL, key, blob, ttl)


def _credential_from(data: dict[str, Any] | None, app: str) -> CachedCredential | None:
    if data is None or data.get("app") != app:
        return None
    try:
        verdict = data["verdict"]
        expires_at = float(data["expires_at"])
        if verdict == "ok":
            identity = Identity.from_dict(data["identity"])
            return CachedCredential(Verified(identity, cached=True), expires_at)
        if verdict == "rejected":
            reason = str(data.get("reason") or "") or "rejected (cached)"
            return CachedCredential(Rejected(reason), expires_at)
    except (KeyError, TypeError, ValueError):
        return None
    return None


# --- login states ---------------------------------------------------------------


class LoginStateRepository:
    """Single-use login states (SPEC §6 "Start" / "Callback").

    A state is stored under HMAC(secret, app, state, binding), where `binding` is the
    value of the browser's login cookie, and sealed under the state and the binding.
    So the binding is checked *before* anything is used up: a callback from another
    browser (no login cookie, or its own) addresses a key that does not exist and
    leaves the victim's record untouched for the victim. The right browser's `take`
    is one atomic get-and-delete in the store, so a replay, or a second replica racing
    the first, finds nothing. (A non-consuming read then a take would also work, but
    costs two round trips and a window between them; the keyed lookup has neither,
    and gives a stranger no way to tell "wrong cookie" from "no such state".)
    No local cache on purpose."""

    def __init__(
        self,
        store: ByteStore,
        *,
        secret: bytes,
        clock_wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._secret = secret
        self._wall = clock_wall

    def _key(self, app: str, state: str, binding: str) -> str:
        return hmac_hex(self._secret, "login", app, state, binding)

    @staticmethod
    def _material(state: str, binding: str) -> bytes:
        return b"\0".join((state.encode("utf-8"), binding.encode("utf-8")))

    async def put(
        self,
        app: str,
        state: str,
        binding: str,
        record: Mapping[str, Any],
        ttl: float = 600.0,
    ) -> None:
        """Store a JSON-serialisable `record` for `ttl` seconds, for the browser whose
        login cookie is `binding`."""
        payload = {"v": _FORMAT, "record": dict(record), "expires_at": self._wall() + ttl}
        blob = seal(
            self._material(state, binding), _dumps(payload), context=_LOGIN, salt=self._secret
        )
        await self._store.set(Namespace.LOGIN, self._key(app, state, binding), blob, ttl)

    async def take(self, app: str, state: str, binding: str) -> dict[str, Any] | None:
        """The record, once, for the browser holding `binding`; None when absent,
        expired, already taken, tampered, or asked for with another binding or
        application (the record then stays, untouched)."""
        if not state or not binding or max(len(state), len(binding)) > _MAX_TOKEN_LEN:
            return None
        blob = await self._store.take(Namespace.LOGIN, self._key(app, state, binding))
        if blob is None:
            return None
        data = _loads(
            open_sealed(self._material(state, binding), blob, context=_LOGIN, salt=self._secret)
        )
        if data is None or not isinstance(data.get("record"), dict):
            return None
        try:
            if float(data["expires_at"]) <= self._wall():
                return None
        except (KeyError, TypeError, ValueError):
            return None
        record: dict[str, Any] = data["record"]
        return record
