"""--auth jwt, end to end: real tokens (PyJWT, real keys), a real server and Redis. The
buyer is the token's subject and nobody else; every refusal is a 401 (403 for a token not
valid for the sale) with its RFC 6750 challenge; a memoised token never outlives its exp."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from support.helpers import create_sale, stream_orders
from support.http_client import Conn, fetch, get, read_one

SECRET = "a-test-secret-of-at-least-32-bytes-long"


def token(key: Any = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    body = {"sub": "ann", "exp": int(time.time()) + 300, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm)


def with_token(path: str, value: str | None, method: str = "GET") -> bytes:
    auth = f"Authorization: Bearer {value}\r\n" if value is not None else ""
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}\r\n".encode()


@pytest.fixture
def hs_server(start_server, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SECKILL_JWT_SECRET", SECRET)
    return start_server("--auth", "jwt", "--jwt-issuer", "shop", "--jwt-audience", "sale")


def claims_ok(**more: Any) -> dict[str, Any]:
    return {"iss": "shop", "aud": "sale", **more}


def test_a_token_buys_for_its_subject_and_the_lookup_shows_only_its_orders(hs_server, redis_client) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 10)
    with Conn(hs_server.port) as conn:
        won = conn.request(with_token("/seckill/hat", token(**claims_ok())))
        assert (won.status, won.json()["result"]) == (200, "won"), won.body
        mine = conn.request(with_token("/seckill/hat/order", token(**claims_ok())))
        assert mine.json()["user"] == "ann" and mine.json()["orders"][0]["order"] == won.json()["order"]
        bob = conn.request(with_token("/seckill/hat/order", token(**claims_ok(sub="bob"))))
        assert (bob.status, bob.json()["result"]) == (404, "no_order")
    assert [o["user"] for o in stream_orders(redis_client, "hat")] == ["ann"]


@pytest.mark.parametrize("path", ["/seckill/hat?user=bob", "/seckill/hat/order?user=bob"])
def test_a_user_named_beside_a_token_is_refused(hs_server, redis_client, path: str) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 10)
    with Conn(hs_server.port) as conn:
        answer = conn.request(with_token(path, token(**claims_ok())))
    assert answer.status == 400 and "token's subject" in answer.json()["error"]
    assert stream_orders(redis_client, "hat") == []


def rsa_pem() -> tuple[Any, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


REFUSALS = [
    pytest.param(None, "invalid_request", id="no-token"),
    pytest.param("not.a.jwt", "invalid_token", id="garbage"),
    pytest.param(lambda: token("another-secret-of-at-least-32-bytes", **claims_ok()), "invalid_token",
                 id="forged-signature"),
    pytest.param(lambda: jwt.encode(claims_ok(sub="ann", exp=int(time.time()) + 60), None, algorithm="none"),
                 "invalid_token", id="alg-none"),
    pytest.param(lambda: token(rsa_pem()[0], "RS256", **claims_ok()), "invalid_token", id="another-algorithm"),
    pytest.param(lambda: token(exp=int(time.time()) - 6, **claims_ok()), "invalid_token", id="expired"),
    pytest.param(lambda: token(nbf=int(time.time()) + 60, **claims_ok()), "invalid_token", id="not-yet-valid"),
    pytest.param(lambda: token(iss="other", aud="sale"), "invalid_token", id="wrong-issuer"),
    pytest.param(lambda: token(iss="shop", aud="other"), "invalid_token", id="wrong-audience"),
    pytest.param(lambda: token(sub=None, **claims_ok()), "invalid_token", id="no-subject"),
    pytest.param(lambda: token(exp=None, **claims_ok()), "invalid_token", id="no-exp"),
    pytest.param(lambda: token(pad="x" * 10_000, **claims_ok()), "invalid_token", id="10kb-token"),
]


@pytest.mark.parametrize(("make", "error"), REFUSALS)
def test_every_bad_token_is_a_401_with_its_challenge(hs_server, redis_client, make: Any, error: str) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 10)
    value = make() if callable(make) else make
    with Conn(hs_server.port) as conn:
        answer = conn.request(with_token("/seckill/hat", value))
        assert answer.status == 401, answer.body
        assert answer.headers["www-authenticate"].startswith(f'Bearer error="{error}", error_description="')
        assert conn.request(get("/healthz")).status == 200  # the connection stays usable
    assert stream_orders(redis_client, "hat") == []


def test_an_rs256_public_key_used_as_an_hs256_secret_is_refused(start_server, redis_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    private, public = rsa_pem()
    key = tmp_path / "rs.pem"
    key.write_bytes(public)
    server = start_server("--auth", "jwt", "--jwt-algorithm", "RS256", "--jwt-key", str(key))
    create_sale(redis_client, "hat", 10)
    good = fetch(server.port, "GET", "/seckill/hat", headers={"Authorization": f"Bearer {token(private, 'RS256')}"})
    assert good.json()["result"] == "won"
    # The classic confusion: HS256 "signed" with the public key's PEM bytes.
    forged = _hs256_with_raw_key(public, {"sub": "eve", "exp": int(time.time()) + 60})
    answer = fetch(server.port, "GET", "/seckill/hat", headers={"Authorization": f"Bearer {forged}"})
    assert answer.status == 401
    assert [o["user"] for o in stream_orders(redis_client, "hat")] == ["ann"]


def _hs256_with_raw_key(key: bytes, claims: dict[str, Any]) -> str:
    """An HS256 token whose secret is `key` (PyJWT itself refuses to sign with a PEM)."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"." + b64(json.dumps(claims).encode())
    return (signing + b"." + b64(hmac.new(key, signing, hashlib.sha256).digest())).decode()


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
def test_ecdsa_and_eddsa_tokens_buy(start_server, redis_client, tmp_path: Path, algorithm: str) -> None:  # type: ignore[no-untyped-def]
    private = ec.generate_private_key(ec.SECP256R1()) if algorithm == "ES256" else ed25519.Ed25519PrivateKey.generate()
    key = tmp_path / "key.pem"
    key.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    server = start_server("--auth", "jwt", "--jwt-algorithm", algorithm, "--jwt-key", str(key))
    create_sale(redis_client, "hat", 10)
    answer = fetch(server.port, "GET", "/seckill/hat",
                   headers={"Authorization": f"Bearer {token(private, algorithm, sub='zoe')}"})
    assert answer.json()["result"] == "won", answer.body
    assert [o["user"] for o in stream_orders(redis_client, "hat")] == ["zoe"]


def test_an_items_claim_limits_the_token_to_its_sales(hs_server, redis_client) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 10)
    create_sale(redis_client, "cap", 10)
    value = token(items=["cap"], **claims_ok())
    with Conn(hs_server.port) as conn:
        refused = conn.request(with_token("/seckill/hat", value))
        assert refused.status == 403
        assert refused.headers["www-authenticate"].startswith('Bearer error="insufficient_scope"')
        assert conn.request(with_token("/seckill/cap", value)).json()["result"] == "won"


def test_a_memoised_token_is_refused_once_it_expires(hs_server, redis_client) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 100)
    # exp close: accepted now (memoised), refused once exp + the 5 s leeway has passed.
    exp = time.time() - 5 + 1.5
    value = token(exp=exp, **claims_ok())
    with Conn(hs_server.port) as conn:
        assert conn.request(with_token("/seckill/hat", value)).status == 200
        assert conn.request(with_token("/seckill/hat", value)).status == 200  # from the memo
        time.sleep(max(0.0, exp + 5 - time.time()) + 0.1)  # a clock deadline, not a synchronisation
        late = conn.request(with_token("/seckill/hat", value))
    assert late.status == 401 and "expired" in late.json()["error"]


def test_the_sold_out_gate_answers_before_any_token_is_read(hs_server, redis_client) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "gone", 1)
    with Conn(hs_server.port) as conn:
        assert conn.request(with_token("/seckill/gone", token(**claims_ok()))).status == 200
        assert conn.request(with_token("/seckill/gone", token(**claims_ok(sub="bob")))).status == 409
        # Sold out and known: the gate answers, whatever the token (a bad one too).
        assert conn.request(with_token("/seckill/gone", "garbage")).status == 409


def test_with_a_limit_exactly_one_win_per_subject_whatever_a_bot_sends(start_server, monkeypatch,  # type: ignore[no-untyped-def]
                                                                       redis_client: redis.Redis) -> None:
    monkeypatch.setenv("SECKILL_JWT_SECRET", SECRET)
    server = start_server("--auth", "jwt", workers=2)
    create_sale(redis_client, "hat", 500, per_user=1)
    buyers = [f"b{i}" for i in range(1000)]
    tokens = {b: token(sub=b) for b in buyers}

    async def run() -> list[tuple[int, str]]:
        async def one(names: list[str]) -> list[tuple[int, str]]:
            got = []
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                for name in names:
                    for _ in range(5):
                        writer.write(with_token("/seckill/hat", tokens[name]))
                        response, rest = await read_one(reader, b"")
                        assert rest == b""
                        got.append((response.status, str(response.json().get("result"))))
            finally:
                writer.close()
            return got

        groups = [buyers[i::200] for i in range(200)]
        results = await asyncio.gather(*(one(g) for g in groups))
        return [r for group in results for r in group]

    answers = asyncio.run(run())
    counts = Counter(result for _, result in answers)
    assert counts["won"] == 500, counts
    winners = [o["user"] for o in stream_orders(redis_client, "hat")]
    assert len(winners) == len(set(winners)) == 500
    # A bot with one token: whatever it sends, one subject, at most one win.
    bot = token(sub="bot")
    create_sale(redis_client, "cap", 10, per_user=1)
    tries = [f"/seckill/cap?user=u{i}" for i in range(5)] + ["/seckill/cap"] * 5
    statuses = [fetch(server.port, "GET", p, headers={"Authorization": f"Bearer {bot}"}).status for p in tries]
    assert statuses.count(200) == 1 and set(statuses[:5]) == {400}
    assert [o["user"] for o in stream_orders(redis_client, "cap")] == ["bot"]


@pytest.mark.parametrize(("args", "message"), [
    (["--auth", "jwt"], "HS256 needs its secret: set SECKILL_JWT_SECRET or pass --jwt-key FILE"),
    (["--auth", "jwt", "--jwt-algorithm", "ES256"], "ES256 needs --jwt-key PUBLIC_KEY.pem"),
    (["--auth", "jwt", "--jwt-algorithm", "ES256", "--jwt-key", "{junk}"], "is not a PEM public key"),
    (["--auth", "jwt", "--jwt-key", "/nonexistent/secret"], "No such file or directory"),
    (["--auth", "jwt", "--jwt-algorithm", "ES256", "--jwt-key", "{jwks}"], "is not a JWKS with a key for ES256"),
    (["--auth", "jwt", "--jwt-algorithm", "HS1"], "invalid choice"),
])
def test_a_bad_auth_setting_is_one_line_and_exit_2(tmp_path: Path, monkeypatch, args: list[str],  # type: ignore[no-untyped-def]
                                                   message: str) -> None:
    import subprocess
    import sys

    from support.helpers import ROOT

    monkeypatch.delenv("SECKILL_JWT_SECRET", raising=False)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]}')  # no ES256 key
    done = subprocess.run([sys.executable, str(ROOT / "seckill_server.py"), "--port", "1",
                           *[a.replace("{junk}", str(junk)).replace("{jwks}", str(jwks)) for a in args]],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_with_auth_cookie_the_token_may_come_in_a_cookie(start_server, redis_client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SECKILL_JWT_SECRET", SECRET)
    server = start_server("--auth", "jwt", "--auth-cookie", "sale_token")
    create_sale(redis_client, "hat", 10)
    good = token(sub="cora")
    with Conn(server.port) as conn:
        cookie = f"GET /seckill/hat HTTP/1.1\r\nHost: t\r\nCookie: theme=dark; sale_token={good}; x=1\r\n\r\n"
        assert conn.request(cookie.encode()).json()["result"] == "won"
        other = "GET /seckill/hat HTTP/1.1\r\nHost: t\r\nCookie: session=abc\r\n\r\n"
        refused = conn.request(other.encode())
        assert refused.status == 401 and 'error="invalid_request"' in refused.headers["www-authenticate"]
        forged = f"GET /seckill/hat HTTP/1.1\r\nHost: t\r\nCookie: sale_token={token('x' * 40, sub='eve')}\r\n\r\n"
        assert conn.request(forged.encode()).status == 401
    assert [o["user"] for o in stream_orders(redis_client, "hat")] == ["cora"]


def test_an_idempotency_key_is_scoped_to_the_tokens_subject(hs_server, redis_client) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 10)

    def keyed(sub: str) -> bytes:
        return (f"GET /seckill/hat HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token(**claims_ok(sub=sub))}\r\n"
                'Idempotency-Key: "retry-1"\r\n\r\n').encode()

    with Conn(hs_server.port) as conn:
        first, again, bob = (conn.request(keyed(sub)) for sub in ("ann", "ann", "bob"))
        anonymous = conn.request(b'GET /seckill/hat HTTP/1.1\r\nHost: t\r\nIdempotency-Key: "retry-1"\r\n\r\n')
    assert first.json()["result"] == "won" and again.body == first.body
    assert (bob.status, bob.json()["result"]) == (422, "key_reused")
    assert anonymous.status == 401  # the key proves nothing: the token is still required
    assert [o["user"] for o in stream_orders(redis_client, "hat")] == ["ann"]


# --- JWKS and key rotation on SIGHUP -----------------------------------------------------

def es_jwk(kid: str) -> tuple[Any, dict[str, Any]]:
    """An ES256 private key and its public JWK named `kid`."""
    import json

    private = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    return private, {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}


def es_token(private: Any, kid: str | None, sub: str = "ann") -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 300}, private, algorithm="ES256",
                      headers={"kid": kid} if kid else None)


def write_jwks(path: Path, *jwks: dict[str, Any]) -> None:
    import json
    import os

    (path.parent / "next").write_text(json.dumps({"keys": list(jwks)}))
    os.replace(path.parent / "next", path)  # as a deploy would: never half a file


def test_a_jwks_file_serves_tokens_by_kid(start_server, redis_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 10)
    (a, a_jwk), (b, b_jwk) = es_jwk("a"), es_jwk("b")
    rs_private, _ = rsa_pem()
    rs_jwk = {**__import__("json").loads(jwt.algorithms.RSAAlgorithm.to_jwk(rs_private.public_key())),
              "kid": "r", "alg": "RS256"}
    keys = tmp_path / "jwks.json"
    write_jwks(keys, a_jwk, b_jwk, rs_jwk)
    server = start_server("--auth", "jwt", "--jwt-algorithm", "ES256", "--jwt-key", str(keys))
    with Conn(server.port) as conn:
        by_a = conn.request(with_token("/seckill/hat", es_token(a, "a")))
        by_b = conn.request(with_token("/seckill/hat", es_token(b, "b", sub="bob")))
        wrong_kid = conn.request(with_token("/seckill/hat", es_token(a, "b")))
        unknown = conn.request(with_token("/seckill/hat", es_token(a, "zz")))
        no_kid = conn.request(with_token("/seckill/hat", es_token(a, None)))  # two ES256 keys: which?
        rs = conn.request(with_token("/seckill/hat", jwt.encode({"sub": "x", "exp": int(time.time()) + 60},
                                                                rs_private, "RS256", headers={"kid": "r"})))
    assert (by_a.status, by_b.status) == (200, 200)
    assert [r.status for r in (wrong_kid, unknown, no_kid, rs)] == [401] * 4
    assert 'error="invalid_token"' in unknown.headers["www-authenticate"]
    assert sorted(o["user"] for o in stream_orders(redis_client, "hat")) == ["ann", "bob"]


def test_sighup_rotates_the_keys_under_load_without_a_failed_request(start_server, redis_client,  # type: ignore[no-untyped-def]
                                                                   tmp_path: Path) -> None:
    import os
    import signal

    create_sale(redis_client, "hat", 10**9)
    (old, old_jwk), (new, new_jwk) = es_jwk("old"), es_jwk("new")
    keys = tmp_path / "jwks.json"
    write_jwks(keys, old_jwk)
    server = start_server("--auth", "jwt", "--jwt-algorithm", "ES256", "--jwt-key", str(keys), workers=2)
    old_tokens = [es_token(old, "old", sub=f"o{i}") for i in range(20)]
    new_tokens = [es_token(new, "new", sub=f"n{i}") for i in range(20)]

    def reloads() -> int:
        return sum("SIGHUP: reloaded" in line for line in server.lines)

    async def load(tokens: list[str], until: asyncio.Event) -> Counter[int]:
        statuses: Counter[int] = Counter()

        async def one_connection(offset: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            buf, i = b"", offset
            while not until.is_set():  # keep-alive connections that live across the reload
                writer.write(with_token("/seckill/hat", tokens[i % len(tokens)]))
                response, buf = await read_one(reader, buf)
                statuses[response.status] += 1
                i += 1
            writer.close()

        await asyncio.gather(*(one_connection(n) for n in range(8)))
        return statuses

    async def rotate() -> tuple[Counter[int], Counter[int], int]:
        stop_old, stop_new = asyncio.Event(), asyncio.Event()
        with_old = asyncio.create_task(load(old_tokens, stop_old))
        await asyncio.sleep(0.3)  # (load runs meanwhile: the reload lands in the middle of it)
        write_jwks(keys, old_jwk, new_jwk)
        os.kill(server.proc.pid, signal.SIGHUP)
        await asyncio.to_thread(server.wait_for, lambda lines: reloads() == 2)
        with_new = asyncio.create_task(load(new_tokens, stop_new))
        await asyncio.sleep(0.3)
        stop_old.set(), stop_new.set()
        during = await with_old, await with_new
        write_jwks(keys, new_jwk)  # the old key retired
        os.kill(server.proc.pid, signal.SIGHUP)
        await asyncio.to_thread(server.wait_for, lambda lines: reloads() == 4)
        with Conn(server.port) as conn:
            retired = conn.request(with_token("/seckill/hat", old_tokens[0])).status  # memoised before
        return during[0], during[1], retired

    by_old, by_new, retired = asyncio.run(rotate())
    assert set(by_old) == {200} and set(by_new) == {200}, (by_old, by_new)
    assert sum(by_old.values()) > 20 and sum(by_new.values()) > 20
    assert retired == 401
    assert server.proc.poll() is None and server.listening_count() == 2  # no worker was lost


def test_a_bad_key_file_on_sighup_keeps_the_old_keys(start_server, redis_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal

    create_sale(redis_client, "hat", 10)
    (a, a_jwk) = es_jwk("a")
    keys = tmp_path / "jwks.json"
    write_jwks(keys, a_jwk)
    server = start_server("--auth", "jwt", "--jwt-algorithm", "ES256", "--jwt-key", str(keys))
    keys.write_text('{"keys": [')
    os.kill(server.proc.pid, signal.SIGHUP)
    server.wait_for(lambda lines: any("keys not reloaded, the old ones stay" in line for line in lines))
    with Conn(server.port) as conn:
        assert conn.request(with_token("/seckill/hat", es_token(a, "a"))).status == 200


def test_sighup_without_auth_changes_nothing(start_server, redis_client) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal

    server = start_server(workers=2)
    os.kill(server.proc.pid, signal.SIGHUP)
    server.wait_for(lambda lines: sum("nothing to reload" in line for line in lines) == 2)
    assert server.proc.poll() is None and server.listening_count() == 2
