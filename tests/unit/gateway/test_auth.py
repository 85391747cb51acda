"""Bearer-token verification: every accepted and refused case, with real keys and PyJWT."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tether.gateway.auth import AuthSetupError, TokenVerifier
from tether.gateway.config import JwtAuth
from tether.problems import Problem

SECRET = "s3cret-for-tests-only-" + "0123456789abcdef" * 3
HS = JwtAuth(algorithms=("HS256",), secret_env="JWT_SECRET", issuer="iss-a", audience="gw")


def claims(**overrides: Any) -> dict[str, Any]:
    base = {"sub": "user-7", "iss": "iss-a", "aud": "gw", "exp": int(time.time()) + 60}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def bearer(token: str) -> bytes:
    return b"Bearer " + token.encode()


@pytest.fixture
def hs() -> TokenVerifier:
    return TokenVerifier(HS, environ={"JWT_SECRET": SECRET})


def refused(result: str | Problem, words: str) -> None:
    assert isinstance(result, Problem), result
    assert result.status == 401
    assert words in result.detail


def test_a_good_hs256_token_gives_its_subject(hs: TokenVerifier) -> None:
    assert hs.verify(bearer(jwt.encode(claims(), SECRET, algorithm="HS256"))) == "user-7"


@pytest.mark.parametrize(
    ("header", "words"),
    [
        (None, "required"),
        (b"Basic abc", "Bearer <token>"),
        (b"Bearer ", "Bearer <token>"),
        (b"Bearer not.a.token", "not valid"),
    ],
)
def test_missing_or_malformed_headers(hs: TokenVerifier, header: bytes | None, words: str) -> None:
    refused(hs.verify(header), words)


# the claims are made when the test runs, not when it is collected: a token made at collection
# would expire before its test in a long suite run
@pytest.mark.parametrize(
    ("make_claims", "words"),
    [
        (lambda: claims(exp=int(time.time()) - 3600), "expired"),
        (lambda: claims(iss="someone-else"), "issuer"),
        (lambda: claims(aud="another-gateway"), "audience"),
        (lambda: claims(sub=None), "'sub'"),
        (lambda: claims(exp=None), "'exp'"),
        (lambda: claims(sub="has space"), "visible ASCII"),
    ],
)
def test_bad_claims(
    hs: TokenVerifier, make_claims: Callable[[], dict[str, Any]], words: str
) -> None:
    refused(hs.verify(bearer(jwt.encode(make_claims(), SECRET, algorithm="HS256"))), words)


def test_wrong_secret(hs: TokenVerifier) -> None:
    token = jwt.encode(claims(), "another-secret-" + "0123456789abcdef" * 4, algorithm="HS256")
    refused(hs.verify(bearer(token)), "signature")


def test_alg_none_and_algorithm_switching_are_refused(hs: TokenVerifier) -> None:
    unsigned = jwt.encode(claims(), None, algorithm="none")
    refused(hs.verify(bearer(unsigned)), "HS256")
    other = jwt.encode(claims(), SECRET, algorithm="HS512")
    refused(hs.verify(bearer(other)), "HS256")


def test_the_secret_must_be_set() -> None:
    with pytest.raises(AuthSetupError, match="JWT_SECRET"):
        TokenVerifier(HS, environ={})


def test_rs256_with_a_public_key_file(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.pem").write_bytes(pem)
    verifier = TokenVerifier(
        JwtAuth(algorithms=("RS256",), public_key_file=str(tmp_path / "pub.pem"), audience="gw")
    )
    assert verifier.verify(bearer(jwt.encode(claims(), private, algorithm="RS256"))) == "user-7"
    # The public key used as an HMAC secret (the classic confusion attack) is refused.
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims()).encode())
    signature = _b64(hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
    refused(verifier.verify(bearer(f"{head}.{body}.{signature}")), "RS256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_es256_with_a_jwks_file_picks_the_key_by_kid(tmp_path: Path) -> None:
    one, two = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    keys = []
    for kid, key in (("k1", one), ("k2", two)):
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwk.update(kid=kid, alg="ES256", use="sig")
        keys.append(jwk)
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": keys}))
    verifier = TokenVerifier(JwtAuth(algorithms=("ES256",), jwks_file=str(tmp_path / "jwks.json")))
    good = jwt.encode(claims(aud=None), two, algorithm="ES256", headers={"kid": "k2"})
    assert verifier.verify(bearer(good)) == "user-7"
    wrong_kid = jwt.encode(claims(aud=None), two, algorithm="ES256", headers={"kid": "k1"})
    refused(verifier.verify(bearer(wrong_kid)), "signature")
    unknown = jwt.encode(claims(aud=None), two, algorithm="ES256", headers={"kid": "k9"})
    refused(verifier.verify(bearer(unknown)), "k9")


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("missing.pem", None, "cannot read"),
        ("jwks.json", "not json", "not a usable JWKS"),
    ],
)
def test_unloadable_key_files_stop_start_up(
    tmp_path: Path, name: str, content: str | None, words: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    settings = (
        JwtAuth(algorithms=("RS256",), public_key_file=str(path))
        if name.endswith(".pem")
        else JwtAuth(algorithms=("ES256",), jwks_file=str(path))
    )
    with pytest.raises(AuthSetupError, match=words):
        TokenVerifier(settings)
