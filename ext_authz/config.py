"""The configuration: one typed, validated, frozen settings tree (SPEC §3).

Owns everything between the YAML file and `Settings`: reading the file, `${VAR}` and
`${VAR:-default}` substitution (per string value, so an error can name the key),
`<name>_file` secrets, durations, the context-dependent verifier defaults, every
cross-field rule, and turning pydantic's errors into one line per problem,
`applications[0].oidc.issuer: message`. Anything that can be wrong is wrong here, at
start-up, so the per-request path never meets a bad setting.

Also owns `redacted()`, the effective configuration with every secret replaced, which
is what `ext-authz check-config` prints.

    load_settings(path, environ) -> Settings      raises ConfigError(errors: list[str])
    load_secret(path, environ) -> bytes           only the server secret (hash-password --token)
    parse_settings(mapping, environ) -> Settings  raises ConfigError
    redacted(settings) -> dict                    plain data, secrets "**redacted**"
    parse_store_url(url) -> StoreURL              the store URL's parts, for the store adapter
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from argon2 import Type as Argon2Type
from argon2 import extract_parameters
from argon2.exceptions import InvalidHashError
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ext_authz.core.access import AccessPolicy, AccessRuleError, compile_policy
from ext_authz.core.cookies import cookie_name_for
from ext_authz.core.upstream import additional_header_problem
from ext_authz.crypto import token_hash_salt, token_salt_matches_key
from ext_authz.durations import parse_duration
from ext_authz.errors import ConfigError
from ext_authz.store_url import (
    HOST_NAME as _HOST_NAME,
)
from ext_authz.store_url import (
    REDACTED,
    StoreURL,
    parse_store_url,
    redact_store_url,
)

__all__ = [
    "REDACTED",
    "AccessRuleSettings",
    "Application",
    "AuthentikSettings",
    "BasicReceive",
    "BearerReceive",
    "Directory",
    "DirectoryGroup",
    "DirectoryUser",
    "OIDCEndpoints",
    "OIDCSettings",
    "ReceiveSettings",
    "SendBasic",
    "SendSettings",
    "ServerSettings",
    "Settings",
    "StoreSettings",
    "StoreURL",
    "ThrottleSettings",
    "load_secret",
    "load_settings",
    "outpost_environment",
    "parse_duration",
    "parse_settings",
    "parse_store_url",
    "redact_store_url",
    "redacted",
    "redacted_application",
    "settings_from_environment",
    "validate_application",
]

CALLBACK_PATH = "/outpost.goauthentik.io/callback"
# authentik registers, and strictly matches, this query on a proxy provider's redirect URI.
CALLBACK_QUERY = "X-authentik-auth-callback=true"
MIN_SECRET_BYTES = 32

# hide_input_in_errors: a ValidationError printed by a caller who built a model by hand
# must not carry a secret along in its `input_value=`.
_MODEL_CONFIG = ConfigDict(
    extra="forbid", frozen=True, coerce_numbers_to_str=True, hide_input_in_errors=True
)

Loc = tuple[str | int, ...]

# ---------------------------------------------------------------------------------------
# Errors raised from validators. A model-level validator can only raise one error, and
# pydantic pins it to the model's own location; the "ext_authz" error type carries a
# list of (relative location, message) so the formatter can name the exact key, and
# several cross-field problems are reported in one run.


def _problems(*problems: tuple[Loc, str]) -> PydanticCustomError:
    text = "; ".join(msg for _, msg in problems)
    return PydanticCustomError("ext_authz", "{text}", {"text": text, "problems": list(problems)})


def _duration(value: object) -> float:
    return parse_duration(value)


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds == 0:
        raise ValueError("must be greater than 0")
    return seconds


# A number of seconds, or "300ms", "5s", "10m", "24h" (see durations.py).
Duration = Annotated[float, BeforeValidator(_duration)]
PositiveDuration = Annotated[float, BeforeValidator(_positive_duration)]


def _empty_sections(data: Any, *keys: str) -> Any:
    """A YAML section with every line commented out (`server:`) is None: treat it as {}."""
    if not isinstance(data, Mapping) or not any(k in data and data[k] is None for k in keys):
        return data
    return {k: ({} if k in keys and v is None else v) for k, v in data.items()}


def _secret_from_file(data: Any, name: str) -> Any:
    """Replace `<name>_file: PATH` by `<name>: <the file's content>`."""
    key = f"{name}_file"
    if not isinstance(data, Mapping) or key not in data:
        return data
    values = dict(data)
    path = values.pop(key)
    if values.get(name) is not None:
        raise _problems(((key,), f"give either {name} or {key}, not both"))
    if not isinstance(path, str) or not path:
        raise _problems(((key,), "must be the path of a file holding the secret"))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise _problems(((key,), f"cannot read {path}: {exc.strerror or exc}")) from None
    except UnicodeDecodeError:
        raise _problems(((key,), f"{path} is not UTF-8 text")) from None
    values[name] = text.rstrip("\r\n")
    return values


# ---------------------------------------------------------------------------------------
# Addresses and URLs

_IPV6 = re.compile(r"\[[0-9a-f:.]+\]", re.IGNORECASE)


def _check_listen(value: str) -> str:
    if value.startswith(("unix:", "unix-abstract:")):
        if value.partition(":")[2]:
            return value
        raise ValueError("a unix: address needs a path")
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if host and not (_HOST_NAME.fullmatch(host) or _IPV6.fullmatch(host)):
        raise ValueError(f"invalid host in {value!r}")
    return value


def _check_http_url(value: str, *, allow_path: bool) -> str:
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme not in {"http", "https"}:
        raise ValueError("must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("needs a host name")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain user:password@")
    if port == 0:
        raise ValueError("has an invalid port")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError("must not have a query or fragment")
    if not allow_path and parts.path not in {"", "/"}:
        raise ValueError("must be scheme://host[:port], without a path")
    return value


# ---------------------------------------------------------------------------------------
# The settings tree


class ServerSettings(BaseModel):
    """How the process listens, drains and logs."""

    model_config = _MODEL_CONFIG

    listen: str = "127.0.0.1:9191"
    http_listen: str = "127.0.0.1:9300"  # "" turns the HTTP port off
    forward_auth_listen: str = ""  # HTTP/1.1 forward auth (SPEC §10); "" = off
    # Peers whose X-Forwarded-* / X-Original-* headers are believed (SPEC §10).
    forward_auth_trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    workers: int = Field(default=1, ge=1)
    grace_period: PositiveDuration = 10.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _check_listen(value)

    @field_validator("http_listen", "forward_auth_listen")
    @classmethod
    def _http_listen(cls, value: str) -> str:
        if value == "":
            return value
        if value.startswith(("unix:", "unix-abstract:")):
            raise ValueError("must be HOST:PORT (the HTTP ports do not serve unix sockets)")
        return _check_listen(value)

    @field_validator("forward_auth_trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problems: list[tuple[Loc, str]] = []
        for i, text in enumerate(value):
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                problems.append(((i,), f"{text!r} is not an IP address or CIDR network"))
        if problems:
            raise _problems(*problems)
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServerSettings:
        seen: dict[str, str] = {}
        for key in ("listen", "http_listen", "forward_auth_listen"):
            address = getattr(self, key)
            if not address:
                continue
            port = address.rpartition(":")[2]
            if port != "0" and port in seen:
                raise _problems(((key,), f"port {port} is also server.{seen[port]}"))
            seen.setdefault(port, key)
        return self

    @cached_property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """forward_auth_trusted_proxies, parsed once."""
        proxies = self.forward_auth_trusted_proxies
        return tuple(ipaddress.ip_network(t, strict=False) for t in proxies)


class StoreSettings(BaseModel):
    """Where sessions, credential caches and login states live."""

    model_config = _MODEL_CONFIG

    url: str = "memory://"
    key_prefix: str = "ext-authz:"
    timeout: PositiveDuration = 0.5
    local_cache_ttl: Duration = 2.0  # 0 turns the in-process cache off

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parse_store_url(value)
        return value

    @property
    def parsed_url(self) -> StoreURL:
        return parse_store_url(self.url)


def _check_argon2id(hashes: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
    bad: list[tuple[Loc, str]] = []
    for i, item in enumerate(hashes):
        text = item.get_secret_value()
        try:
            ok = text.startswith("$argon2id$") and extract_parameters(text).type is Argon2Type.ID
        except InvalidHashError:
            ok = False
        if not ok:
            # Never echo the value: it may be a plain password pasted by mistake.
            bad.append(((i,), "not an argon2id hash (make one with `ext-authz hash-password`)"))
    if bad:
        raise _problems(*bad)
    return hashes


class DirectoryGroup(BaseModel):
    model_config = _MODEL_CONFIG

    attributes: dict[str, Any] = Field(default_factory=dict)


class DirectoryUser(BaseModel):
    """A local identity: app passwords and static tokens are stored as argon2id hashes."""

    model_config = _MODEL_CONFIG

    username: str = Field(min_length=1)
    email: str = ""
    name: str = ""
    groups: tuple[str, ...] = ()
    attributes: dict[str, Any] = Field(default_factory=dict)
    app_passwords: tuple[SecretStr, ...] = ()
    tokens: tuple[SecretStr, ...] = ()

    @field_validator("app_passwords", "tokens")
    @classmethod
    def _hashes(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        return _check_argon2id(value)


class Directory(BaseModel):
    """Local users and groups, for applications (or verifiers) that need no IdP."""

    model_config = _MODEL_CONFIG

    groups: dict[str, DirectoryGroup] = Field(default_factory=dict)
    users: tuple[DirectoryUser, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        return _empty_sections(data, "groups")

    @model_validator(mode="after")
    def _references(self) -> Directory:
        problems: list[tuple[Loc, str]] = []
        seen: dict[str, int] = {}
        for i, user in enumerate(self.users):
            if user.username in seen:
                problems.append(
                    (
                        ("users", i, "username"),
                        f"duplicate username {user.username!r} (also users[{seen[user.username]}])",
                    )
                )
            seen.setdefault(user.username, i)
            for j, group in enumerate(user.groups):
                if group not in self.groups:
                    problems.append(
                        (("users", i, "groups", j), f"group {group!r} is not defined in groups")
                    )
        if problems:
            raise _problems(*problems)
        return self


class OIDCEndpoints(BaseModel):
    """The parts of a discovery document we use, given instead of discovered; the keys
    are the discovery document's own."""

    model_config = _MODEL_CONFIG

    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str = ""
    userinfo_endpoint: str = ""
    end_session_endpoint: str = ""
    introspection_endpoint: str = ""
    id_token_signing_alg_values_supported: tuple[str, ...] = ()

    @field_validator(
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "userinfo_endpoint",
        "end_session_endpoint",
        "introspection_endpoint",
    )
    @classmethod
    def _url(cls, value: str) -> str:
        return value and _check_http_url(value, allow_path=True)


class OIDCSettings(BaseModel):
    """The application's OIDC client at the IdP."""

    model_config = _MODEL_CONFIG

    issuer: str
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    client_auth: Literal["client_secret_post", "client_secret_basic"] = "client_secret_post"
    scopes: tuple[str, ...] = ("openid", "profile", "email", "ak_proxy")
    attributes_claim: str = "ak_proxy.user_attributes"
    timeout: PositiveDuration = 3.0
    # The IdP's endpoints as given (SPEC §11: an authentik provider's
    # oidc_configuration): no discovery request is made when they are.
    endpoints: OIDCEndpoints | None = None
    # The Host header of back-channel requests (token, userinfo, introspection, JWKS),
    # when the IdP is reached under another name than browsers use (host_browser).
    backchannel_host: str = ""

    @model_validator(mode="before")
    @classmethod
    def _files(cls, data: Any) -> Any:
        return _secret_from_file(data, "client_secret")

    @field_validator("backchannel_host")
    @classmethod
    def _backchannel_host(cls, value: str) -> str:
        name, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
        if value and not (_HOST_NAME.fullmatch(name) and (not port or port.isdigit())):
            raise ValueError(f"{value!r} is not host[:port]")
        return value

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        # Kept exactly as given: it must equal the id_token's `iss`, trailing slash and all.
        return _check_http_url(value, allow_path=True)

    @field_validator("client_secret")
    @classmethod
    def _client_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("is empty (leave it out for a public client)")
        return value

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "openid" not in value:
            raise ValueError("must include openid (no id_token otherwise)")
        return value


class BasicReceive(BaseModel):
    model_config = _MODEL_CONFIG

    enabled: bool = True
    # The default with oidc; Application turns it into "directory" when there is no oidc.
    verify: Literal["authentik", "password", "directory"] = "authentik"


class BearerReceive(BaseModel):
    model_config = _MODEL_CONFIG

    enabled: bool = True
    # The default with oidc; Application turns it into "directory" when there is no oidc.
    verify: Literal["auto", "jwt", "introspection", "directory"] = "auto"


class ThrottleSettings(BaseModel):
    """Guessing limits (SPEC §5 "Cost and abuse"): rejected credentials per client
    address, and per (client, username), in a fixed `window`; 0 failures turns it off.
    New login states per client are limited to LOGIN_STATES_PER_FAILURE x `failures`
    per window (a sign-in starts far more often than a password fails)."""

    model_config = _MODEL_CONFIG

    failures: int = Field(default=10, ge=0)
    window: PositiveDuration = 60.0

    @property
    def enabled(self) -> bool:
        return self.failures > 0


class ReceiveSettings(BaseModel):
    """Receiving header authentication (SPEC §5)."""

    model_config = _MODEL_CONFIG

    basic: BasicReceive = Field(default_factory=BasicReceive)
    bearer: BearerReceive = Field(default_factory=BearerReceive)
    audiences: tuple[str, ...] = ()
    cache_ttl: Duration = 60.0
    negative_cache_ttl: Duration = 5.0
    create_session: bool = True
    throttle: ThrottleSettings = Field(default_factory=ThrottleSettings)
    # A session made from header auth lasts at most this long (and never past the
    # token's exp, nor session_lifetime): a credential is checked again at least hourly.
    header_session_lifetime: PositiveDuration = 3600.0

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        return _empty_sections(data, "basic", "bearer", "throttle")


class SendBasic(BaseModel):
    model_config = _MODEL_CONFIG

    enabled: bool = False
    username_attribute: str = ""
    password_attribute: str = ""


class SendSettings(BaseModel):
    """Sending identity upstream (SPEC §7)."""

    model_config = _MODEL_CONFIG

    basic: SendBasic = Field(default_factory=SendBasic)
    identity_headers: bool = True
    # The names attributes.additionalHeaders may set; stored lower-case. Client copies
    # of them (any case, `_` for `-`) are always removed.
    additional_headers: tuple[str, ...] = ()
    strip_session_cookie: bool = True

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        return _empty_sections(data, "basic")

    @field_validator("additional_headers")
    @classmethod
    def _additional_headers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [
            ((j,), f"{name!r} {problem}")
            for j, name in enumerate(value)
            if (problem := additional_header_problem(name)) is not None
        ]
        if bad:
            raise _problems(*bad)
        return tuple(dict.fromkeys(name.lower() for name in value))

    @cached_property
    def declared_headers(self) -> frozenset[str]:
        """additional_headers as a set, for the per-request lookups."""
        return frozenset(self.additional_headers)


class AccessRuleSettings(BaseModel):
    """One `applications[].access` rule (SPEC §12); compiled by `core.access`.

    A key left out is no condition; an explicitly empty list is a config error."""

    model_config = _MODEL_CONFIG

    paths: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    claims: dict[str, tuple[str, ...]] = Field(default_factory=dict)

    @field_validator("paths", "methods", "groups", "users", "emails", "claims")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        # Only given values are validated: a templated `groups: []` must not read as
        # "no condition" and open the rule to everyone.
        if not value:
            raise ValueError("empty: leave the key out for no condition")
        return value

    def spec(self) -> dict[str, Any]:
        """The rule's given conditions as plain data, for `core.access.compile_policy`."""
        return {k: v for k, v in self.model_dump(mode="python").items() if v}


_APP_NAME = re.compile(r"[a-z0-9-]+")
_NEEDS_OIDC = {"authentik", "password", "jwt", "introspection", "auto"}


def _directory_by_default(section: Any, model: type[BaseModel]) -> Any:
    """Give a receive.basic / receive.bearer section verify=directory unless it names one."""
    if section is None:
        return {"verify": "directory"}
    if isinstance(section, Mapping):
        return section if "verify" in section else {**section, "verify": "directory"}
    if isinstance(section, model) and "verify" not in section.model_fields_set:
        return section.model_copy(update={"verify": "directory"})
    return section


class Application(BaseModel):
    """One protected site, matched by host; see SPEC §3 for each key."""

    model_config = _MODEL_CONFIG

    name: str
    external_host: str
    # authentik's proxy-provider modes (SPEC §11): `proxy` and `forward_single` match
    # the application by host; `forward_domain` matches every host inside cookie_domain
    # and judges skip paths against the whole URL, as authentik's outpost does.
    mode: Literal["proxy", "forward_single", "forward_domain"] = "forward_single"
    hosts: tuple[str, ...] = ()
    cookie_domain: str = ""
    oidc: OIDCSettings | None = None
    skip_path_regex: tuple[str, ...] = ()
    unauthenticated: Literal["redirect", "deny", "auto"] = "redirect"
    session_lifetime: PositiveDuration = 86400.0
    intercept_header_auth: bool = True
    receive: ReceiveSettings = Field(default_factory=ReceiveSettings)
    send: SendSettings = Field(default_factory=SendSettings)
    access: tuple[AccessRuleSettings, ...] = ()

    # Derived once, so the request path never compiles or parses.

    @model_validator(mode="before")
    @classmethod
    def _context_defaults(cls, data: Any) -> Any:
        """Without oidc, both verifiers default to `directory` (SPEC §3)."""
        data = _empty_sections(data, "receive", "send")
        if not isinstance(data, Mapping) or data.get("oidc") is not None:
            return data
        values = dict(data)
        receive = values.get("receive")
        if receive is None:
            values["receive"] = {
                "basic": {"verify": "directory"},
                "bearer": {"verify": "directory"},
            }
        elif isinstance(receive, Mapping):
            values["receive"] = {
                **receive,
                "basic": _directory_by_default(receive.get("basic"), BasicReceive),
                "bearer": _directory_by_default(receive.get("bearer"), BearerReceive),
            }
        elif isinstance(receive, ReceiveSettings):
            values["receive"] = receive.model_copy(
                update={
                    "basic": _directory_by_default(receive.basic, BasicReceive),
                    "bearer": _directory_by_default(receive.bearer, BearerReceive),
                }
            )
        return values

    @field_validator("access", mode="before")
    @classmethod
    def _access_absent(cls, value: Any) -> Any:
        """`access:` with every rule commented out is None: no rules (SPEC §12)."""
        return () if value is None else value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _APP_NAME.fullmatch(value):
            raise ValueError("must match [a-z0-9-]+ (lower-case letters, digits and -)")
        return value

    @field_validator("external_host")
    @classmethod
    def _external_host(cls, value: str) -> str:
        return _check_http_url(value, allow_path=False)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [
            ((j,), f"{host!r} is not a bare host name (no scheme, port or path)")
            for j, host in enumerate(value)
            if not (_HOST_NAME.fullmatch(host) or _IPV6.fullmatch(host))
        ]
        if bad:
            raise _problems(*bad)
        return value

    @field_validator("cookie_domain")
    @classmethod
    def _cookie_domain(cls, value: str) -> str:
        if value and not _HOST_NAME.fullmatch(value.removeprefix(".")):
            raise ValueError(f"{value!r} is not a domain name")
        return value

    @field_validator("skip_path_regex")
    @classmethod
    def _skip_path_regex(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad: list[tuple[Loc, str]] = []
        for j, pattern in enumerate(value):
            try:
                re.compile(pattern)
            except re.error as exc:
                bad.append(((j,), f"invalid regular expression: {exc}"))
        if bad:
            raise _problems(*bad)
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Application:
        problems: list[tuple[Loc, str]] = []
        basic, bearer = self.receive.basic, self.receive.bearer
        if self.oidc is None:
            for section, receiver in (("basic", basic), ("bearer", bearer)):
                if receiver.enabled and receiver.verify in _NEEDS_OIDC:
                    problems.append(
                        (
                            ("receive", section, "verify"),
                            f"{receiver.verify!r} needs oidc, and this application has none "
                            "(use verify: directory, or add oidc)",
                        )
                    )
        elif self.oidc.client_secret is None:
            if basic.enabled and basic.verify == "password":
                problems.append(
                    (
                        ("oidc", "client_secret"),
                        "required because receive.basic.verify is password "
                        "(the password grant authenticates the client)",
                    )
                )
            if bearer.enabled and bearer.verify in {"introspection", "auto"}:
                why = (
                    ""
                    if bearer.verify == "introspection"
                    else ", which auto uses for opaque tokens"
                )
                problems.append(
                    (
                        ("oidc", "client_secret"),
                        f"required because receive.bearer.verify is {bearer.verify} "
                        f"(the introspection endpoint authenticates the client{why})",
                    )
                )
        if self.mode == "forward_domain" and not self.cookie_domain:
            problems.append(
                (("cookie_domain",), "required in mode forward_domain (the domain it serves)")
            )
        if self.cookie_domain:
            host = _host_of(self.external_host)
            domain = self.cookie_domain.removeprefix(".").lower()
            if host != domain and not host.endswith("." + domain):
                problems.append(
                    (
                        ("cookie_domain",),
                        f"{self.cookie_domain!r} does not contain {host} "
                        "(browsers would refuse the cookie)",
                    )
                )
        problems += self._access_problems()
        if problems:
            raise _problems(*problems)
        return self

    def _access_problems(self) -> list[tuple[Loc, str]]:
        try:
            self._compile_access()
        except AccessRuleError as exc:
            return [(("access", *loc), msg) for loc, msg in exc.problems]
        return []

    def _compile_access(self) -> AccessPolicy:
        attributes_claim = (
            self.oidc.attributes_claim
            if self.oidc is not None
            else OIDCSettings.model_fields["attributes_claim"].default
        )
        return compile_policy(
            [rule.spec() for rule in self.access], attributes_claim=attributes_claim
        )

    # Derived values, computed once per (immutable) application: they are read on
    # every Check, where a pydantic private attribute would cost microseconds each.

    @cached_property
    def skip_paths(self) -> tuple[re.Pattern[str], ...]:
        """skip_path_regex, compiled; `.search()` them in the path without its query."""
        return tuple(re.compile(p) for p in self.skip_path_regex)

    @cached_property
    def access_policy(self) -> AccessPolicy:
        """`access`, compiled (SPEC §12): judged per request after authentication."""
        return self._compile_access()

    @cached_property
    def host_name(self) -> str:
        """external_host's host, lower-cased (no port, IPv6 without brackets)."""
        return (urlsplit(self.external_host).hostname or "").lower()

    @cached_property
    def port(self) -> int:
        """external_host's port, or 443/80 by scheme."""
        parts = urlsplit(self.external_host)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @cached_property
    def secure(self) -> bool:
        """external_host is https: the cookie gets the Secure flag."""
        return self.external_host.lower().startswith("https:")

    @cached_property
    def all_host_names(self) -> frozenset[str]:
        """Every request host name (lower-case, no port) this application answers."""
        extra = (h.lower().removeprefix("[").removesuffix("]") for h in self.hosts)
        return frozenset({self.host_name, *extra})

    @cached_property
    def redirect_uri(self) -> str:
        """authentik's redirect URI of a proxy provider (SPEC §6), byte for byte: sent in
        the authorize request and again at the code exchange."""
        return self.external_host.rstrip("/") + CALLBACK_PATH + "?" + CALLBACK_QUERY

    @cached_property
    def cookie_name(self) -> str:
        """authentik's session cookie name: authentik_proxy_ + sha256(client_id)[:8]."""
        return cookie_name_for(self.oidc.client_id if self.oidc is not None else self.name)

    @cached_property
    def provider_name(self) -> str:
        """X-authentik-meta-provider: the client_id, or `directory` without oidc."""
        return self.oidc.client_id if self.oidc is not None else "directory"


def _host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _split_provider_settings(data: Any) -> Any:
    """With `authentik`, YAML applications that give no external_host are the local
    settings of the provider of that name (SPEC §11), kept apart from the applications."""
    if isinstance(data, Mapping) and "provider_settings" in data:
        raise _problems((("provider_settings",), "is not a config key"))
    if not isinstance(data, Mapping) or not data.get("authentik"):
        return data
    apps = data.get("applications") or []
    if not isinstance(apps, list | tuple):
        return data
    own, local, errors = [], {}, []
    for i, entry in enumerate(apps):
        if isinstance(entry, Mapping) and "external_host" not in entry and entry.get("name"):
            local[str(entry["name"])] = dict(entry)
            try:
                Application.model_validate({**entry, "external_host": _PROVIDER_STAND_IN})
            except ValidationError as exc:
                errors += [f"applications[{i}].{line}" for line in _error_lines(exc)]
        else:
            own.append(entry)
    if errors:
        # The file's own key paths (the entries are validated apart from the others).
        raise ConfigError(errors)
    return {**data, "applications": own, "provider_settings": local}


class AuthentikSettings(BaseModel):
    """authentik's API, when this service is one of its outposts (SPEC §11)."""

    model_config = _MODEL_CONFIG

    host: str
    host_browser: str = ""
    token: SecretStr
    insecure: bool = False
    refresh_interval: float | None = None  # None: the outpost's refresh_interval_s

    @model_validator(mode="before")
    @classmethod
    def _files(cls, data: Any) -> Any:
        return _secret_from_file(data, "token")

    @field_validator("host", "host_browser")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value:
            return value
        _check_http_url(value, allow_path=True)
        return value if value.endswith("/") else value + "/"

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty (the outpost's token, from authentik's deployment info)")
        return value

    @field_validator("refresh_interval", mode="before")
    @classmethod
    def _interval(cls, value: object) -> float | None:
        if value is None or value == "":
            return None
        seconds = _duration(value)
        if seconds < 30:
            raise ValueError("must be at least 30s (or empty: the outpost's own interval)")
        return seconds


# An outpost's YAML entry for a provider's slug is validated with this stand-in for
# what the provider gives (external_host), so its own keys are checked at load.
_PROVIDER_STAND_IN = "https://provider.invalid"


class Settings(BaseModel):
    """The whole configuration. Only `secret` and `applications` are required (with
    `authentik`, applications may be none, and entries named after a provider's slug
    that give no external_host are that provider's local settings)."""

    model_config = _MODEL_CONFIG

    server: ServerSettings = Field(default_factory=ServerSettings)
    secret: SecretStr
    store: StoreSettings = Field(default_factory=StoreSettings)
    directory: Directory | None = None
    authentik: AuthentikSettings | None = None
    applications: tuple[Application, ...] = ()
    # With `authentik`: the YAML entries without external_host, by name (a provider's
    # slug): what authentik has no field for, merged into that provider's settings.
    # Derived, never a key of the file (exclude=True: not in the reference table nor in
    # check-config's output, which shows the YAML entries under applications instead).
    provider_settings: Mapping[str, Mapping[str, Any]] = Field(
        default_factory=dict, exclude=True
    )

    @model_validator(mode="before")
    @classmethod
    def _files(cls, data: Any) -> Any:
        data = _secret_from_file(_empty_sections(data, "server", "store"), "secret")
        return _split_provider_settings(data)

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        size = len(value.get_secret_value().encode("utf-8"))
        if size < MIN_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes long (got {size})")
        return value

    @model_validator(mode="after")
    def _some_application(self) -> Settings:
        if not self.applications and self.authentik is None:
            raise _problems(
                (("applications",), "at least one application is required (or authentik)")
            )
        return self

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        problems: list[tuple[Loc, str]] = []
        if self.server.workers > 1 and self.store.url.lower().startswith("memory:"):
            problems.append(
                (
                    ("server", "workers"),
                    "workers > 1 needs a shared store: memory:// lives in one process "
                    "(set store.url to a Redis URL)",
                )
            )
        names: dict[str, int] = {}
        routes: dict[tuple[str, int], int] = {}
        for i, app in enumerate(self.applications):
            if app.name in names:
                problems.append(
                    (
                        ("applications", i, "name"),
                        f"duplicate application name {app.name!r} "
                        f"(also applications[{names[app.name]}])",
                    )
                )
            names.setdefault(app.name, i)
            for host in sorted(app.all_host_names):
                other = routes.setdefault((host, app.port), i)
                if other != i:
                    key = "external_host" if host == app.host_name else "hosts"
                    problems.append(
                        (
                            ("applications", i, key),
                            f"host {host} port {app.port} is already served "
                            f"by applications[{other}]",
                        )
                    )
            if self.directory is None:
                for section in ("basic", "bearer"):
                    receiver = getattr(app.receive, section)
                    if receiver.enabled and receiver.verify == "directory":
                        problems.append(
                            (
                                ("applications", i, "receive", section, "verify"),
                                "'directory' needs a top-level directory section, and there is "
                                "none (add one, or disable this receiver)",
                            )
                        )
        if self.directory is not None:
            problems += _token_problems(self.directory, self.secret.get_secret_value().encode())
        if problems:
            raise _problems(*problems)
        return self


def _token_problems(directory: Directory, secret: bytes) -> list[tuple[Loc, str]]:
    """Static token hashes must carry their lookup key under this `secret` (crypto.py),
    and no token may be configured twice: each is found by its salt alone."""
    problems: list[tuple[Loc, str]] = []
    seen: dict[bytes, tuple[int, int]] = {}
    for i, user in enumerate(directory.users):
        for j, item in enumerate(user.tokens):
            loc: Loc = ("directory", "users", i, "tokens", j)
            salt = token_hash_salt(item.get_secret_value())
            if salt is None or not token_salt_matches_key(secret, salt):
                problems.append(
                    (
                        loc,
                        "not a token hash made for this secret (static tokens are looked up "
                        "by a keyed digest: make the hash with `ext-authz hash-password "
                        "--token -c CONFIG`, again after changing `secret`)",
                    )
                )
            elif salt in seen:
                a, b = seen[salt]
                problems.append((loc, f"the same token as directory.users[{a}].tokens[{b}]"))
            else:
                seen[salt] = (i, j)
    return problems


# ---------------------------------------------------------------------------------------
# Environment substitution, done per string value so the error names the key.

_REFERENCE = re.compile(
    r"\$\$\{"  # $${ : a literal ${
    r"|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"
    r"|\$\{"  # anything else that opens ${ is a mistake
)


def _substitute_text(text: str, environ: Mapping[str, str], loc: Loc, errors: list[str]) -> str:
    def replace(match: re.Match[str]) -> str:
        whole, name, default = match.group(0), match.group("name"), match.group("default")
        if whole == "$${":
            return "${"
        if name is None:
            errors.append(
                f"{format_loc(loc)}: invalid ${{...}} reference (write $${{ for a literal ${{)"
            )
            return whole
        value = environ.get(name)
        if default is not None and not value:
            return default
        if value is None:
            errors.append(f"{format_loc(loc)}: environment variable {name} is not set")
            return ""
        return value

    return _REFERENCE.sub(replace, text)


def substitute_env(data: Any, environ: Mapping[str, str], loc: Loc, errors: list[str]) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string value (not in keys)."""
    if isinstance(data, str):
        return _substitute_text(data, environ, loc, errors)
    if isinstance(data, Mapping):
        return {k: substitute_env(v, environ, (*loc, k), errors) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [substitute_env(v, environ, (*loc, i), errors) for i, v in enumerate(data)]
    return data


# ---------------------------------------------------------------------------------------
# Errors: one line per problem, `applications[0].oidc.issuer: message`.


def format_loc(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


_PLAIN_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
}


def _error_lines(exc: ValidationError) -> list[str]:
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(error["loc"])
        ctx = error.get("ctx") or {}
        if error["type"] == "ext_authz" and "problems" in ctx:
            for sub, msg in ctx["problems"]:
                lines.append(f"{format_loc((*loc, *sub))}: {msg}")
            continue
        msg = _PLAIN_MESSAGES.get(error["type"], error["msg"])
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        lines.append(f"{format_loc(loc)}: {msg}")
    return list(dict.fromkeys(lines))


# ---------------------------------------------------------------------------------------
# Loading


# The environment-only start of an outpost (SPEC §11): variable -> (key path, default).
OUTPOST_ENVIRONMENT = {
    "AUTHENTIK_HOST": ("authentik.host", None),
    "AUTHENTIK_TOKEN": ("authentik.token", None),
    "AUTHENTIK_HOST_BROWSER": ("authentik.host_browser", ""),
    "AUTHENTIK_INSECURE": ("authentik.insecure", "false"),
    "EXT_AUTHZ_SECRET": ("secret", None),
    "EXT_AUTHZ_STORE_URL": ("store.url", "memory://"),
    "EXT_AUTHZ_LISTEN": ("server.listen", None),
    "EXT_AUTHZ_HTTP_LISTEN": ("server.http_listen", None),
    "EXT_AUTHZ_FORWARD_AUTH_LISTEN": ("server.forward_auth_listen", None),
}
_SECRET_CONTEXT = b"ext-authz secret from the outpost token"


def outpost_environment(environ: Mapping[str, str]) -> bool:
    """Whether `serve` with no -c may start (AUTHENTIK_HOST and AUTHENTIK_TOKEN set)."""
    return bool(environ.get("AUTHENTIK_HOST") and environ.get("AUTHENTIK_TOKEN"))


def settings_from_environment(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of `ext-authz serve` with no config file: an authentik outpost
    named by AUTHENTIK_HOST and AUTHENTIK_TOKEN, the rest from EXT_AUTHZ_* or their
    defaults (SPEC §11). Errors name the variable."""
    env = os.environ if environ is None else environ
    missing = [name for name in ("AUTHENTIK_HOST", "AUTHENTIK_TOKEN") if not env.get(name)]
    if missing:
        raise ConfigError([f"{name}: required without a config file (-c)" for name in missing])
    data: dict[str, Any] = {}
    for name, (path, default) in OUTPOST_ENVIRONMENT.items():
        text = env.get(name, "") or default
        if text is None:
            continue
        section, _, key = path.rpartition(".")
        target = data.setdefault(section, {}) if section else data
        if name == "AUTHENTIK_INSECURE":
            target[key] = text.strip().lower() in ("1", "true", "yes", "on")
        else:
            target[key] = text
    if "secret" not in data:
        # The same on every replica that shares the token, so they open each other's
        # sessions; never the token itself.
        token = env["AUTHENTIK_TOKEN"].encode()
        data["secret"] = hmac.new(token, _SECRET_CONTEXT, hashlib.sha256).hexdigest()
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        by_path = {path: name for name, (path, _) in OUTPOST_ENVIRONMENT.items()}
        lines = []
        for line in _error_lines(exc):
            loc, _, message = line.partition(": ")
            lines.append(f"{by_path.get(loc, loc)}: {message}")
        raise ConfigError(lines) from None


def validate_application(data: Mapping[str, Any], where: str) -> Application:
    """One application's settings from another source than the file (SPEC §11); raise
    ConfigError with one line per problem, each under `where` (e.g. the provider)."""
    try:
        return Application.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([f"{where}.{line}" for line in _error_lines(exc)]) from None


def parse_settings(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Validate already-parsed YAML; raise ConfigError with one line per problem."""
    if not isinstance(data, Mapping):
        raise ConfigError([f"(top level): expected a mapping, got {type(data).__name__}"])
    errors: list[str] = []
    data = substitute_env(data, os.environ if environ is None else environ, (), errors)
    if errors:
        # Validating half-substituted values would only add confusing follow-on errors.
        raise ConfigError(errors)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_error_lines(exc)) from None


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            key = loader.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_where(exc: yaml.MarkedYAMLError) -> str:
    """Position, problem and context of a YAML error; PyYAML's phrases quote no content."""
    text = ""
    if exc.problem_mark is not None:
        text += f" at line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}"
    if exc.problem:
        text += f": {exc.problem}"
    if exc.context:
        text += f" ({exc.context}"
        if exc.context_mark is not None:
            mark = exc.context_mark
            text += f" started at line {mark.line + 1}, column {mark.column + 1}"
        text += ")"
    return text


def load_settings(path: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, substitute and validate the YAML file at `path`; raise ConfigError."""
    return parse_settings(_read_yaml(path), environ)


def load_secret(path: str | Path, environ: Mapping[str, str] | None = None) -> bytes:
    """Only the server `secret` (or `secret_file`) of the YAML file at `path`, checked
    like `load_settings` checks it; raise ConfigError. For `hash-password --token`,
    which must work while the rest of the file is not valid yet (an old token hash)."""
    data = _read_yaml(path)
    errors: list[str] = []
    env = os.environ if environ is None else environ
    part = {
        key: substitute_env(data[key], env, (key,), errors)
        for key in ("secret", "secret_file")
        if key in data
    }
    if errors:
        raise ConfigError(errors)
    try:
        part = _secret_from_file(part, "secret")
    except PydanticCustomError as exc:
        context = exc.context or {}
        raise ConfigError(
            [f"{format_loc(loc)}: {msg}" for loc, msg in context.get("problems", [])]
        ) from None
    secret = part.get("secret")
    if not isinstance(secret, str):
        raise ConfigError(["secret: required key is missing"])
    size = len(secret.encode("utf-8"))
    if size < MIN_SECRET_BYTES:
        raise ConfigError([f"secret: must be at least {MIN_SECRET_BYTES} bytes long (got {size})"])
    return secret.encode("utf-8")


def _read_yaml(path: str | Path) -> Mapping[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        # Only the position and the problem: the offending line may hold a secret.
        raise ConfigError([f"{path}: YAML syntax error{_yaml_where(exc)}"]) from None
    except yaml.YAMLError:
        raise ConfigError([f"{path}: YAML syntax error"]) from None
    except (ValueError, OverflowError, RecursionError):
        # PyYAML's constructors: a number of more than 4300 digits, a date out of
        # range, nesting too deep. The value itself is not repeated (it may be secret).
        raise ConfigError([f"{path}: a value cannot be read (too large or too deep)"]) from None
    if data is None:
        raise ConfigError([f"{path}: the file is empty; expected a mapping"])
    if not isinstance(data, Mapping):
        raise ConfigError(
            [f"{path}: expected a mapping at the top level, got {type(data).__name__}"]
        )
    return data


# ---------------------------------------------------------------------------------------
# The effective configuration, safe to print.

# Attribute keys whose values are treated as secrets in printed output (the directory's
# attributes may hold upstream passwords for send.basic).
_SENSITIVE_ATTRIBUTE = re.compile(r"pass|pw|secret|token|key|credential", re.IGNORECASE)


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, every secret replaced by **redacted**."""
    sensitive = {
        app.send.basic.password_attribute
        for app in settings.applications
        if app.send.basic.password_attribute
    }
    data = settings.model_dump(mode="python")
    data["store"]["url"] = redact_store_url(settings.store.url)
    result = _scrub(data, sensitive, in_attributes=False)
    assert isinstance(result, dict)
    return result


def redacted_application(app: Application) -> dict[str, Any]:
    """One application's effective settings as plain data, secrets redacted (an
    outpost's check-config prints the applications authentik's providers become)."""
    sensitive = {app.send.basic.password_attribute} - {""}
    result = _scrub(app.model_dump(mode="python"), sensitive, in_attributes=False)
    assert isinstance(result, dict)
    return result


def _scrub(value: Any, sensitive: set[str], *, in_attributes: bool) -> Any:
    if isinstance(value, SecretStr):
        return REDACTED
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if (
                in_attributes
                and isinstance(key, str)
                and (key in sensitive or _SENSITIVE_ATTRIBUTE.search(key))
            ):
                out[key] = REDACTED
            else:
                out[key] = _scrub(
                    item, sensitive, in_attributes=in_attributes or key == "attributes"
                )
        return out
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_scrub(item, sensitive, in_attributes=in_attributes) for item in value]
    return value
