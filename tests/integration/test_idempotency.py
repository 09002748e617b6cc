"""Idempotency-Key end to end (app/idempotency.py): a keyed purchase's retry gets the same
win and changes nothing, from any worker, across a Redis restart from its AOF; a key is
one buyer's and one sale's; malformed keys are 400s; records expire."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
import redis

from support.helpers import OwnRedis, create_sale, poll, stream_orders
from support.http_client import Conn, read_one


def keyed(path: str, key: str | None, *headers: str) -> bytes:
    field = f'Idempotency-Key: "{key}"\r\n' if key is not None else ""
    return (f"GET {path} HTTP/1.1\r\nHost: t\r\n{field}" + "".join(f"{h}\r\n" for h in headers) + "\r\n").encode()


def test_a_retry_gets_the_same_win_and_changes_nothing(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 10)
    server = start_server()
    with Conn(server.port) as conn:
        first = conn.request(keyed("/seckill/hat?user=ann", "k-1"))
        again = conn.request(keyed("/seckill/hat?user=ann", "k-1"))
        other = conn.request(keyed("/seckill/hat?user=ann", "k-2"))
    assert first.status == 200 and first.json()["result"] == "won"
    assert "idempotent-replayed" not in first.headers
    assert (again.status, again.body) == (200, first.body)
    assert again.headers["idempotent-replayed"] == "true"
    assert other.json()["order"] != first.json()["order"]  # a new key is a new purchase
    assert len(stream_orders(redis_client, "hat")) == 2
    assert int(redis_client.hget("seckill:{hat}", "sold")) == 2


def test_the_retry_of_a_win_is_answered_after_the_sale_sold_out(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 1)
    server = start_server("--gate-interval", "60")
    with Conn(server.port) as conn:
        won = conn.request(keyed("/seckill/hat?user=ann", "only"))
        sold_out = conn.request(keyed("/seckill/hat?user=bob", "bobs"))
        gated = conn.request(keyed("/seckill/hat?user=cat", None))  # the sold-out gate answers
        again = conn.request(keyed("/seckill/hat?user=ann", "only"))
    assert won.json()["result"] == "won" and sold_out.json()["result"] == "sold_out"
    assert gated.json()["result"] == "sold_out"
    assert (again.status, again.body) == (200, won.body)


@pytest.mark.parametrize("second", [
    pytest.param(("/seckill/hat?user=bob", "k"), id="another-buyer"),
    pytest.param(("/seckill/cap?user=ann", "k"), id="another-sale"),
])
def test_a_key_that_won_is_its_buyers_in_its_sale_only(start_server, redis_client: redis.Redis,  # type: ignore[no-untyped-def]
                                                      second: tuple[str, str]) -> None:
    create_sale(redis_client, "hat", 10)
    create_sale(redis_client, "cap", 10)
    server = start_server()
    with Conn(server.port) as conn:
        assert conn.request(keyed("/seckill/hat?user=ann", "k")).status == 200
        refused = conn.request(keyed(*second))
    assert (refused.status, refused.json()["result"]) == (422, "key_reused")
    assert "order" not in refused.json()  # nothing of ann's purchase is shown
    assert len(stream_orders(redis_client, "hat")) + len(stream_orders(redis_client, "cap")) == 1


def test_a_key_that_won_nothing_is_decided_again(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 1, sold=1)
    server = start_server("--gate-interval", "0")
    with Conn(server.port) as conn:
        first = conn.request(keyed("/seckill/hat?user=ann", "k"))
        redis_client.hset("seckill:{hat}", "stock", 2)  # a restock
        again = conn.request(keyed("/seckill/hat?user=ann", "k"))
    assert first.json()["result"] == "sold_out"
    assert again.json()["result"] == "won" and "idempotent-replayed" not in again.headers


@pytest.mark.parametrize("field", [
    'Idempotency-Key: k-1',  # a token, not a string
    'Idempotency-Key: ""',
    'Idempotency-Key: "' + "x" * 65 + '"',
    'Idempotency-Key: "a"b"',
    'Idempotency-Key: "tab\there"',
    'Idempotency-Key: "a";p=1',  # parameters
    'Idempotency-Key: "a"\r\nIdempotency-Key: "b"',  # two keys
    'Idempotency-Key: "\\x"',  # an escape sf-strings do not have
])
def test_a_malformed_key_is_a_400_and_buys_nothing(start_server, redis_client: redis.Redis, field: str) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 10)
    server = start_server()
    with Conn(server.port) as conn:
        answer = conn.request(f"GET /seckill/hat?user=ann HTTP/1.1\r\nHost: t\r\n{field}\r\n\r\n".encode())
    assert answer.status == 400 and "Idempotency-Key" in answer.json()["error"], answer.body
    assert stream_orders(redis_client, "hat") == []


def test_escapes_and_64_characters_are_one_key(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 10)
    server = start_server()
    key = 'a\\"b\\\\' + "c" * 60  # a"b\ and 60 c's: 64 characters
    with Conn(server.port) as conn:
        first = conn.request(keyed("/seckill/hat?user=ann", key))
        again = conn.request(keyed("/seckill/hat?user=ann", key))
    assert first.status == 200 and again.body == first.body
    assert redis_client.exists('seckill:{hat}:idem:a"b\\' + "c" * 60)


def test_the_same_key_from_ten_connections_on_two_workers_buys_once(start_server,  # type: ignore[no-untyped-def]
                                                                    redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 100)
    server = start_server(workers=2)

    async def at_once() -> list[tuple[int, bytes]]:
        conns = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(10)]
        request = keyed("/seckill/hat?user=ann", "same")
        for _, writer in conns:  # every request is sent before any answer is read
            writer.write(request)
        answers = []
        for reader, writer in conns:
            response, _ = await read_one(reader, b"")
            answers.append((response.status, response.body))
            writer.close()
        return answers

    answers = asyncio.run(at_once())
    orders = stream_orders(redis_client, "hat")
    assert len(orders) == 1 and int(redis_client.hget("seckill:{hat}", "sold")) == 1
    won = next(body for status, body in answers if status == 200)
    assert f'"order":"{orders[0]["order"]}"'.encode() in won
    statuses = Counter(status for status, _ in answers)
    assert set(statuses) <= {200, 409}, answers
    assert all(body == won for status, body in answers if status == 200)  # one order id, whoever answered


def test_a_retry_after_redis_restarts_from_its_aof_gets_the_stored_win(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    own = OwnRedis(tmp_path / "r", appendfsync="always")
    own.start()
    client = redis.Redis.from_url(own.url)
    try:
        create_sale(client, "hat", 10)
        server = start_server("--redis-timeout", "0.5", redis_url=own.url)
        with Conn(server.port) as conn:
            first = conn.request(keyed("/seckill/hat?user=ann", "k"))
        own.kill()  # kill -9: only what the AOF holds comes back
        own.restart()
        with Conn(server.port) as conn:
            again = poll(lambda: (a := conn.request(keyed("/seckill/hat?user=ann", "k"))).status != 503 and a,
                         "a purchase answered after the restart")
        assert first.json()["result"] == "won"
        assert (again.status, again.body) == (200, first.body)
        assert int(client.hget("seckill:{hat}", "sold")) == 1
    finally:
        client.close()
        own.stop()


def test_records_expire_after_the_ttl(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 10)
    server = start_server("--idempotency-ttl", "1")
    with Conn(server.port) as conn:
        first = conn.request(keyed("/seckill/hat?user=ann", "k"))
        assert 0 < redis_client.pttl("seckill:{hat}:idem:k") <= 1000
        assert 0 < redis_client.pttl("seckill:idem:k") <= 1000
        poll(lambda: not redis_client.exists("seckill:{hat}:idem:k"), "the record expired", timeout=5)
        again = conn.request(keyed("/seckill/hat?user=ann", "k"))
    assert again.json()["order"] != first.json()["order"]  # a new purchase once forgotten


def test_metrics_count_replays_apart_from_wins(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 10)
    server = start_server()
    with Conn(server.port) as conn:
        for _ in range(3):
            conn.request(keyed("/seckill/hat?user=ann", "k"))
        conn.request(keyed("/seckill/hat?user=bob", "k"))
        text = conn.request(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").body.decode()
    assert 'seckill_purchases_total{item="hat",result="won"} 1.0' in text
    assert 'seckill_purchases_total{item="hat",result="replayed"} 2.0' in text
    assert 'seckill_purchases_total{item="hat",result="key_reused"} 1.0' in text


def test_without_the_header_nothing_is_recorded(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 10)
    server = start_server()
    with Conn(server.port) as conn:
        conn.request(keyed("/seckill/hat?user=ann", None))
    assert not [k for k in redis_client.scan_iter("*idem*")]


def test_a_record_of_a_deleted_sale_does_not_replay_into_its_successor(start_server,  # type: ignore[no-untyped-def]
                                                                       redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 10)
    server = start_server("--gate-interval", "0")
    with Conn(server.port) as conn:
        first = conn.request(keyed("/seckill/hat?user=ann", "k"))
        redis_client.delete(*[k for k in redis_client.scan_iter("seckill:{hat}*") if b":idem:" not in k])
        def ms() -> int:  # the new sale's tag is Redis time in ms: wait for a new one
            seconds, micros = redis_client.time()
            return int(seconds) * 1000 + int(micros) // 1000
        then = ms()
        poll(lambda: ms() > then, "a millisecond")
        create_sale(redis_client, "hat", 10)
        again = conn.request(keyed("/seckill/hat?user=ann", "k"))
    assert redis_client.exists("seckill:{hat}:idem:k")
    assert again.json()["result"] == "won" and again.json()["order"] != first.json()["order"]
    assert "idempotent-replayed" not in again.headers
