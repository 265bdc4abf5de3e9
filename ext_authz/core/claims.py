"""From claims to an `Identity`, and how attributes are merged (SPEC §1, §7).

Pure functions: the OIDC adapter hands in the verified claims of an id_token, a
JWT access token, a userinfo or an introspection response; the directory adapter
hands in its groups and users. Nothing here does I/O or reads the clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from ext_authz.core.model import Identity

__all__ = ["attributes_at", "identity_from_claims", "merge_attributes"]


def identity_from_claims(
    claims: Mapping[str, Any],
    *,
    attributes_claim: str,
    provider: str,
    token: str,
    id_token: str = "",
) -> Identity:
    """Build the identity a set of verified claims describes.

    `sub` is required (ValueError without it: a token that names nobody is no
    identity). `preferred_username` falls back to `username` (RFC 7662 responses
    carry that) and then to `sub`, so the username header is never empty. `sid` (the
    IdP session the token belongs to) is kept when it is a string.
    """
    sub = claims.get("sub")
    if not isinstance(sub, str | int) or isinstance(sub, bool) or str(sub) == "":
        raise ValueError("claims have no sub")
    sub = str(sub)
    username = _string(claims.get("preferred_username")) or _string(claims.get("username")) or sub
    return Identity(
        sub=sub,
        preferred_username=username,
        email=_string(claims.get("email")),
        name=_string(claims.get("name")),
        groups=_strings(claims.get("groups")),
        entitlements=_strings(claims.get("entitlements")),
        attributes=MappingProxyType(dict(attributes_at(claims, attributes_claim))),
        token=token,
        id_token=id_token,
        provider=provider,
        expires_at=_number(claims.get("exp")),
        sid=_string(claims.get("sid")),
    )


def attributes_at(claims: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """The mapping at the dotted `path` in `claims`, or {} when absent or not a mapping.

    A claim literally named like the whole path wins over walking the dots, since
    some IdPs flatten nested claims into one key.
    """
    if not path:
        return {}
    literal = claims.get(path)
    if isinstance(literal, Mapping):
        return literal
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return {}
        node = node.get(part)
    return node if isinstance(node, Mapping) else {}


def merge_attributes(
    groups: Mapping[str, Mapping[str, Any]],
    group_names: Iterable[str],
    user_attributes: Mapping[str, Any],
) -> dict[str, Any]:
    """The user's effective attributes, as authentik computes them.

    authentik's `User.group_attributes()` walks the user's groups ordered by name,
    each `dict.update`-ing the result, then the user's own attributes on top: a
    shallow merge where later keys replace earlier ones. Unknown group names add
    nothing.
    """
    merged: dict[str, Any] = {}
    for name in sorted(set(group_names)):
        merged.update(groups.get(name) or {})
    merged.update(user_attributes)
    return merged


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _strings(value: Any) -> tuple[str, ...]:
    # Only a list of strings counts; a lone string is not silently split into characters.
    if not isinstance(value, list | tuple):
        return ()
    return tuple(v for v in value if isinstance(v, str))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
