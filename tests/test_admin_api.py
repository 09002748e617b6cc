"""The admin HTTP API: auth, every validation error, sales, pagination (real Redis)."""

from __future__ import annotations

import pytest
import redis

import sale_store
from conftest import create_sale, stream_events
from http_client import TOKEN, admin, buy, fetch


def test_without_a_token_admin_does_not_exist(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    for path in ("/admin/items", "/admin/items/hat", "/admin/"):
        assert admin(server.port, "GET", path).status == 404
        assert admin(server.port, "GET", path, token=None).status == 404


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Bearer " + TOKEN[:-1], "Basic " + TOKEN,
                                           "Bearer", TOKEN, "Bearer " + TOKEN + "x"])
def test_wrong_or_missing_token_is_401(start_server, authorization: str | None) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--admin-token", TOKEN)
    headers = {} if authorization is None else {"Authorization": authorization}
    response = admin(server.port, "GET", "/admin/items", token=None, headers=headers)
    assert response.status == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert admin(server.port, "GET", "/admin/items").status == 200


def test_token_from_the_environment_never_logged(start_server, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SECKILL_ADMIN_TOKEN", TOKEN)
    server = start_server("--log-level", "debug")
    assert admin(server.port, "GET", "/admin/items").status == 200
    assert admin(server.port, "GET", "/admin/items", token="nope").status == 401
    server.stop()
    assert not [line for line in server.lines if TOKEN in line]


def test_create_update_get_list_delete(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--admin-token", TOKEN)
    port = server.port
    made = admin(port, "PUT", "/admin/items/hat", {"stock": 3, "per_user": 1, "hold_seconds": 60,
                                                    "starts_at": "2020-01-01T00:00:00Z", "ends_at": None})
    assert made.status == 201, made.body
    assert made.json()["stock"] == 3 and made.json()["hold_seconds"] == 60
    assert made.json()["starts_at"] == "2020-01-01T00:00:00Z" and made.json()["ends_at"] is None
    assert buy(port, "hat", "ann")["state"] == "pending"
    updated = admin(port, "PUT", "/admin/items/hat", {"stock": 5, "starts_at": None})
    assert updated.status == 200
    one = admin(port, "GET", "/admin/items/hat").json()
    assert {k: one[k] for k in ("stock", "sold", "remaining", "pending", "per_user", "starts_at")} == {
        "stock": 5, "sold": 1, "remaining": 4, "pending": 1, "per_user": 1, "starts_at": None}
    too_low = admin(port, "PUT", "/admin/items/hat", {"stock": 0})
    assert too_low.status == 409 and "below" in too_low.json()["error"]
    assert admin(port, "PUT", "/admin/items/cap", {"stock": 7}).status == 201
    listed = admin(port, "GET", "/admin/items").json()["items"]
    assert [(s["item"], s["stock"]) for s in listed] == [("cap", 7), ("hat", 5)]
    assert admin(port, "DELETE", "/admin/items/cap").json() == {"deleted": "cap"}
    assert admin(port, "DELETE", "/admin/items/cap").status == 404
    assert admin(port, "GET", "/admin/items/cap").status == 404
    assert [s["item"] for s in admin(port, "GET", "/admin/items").json()["items"]] == ["hat"]
    assert not redis_client.exists(sale_store.sale_key("cap"), sale_store.orders_key("cap"))
    assert fetch(port, "GET", "/seckill/cap?user=x").status == 404


@pytest.mark.parametrize(("body", "field"), [
    (b"{not json", "JSON"),
    (b"[1, 2]", "object"),
    (b'{"stock": -1}', "stock"),
    (b'{"stock": "5"}', "stock"),
    (b'{"stock": 1.5}', "stock"),
    (b'{"stock": true}', "stock"),
    (b'{"stock": 1000000000000001}', "stock"),
    (b'{"stock": 5, "per_user": -1}', "per_user"),
    (b'{"stock": 5, "per_user": 1001}', "per_user"),
    (b'{"stock": 5, "hold_seconds": -5}', "hold_seconds"),
    (b'{"stock": 5, "hold_seconds": "60"}', "hold_seconds"),
    (b'{"stock": 5, "starts_at": "tomorrow"}', "starts_at"),
    (b'{"stock": 5, "starts_at": 1700000000}', "starts_at"),
    (b'{"stock": 5, "ends_at": "2030-13-01T00:00:00Z"}', "ends_at"),
    (b'{"stock": 5, "starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}', "ends_at"),
    (b'{"stock": 5, "colour": "red"}', "colour"),
    (b'{"per_user": 1}', "stock"),  # a new sale needs its stock
])
def test_bad_bodies_are_400_naming_the_field(start_server, redis_client: redis.Redis,  # type: ignore[no-untyped-def]
                                             body: bytes, field: str) -> None:
    server = start_server("--admin-token", TOKEN)
    response = admin(server.port, "PUT", "/admin/items/hat", raw=body)
    assert response.status == 400, response.body
    assert field in response.json()["error"]
    assert not redis_client.exists(sale_store.sale_key("hat"))  # nothing half made


def test_bad_requests_around_the_body(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 5)
    server = start_server("--admin-token", TOKEN)
    port = server.port
    wrong_type = admin(port, "PUT", "/admin/items/hat", raw=b"stock=5",
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert wrong_type.status == 415
    assert admin(port, "PUT", "/admin/items/hat", {"stock": -3}).json()["error"].startswith("stock")
    assert admin(port, "PUT", "/admin/items/bad%20name", {"stock": 1}).status == 400
    assert admin(port, "POST", "/admin/items").status == 405
    assert admin(port, "PATCH", "/admin/items/hat", {"stock": 1}).status == 405
    assert admin(port, "GET", "/admin/items/hat/orders/x-1/cancel").status == 405
    assert admin(port, "GET", "/admin/nothing").status == 404
    assert admin(port, "GET", "/admin/items/hat/whatever").status == 404
    assert admin(port, "POST", "/admin/items/hat/orders/x-1/refund").status == 404
    assert admin(port, "POST", "/admin/items/hat/orders/not-an-id!/cancel").status == 400
    assert admin(port, "POST", "/admin/items/hat/orders/x-999/cancel").status == 404
    assert admin(port, "POST", "/admin/items/ghost/orders/x-1/cancel").status == 404
    assert redis_client.hget(sale_store.sale_key("hat"), "stock") == b"5"


def test_orders_paginated_oldest_first(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 25)
    server = start_server("--admin-token", TOKEN)
    port = server.port
    won = [buy(port, "hat", f"u{i}") for i in range(25)]
    assert all(w["result"] == "won" for w in won)
    cancelled = won[7]["order"]
    assert admin(port, "POST", f"/admin/items/hat/orders/{cancelled}/cancel").status == 200

    pages, after = [], None
    while True:
        query = "?limit=10" + (f"&after={after}" if after else "")
        page = admin(port, "GET", f"/admin/items/hat/orders{query}")
        assert page.status == 200
        pages.append(page.json()["orders"])
        after = page.json()["next"]
        if after is None:
            break
    assert [len(p) for p in pages] == [10, 10, 5]
    listed = [o for p in pages for o in p]
    assert [o["order"] for o in listed] == [w["order"] for w in won]  # oldest first, each once
    assert [o["user"] for o in listed] == [f"u{i}" for i in range(25)]
    assert {o["order"]: o["state"] for o in listed if o["state"] != "won"} == {cancelled: "cancelled"}
    # The stream has the 25 wins and the one cancellation, which did not change the listing's order.
    assert [e["event"] for e in stream_events(redis_client, "hat")].count("cancelled") == 1


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=abc", "after=garbage!", "page=2", "limit=%ff"])
def test_bad_pagination_is_400(start_server, redis_client: redis.Redis, query: str) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 5)
    server = start_server("--admin-token", TOKEN)
    response = admin(server.port, "GET", f"/admin/items/hat/orders?{query}")
    assert response.status == 400
    assert query.split("=")[0] in response.json()["error"] or "query" in response.json()["error"]
