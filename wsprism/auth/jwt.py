"""`auth.mode: jwt` — signed tokens verified with PyJWT.

HS256 uses a shared secret (from the env var named by `secret_env`, or `secret`);
RS256/ES256 use the public key in `public_key_file`. `sub` is the user id; `exp`
(required unless `require_exp: false`), `nbf`, `aud`, `iss` are verified with
`leeway_ms` of tolerance.
"""
import os

import jwt as pyjwt

from .base import AuthError, Authenticator, AuthSetupError, Identity


class JwtAuthenticator(Authenticator):
    mode = "jwt"

    def __init__(self, cfg) -> None:
        self._algorithms = list(cfg.algorithms)
        self._audience = cfg.audience
        self._issuer = cfg.issuer
        self.leeway = cfg.leeway_ms / 1000.0
        self._require = ["sub"] + (["exp"] if cfg.require_exp else [])
        self._keys: dict[str, object] = {}
        if any(a.startswith("HS") for a in self._algorithms):
            secret = cfg.secret
            if cfg.secret_env:
                secret = os.environ.get(cfg.secret_env)
                if not secret:
                    raise AuthSetupError(f"environment variable {cfg.secret_env} (auth.secret_env) is not set")
            if not secret:
                raise AuthSetupError("jwt HS256 needs auth.secret_env or auth.secret")
            self._keys["HS"] = secret
        if any(not a.startswith("HS") for a in self._algorithms):
            try:
                with open(cfg.public_key_file, "rb") as fh:
                    self._keys["PK"] = fh.read()
            except (OSError, TypeError) as exc:
                raise AuthSetupError(f"cannot read auth.public_key_file: {exc}") from None

    def authenticate(self, ticket: str) -> Identity:
        try:
            header = pyjwt.get_unverified_header(ticket)
        except pyjwt.PyJWTError:
            raise AuthError("malformed token") from None
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise AuthError("token algorithm not allowed")
        key = self._keys["HS" if alg.startswith("HS") else "PK"]
        try:
            claims = pyjwt.decode(
                ticket,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self.leeway,
                options={"require": self._require, "verify_aud": self._audience is not None},
            )
        except pyjwt.PyJWTError as exc:
            raise AuthError(f"token rejected: {type(exc).__name__}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthError("token has no usable sub")
        exp = claims.get("exp")
        return Identity(sub, float(exp) if isinstance(exp, (int, float)) else None)
