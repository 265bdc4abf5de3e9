"""Who may use an application: the `access` rules of SPEC §12, compiled and judged.

`compile_policy` turns an application's `access` settings (plain data) into an
`AccessPolicy` once, at load: regexes compiled, methods upper-cased, groups, users and
emails as frozensets, claim paths resolved against what an `Identity` keeps. A
mistake is an `AccessRuleError` listing every problem with its key path relative to
`access` (`(1, "paths", 0)`), which config.py prefixes with the application's.

`AccessPolicy.evaluate(identity, normal_path, method)` is the per-request judgement:
the first rule whose `paths` and `methods` both match decides; it admits an identity
that matches any one of its `groups`, `users`, `emails` or `claims`, and a rule with
none of these admits every authenticated identity. It returns `ADMIT` (None) or the
index of the refusing rule (`NO_RULE` when no rule matched). No I/O, and nothing is
allocated on the way but the answer.

Claims, as an `Identity` carries them (it keeps no raw claim set, only what a decision
or an upstream header needs), resolve by the first part of their dotted path:

- `sub`, `preferred_username`, `email`, `name`, `groups`, `entitlements`: the
  identity's own fields (a list field matches when any item is accepted);
- the application's `attributes_claim` (`ak_proxy.user_attributes` by default) and
  `attributes`: the identity's merged attributes, so `ak_proxy.user_attributes.team`
  and `attributes.team` name the same value, for IdP sessions, verified JWTs and the
  directory's users alike; the rest of the path walks nested mappings.

Any other path names nothing the identity keeps, and is a config error rather than a
rule that can never match. A scalar is compared as text (`true`/`false` for booleans,
as YAML and JSON spell them); a list matches when any scalar item is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ext_authz.core.model import Identity

__all__ = [
    "ADMIT",
    "NO_RULE",
    "AccessPolicy",
    "AccessRule",
    "AccessRuleError",
    "ClaimCondition",
    "compile_policy",
]

ADMIT = None
NO_RULE = -1  # evaluate(): no rule's paths and methods matched the request

Loc = tuple[str | int, ...]

_FIELDS = ("sub", "preferred_username", "email", "name", "groups", "entitlements")
_ATTRIBUTES = "attributes"
_METHOD = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_RULE_KEYS = ("paths", "methods", "groups", "users", "emails", "claims")


class AccessRuleError(ValueError):
    """The `access` settings cannot be compiled; `problems` name each key path."""

    def __init__(self, problems: Sequence[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(msg for _, msg in problems))
        self.problems = tuple(problems)


@dataclass(frozen=True, slots=True)
class ClaimCondition:
    """One `claims` entry: where the value lives in the identity, and what it may be.

    `source` is an Identity field name, or "attributes" (then `parts` walk into the
    identity's attributes)."""

    path: str
    source: str
    parts: tuple[str, ...]
    accepted: frozenset[str]

    def matches(self, identity: Identity) -> bool:
        if self.source == _ATTRIBUTES:
            node: Any = identity.attributes
            for part in self.parts:
                if not isinstance(node, Mapping):
                    return False
                node = node.get(part)
                if node is None:
                    return False
        else:
            node = getattr(identity, self.source)
        if isinstance(node, list | tuple):
            for item in node:
                text = _text(item)
                if text is not None and text in self.accepted:
                    return True
            return False
        text = _text(node)
        return text is not None and text in self.accepted


@dataclass(frozen=True, slots=True)
class AccessRule:
    """One compiled rule. Empty `paths` / `methods`: any path / method. No condition
    at all (`open`): every authenticated identity."""

    paths: tuple[re.Pattern[str], ...] = ()
    methods: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    emails: frozenset[str] = frozenset()  # whole addresses, lower-case
    domains: frozenset[str] = frozenset()  # after the last `@`, lower-case
    claims: tuple[ClaimCondition, ...] = ()

    @property
    def open(self) -> bool:
        return not (self.groups or self.users or self.emails or self.domains or self.claims)

    def applies(self, path: str, method: str) -> bool:
        if self.methods and method not in self.methods:
            return False
        if not self.paths:
            return True
        # Loops, not any(): a generator per call is an allocation on the hot path.
        for pattern in self.paths:  # noqa: SIM110
            if pattern.search(path) is not None:
                return True
        return False

    def admits(self, identity: Identity) -> bool:
        if self.open:
            return True
        if self.users and identity.preferred_username in self.users:
            return True
        if self.groups:
            for group in identity.groups:
                if group in self.groups:
                    return True
        if (self.emails or self.domains) and identity.email:
            email = identity.email.lower()
            if email in self.emails:
                return True
            if self.domains and email.rpartition("@")[2] in self.domains:
                return True
        for claim in self.claims:  # noqa: SIM110 (no generator on the hot path)
            if claim.matches(identity):
                return True
        return False


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """An application's rules, in order. No rules: every authenticated identity.

    `leading` (from `with_shortcut`) is one regex joining the paths of the rules before
    the first rule without `paths`, and `after` that rule's index: a path none of them
    matches skips them all with one search instead of one per rule."""

    rules: tuple[AccessRule, ...] = ()
    leading: re.Pattern[str] | None = None
    after: int = 0

    def __bool__(self) -> bool:
        return bool(self.rules)

    @classmethod
    def with_shortcut(cls, rules: Sequence[AccessRule]) -> AccessPolicy:
        rules = tuple(rules)
        after = next((i for i, rule in enumerate(rules) if not rule.paths), len(rules))
        patterns = [p for rule in rules[:after] for p in rule.paths]
        if len(patterns) < 2 or any(p.groups or p.flags & ~re.UNICODE for p in patterns):
            # Groups would be renumbered and inline flags moved: no safe join.
            return cls(rules)
        try:
            leading = re.compile("|".join(f"(?:{p.pattern})" for p in patterns))
        except re.error:
            return cls(rules)
        return cls(rules, leading, after)

    def evaluate(self, identity: Identity, path: str | None, method: str) -> int | None:
        """ADMIT (None), or the index of the rule that refused (NO_RULE: none matched).

        `path` is the normalised path (`core.paths.normalize_path`); None (a path with
        no safe normal form) cannot be judged and is refused, as no rule can be known
        to match it. `method` is the request's method, upper-case as HTTP sends it."""
        rules = self.rules
        if not rules:
            return ADMIT
        if path is None:
            return NO_RULE
        start = 0
        leading = self.leading
        if leading is not None and leading.search(path) is None:
            start = self.after  # no leading rule's paths match: none of them applies
        for index in range(start, len(rules)):
            rule = rules[index]
            if rule.applies(path, method):
                return ADMIT if rule.admits(identity) else index
        return NO_RULE


def compile_policy(
    rules: Sequence[Mapping[str, Any]] | None, *, attributes_claim: str
) -> AccessPolicy:
    """Compile `access` settings (each rule a mapping of SPEC §12's keys; a key that is
    absent or None is not a condition). Raises AccessRuleError naming every problem."""
    problems: list[tuple[Loc, str]] = []
    compiled: list[AccessRule] = []
    attributes_parts = tuple(attributes_claim.split(".")) if attributes_claim else ()
    if rules is not None and (isinstance(rules, str | Mapping) or not isinstance(rules, Iterable)):
        raise AccessRuleError([((), "must be a list of rules")])
    for i, spec in enumerate(rules or ()):
        rule = _compile_rule(spec, (i,), attributes_parts, problems)
        if rule is not None:
            compiled.append(rule)
    if problems:
        raise AccessRuleError(problems)
    return AccessPolicy.with_shortcut(compiled)


def _compile_rule(
    spec: Mapping[str, Any],
    loc: Loc,
    attributes_parts: tuple[str, ...],
    problems: list[tuple[Loc, str]],
) -> AccessRule | None:
    if not isinstance(spec, Mapping):
        problems.append((loc, "must be a mapping"))
        return None
    for key in spec:
        if key not in _RULE_KEYS:
            problems.append(((*loc, str(key)), "unknown key"))
    before = len(problems)
    paths = _items(spec, "paths", loc, problems)
    compiled_paths: list[re.Pattern[str]] = []
    for j, pattern in enumerate(paths):
        try:
            compiled_paths.append(re.compile(pattern))
        except re.error as exc:
            problems.append(((*loc, "paths", j), f"invalid regular expression: {exc}"))
    methods = _items(spec, "methods", loc, problems)
    for j, method in enumerate(methods):
        if method and not _METHOD.fullmatch(method):
            problems.append(((*loc, "methods", j), f"{method!r} is not an HTTP method"))
    groups = _items(spec, "groups", loc, problems)
    users = _items(spec, "users", loc, problems)
    emails: set[str] = set()
    domains: set[str] = set()
    for j, entry in enumerate(_items(spec, "emails", loc, problems)):
        address = entry.lower()
        if address.startswith("@"):
            if len(address) == 1 or "@" in address[1:]:
                problems.append(((*loc, "emails", j), f"{entry!r} is not a domain"))
            else:
                domains.add(address[1:])
        elif "@" not in address.strip("@"):
            problems.append(
                ((*loc, "emails", j), f"{entry!r} is neither an address nor an @domain")
            )
        else:
            emails.add(address)
    claims = _claims(spec.get("claims"), (*loc, "claims"), attributes_parts, problems)
    if len(problems) > before:
        return None
    return AccessRule(
        paths=tuple(compiled_paths),
        methods=frozenset(m.upper() for m in methods),
        groups=frozenset(groups),
        users=frozenset(users),
        emails=frozenset(emails),
        domains=frozenset(domains),
        claims=claims,
    )


def _items(
    spec: Mapping[str, Any], key: str, loc: Loc, problems: list[tuple[Loc, str]]
) -> tuple[str, ...]:
    """A list condition's items. An explicit empty list is refused rather than read as
    "no condition" (a templated `groups: []` must not open a rule to everyone)."""
    value = spec.get(key)
    if value is None:
        return ()
    where = (*loc, key)
    if isinstance(value, str) or not isinstance(value, Iterable):
        problems.append((where, "must be a list"))
        return ()
    items = tuple(value)
    if not items:
        problems.append((where, "empty list: leave the key out for no condition"))
    return _strings(items, where, problems)


def _strings(items: Iterable[Any], where: Loc, problems: list[tuple[Loc, str]]) -> tuple[str, ...]:
    out: list[str] = []
    for j, item in enumerate(items):
        text = _text(item)
        if text is None:
            problems.append(((*where, j), "must be a string"))
        elif not text.strip():
            problems.append(((*where, j), "empty item"))
        else:
            out.append(text)
    return tuple(out)


def _claims(
    value: Any,
    where: Loc,
    attributes_parts: tuple[str, ...],
    problems: list[tuple[Loc, str]],
) -> tuple[ClaimCondition, ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        problems.append((where, "must be a mapping of claim path to accepted values"))
        return ()
    if not value:
        problems.append((where, "empty mapping: leave the key out for no condition"))
    out: list[ClaimCondition] = []
    for path, accepted in value.items():
        key_loc = (*where, str(path))
        parts = tuple(str(path).split("."))
        if not path or any(not p for p in parts):
            problems.append((key_loc, f"{path!r} is not a dotted claim path"))
            continue
        source, walk = _resolve(parts, attributes_parts)
        if source is None:
            known = ", ".join((*_FIELDS, _ATTRIBUTES, ".".join(attributes_parts)))
            problems.append(
                (key_loc, f"{path!r} names no claim the identity keeps (paths start with {known})")
            )
            continue
        if isinstance(accepted, str) or not isinstance(accepted, Iterable):
            problems.append((key_loc, "must be a list of accepted values"))
            continue
        items = tuple(accepted)
        if not items:
            problems.append((key_loc, "empty list: no value would be accepted"))
            continue
        texts = _strings(items, key_loc, problems)
        out.append(ClaimCondition(str(path), source, walk, frozenset(texts)))
    return tuple(out)


def _resolve(
    parts: tuple[str, ...], attributes_parts: tuple[str, ...]
) -> tuple[str | None, tuple[str, ...]]:
    """(source, the parts to walk in it) for a claim path; (None, ()) when the identity
    keeps nothing there."""
    n = len(attributes_parts)
    if n and parts[:n] == attributes_parts and len(parts) > n:
        return _ATTRIBUTES, parts[n:]
    if parts[0] == _ATTRIBUTES and len(parts) > 1:
        return _ATTRIBUTES, parts[1:]
    if len(parts) == 1 and parts[0] in _FIELDS:
        return parts[0], ()
    return None, ()


def _text(value: Any) -> str | None:
    """A scalar as the text rules compare; None for mappings, lists and null."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return None
