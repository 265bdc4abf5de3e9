"""ext-authz: an Envoy external-authorization service with authentik-style header authentication."""

__version__ = "0.1.0"
__all__ = ["__version__"]
