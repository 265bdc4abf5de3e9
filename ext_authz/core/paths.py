"""The request path as skip paths see it (SPEC §4 step 6).

A skip regex is searched in the *normalised* path, so `/public/../admin` is judged
as `/admin`, the resource the upstream will serve. `normalize_path` follows RFC 3986:

- percent-encoded unreserved characters are decoded (`%7E` -> `~`, `a%2e` -> `a.`);
  every other escape stays, its hex digits upper-cased (§6.2.2);
- `;` parameters are cut from each segment (`/x;jsessionid=1` -> `/x`), as Tomcat
  and other servlet containers do before they resolve the path;
- dot segments are removed (§5.2.4) and repeated slashes merged.

A path that cannot be normalised safely has no normal form: `None`, which never
matches a skip path, so the request needs credentials. That is the case when
servers are known to disagree about what the path names:

- an encoded `/` or `\\` (`%2F`, `%5C`, any case) anywhere, a raw `\\`, NUL or
  another control (raw or encoded), a character that is not printable ASCII, an
  invalid escape (`%`, `%zz`); one of these inside a `;` parameter counts too;
- `..` above the root;
- a dot segment written with escapes or parameters (`%2e%2e`, `.%2e`, `..;`,
  `..;x=1`): some upstreams resolve it and others take it as a name, so no single
  path is the one they will serve. (A proxy that normalises paths before asking, as
  the shipped configs do, resolves most of these itself.)
- a path that does not start with `/` (`*`, an absolute URI).

Pure and total: never raises, whatever the string.
"""

from __future__ import annotations

import re

__all__ = ["normalize_path"]

# A path that needs no work: printable ASCII without `\`, `%` or `;`, no empty
# segment and no dot segment. Almost every request's path is one.
_NEEDS_WORK = re.compile(r"[^\x21-\x5b\x5d-\x7e]|[%;]|//|/\.\.?(?:/|$)")
# Refused anywhere in the path, parameters included: a character outside printable
# ASCII or a backslash; `%` not followed by two hex digits; an escaped `/`, `\`, a
# control (%00-%1F) or DEL.
_UNSAFE = re.compile(
    r"[^\x21-\x5b\x5d-\x7e]|%(?![0-9A-Fa-f]{2})|%(?:2[Ff]|5[Cc]|[01][0-9A-Fa-f]|7[Ff])"
)
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DOTS = (".", "..")


def _decode(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def normalize_path(path: str) -> str | None:
    """The normal form of a request path (without its query), or None when there is
    no safe one (see the module docstring)."""
    if not path.startswith("/"):
        return None
    if _NEEDS_WORK.search(path) is None:
        return path
    if _UNSAFE.search(path) is not None:
        return None
    kept: list[str] = []
    segments = path[1:].split("/")
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        name, semicolon, _ = segment.partition(";")
        decoded = _ESCAPE.sub(_decode, name) if "%" in name else name
        if decoded in _DOTS:
            if semicolon or decoded != name:
                return None  # a dot segment in disguise: servers disagree on it
            if decoded == "..":
                if not kept:
                    return None  # above the root
                kept.pop()
            if i == last:
                kept.append("")  # `/a/..` is the directory `/`, with its slash
        elif decoded or i == last:
            kept.append(decoded)  # an empty segment is merged, except the last
    return "/" + "/".join(kept)
