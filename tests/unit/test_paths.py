"""The normalised request path that skip paths are searched in (SPEC §4 step 6)."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext_authz.core.paths import normalize_path

FAST = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # nothing to do
        pytest.param("/", "/", id="root"),
        pytest.param("/public/page", "/public/page", id="plain"),
        pytest.param("/public/", "/public/", id="trailing-slash-kept"),
        pytest.param("/a.b/.hidden/..x/x..", "/a.b/.hidden/..x/x..", id="dots-inside-names"),
        pytest.param("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,=", id="sub-delims"),
        # percent-decoding: unreserved characters only
        pytest.param("/public/a%2e", "/public/a.", id="encoded-dot-in-name"),
        pytest.param("/%7Euser/%7euser", "/~user/~user", id="tilde"),
        pytest.param("/%41%62%30%2D%5F", "/Ab0-_", id="alpha-digit-dash-underscore"),
        pytest.param("/a%20b", "/a%20b", id="space-stays-encoded"),
        pytest.param("/a%3bb", "/a%3Bb", id="encoded-semicolon-stays-upper-cased"),
        pytest.param("/a%3fb%23c", "/a%3Fb%23c", id="encoded-query-and-fragment-stay"),
        pytest.param("/%c3%a9", "/%C3%A9", id="utf8-stays-encoded"),
        pytest.param("/%252e%252e/x", "/%252e%252e/x", id="double-encoding-decoded-once"),
        pytest.param("/%25", "/%25", id="encoded-percent"),
        # dot segments
        pytest.param("/public/../secret", "/secret", id="dot-dot"),
        pytest.param("/public/x/../../secret", "/secret", id="dot-dot-twice"),
        pytest.param("/public/./x", "/public/x", id="dot"),
        pytest.param("/public/x/..", "/public/", id="dot-dot-at-end"),
        pytest.param("/public/x/.", "/public/x/", id="dot-at-end"),
        pytest.param("/a/..", "/", id="back-to-root"),
        pytest.param("/secret/../public/x", "/public/x", id="into-public"),
        # repeated slashes
        pytest.param("//public//x", "/public/x", id="double-slashes"),
        pytest.param("/public///", "/public/", id="trailing-slashes"),
        pytest.param("//", "/", id="only-slashes"),
        pytest.param("/a//../b", "/b", id="empty-segment-then-dot-dot"),
        # `;` parameters
        pytest.param("/public/x;v=1", "/public/x", id="parameter"),
        pytest.param("/healthz;jsessionid=1", "/healthz", id="jsessionid"),
        pytest.param("/a;p/b;q=1;r/c", "/a/b/c", id="parameters-per-segment"),
        pytest.param("/public/;x/y", "/public/y", id="parameter-only-segment"),
        pytest.param("/secret;/../public/x", "/public/x", id="parameter-then-dot-dot"),
        pytest.param("/public/x;%2E%2E", "/public/x", id="escapes-inside-a-parameter"),
        # no safe normal form
        pytest.param("/public/..%2fsecret", None, id="encoded-slash"),
        pytest.param("/public/..%2Fsecret", None, id="encoded-slash-upper"),
        pytest.param("/public/..%5csecret", None, id="encoded-backslash"),
        pytest.param("/public/..%5Csecret", None, id="encoded-backslash-upper"),
        pytest.param("/public/x;%2f..", None, id="encoded-slash-in-a-parameter"),
        pytest.param("/public/..\\secret", None, id="backslash"),
        pytest.param("/public/%00", None, id="encoded-nul"),
        pytest.param("/public/\x00", None, id="nul"),
        pytest.param("/public/%0a", None, id="encoded-lf"),
        pytest.param("/public/%1F", None, id="encoded-unit-separator"),
        pytest.param("/public/%7f", None, id="encoded-del"),
        pytest.param("/public/\x7f", None, id="del"),
        pytest.param("/public/a b", None, id="raw-space"),
        pytest.param("/public/\t", None, id="tab"),
        pytest.param("/public/é", None, id="raw-non-ascii"),
        pytest.param("/public/\ud800", None, id="lone-surrogate"),
        pytest.param("/public/%", None, id="bare-percent"),
        pytest.param("/public/%2", None, id="short-escape"),
        pytest.param("/public/%zz", None, id="not-hex"),
        pytest.param("/public/%%32%65", None, id="percent-before-escape"),
        pytest.param("/..", None, id="above-root"),
        pytest.param("/public/../../secret", None, id="above-root-later"),
        pytest.param("/public/%2e%2e/secret", None, id="encoded-dot-dot"),
        pytest.param("/public/%2E%2E/secret", None, id="encoded-dot-dot-upper"),
        pytest.param("/public/.%2e/secret", None, id="half-encoded-dot-dot"),
        pytest.param("/public/%2e/secret", None, id="encoded-dot"),
        pytest.param("/public/..;/secret", None, id="dot-dot-semicolon"),
        pytest.param("/public/..;x=1/secret", None, id="dot-dot-parameter"),
        pytest.param("/public/.;/secret", None, id="dot-semicolon"),
        pytest.param("/a/..;/public/x", None, id="dot-dot-semicolon-into-public"),
        pytest.param("", None, id="empty"),
        pytest.param("*", None, id="asterisk"),
        pytest.param("public/x", None, id="relative"),
        pytest.param("http://h/public/x", None, id="absolute-uri"),
    ],
)
def test_normalize_path(path: str, expected: str | None) -> None:
    assert normalize_path(path) == expected


# Paths drawn mostly from the characters that matter: separators, dots, escapes of
# dots, slashes and backslashes, parameters, and a little of everything else.
PATHISH = st.builds(
    lambda parts: "/" + "".join(parts),
    st.lists(
        st.one_of(
            st.sampled_from(
                ["/", ".", "..", "%2e", "%2E", "%2f", "%5c", "%25", "%7e", "%41", "%3b",
                 ";", ";x=1", "\\", "%", "%0", "a", "public", "~", "-", "_", "%20", "%c3%a9"]
            ),
            st.text(st.characters(codec=None, categories=None), max_size=3),
        ),
        max_size=14,
    ),
)  # fmt: skip
ANY_PATH = st.one_of(PATHISH, st.text(max_size=40))


@FAST
@given(ANY_PATH)
def test_normal_form_is_stable_and_has_no_dot_or_empty_segments(path: str) -> None:
    normal = normalize_path(path)
    if normal is None:
        return
    assert normalize_path(normal) == normal  # idempotent
    assert normal.startswith("/")
    assert "//" not in normal
    assert "/../" not in normal and not normal.endswith("/..")
    assert "/./" not in normal and not normal.endswith("/.")
    assert ";" not in normal and "\\" not in normal
    # What stays encoded is a valid escape of something that is not unreserved,
    # and never a slash, a backslash or a control.
    for escape in re.findall(r"%(..)", normal):
        assert re.fullmatch(r"[0-9A-F]{2}", escape)
        char = chr(int(escape, 16))
        assert not (char.isascii() and (char.isalnum() or char in "-._~"))
        assert char not in "/\\" and ord(char) >= 0x20 and ord(char) != 0x7F


@FAST
@given(ANY_PATH)
def test_no_escaped_slash_or_traversal_is_ever_resolved(path: str) -> None:
    normal = normalize_path(path)
    lowered = path.lower()
    if any(bad in lowered for bad in ("%2f", "%5c", "\\", "\x00")):
        assert normal is None


@FAST
@given(st.lists(st.sampled_from(["a", "b", "..", ".", ""]), max_size=10))
def test_dot_segments_as_rfc_3986_resolves_them(segments: list[str]) -> None:
    """Against a stack-based reading of RFC 3986 §5.2.4, with `..` above the root
    refused instead of clamped and empty segments merged."""
    path = "/" + "/".join(segments)
    stack: list[str] = []
    above_root = False
    for seg in segments:
        if seg == "..":
            if not stack:
                above_root = True
                break
            stack.pop()
        elif seg not in (".", ""):
            stack.append(seg)
    if above_root:
        assert normalize_path(path) is None
        return
    trailing = bool(segments) and segments[-1] in ("", ".", "..") and bool(stack)
    expected = "/" + "/".join(stack) + ("/" if trailing else "")
    assert normalize_path(path) == expected
