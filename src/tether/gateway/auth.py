"""Bearer tokens: the gateway verifies `Authorization: Bearer <JWT>` and sets `X-User-ID`.

Rules:
1. Keys load once at start-up; a missing secret variable or an unreadable key file stops the
   gateway before it listens (AuthSetupError), never on the first request.
2. A token is accepted only with the configured algorithm (no `none`, no algorithm switching),
   a valid signature, an `exp` in the future, and `iss`/`aud` equal to the configured values
   when they are configured. `sub` must be present: it becomes `X-User-ID`.
3. Every failure is a 401 problem (`WWW-Authenticate: Bearer`) whose detail says what was wrong
   without echoing the token.
4. An `X-User-ID` sent by the client is always discarded when auth is on.

PyJWT does the verification; this module only chooses keys and words the failures.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jwt

from tether.gateway.config import JwtAuth
from tether.problems import UNAUTHORIZED, Problem

LEEWAY_SECONDS = 30  # clock skew tolerated on exp/nbf/iat
_SUBJECT = re.compile(r"[\x21-\x7e]{1,128}")


class AuthSetupError(ValueError):
    """The auth section names a key that cannot be loaded."""


class TokenVerifier:
    def __init__(self, settings: JwtAuth, *, environ: dict[str, str] | None = None) -> None:
        self.settings = settings
        env = os.environ if environ is None else environ
        self._key: Any = None
        self._jwks: jwt.PyJWKSet | None = None
        if settings.secret_env is not None:
            secret = env.get(settings.secret_env)
            if not secret:
                raise AuthSetupError(
                    f"auth.jwt.secret_env: the environment variable {settings.secret_env} is "
                    "not set or empty"
                )
            self._key = secret.encode()
        elif settings.public_key_file is not None:
            self._key = _read(settings.public_key_file, "auth.jwt.public_key_file")
        elif settings.jwks_file is not None:
            text = _read(settings.jwks_file, "auth.jwt.jwks_file")
            try:
                self._jwks = jwt.PyJWKSet.from_json(text)
            except (jwt.PyJWTError, ValueError, json.JSONDecodeError) as exc:
                raise AuthSetupError(f"auth.jwt.jwks_file: not a usable JWKS: {exc}") from None

    def verify(self, authorization: bytes | None) -> str | Problem:
        """The token's subject (the user id), or the 401 problem to answer with."""
        if authorization is None:
            return _refuse("an Authorization: Bearer token is required")
        scheme, _, token = authorization.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            return _refuse("the Authorization header must be 'Bearer <token>'")
        try:
            key = self._key if self._jwks is None else self._jwk_for(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=list(self.settings.algorithms),
                issuer=self.settings.issuer,
                audience=self.settings.audience,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            return _refuse("the token has expired")
        except jwt.InvalidIssuerError:
            return _refuse("the token's issuer is not accepted")
        except jwt.InvalidAudienceError:
            return _refuse("the token's audience is not this gateway's")
        except jwt.MissingRequiredClaimError as exc:
            return _refuse(f"the token lacks the {exc.claim!r} claim")
        except jwt.InvalidSignatureError:
            return _refuse("the token's signature does not verify")
        except jwt.InvalidAlgorithmError:
            return _refuse(f"the token must be signed with {', '.join(self.settings.algorithms)}")
        except jwt.InvalidKeyError as exc:
            return _refuse(f"the token's key is not usable: {exc}")
        except (jwt.PyJWTError, ValueError) as exc:
            return _refuse(f"the token is not valid: {type(exc).__name__}")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not _SUBJECT.fullmatch(subject):
            # It becomes a header value: no spaces, no control characters.
            return _refuse("the token's 'sub' claim must be 1-128 visible ASCII characters")
        return subject

    def _jwk_for(self, token: bytes) -> Any:
        assert self._jwks is not None
        kid = jwt.get_unverified_header(token).get("kid")
        keys = self._jwks.keys
        if kid is None and len(keys) == 1:
            return keys[0]
        for key in keys:
            if key.key_id == kid:
                return key
        raise jwt.InvalidKeyError(f"no key with kid {kid!r} in the JWKS file")


def _read(path: str, key: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthSetupError(f"{key}: cannot read {path}: {exc}") from None


def _refuse(detail: str) -> Problem:
    return UNAUTHORIZED.problem(detail)
