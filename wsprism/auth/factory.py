"""Builds a tenant's authenticator from its `auth` config."""
from .base import Authenticator, AuthSetupError
from .dev import DevAuthenticator
from .jwt import JwtAuthenticator
from .static import StaticAuthenticator


def make_authenticator(cfg) -> Authenticator:
    mode = cfg.mode
    if mode == "dev":
        return DevAuthenticator()
    if mode == "static":
        return StaticAuthenticator(cfg.tickets)
    if mode == "jwt":
        return JwtAuthenticator(cfg)
    if mode == "webhook":
        from .webhook import WebhookAuthenticator

        return WebhookAuthenticator(cfg)
    raise AuthSetupError(f"unknown auth mode {mode!r}")
