"""app/auth.FastHmac against PyJWT, the oracle: whenever the fast path accepts a token,
PyJWT accepts it too with exactly the same claims, for hypothesis-made tokens of every
shape (valid, expired, not yet valid, wrong audience or issuer, odd types, other
headers, forged or mangled); and the tokens a shop makes do take the fast path."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seckill.app.auth import AuthError, FastHmac, JwtSettings, Verifier

SECRET = b"a-test-secret-long-enough-for-hs512-" + b"k" * 28  # 64 bytes: RFC 7518 3.2
LEEWAY = 5.0
NOW = int(time.time())
# Offsets from now at least a second from every boundary (exp at now - leeway, nbf and iat
# at now + leeway), so the two verdicts cannot fall on two sides of a second.
OFFSETS = [-10_000, -7, -3, 0, 3, 7, 10_000]

CONFIGS = [
    JwtSettings(("HS256",), SECRET),
    JwtSettings(("HS256",), SECRET, issuer="shop", audience="sale"),
    JwtSettings(("HS512",), SECRET, audience="sale", user_claim="uid"),
]


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def sign(header: Any, claims: Any, key: bytes = SECRET, digest: Any = hashlib.sha256,
         raw_header: bytes | None = None, raw_claims: bytes | None = None) -> bytes:
    head = b64(raw_header if raw_header is not None else json.dumps(header).encode())
    body = b64(raw_claims if raw_claims is not None else json.dumps(claims).encode())
    return head + b"." + body + b"." + b64(hmac.new(key, head + b"." + body, digest).digest())


def oracle(config: JwtSettings, token: bytes) -> dict[str, Any] | None:
    """PyJWT's verdict with the options Verifier gives it: the claims, or None."""
    verifier = Verifier(config)
    try:
        return verifier._decode(token)
    except AuthError:
        return None


times = st.sampled_from(OFFSETS).map(lambda o: NOW + o)
odd = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.text(max_size=5),
                st.integers(), st.lists(st.text(max_size=3), max_size=2))
# Each claim's values: mostly well-formed, now and then anything.
CLAIMS = {
    "exp": st.one_of(times, times.map(float), times.map(str), odd),
    "nbf": st.one_of(times, odd),
    "iat": st.one_of(times, odd),
    "sub": st.one_of(st.text(min_size=1, max_size=8), odd),
    "uid": st.one_of(st.text(min_size=1, max_size=8), odd),
    "iss": st.one_of(st.just("shop"), st.text(max_size=5), odd),
    "aud": st.one_of(st.just("sale"), st.just(["sale", "other"]), st.just([]), st.just(""),
                     st.lists(st.one_of(st.just("sale"), st.text(max_size=3), st.integers()), max_size=3), odd),
    "jti": st.one_of(st.text(max_size=5), odd),
    "items": st.lists(st.text(max_size=4), max_size=2),
    "extra": odd,
}


def valid_claims(config: JwtSettings) -> dict[str, Any]:
    """Claims the config accepts; the tests change a few of them."""
    claims: dict[str, Any] = {config.user_claim: "ann", "exp": NOW + 600}
    if config.issuer:
        claims["iss"] = config.issuer
    if config.audience:
        claims["aud"] = config.audience
    return claims


@st.composite
def claims_for(draw: st.DrawFn, config: JwtSettings) -> dict[str, Any]:
    claims = valid_claims(config)
    for name in draw(st.lists(st.sampled_from(sorted(CLAIMS)), max_size=3, unique=True)):
        claims[name] = draw(CLAIMS[name])
    for name in draw(st.lists(st.sampled_from(sorted(claims)), max_size=1)):
        del claims[name]
    return claims


def header_for(config: JwtSettings) -> st.SearchStrategy[dict[str, Any]]:
    alg = config.algorithms[0]
    good = [{"alg": alg, "typ": "JWT"}, {"alg": alg}]
    return st.one_of(
        st.sampled_from(good), st.sampled_from(good), st.sampled_from(good),
        st.sampled_from([{"alg": "HS256" if alg != "HS256" else "HS512"}, {"alg": "none"}, {"alg": alg, "kid": "k"},
                         {"alg": alg, "typ": "jwt"}, {"alg": alg, "b64": False}, {"typ": "JWT"}]),
        st.dictionaries(st.sampled_from(["alg", "typ", "kid", "crit"]), odd, max_size=3))


@st.composite
def cases(draw: st.DrawFn) -> tuple[JwtSettings, bytes]:
    config = draw(st.sampled_from(CONFIGS))
    header, claims = draw(header_for(config)), draw(claims_for(config))
    digest = hashlib.sha512 if header.get("alg") == "HS512" else hashlib.sha256
    key = SECRET if draw(st.integers(0, 9)) else b"another-key"
    how = draw(st.sampled_from([0, 0, 0, 0, 0, 1, 2, 3, 4]))
    return config, mangle(sign(header, claims, key, digest), how, draw(st.integers(0, 10_000)),
                          draw(st.integers(0, 255)))


def mangle(token: bytes, how: int, where: int, byte: int) -> bytes:
    if how == 0 or not token:
        return token
    where %= len(token)
    if how == 1:  # one byte changed
        return token[:where] + bytes([byte]) + token[where + 1:]
    if how == 2:  # cut short
        return token[:where]
    if how == 3:  # padding, which PyJWT's decoder tolerates
        return token.replace(b".", b"=.", 1)
    return token + b"." + token[:where]  # a fourth segment


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_whatever_the_fast_path_accepts_pyjwt_accepts_with_the_same_claims(case: tuple[JwtSettings, bytes]) -> None:
    config, token = case
    fast = FastHmac.for_settings(config)
    assert fast is not None
    got = fast.decode(token)
    if got is not None:
        assert oracle(config, token) == got


@pytest.mark.parametrize("change", [
    {"exp": NOW - 7}, {"exp": float(NOW + 600)}, {"exp": str(NOW + 600)}, {"exp": None}, {"exp": True},
    {"nbf": NOW + 7}, {"nbf": "0"}, {"iat": NOW + 7}, {"iat": 1.5},
    {"sub": None}, {"sub": 7}, {"uid": None}, {"uid": ["ann"]}, {"jti": 7},
    {"iss": "elsewhere"}, {"iss": 7}, {"iss": None},
    {"aud": "other"}, {"aud": ["sale", 7]}, {"aud": ["other"]}, {"aud": ""}, {"aud": []}, {"aud": None},
], ids=repr)
@pytest.mark.parametrize("config", CONFIGS, ids=["plain", "iss+aud", "hs512-uid"])
def test_each_refusal_or_odd_claim_is_left_to_pyjwt(config: JwtSettings, change: dict[str, Any]) -> None:
    """The fast path accepts none of these: PyJWT refuses them or has rules of its own."""
    claims = {**valid_claims(config), **change}
    alg = config.algorithms[0]
    token = sign({"alg": alg, "typ": "JWT"}, claims, digest=hashlib.sha512 if alg == "HS512" else hashlib.sha256)
    got = FastHmac.for_settings(config).decode(token)  # type: ignore[union-attr]
    verdict = oracle(config, token)
    assert got is None or got == verdict, (got, verdict)
    if verdict is None:
        assert got is None


@pytest.mark.parametrize("raw_header, raw_claims", [
    (b"\xff\xfe", b"{}"),  # not UTF-8
    (b'{"alg":"HS256","alg":"HS256"}', json.dumps({"sub": "a", "exp": NOW + 60}).encode()),  # a repeated key
    (b'{"alg":"HS256"}', b'[1, 2]'),  # claims not an object
    (b'{"alg":"HS256"}', b'{"sub":"a","exp":' + str(NOW + 60).encode() + b',"sub":7}'),  # the last sub wins
    (b'{"alg":"HS256"}', json.dumps({"sub": "a", "exp": NOW + 60}).encode("utf-16")),  # JSON in UTF-16
])
def test_odd_encodings_agree(raw_header: bytes, raw_claims: bytes) -> None:
    token = sign(None, None, raw_header=raw_header, raw_claims=raw_claims)
    got = FastHmac.for_settings(CONFIGS[0]).decode(token)  # type: ignore[union-attr]
    if got is not None:
        assert oracle(CONFIGS[0], token) == got


@pytest.mark.parametrize("config", CONFIGS)
def test_the_tokens_a_shop_makes_take_the_fast_path(config: JwtSettings) -> None:
    """(So the property above is not met by a fast path that never accepts anything.)"""
    claims = {**valid_claims(config), "iat": NOW, "nbf": NOW - 1, "items": ["hat"], "jti": "j1", "name": "Ann"}
    token = jwt.encode(claims, SECRET, algorithm=config.algorithms[0]).encode()
    fast = FastHmac.for_settings(config)
    assert fast is not None and fast.decode(token) == claims == oracle(config, token)
    listed = dict(claims, aud=[config.audience, "x"]) if config.audience else None
    if listed is not None:
        token = jwt.encode(listed, SECRET, algorithm=config.algorithms[0]).encode()
        assert fast.decode(token) == listed == oracle(config, token)


@pytest.mark.parametrize("config", [
    JwtSettings(("RS256",), SECRET),  # not HMAC
    JwtSettings(("HS256",), b"-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n"),  # PyJWT refuses it
    JwtSettings(("HS256",), SECRET, issuer=""),
])
def test_no_fast_path_where_pyjwt_has_rules_of_its_own(config: JwtSettings) -> None:
    assert FastHmac.for_settings(config) is None
