"""Signed buyer identity (`--auth jwt`): the buyer is the verified token's subject.

The shop that has the logins issues a short-lived JWT for the sale; each worker verifies
it locally with PyJWT (no Redis call, no session store). Only the algorithms configured
are accepted (`alg: none`, or an RS256 public key presented as an HS256 secret, fail
like any bad signature); `exp` is required, `nbf`, `iss` and `aud` are checked as
configured, with a small leeway. A verified token is memoised, bounded, and never
accepted past its `exp` (+ the same leeway PyJWT allows): verifying costs 25-110 us, a
whole admission request under 10 us.

HS256/384/512 tokens of the common shape are checked by `FastHmac` (a tenth of PyJWT's
time); anything it is not sure of, PyJWT decides, so the two never disagree
(tests/unit/test_fast_hmac.py checks that against PyJWT, hypothesis-generated tokens
and all). Public keys are loaded once, not per token as PyJWT does with a PEM.

Refusals are 401 with `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750 3.1),
or `error="invalid_request"` when there is no token.

`--jwt-key` may also be a JWKS file (RFC 7517 `{"keys": [...]}`): a token names its key by
`kid` (a set of one key serves tokens without one), which is how a shop rotates keys:
add the new key, reload, sign with it, drop the old one, reload. SIGHUP reloads the key
file in every worker (`Verifier.reload`) without dropping a connection; the memo is
emptied, so a token of a key taken out is refused from then on. A file that does not load
leaves the keys as they were (logged).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.utils import base64url_decode

from seckill.config import Config
from seckill.http.protocol import HttpError, Request

# A token longer than this is refused before any parsing: a sale token is a few hundred bytes.
MAX_TOKEN = 2048
# Verified tokens kept per worker: ~3 MB for typical 300-byte tokens, 20 MB at worst;
# when full, expired entries are dropped, and if none were, the whole memo.
MAX_MEMO = 10_000
DEFAULT_LEEWAY = 5.0  # seconds of clock skew allowed on exp and nbf (the memo honours it too)
HMAC = ("HS256", "HS384", "HS512")


class AuthError(HttpError):
    """A 401 (403 for a token not valid for this sale) and its challenge."""

    def __init__(self, reason: str, error: str = "invalid_token") -> None:
        super().__init__(403 if error == "insufficient_scope" else 401, reason)  # RFC 6750 3.1
        quoted = reason.replace("\\", "\\\\").replace('"', '\\"')
        self.challenge = b'WWW-Authenticate: Bearer error="%s", error_description="%s"\r\n' % (
            error.encode(), quoted.encode("ascii", "replace"))


@dataclass(frozen=True)
class Buyer:
    user: str
    items: frozenset[str] | None  # the sales this token may buy in (None: any)
    expires: float  # exp + leeway: the memo's bound


@dataclass(frozen=True)
class JwtSettings:
    algorithms: tuple[str, ...]
    key: Any  # the HMAC secret (bytes), a public key (cryptography's), or a JWKS (jwt.PyJWKSet)
    issuer: str | None = None
    audience: str | None = None
    leeway: float = DEFAULT_LEEWAY
    user_claim: str = "sub"
    cookie: bytes | None = None  # a cookie that may carry the token when no Authorization is sent


def load_key(path: str | None, algorithm: str) -> Any:
    """The verification key: for HS*, the secret from $SECKILL_JWT_SECRET or the file
    (never a flag: flags show in ps); for the others, the PEM public key file; for any, a
    JWKS file. ValueError or OSError when it cannot be used."""
    if path is not None:
        with open(path, "rb") as file:
            data = file.read()
        if data.lstrip()[:1] == b"{":
            return _jwks(path, data, algorithm)
    if algorithm in HMAC:
        secret = os.environ.get("SECKILL_JWT_SECRET")
        if secret:
            return secret.encode()
        if path is None:
            raise ValueError("HS256 needs its secret: set SECKILL_JWT_SECRET or pass --jwt-key FILE")
        with open(path, "rb") as file:
            data = file.read().strip()
        if not data:
            raise ValueError(f"{path} is empty")
        return data
    if path is None:
        raise ValueError(f"{algorithm} needs --jwt-key PUBLIC_KEY.pem")
    with open(path, "rb") as file:
        pem = file.read()
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key: Any = load_pem_public_key(pem)  # once: PyJWT would parse a PEM for every token
    except ValueError as exc:
        raise ValueError(f"{path} is not a PEM public key: {exc}") from None
    return key


def _jwks(path: str, data: bytes, algorithm: str) -> jwt.PyJWKSet:
    """A JWKS file's keys for `algorithm` (its other keys are left out: no key confusion)."""
    try:
        keys = json.loads(data)["keys"]
        usable = [key for key in keys if isinstance(key, dict) and key.get("alg", algorithm) == algorithm]
        jwks = jwt.PyJWKSet(usable)
    except (ValueError, KeyError, TypeError, jwt.PyJWTError) as exc:
        raise ValueError(f"{path} is not a JWKS with a key for {algorithm}: {exc}") from None
    return jwks


def verifier_for(config: Config) -> Verifier | None:
    """The --auth jwt verifier (None: auth off); ValueError or OSError for a bad key."""
    if config.auth != "jwt":
        return None
    return Verifier(JwtSettings(
        (config.jwt_algorithm,), load_key(config.jwt_key, config.jwt_algorithm), config.jwt_issuer,
        config.jwt_audience, config.jwt_leeway, config.jwt_user_claim,
        None if config.auth_cookie is None else config.auth_cookie.encode()), config.jwt_key)


class Verifier:
    def __init__(self, settings: JwtSettings, path: str | None = None) -> None:
        self.settings = settings
        self.path = path  # the key file, read again by reload()
        self._memo: dict[bytes, Buyer] = {}
        required = ["exp", settings.user_claim] + (["iss"] if settings.issuer else []) + (
            ["aud"] if settings.audience else [])
        self._options: Any = {"require": required}
        self._fast = FastHmac.for_settings(settings)

    def reload(self) -> str:
        """Read the key file again (SIGHUP) and forget every verified token; what was done,
        for the log. Raises ValueError or OSError, keeping the keys as they were."""
        key = load_key(self.path, self.settings.algorithms[0])
        self.settings = dataclasses.replace(self.settings, key=key)
        self._fast = FastHmac.for_settings(self.settings)
        self._memo.clear()
        if isinstance(key, jwt.PyJWKSet):
            return f"{len(key.keys)} keys from {self.path}"
        return f"the key from {self.path or '$SECKILL_JWT_SECRET'}"

    def buyer(self, request: Request) -> Buyer:
        """The request's verified buyer, or AuthError."""
        given = request.header(b"authorization")
        if given is not None:
            scheme, _, token = given.partition(b" ")
            token = token.strip()
            if scheme.lower() != b"bearer" or not token:
                raise AuthError("the Authorization header must be: Bearer <token>", "invalid_request")
        else:
            token = self._from_cookie(request)
            if not token:
                raise AuthError("a bearer token is required (Authorization: Bearer ...)", "invalid_request")
        if len(token) > MAX_TOKEN:
            raise AuthError(f"the token is longer than {MAX_TOKEN} bytes")
        now = time.time()
        buyer = self._memo.get(token)
        if buyer is not None:
            if now < buyer.expires:
                return buyer
            del self._memo[token]
            raise AuthError("the token has expired")
        buyer = self._verify(token)
        memo = self._memo
        if len(memo) >= MAX_MEMO:
            for key in [k for k, b in memo.items() if b.expires <= now] or list(memo):
                del memo[key]
        memo[token] = buyer
        return buyer

    def _from_cookie(self, request: Request) -> bytes:
        """The token in the --auth-cookie cookie (RFC 6265 5.4: `a=1; name=value`), or b""."""
        name = self.settings.cookie
        cookies = request.header(b"cookie") if name is not None else None
        if not cookies:
            return b""
        for pair in cookies.split(b";"):
            key, _, value = pair.strip(b" \t").partition(b"=")
            if key == name:
                return value.strip(b'"')
        return b""

    def _decode(self, token: bytes) -> dict[str, Any]:
        """PyJWT's verdict: the claims, or AuthError saying why not."""
        s = self.settings
        key = s.key if not isinstance(s.key, jwt.PyJWKSet) else self._jwk(token, s.key)
        try:
            claims: dict[str, Any] = jwt.decode(token, key, algorithms=list(s.algorithms), issuer=s.issuer,
                                                audience=s.audience, leeway=s.leeway, options=self._options)
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise AuthError("the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("the token is from another issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("the token's algorithm is not accepted here") from None
        except jwt.InvalidTokenError:
            raise AuthError("the token is not valid") from None
        except Exception:  # (a key type PyJWT cannot use with this token, ...): still just a bad token
            raise AuthError("the token is not valid") from None
        return claims

    def _verify(self, token: bytes) -> Buyer:
        s = self.settings
        claims = self._fast.decode(token) if self._fast is not None else None
        if claims is None:
            claims = self._decode(token)
        user = claims.get(s.user_claim)
        if not isinstance(user, str) or not user or len(user) > 128 or not user.isprintable():
            raise AuthError(f"the token's {s.user_claim!r} claim must be a printable string of 1-128 characters")
        items = claims.get("items")
        if items is not None and not (isinstance(items, list) and all(isinstance(i, str) for i in items)):
            raise AuthError("the token's 'items' claim must be a list of sale names")
        expires = float(claims["exp"]) + s.leeway
        return Buyer(user, None if items is None else frozenset(items), expires)

    @staticmethod
    def _jwk(token: bytes, jwks: jwt.PyJWKSet) -> Any:
        """The key of a JWKS that the token's `kid` names (the only one, if it names none)."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise AuthError("the token is not valid") from None
        if kid is None and len(jwks.keys) == 1:
            return jwks.keys[0].key
        for jwk in jwks.keys:
            if jwk.key_id == kid and kid is not None:
                return jwk.key
        raise AuthError("the token's key (kid) is not known here")


_SEGMENT = re.compile(rb"[A-Za-z0-9_-]+")  # base64url without padding: what PyJWT's encode writes
_MAX_HEADERS = 64  # header segments remembered (a shop signs with one or two)


class FastHmac:
    """HS256/384/512 verification of a token of the common shape, agreeing with PyJWT.

    `decode()` returns the claims only when PyJWT, given the same token, key and options,
    would return exactly them: three base64url segments, a header that is `{"alg": A}` or
    `{"alg": A, "typ": "JWT"}` with A the configured algorithm, a valid MAC, and claims
    whose registered ones are plain (exp, nbf, iat integers; iss, sub, jti strings; aud
    only when an audience is configured) and pass. Anything else is None: PyJWT decides,
    and words its refusal. A token costs about a tenth of jwt.decode's time."""

    def __init__(self, algorithm: str, key: bytes, settings: JwtSettings) -> None:
        self.digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[algorithm]
        self.algorithm = algorithm
        self.key = key
        self.settings = settings
        self.required = tuple(dict.fromkeys(["exp", settings.user_claim]
                                            + (["iss"] if settings.issuer else [])
                                            + (["aud"] if settings.audience else [])))
        self._headers: dict[bytes, bool] = {}  # header segment -> of the accepted shape

    @classmethod
    def for_settings(cls, settings: JwtSettings) -> FastHmac | None:
        """The fast path for these settings, or None (not HMAC, or a secret PyJWT refuses)."""
        (algorithm,) = settings.algorithms
        if algorithm not in HMAC or not isinstance(settings.key, (bytes, str)) or "" in (settings.issuer,
                                                                                      settings.audience):
            return None  # (an empty iss or aud to require: PyJWT's rules for those are its own)
        try:  # PyJWT refuses a PEM or SSH key as an HMAC secret: then so must we, always
            key = jwt.algorithms.get_default_algorithms()[algorithm].prepare_key(settings.key)
        except jwt.PyJWTError:
            return None
        return cls(algorithm, key, settings)

    def _header_ok(self, segment: bytes) -> bool:
        known = self._headers.get(segment)
        if known is not None:
            return known
        try:
            header = json.loads(base64url_decode(segment))
        except ValueError:
            header = None
        ok = isinstance(header, dict) and header.get("alg") == self.algorithm and (
            header.keys() == {"alg"} or (header.keys() == {"alg", "typ"} and header["typ"] == "JWT"))
        if len(self._headers) < _MAX_HEADERS:
            self._headers[segment] = ok
        return ok

    def decode(self, token: bytes) -> dict[str, Any] | None:
        parts = token.split(b".")
        if len(parts) != 3:
            return None
        header, payload, signature = parts
        match = _SEGMENT.fullmatch
        if not (match(header) and match(payload) and match(signature)) or not self._header_ok(header):
            return None
        try:
            mac = base64url_decode(signature)
            expected = hmac.new(self.key, header + b"." + payload, self.digest).digest()
            if not hmac.compare_digest(mac, expected):
                return None
            claims = json.loads(base64url_decode(payload))
        except ValueError:  # (binascii.Error, JSONDecodeError, UnicodeDecodeError are ValueErrors)
            return None
        if not isinstance(claims, dict) or not self._claims_ok(claims):
            return None
        return claims

    def _claims_ok(self, claims: dict[str, Any]) -> bool:
        s = self.settings
        for claim in self.required:
            if claims.get(claim) is None:
                return False
        now = time.time()
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name, 0)
            if value.__class__ is not int:  # (a float, a string, a bool: PyJWT's int() rules)
                return False
        if claims["exp"] <= now - s.leeway:
            return False
        if "nbf" in claims and claims["nbf"] > now + s.leeway:
            return False
        if "iat" in claims and claims["iat"] > now + s.leeway:
            return False
        if s.issuer is not None and claims.get("iss") != s.issuer:  # (present: required above)
            return False
        if "iss" in claims and claims["iss"].__class__ is not str:
            return False
        aud = claims.get("aud")
        if s.audience is None:
            if "aud" in claims:
                return False
        elif not (aud == s.audience or (aud.__class__ is list and s.audience in aud
                                        and all(a.__class__ is str for a in aud))):
            return False
        return all(claims[name].__class__ is str for name in ("sub", "jti") if name in claims)
