"""parse_authorization (SPEC §5 "Parsing"): absent, Basic, Bearer, or present-but-not-valid."""

from __future__ import annotations

import base64

import pytest

from ext_authz.core.credentials import (
    MAX_BEARER_LENGTH,
    BasicCredential,
    BearerCredential,
    Credential,
    MalformedCredential,
    parse_authorization,
)


def b64(raw: bytes | str) -> str:
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    return base64.b64encode(data).decode("ascii")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param("", None, id="empty"),
        pytest.param("   ", None, id="blank"),
        # --- Basic -------------------------------------------------------------------
        pytest.param(
            f"Basic {b64('alice:s3cret')}", BasicCredential("alice", "s3cret"), id="basic"
        ),
        pytest.param(
            f"Basic {b64('alice:a:b::c')}",
            BasicCredential("alice", "a:b::c"),
            id="basic-password-with-colons",
        ),
        pytest.param(
            f"Basic {b64('alice:')}", BasicCredential("alice", ""), id="basic-empty-password"
        ),
        pytest.param(f"Basic {b64(':pw')}", BasicCredential("", "pw"), id="basic-empty-user"),
        pytest.param(
            f"Basic {b64('jürgen-Ω:pässwörd')}",
            BasicCredential("jürgen-Ω", "pässwörd"),
            id="basic-utf8",
        ),
        pytest.param(
            f"Basic {b64('goauthentik.io/token:tok')}",
            BasicCredential("goauthentik.io/token", "tok"),
            id="basic-token-username",
        ),
        pytest.param(f"basic {b64('a:b')}", BasicCredential("a", "b"), id="scheme-lower"),
        pytest.param(f"BASIC {b64('a:b')}", BasicCredential("a", "b"), id="scheme-upper"),
        pytest.param(f"bAsIc {b64('a:b')}", BasicCredential("a", "b"), id="scheme-mixed"),
        pytest.param(f"Basic    {b64('a:b')}", BasicCredential("a", "b"), id="many-spaces"),
        pytest.param(f"  Basic {b64('a:b')}  ", BasicCredential("a", "b"), id="surrounding-spaces"),
        pytest.param(
            f"Basic {b64('a:b')}, Bearer other",
            BasicCredential("a", "b"),
            id="repeated-first-wins-basic",
        ),
        pytest.param(
            "Basic", MalformedCredential("basic", "empty credentials"), id="basic-no-credentials"
        ),
        pytest.param(
            "Basic   ", MalformedCredential("basic", "empty credentials"), id="basic-only-spaces"
        ),
        pytest.param(
            "Basic !!!notbase64",
            MalformedCredential("basic", "invalid base64"),
            id="basic-bad-base64",
        ),
        pytest.param(
            "Basic YWxpY2U6cw",
            MalformedCredential("basic", "invalid base64"),
            id="basic-missing-padding",
        ),
        pytest.param(
            "Basic YWxpY2U6cw=",
            MalformedCredential("basic", "invalid base64"),
            id="basic-short-padding",
        ),
        pytest.param(
            "Basic YWxp Y2U6cw==",
            MalformedCredential("basic", "invalid base64"),
            id="basic-space-inside",
        ),
        pytest.param(
            "Basic YWxpY2U6cw-_",
            MalformedCredential("basic", "invalid base64"),
            id="basic-urlsafe-alphabet",
        ),
        pytest.param(
            f"Basic {b64('alice')}", MalformedCredential("basic", "no colon"), id="basic-no-colon"
        ),
        pytest.param(
            "Basic " + b64(b"al\xffce:pw"),
            MalformedCredential("basic", "not utf-8"),
            id="basic-not-utf8",
        ),
        # --- Bearer ------------------------------------------------------------------
        pytest.param(
            "Bearer abc.DEF-ghi_jkl~mno+pqr/stu==",
            BearerCredential("abc.DEF-ghi_jkl~mno+pqr/stu=="),
            id="bearer",
        ),
        pytest.param("bearer tok", BearerCredential("tok"), id="bearer-lower"),
        pytest.param("Bearer     tok", BearerCredential("tok"), id="bearer-many-spaces"),
        pytest.param(
            "Bearer tok1, Bearer tok2", BearerCredential("tok1"), id="repeated-first-wins-bearer"
        ),
        pytest.param(
            f"Bearer tok,Basic {b64('a:b')}", BearerCredential("tok"), id="repeated-no-space"
        ),
        pytest.param("Bearer", MalformedCredential("bearer", "empty token"), id="bearer-empty"),
        pytest.param(
            "Bearer  ", MalformedCredential("bearer", "empty token"), id="bearer-only-spaces"
        ),
        pytest.param(
            "Bearer to ken",
            MalformedCredential("bearer", "invalid token characters"),
            id="bearer-space-inside",
        ),
        pytest.param(
            'Bearer tok"en',
            MalformedCredential("bearer", "invalid token characters"),
            id="bearer-quote",
        ),
        pytest.param(
            "Bearer tok=en",
            MalformedCredential("bearer", "invalid token characters"),
            id="bearer-equals-inside",
        ),
        pytest.param(
            "Bearer tökén",
            MalformedCredential("bearer", "invalid token characters"),
            id="bearer-non-ascii",
        ),
        pytest.param(
            "Bearer tok\nen",
            MalformedCredential("bearer", "invalid token characters"),
            id="bearer-newline",
        ),
        pytest.param(
            "Bearer " + "a" * (MAX_BEARER_LENGTH + 1),
            MalformedCredential("bearer", "token too long"),
            id="bearer-over-16k",
        ),
        # --- everything else ---------------------------------------------------------
        pytest.param(
            "Digest username=alice",
            MalformedCredential("other", "unsupported scheme"),
            id="unknown-scheme",
        ),
        pytest.param(
            "Negotiate abc", MalformedCredential("other", "unsupported scheme"), id="negotiate"
        ),
        pytest.param(
            "Basicabc", MalformedCredential("other", "unsupported scheme"), id="scheme-glued"
        ),
        pytest.param(
            "Bäsic abc", MalformedCredential("other", "unparseable header"), id="scheme-non-token"
        ),
        pytest.param(
            f"Basic\t{b64('a:b')}",
            MalformedCredential("other", "unparseable header"),
            id="tab-separator",
        ),
        pytest.param(
            ", Bearer tok", MalformedCredential("other", "empty value"), id="empty-first-value"
        ),
    ],
)
def test_parse_authorization(header: str | None, expected: Credential | None) -> None:
    assert parse_authorization(header) == expected


def test_bearer_at_exactly_16_kib_is_accepted() -> None:
    token = "a" * MAX_BEARER_LENGTH
    assert MAX_BEARER_LENGTH == 16 * 1024
    assert parse_authorization(f"Bearer {token}") == BearerCredential(token)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(f"Basic {b64('alice:hunter2-SECRET')}", id="basic"),
        pytest.param("Bearer hunter2-SECRET", id="bearer"),
        pytest.param(f"Basic {b64('alice')}hunter2-SECRET", id="malformed-basic"),
        pytest.param("Bearer hunter2-SECRET!", id="malformed-bearer"),
        pytest.param("Weird hunter2-SECRET", id="malformed-other"),
    ],
)
def test_repr_and_str_never_show_the_secret(header: str) -> None:
    credential = parse_authorization(header)
    assert credential is not None
    for shown in (repr(credential), str(credential), f"{credential!r}", repr([credential])):
        assert "hunter2-SECRET" not in shown
        assert b64("alice:hunter2-SECRET") not in shown


def test_basic_repr_names_the_user_but_redacts_the_password() -> None:
    shown = repr(BasicCredential("alice", "pw-123"))
    assert "alice" in shown
    assert "pw-123" not in shown
    assert "redacted" in shown
