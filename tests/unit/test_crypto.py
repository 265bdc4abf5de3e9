"""ext_authz.crypto: sealing fails closed (None, never an exception) on anything
but the exact material, context and salt; keys and ids have the documented shape."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ext_authz.crypto import (
    constant_time_equals,
    credential_cache_key,
    derive_key,
    hmac_hex,
    new_session_id,
    open_sealed,
    seal,
    session_key_id,
)

MATERIAL = b"cookie-value-material"


def test_seal_roundtrip_and_randomised() -> None:
    a = seal(MATERIAL, b"plaintext", context=b"session")
    b = seal(MATERIAL, b"plaintext", context=b"session")
    assert a != b  # fresh nonce every time
    assert b"plaintext" not in a
    assert a[0] == 1 and len(a) == 1 + 12 + len(b"plaintext") + 16
    assert open_sealed(MATERIAL, a, context=b"session") == b"plaintext"
    assert open_sealed(MATERIAL, b, context=b"session") == b"plaintext"


def test_wrong_material_context_or_salt_opens_nothing() -> None:
    blob = seal(MATERIAL, b"x", context=b"session", salt=b"server-secret")
    assert open_sealed(MATERIAL, blob, context=b"session", salt=b"server-secret") == b"x"
    assert open_sealed(b"other", blob, context=b"session", salt=b"server-secret") is None
    assert open_sealed(MATERIAL, blob, context=b"credential", salt=b"server-secret") is None
    assert open_sealed(MATERIAL, blob, context=b"session", salt=b"other-secret") is None
    assert open_sealed(MATERIAL, blob, context=b"session") is None


@pytest.mark.parametrize("position", [0, 1, 12, 13, -1])
def test_any_flipped_bit_opens_nothing(position: int) -> None:
    blob = bytearray(seal(MATERIAL, b"attributes", context=b"session"))
    blob[position] ^= 0x01
    assert open_sealed(MATERIAL, bytes(blob), context=b"session") is None


@pytest.mark.parametrize("blob", [b"", b"\x01", b"\x01" + b"\x00" * 28, b"\x02" + b"\x00" * 40])
def test_malformed_blobs_open_nothing(blob: bytes) -> None:
    assert open_sealed(MATERIAL, blob, context=b"session") is None


@settings(deadline=None)  # AES-GCM and HKDF per example: speed is the machine's
@given(st.binary(max_size=200))
def test_garbage_never_raises(blob: bytes) -> None:
    assert open_sealed(MATERIAL, blob, context=b"session") is None


def test_truncated_blob_opens_nothing() -> None:
    blob = seal(MATERIAL, b"attributes", context=b"session")
    assert open_sealed(MATERIAL, blob[:-1], context=b"session") is None


def test_derive_key_is_deterministic_and_separated() -> None:
    k = derive_key(MATERIAL, context=b"session")
    assert len(k) == 32 and k == derive_key(MATERIAL, context=b"session")
    assert k != derive_key(MATERIAL, context=b"credential")
    assert k != derive_key(MATERIAL, context=b"session", salt=b"salt")


def test_session_key_id_is_sha256_hex() -> None:
    assert session_key_id("abc") == hashlib.sha256(b"abc").hexdigest()


def test_credential_cache_key_is_hmac_of_app_and_header() -> None:
    expected = hmac.new(b"secret", b"app\0Bearer tok", hashlib.sha256).hexdigest()
    assert credential_cache_key(b"secret", "app", "Bearer tok") == expected
    assert credential_cache_key(b"secret", "app2", "Bearer tok") != expected
    assert credential_cache_key(b"other", "app", "Bearer tok") != expected
    assert hmac_hex(b"secret", "app", b"Bearer tok") == expected


def test_new_session_id_is_32_random_bytes_base64url() -> None:
    ids = {new_session_id() for _ in range(100)}
    assert len(ids) == 100
    for value in ids:
        assert len(value) == 43 and "=" not in value
        assert len(base64.urlsafe_b64decode(value + "=")) == 32


def test_constant_time_equals() -> None:
    assert constant_time_equals("a", "a") and constant_time_equals(b"a", "a")
    assert not constant_time_equals("a", "b")
    assert not constant_time_equals("a", "ab")
