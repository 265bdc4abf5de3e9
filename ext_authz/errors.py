"""The exceptions of ext-authz.

    ExtAuthzError
     +-- ConfigError          the configuration is wrong; carries one message per key path
     +-- StoreUnavailable     the session/cache store did not answer (down, timeout)
     +-- IdPUnavailable       the IdP did not answer usefully (timeout, refused, 5xx, bad JSON)
     +-- AuthentikUnavailable authentik's API did not answer usefully (SPEC §11)
     +-- AuthentikRefused     authentik's API refused the outpost token (401/403)
    TokenError (a ValueError)  the IdP refused a request (4xx) or a token failed verification

Adapters wrap their libraries' errors into these, so the service maps faults to the
documented answers (SPEC §8: 503 with Retry-After, never an allow) in one place.
"""

from __future__ import annotations

__all__ = [
    "AuthentikRefused",
    "AuthentikUnavailable",
    "ConfigError",
    "ExtAuthzError",
    "IdPUnavailable",
    "StoreUnavailable",
    "TokenError",
]


class ExtAuthzError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ExtAuthzError):
    """The configuration cannot be used. `errors` holds lines like `store.url: ...`."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class StoreUnavailable(ExtAuthzError):
    """The store could not be reached or timed out."""


class IdPUnavailable(ExtAuthzError):
    """The identity provider could not be reached, timed out, or answered 5xx."""


class AuthentikUnavailable(ExtAuthzError):
    """authentik's API could not be reached, timed out, or answered 5xx or bad JSON."""


class AuthentikRefused(ExtAuthzError):
    """authentik's API refused the outpost's token (401/403)."""


class TokenError(ValueError):
    """The IdP refused a request (4xx) or a token failed verification.

    `error` is the OAuth error code (`invalid_grant`) or a short reason
    (`expired`); it never holds the credential.
    """

    def __init__(self, error: str, description: str = "") -> None:
        self.error = error
        self.description = description
        super().__init__(f"{error}: {description}" if description else error)
