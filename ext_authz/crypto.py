"""The small cryptographic toolbox of ext-authz (pure: no I/O, no state).

What it owns:

- store keys that reveal nothing: `session_key_id` (SHA-256 of the cookie value),
  `credential_cache_key` and `hmac_hex` (HMAC-SHA256 under the server secret);
- sealing: `seal` / `open_sealed`, AES-256-GCM under a key derived with HKDF-SHA256
  from material the store never sees (the cookie value, the Authorization header
  value, the login state). So a copy of the store neither lets anyone in nor reveals
  tokens or attributes (SPEC §5 "Cache", §6 "Session cookie");
- random values: `new_session_id`;
- `constant_time_equals` for every comparison of secrets.

Sealed blob layout: ``version (1 byte) || nonce (12 bytes) || ciphertext+tag``. The
version byte and the context are authenticated (AAD), so a blob sealed for one
purpose (b"session") never opens as another (b"credential").
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "constant_time_equals",
    "credential_cache_key",
    "derive_key",
    "hmac_hex",
    "new_session_id",
    "open_sealed",
    "seal",
    "session_key_id",
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
