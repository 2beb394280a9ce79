"""Ticket authentication, one module per `auth.mode`.

`make_authenticator(auth_config)` builds the tenant's authenticator once at start or
reload; `authenticate(ticket)` answers an `Identity` or raises `AuthError`.
"""
from .base import AuthError, Authenticator, AuthSetupError, Identity
from .factory import make_authenticator

__all__ = ["AuthError", "AuthSetupError", "Authenticator", "Identity", "make_authenticator"]
