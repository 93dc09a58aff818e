from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from common.auth import AuthError, TokenVerifier, bearer_token
from common.config import JwtSettings
from tests.support.tokens import SECRET, make_token


def verifier(**kw: object) -> TokenVerifier:
    return TokenVerifier(JwtSettings(secrets=(SECRET,), leeway=5, **kw))  # type: ignore[arg-type]


def _b64(obj: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_valid_token_accepted_and_cached() -> None:
    v = verifier()
    tok = make_token()
    assert v.verify(tok).subject == "user_1"
    assert v.verify(tok).subject == "user_1"


def test_alg_none_refused() -> None:
    tok = _b64({"alg": "none", "typ": "JWT"}) + "." + _b64({"sub": "x"}) + "."
    with pytest.raises(AuthError):
        verifier().verify(tok)


def test_wrong_secret_refused() -> None:
    with pytest.raises(AuthError) as exc:
        verifier().verify(make_token("another-secret-which-is-also-long-enough"))
    assert exc.value.code == "invalid_token"


def test_expired_and_not_yet_valid_refused() -> None:
    with pytest.raises(AuthError) as exc:
        verifier().verify(make_token(exp=int(time.time()) - 60))
    assert exc.value.code == "token_expired"
    with pytest.raises(AuthError) as exc:
        verifier().verify(make_token(nbf=int(time.time()) + 600))
    assert exc.value.code == "token_not_yet_valid"


def test_cached_token_still_expires() -> None:
    v = verifier()
    tok = make_token(exp=int(time.time()) + 2)
    v.verify(tok)
    with pytest.raises(AuthError):
        v.verify(tok, now=time.time() + 60)


def test_hs_rs_confusion_refused() -> None:
    # a token claiming RS256: the verifier only accepts the pinned HS algorithms
    tok = _b64({"alg": "RS256", "typ": "JWT"}) + "." + _b64({"sub": "x"}) + ".c2ln"
    with pytest.raises(AuthError):
        verifier().verify(tok)
    hs512 = jwt.encode({"sub": "x"}, SECRET, algorithm="HS512")
    with pytest.raises(AuthError):
        verifier().verify(hs512)


def test_rotation_accepts_previous_secret() -> None:
    old = "previous-secret-that-is-long-enough-for-hs256"
    v = TokenVerifier(JwtSettings(secrets=(SECRET, old)))
    assert v.verify(make_token(old)).subject == "user_1"


def test_garbage_and_huge_tokens_refused() -> None:
    for tok in ["", "garbage", "a.b.c", "x" * 10000]:
        with pytest.raises(AuthError):
            verifier().verify(tok)


def test_require_exp() -> None:
    with pytest.raises(AuthError):
        verifier(require_exp=True).verify(make_token(ttl=None))


def test_bearer_header_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token(None) is None
