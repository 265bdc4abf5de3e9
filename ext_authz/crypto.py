"""The small cryptographic toolbox of ext-authz (pure: no I/O, no state).

What it owns:

- store keys that reveal nothing: `session_key_id` (SHA-256 of the cookie value),
  `credential_cache_key` and `hmac_hex` (HMAC-SHA256 under the server secret);
- sealing: `seal` / `open_sealed`, AES-256-GCM under a key derived with HKDF-SHA256
  from material the store never sees (the cookie value, the Authorization header
  value, the login state). So a copy of the store neither lets anyone in nor reveals
  tokens or attributes (SPEC §5 "Cache", §6 "Session cookie");
- random values: `new_session_id`;
- `constant_time_equals` for every comparison of secrets;
- static bearer tokens that find their own hash (`hash_token`, `token_lookup_salt`,
  `token_hash_salt`, `token_salt_matches_key`), see below.

Static tokens (SPEC §5 "Cost and abuse": one argon2 run at most per unknown
credential, "look static tokens up by a keyed digest, not by trying every hash"). The
configuration holds only argon2id hashes, and nothing can be derived from a hash
without running argon2 on a guess; so the lookup key travels *inside* the hash, as its
salt. A token's hash is made (`ext-authz hash-password --token`) with the salt

    key id (4 bytes) || HMAC-SHA256(K, token)[:16]      K = HMAC(secret, "directory-token")

instead of random bytes. It is still an ordinary argon2id hash (any argon2 library
verifies it), deterministic per (secret, token), and without the server `secret` it
reveals nothing a random salt would not. At start-up the directory indexes its token
hashes by salt; a presented token's salt is one HMAC away, so a bogus token costs no
argon2 run at all and a real one exactly one. The key id (an HMAC of a constant under
K) lets the configuration check refuse, at start-up, a token hash made under another
`secret` or with a random salt, which could never match.

Sealed blob layout: ``version (1 byte) || nonce (12 bytes) || ciphertext+tag``. The
version byte and the context are authenticated (AAD), so a blob sealed for one
purpose (b"session") never opens as another (b"credential").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

from argon2 import PasswordHasher
from argon2.low_level import Type as Argon2Type
from argon2.low_level import hash_secret
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "TOKEN_SALT_LEN",
    "constant_time_equals",
    "credential_cache_key",
    "derive_key",
    "hash_token",
    "hmac_hex",
    "new_session_id",
    "open_sealed",
    "seal",
    "session_key_id",
    "token_hash_salt",
    "token_lookup_salt",
    "token_salt_matches_key",
]

_VERSION = b"\x01"
_NONCE_LEN = 12
_KEY_LEN = 32  # AES-256
_MIN_BLOB = len(_VERSION) + _NONCE_LEN + 16  # 16 = GCM tag


def derive_key(material: bytes, *, context: bytes, salt: bytes = b"") -> bytes:
    """A 32-byte key from `material` with HKDF-SHA256 (info = `context`).

    `salt` lets a caller mix in the server secret, so that low-entropy material (an
    app password in a Basic header) cannot be guessed offline from a store copy alone.
    """
    hkdf = HKDF(algorithm=hashes.SHA256(), length=_KEY_LEN, salt=salt or None, info=context)
    return hkdf.derive(material)


def seal(material: bytes, plaintext: bytes, *, context: bytes, salt: bytes = b"") -> bytes:
    """Encrypt and authenticate `plaintext` under a key derived from `material`."""
    key = derive_key(material, context=context, salt=salt)
    nonce = os.urandom(_NONCE_LEN)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, _VERSION + context)
    return _VERSION + nonce + ciphertext


def open_sealed(material: bytes, blob: bytes, *, context: bytes, salt: bytes = b"") -> bytes | None:
    """The plaintext, or None when the blob is malformed, tampered with, sealed under
    other material or another context. Never raises on bad input: a store copy an
    attacker edited is just "no such record"."""
    if len(blob) < _MIN_BLOB or blob[:1] != _VERSION:
        return None
    nonce = blob[1 : 1 + _NONCE_LEN]
    try:
        key = derive_key(material, context=context, salt=salt)
        return AESGCM(key).decrypt(nonce, blob[1 + _NONCE_LEN :], _VERSION + context)
    except (InvalidTag, ValueError, TypeError):
        return None


def session_key_id(cookie_value: str) -> str:
    """The store key of a session: SHA-256 hex of the cookie value (SPEC §6).

    Not an HMAC on purpose: the cookie value already carries 256 random bits."""
    return hashlib.sha256(cookie_value.encode("utf-8")).hexdigest()


def hmac_hex(secret: bytes, *parts: str | bytes) -> str:
    """HMAC-SHA256 hex of `parts` joined with NUL bytes."""
    encoded = [p.encode("utf-8") if isinstance(p, str) else p for p in parts]
    return hmac.new(secret, b"\0".join(encoded), hashlib.sha256).hexdigest()


def credential_cache_key(secret: bytes, app: str, header_value: str) -> str:
    """The store key of a cached credential: HMAC(secret, app + "\\0" + header value)."""
    return hmac_hex(secret, app, header_value)


def new_session_id() -> str:
    """32 random bytes, base64url without padding (43 characters): a cookie value."""
    return secrets.token_urlsafe(32)


def constant_time_equals(a: str | bytes, b: str | bytes) -> bool:
    """Compare two secrets without leaking where they differ."""
    a_bytes = a.encode("utf-8") if isinstance(a, str) else a
    b_bytes = b.encode("utf-8") if isinstance(b, str) else b
    return hmac.compare_digest(a_bytes, b_bytes)


# --- static tokens that find their own hash ------------------------------------------

_KEY_ID_LEN = 4
TOKEN_SALT_LEN = _KEY_ID_LEN + 16


def _token_key(secret: bytes) -> bytes:
    return hmac.new(secret, b"ext-authz directory-token", hashlib.sha256).digest()


def token_lookup_salt(secret: bytes, token: str) -> bytes:
    """The salt a static token's hash carries: key id || HMAC(K, token)[:16]."""
    key = _token_key(secret)
    key_id = hmac.new(key, b"key id", hashlib.sha256).digest()[:_KEY_ID_LEN]
    digest = hmac.new(key, b"token\0" + token.encode("utf-8"), hashlib.sha256).digest()
    return key_id + digest[: TOKEN_SALT_LEN - _KEY_ID_LEN]


def token_hash_salt(encoded: str) -> bytes | None:
    """The salt of an argon2 hash in PHC form (`$argon2id$v=19$m=..$SALT$HASH`)."""
    parts = encoded.split("$")
    if len(parts) != 6:
        return None
    try:
        return base64.b64decode(parts[4] + "=" * (-len(parts[4]) % 4), validate=True)
    except ValueError:
        return None


def token_salt_matches_key(secret: bytes, salt: bytes) -> bool:
    """Whether `salt` was made by `token_lookup_salt` under this `secret` (its key id)."""
    key_id = token_lookup_salt(secret, "")[:_KEY_ID_LEN]
    return len(salt) == TOKEN_SALT_LEN and hmac.compare_digest(salt[:_KEY_ID_LEN], key_id)


def hash_token(secret: bytes, token: str, hasher: PasswordHasher | None = None) -> str:
    """The argon2id hash of a static bearer token, salted with its lookup key (the
    cost parameters are `hasher`'s, by default argon2-cffi's: t=3, m=64 MiB, p=4)."""
    params = hasher or PasswordHasher()
    return hash_secret(
        token.encode("utf-8"),
        token_lookup_salt(secret, token),
        time_cost=params.time_cost,
        memory_cost=params.memory_cost,
        parallelism=params.parallelism,
        hash_len=params.hash_len,
        type=Argon2Type.ID,
    ).decode("ascii")
