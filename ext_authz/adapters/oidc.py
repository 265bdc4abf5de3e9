"""The OIDC client of one application: discovery, tokens, verification (SPEC §5, §6).

It owns every HTTP call to the IdP and turns its answers into values:

- `verify_app_password`, `verify_password_grant`, `verify_bearer` return a
  `VerifyOutcome` and never raise: a credential the IdP refuses is `Rejected`, an
  IdP that cannot answer (timeout, refused, 5xx, invalid JSON) is `Unavailable`.
- `exchange_code`, `verify_id_token`, `userinfo` (the browser sign-in) raise
  `IdPUnavailable` on faults and `TokenError` (a ValueError) when the IdP or the
  token says no.

One deadline per verification (SPEC §5 "IdP unreachable"): every IdP call one
`verify_*` makes (discovery, JWKS, token, userinfo, introspection) shares
`oidc.timeout`, counted from the call; when it runs out the outcome is `Unavailable`
(a 503 with Retry-After of ours), never a late answer after Envoy's own timeout. The
browser sign-in wraps its code exchange the same way (`ext_authz.signin`).

Nothing is fetched in the constructor: discovery happens on first use and is cached
once good, so a service whose IdP is down still starts; after a failed discovery the
next attempt waits `DISCOVERY_RETRY` seconds.

Signatures: asymmetric algorithms verify with the issuer's JWKS (`JWKSCache`).
HMAC (HS256/384/512) verifies with the client secret (OIDC Core §10.1), and only for
an algorithm the discovery's `id_token_signing_alg_values_supported` lists: authentik
signs a proxy provider's id_tokens and JWT access tokens HS256 with the client secret
and says so there. An IdP that does not list it gets every HMAC token refused, id_token
and Bearer alike (algorithm confusion: a token "signed" with a public key or a guessed
secret). The key is always the client secret, never JWKS material; `none` never passes.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote_plus

import httpx
import jwt

from ext_authz.adapters.jwks import JWKSCache
from ext_authz.core.claims import identity_from_claims
from ext_authz.core.model import Identity, Rejected, Unavailable, Verified, VerifyOutcome
from ext_authz.errors import IdPUnavailable, TokenError

if TYPE_CHECKING:
    from ext_authz.config import OIDCSettings

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "DISCOVERY_RETRY",
    "LEEWAY",
    "Discovery",
    "OIDCClient",
    "TokenError",
    "TokenSet",
]

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
LEEWAY = 30.0  # seconds of clock skew tolerated on exp/nbf/iat
DISCOVERY_RETRY = 5.0  # seconds between discovery attempts while the IdP is failing
_SAFE_ERROR = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

BearerMode = Literal["auto", "jwt", "introspection"]


@dataclass(frozen=True, slots=True)
class Discovery:
    """The endpoints of the IdP's discovery document we use."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None = None
    introspection_endpoint: str | None = None
    end_session_endpoint: str | None = None
    # As the discovery document names it; the HMAC algorithms listed here are the only
    # ones accepted (with the client secret).
    id_token_signing_alg_values_supported: tuple[str, ...] = ()

    @property
    def hmac_algorithms(self) -> frozenset[str]:
        """The HMAC algorithms this IdP signs with (keyed with the client secret)."""
        return _HMAC_ALGORITHMS.intersection(self.id_token_signing_alg_values_supported)


@dataclass(frozen=True, slots=True)
class TokenSet:
    """A token endpoint's successful answer. `id_token` is "" when none came."""

    access_token: str
    id_token: str
    expires_in: float | None
    raw: Mapping[str, Any] = field(repr=False)

    def __repr__(self) -> str:  # tokens are secrets: never in a log line or traceback
        return (
            f"TokenSet(expires_in={self.expires_in!r}, id_token={'yes' if self.id_token else 'no'})"
        )


class OIDCClient:
    """One application's view of its IdP."""

    def __init__(
        self,
        settings: OIDCSettings,
        http: httpx.AsyncClient,
        *,
        observe: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        jwks: JWKSCache | None = None,
    ) -> None:
        self._settings = settings
        self._http = http
        self._observe = observe
        self._clock = clock
        self._monotonic = monotonic
        self._discovery: Discovery | None = None
        self._discovery_lock = asyncio.Lock()
        self._discovery_failed_at: float | None = None
        self._discovery_failure = ""
        self._jwks = jwks if jwks is not None else JWKSCache(self._fetch_jwks, clock=monotonic)

    # --- discovery -----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the discovery document has been loaded."""
        return self._discovery is not None

    @property
    def client_id(self) -> str:
        return self._settings.client_id

    @property
    def settings(self) -> OIDCSettings:
        """The settings this client was made from (a table refresh reuses a client whose
        settings did not change, with its discovery document and JWKS)."""
        return self._settings

    async def discovery(self) -> Discovery:
        """The discovery document; raises IdPUnavailable until it can be loaded."""
        if self._discovery is not None:
            return self._discovery
        async with self._discovery_lock:
            if self._discovery is not None:
                return self._discovery
            now = self._monotonic()
            failed_at = self._discovery_failed_at
            if failed_at is not None and now - failed_at < DISCOVERY_RETRY:
                raise IdPUnavailable(self._discovery_failure)
            try:
                self._discovery = await self._load_discovery()
            except IdPUnavailable as exc:
                self._discovery_failed_at = now
                self._discovery_failure = str(exc)
                raise
            self._discovery_failed_at = None
            return self._discovery

    async def _load_discovery(self) -> Discovery:
        given = self._settings.endpoints
        if given is not None:
            # As given (SPEC §11: an authentik provider's oidc_configuration): no request.
            return Discovery(
                issuer=self._settings.issuer,
                authorization_endpoint=given.authorization_endpoint,
                token_endpoint=given.token_endpoint,
                jwks_uri=given.jwks_uri,
                userinfo_endpoint=given.userinfo_endpoint or None,
                introspection_endpoint=given.introspection_endpoint or None,
                end_session_endpoint=given.end_session_endpoint or None,
                id_token_signing_alg_values_supported=given.id_token_signing_alg_values_supported,
            )
        issuer = self._settings.issuer.rstrip("/")
        url = f"{issuer}/.well-known/openid-configuration"
        status, doc = await self._call("discovery", "GET", url)
        if status != 200:
            raise IdPUnavailable(f"discovery: HTTP {status}")
        doc_issuer = doc.get("issuer")
        if not isinstance(doc_issuer, str) or doc_issuer.rstrip("/") != issuer:
            # A document for another issuer is a misconfiguration, not a credential problem.
            raise IdPUnavailable(
                "discovery: issuer in the document differs from the configured issuer"
            )
        required = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(name)
            if not isinstance(value, str) or not value:
                raise IdPUnavailable(f"discovery: document lacks {name}")
            required[name] = value
        return Discovery(
            issuer=doc_issuer,
            userinfo_endpoint=_optional_str(doc.get("userinfo_endpoint")),
            introspection_endpoint=_optional_str(doc.get("introspection_endpoint")),
            end_session_endpoint=_optional_str(doc.get("end_session_endpoint")),
            id_token_signing_alg_values_supported=_strings(
                doc.get("id_token_signing_alg_values_supported")
            ),
            **required,
        )

    async def _fetch_jwks(self) -> Mapping[str, Any]:
        d = await self.discovery()
        if not d.jwks_uri:
            raise IdPUnavailable("jwks: the IdP names no jwks_uri")
        status, doc = await self._call("jwks", "GET", d.jwks_uri)
        if status != 200:
            raise IdPUnavailable(f"jwks: HTTP {status}")
        return doc

    # --- receiving header authentication (never raise) ------------------------------

    async def _within_deadline(self, work: Awaitable[VerifyOutcome]) -> VerifyOutcome:
        """`work`'s outcome, or Unavailable once `oidc.timeout` has passed."""
        timeout = self._settings.timeout
        try:
            async with asyncio.timeout(timeout):
                return await work
        except TimeoutError:
            return Unavailable(f"no answer within {timeout:g}s")

    async def verify_app_password(self, username: str, password: str) -> VerifyOutcome:
        """authentik's app password: the client_credentials grant with username/password."""
        return await self._within_deadline(self._verify_app_password(username, password))

    async def verify_password_grant(self, username: str, password: str) -> VerifyOutcome:
        """The OAuth 2.0 password grant; identity from the id_token, else userinfo."""
        return await self._within_deadline(self._verify_password_grant(username, password))

    async def verify_bearer(
        self, token: str, mode: BearerMode, audiences: tuple[str, ...] = ()
    ) -> VerifyOutcome:
        """A bearer token, as a JWT against the JWKS or by RFC 7662 introspection."""
        return await self._within_deadline(self._verify_bearer(token, mode, audiences))

    async def _verify_app_password(self, username: str, password: str) -> VerifyOutcome:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._settings.client_id,
            "username": username,
            "password": password,
            "scope": " ".join(self._settings.scopes),
        }
        try:
            body = await self._token_request(form, client_id_in_form=True)
            id_token = body.get("id_token")
            if not isinstance(id_token, str) or not id_token:
                return Rejected("no id_token")
            claims = await self.verify_id_token(id_token, nonce=None)
            tokens = _token_set(body)
            token = tokens.access_token or id_token
            expires_in = tokens.expires_in if tokens.access_token else None
            return self._verified(claims, token=token, id_token=id_token, expires_in=expires_in)
        except IdPUnavailable as exc:
            return Unavailable(str(exc))
        except TokenError as exc:
            return Rejected(exc.error)

    async def _verify_password_grant(self, username: str, password: str) -> VerifyOutcome:
        form = {
            "grant_type": "password",
            "username": username,
            "password": password,
            "scope": " ".join(self._settings.scopes),
        }
        try:
            body = await self._token_request(form)
            tokens = _token_set(body)
            if tokens.id_token:
                claims = await self.verify_id_token(tokens.id_token, nonce=None)
                token = tokens.access_token or tokens.id_token
                expires_in = tokens.expires_in if tokens.access_token else None
                return self._verified(
                    claims, token=token, id_token=tokens.id_token, expires_in=expires_in
                )
            if not tokens.access_token:
                return Rejected("no token")
            claims = await self.userinfo(tokens.access_token)
            return self._verified(
                claims, token=tokens.access_token, id_token="", expires_in=tokens.expires_in
            )
        except IdPUnavailable as exc:
            return Unavailable(str(exc))
        except TokenError as exc:
            return Rejected(exc.error)

    async def _verify_bearer(
        self, token: str, mode: BearerMode, audiences: tuple[str, ...]
    ) -> VerifyOutcome:
        try:
            d = await self.discovery()
            if mode == "auto":
                mode = "jwt" if self._is_our_jws(token, d) else "introspection"
            if mode == "jwt":
                return await self._verify_jwt_bearer(token, audiences, d)
            return await self._introspect(token, audiences, d)
        except IdPUnavailable as exc:
            return Unavailable(str(exc))
        except TokenError as exc:
            return Rejected(exc.error)

    async def _verify_jwt_bearer(
        self, token: str, audiences: tuple[str, ...], d: Discovery
    ) -> VerifyOutcome:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return Rejected("malformed token")
        alg = header.get("alg")
        key = await self._signature_key(header, d)
        if isinstance(key, Rejected):
            return key
        assert isinstance(alg, str)
        claims = self._decode(token, key, alg, (self._settings.client_id, *audiences), d)
        return self._verified(claims, token=token, id_token="")

    async def _signature_key(
        self, header: Mapping[str, Any], d: Discovery
    ) -> jwt.PyJWK | bytes | Rejected:
        """The key a JWS with this header must verify with, or why there is none.

        Asymmetric: the JWKS key (by kid and alg). HMAC: the client secret, only when
        the discovery lists that algorithm and a secret is configured."""
        alg = header.get("alg")
        if isinstance(alg, str) and alg in ASYMMETRIC_ALGORITHMS:
            found = await self._jwks.key_for(_kid(header), alg)
            return found if found is not None else Rejected("unknown key")
        secret = self._secret()
        if isinstance(alg, str) and alg in d.hmac_algorithms and secret:
            return secret.encode()
        return Rejected("alg not allowed")

    async def _introspect(
        self, token: str, audiences: tuple[str, ...], d: Discovery
    ) -> VerifyOutcome:
        if not d.introspection_endpoint:
            return Rejected("introspection unsupported")
        form, headers = self._authenticate({"token": token, "token_type_hint": "access_token"})
        status, body = await self._call(
            "introspection", "POST", d.introspection_endpoint, data=form, headers=headers
        )
        if status != 200:
            return Rejected(_oauth_error(body, status))
        if body.get("active") is not True:
            return Rejected("inactive")
        exp = _number(body.get("exp"))
        if exp is not None and exp + LEEWAY < self._clock():
            return Rejected("expired")
        if not self._audience_ok(body, audiences):
            return Rejected("wrong audience")
        return self._verified(body, token=token, id_token="")

    def _audience_ok(self, body: Mapping[str, Any], audiences: tuple[str, ...]) -> bool:
        # RFC 7662 makes `aud` optional. When present it must name us (or an accepted
        # audience), unless the token was issued to this very client (`client_id`),
        # which some IdPs pair with an unrelated resource audience.
        aud = body.get("aud")
        if aud is None:
            return True
        accepted = {self._settings.client_id, *audiences}
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if any(a in accepted for a in auds):
            return True
        return body.get("client_id") == self._settings.client_id

    def _is_our_jws(self, token: str, d: Discovery) -> bool:
        if token.count(".") != 2:
            return False
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return False
        iss = claims.get("iss")
        return isinstance(iss, str) and iss.rstrip("/") == d.issuer.rstrip("/")

    # --- browser sign-in (raise) ----------------------------------------------------

    async def exchange_code(self, code: str, code_verifier: str, redirect_uri: str) -> TokenSet:
        """Redeem an authorization code (with its PKCE verifier) for tokens."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        tokens = _token_set(await self._token_request(form))
        if not tokens.access_token and not tokens.id_token:
            raise TokenError("invalid_response", "the token response holds no token")
        return tokens

    async def verify_id_token(self, id_token: str, *, nonce: str | None) -> dict[str, Any]:
        """The claims of a valid id_token for this client; TokenError otherwise."""
        d = await self.discovery()
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError as exc:
            raise TokenError("malformed token") from exc
        alg = header.get("alg")
        key = await self._signature_key(header, d)
        if isinstance(key, Rejected):
            raise TokenError(key.reason)
        assert isinstance(alg, str)
        claims = self._decode(id_token, key, alg, (self._settings.client_id,), d)
        azp = claims.get("azp")
        if azp is not None and azp != self._settings.client_id:
            raise TokenError("wrong azp")
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
                raise TokenError("nonce mismatch")
        return claims

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        """The userinfo endpoint's claims for an access token."""
        d = await self.discovery()
        if not d.userinfo_endpoint:
            raise TokenError("userinfo unsupported")
        status, body = await self._call(
            "userinfo",
            "GET",
            d.userinfo_endpoint,
            headers={"Authorization": f"Bearer {access_token}"},
        )
        if status != 200:
            raise TokenError(_oauth_error(body, status))
        return body

    # --- shared mechanics -----------------------------------------------------------

    def _decode(
        self,
        token: str,
        key: jwt.PyJWK | bytes,
        alg: str,
        audiences: tuple[str, ...],
        d: Discovery,
    ) -> dict[str, Any]:
        issuers = {d.issuer, self._settings.issuer}
        try:
            return jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=list(audiences),
                issuer=issuers,
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise TokenError("not yet valid") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenError("wrong audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenError("wrong issuer") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenError("bad signature") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"missing {exc.claim}") from exc
        except jwt.PyJWTError as exc:
            raise TokenError("invalid token", type(exc).__name__) from exc

    def _verified(
        self,
        claims: Mapping[str, Any],
        *,
        token: str,
        id_token: str,
        expires_in: float | None = None,
    ) -> VerifyOutcome:
        try:
            identity = identity_from_claims(
                claims,
                attributes_claim=self._settings.attributes_claim,
                provider=self._settings.client_id,
                token=token,
                id_token=id_token,
            )
        except ValueError:
            return Rejected("no sub")
        if expires_in is not None:
            # The id_token often outlives the access token passed on as X-authentik-jwt
            # (authentik: 1 h against 5 min): the identity lasts no longer than either.
            token_exp = self._clock() + expires_in
            if identity.expires_at is None or token_exp < identity.expires_at:
                identity = replace(identity, expires_at=token_exp)
        return Verified(identity, ttl=self._ttl(identity))

    def _ttl(self, identity: Identity) -> float | None:
        # Within the leeway a token may be accepted just after exp: 0 means "do not cache".
        if identity.expires_at is None:
            return None
        return max(0.0, identity.expires_at - self._clock())

    def _secret(self) -> str | None:
        secret = self._settings.client_secret
        return secret.get_secret_value() if secret is not None else None

    def _authenticate(
        self, form: dict[str, str], *, client_id_in_form: bool = False
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Add client authentication (RFC 6749 §2.3.1) by `client_auth`."""
        client_id = self._settings.client_id
        secret = self._secret()
        headers: dict[str, str] = {}
        form = dict(form)
        if secret is None:
            form["client_id"] = client_id
        elif self._settings.client_auth == "client_secret_basic":
            # Both parts are form-urlencoded before base64, as §2.3.1 says and many
            # clients forget (a secret with ':' or '+' breaks otherwise).
            raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")
            if client_id_in_form:
                form["client_id"] = client_id
        else:
            form["client_id"] = client_id
            form["client_secret"] = secret
        return form, headers

    async def _token_request(
        self, form: dict[str, str], *, client_id_in_form: bool = False
    ) -> dict[str, Any]:
        d = await self.discovery()
        data, headers = self._authenticate(form, client_id_in_form=client_id_in_form)
        status, body = await self._call(
            "token", "POST", d.token_endpoint, data=data, headers=headers
        )
        if status != 200:
            raise TokenError(_oauth_error(body, status))
        return body

    async def _call(
        self,
        endpoint: str,
        method: str,
        url: str,
        *,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """One HTTP request. Returns (status, JSON object) for 2xx and 4xx answers.

        Timeouts, connection errors, 5xx, 408/429 and a 2xx without a JSON object
        raise IdPUnavailable; a 4xx without JSON comes back as an empty mapping.
        """
        sent = {"Accept": "application/json", **(headers or {})}
        if self._settings.backchannel_host:
            # The IdP reached by one name and known to browsers by another (authentik's
            # host_browser): it sees the browsers' host, so its issuer matches.
            sent["Host"] = self._settings.backchannel_host
        try:
            response = await self._http.request(
                method, url, data=data, headers=sent, timeout=self._settings.timeout
            )
        except httpx.TimeoutException as exc:
            self._note(endpoint, "error")
            raise IdPUnavailable(f"{endpoint}: timeout") from exc
        except httpx.HTTPError as exc:
            self._note(endpoint, "error")
            raise IdPUnavailable(f"{endpoint}: {type(exc).__name__}") from exc
        status = response.status_code
        if status >= 500 or status in (408, 429) or status < 200 or 300 <= status < 400:
            self._note(endpoint, "error")
            raise IdPUnavailable(f"{endpoint}: HTTP {status}")
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            if status < 300:
                self._note(endpoint, "error")
                raise IdPUnavailable(f"{endpoint}: invalid JSON")
            body = {}
        self._note(endpoint, "ok" if status < 300 else "rejected")
        return status, body

    def _note(self, endpoint: str, outcome: str) -> None:
        if self._observe is not None:
            self._observe(endpoint, outcome)


def _token_set(body: Mapping[str, Any]) -> TokenSet:
    access_token = body.get("access_token")
    id_token = body.get("id_token")
    return TokenSet(
        access_token=access_token if isinstance(access_token, str) else "",
        id_token=id_token if isinstance(id_token, str) else "",
        expires_in=_number(body.get("expires_in")),
        raw=MappingProxyType(dict(body)),
    )


def _oauth_error(body: Mapping[str, Any], status: int) -> str:
    """The OAuth error code of a 4xx answer, if it is a plain code; else `http_<status>`."""
    error = body.get("error")
    if isinstance(error, str) and _SAFE_ERROR.fullmatch(error):
        return error
    return f"http_{status}"


def _kid(header: Mapping[str, Any]) -> str | None:
    kid = header.get("kid")
    return kid if isinstance(kid, str) else None


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
