"""The admin HTTP API: auth, every validation error, sales, pagination (real Redis)."""

from __future__ import annotations

import pytest
import redis

from seckill.sales import sale_store
from support.helpers import create_sale, stream_events
from support.http_client import TOKEN, admin, buy, fetch


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


# Each a bad value of `after` or `limit`: 400 naming the parameter, never a crash.
BAD_PARAMS = [
    pytest.param("after=x-%C2%B2", id="after-superscript-two"),  # '²'.isdigit() is true, int('²') raises
    pytest.param("limit=%C2%B2", id="limit-superscript-two"),
    pytest.param("after=x-%D9%A1", id="after-arabic-indic-one"),
    pytest.param("limit=%D9%A1%D9%A0", id="limit-arabic-indic-ten"),
    pytest.param("after=%2B1", id="after-plus-one"),
    pytest.param("limit=%2B1", id="limit-plus-one"),
    pytest.param("limit=+1", id="limit-space-one"),  # (a form's + is a space)
    pytest.param("after=-1", id="after-minus-one"),
    pytest.param("limit=-1", id="limit-minus-one"),
    pytest.param("after=1e3", id="after-exponent"),
    pytest.param("limit=1e3", id="limit-exponent"),
    pytest.param("after=", id="after-empty"),
    pytest.param("limit=", id="limit-empty"),
    pytest.param("after=x-" + "1" * 19, id="after-19-digits"),
    pytest.param("limit=" + "1" * 19, id="limit-19-digits"),
    pytest.param("after=%C3%A9-1", id="after-non-ascii-tag"),
    pytest.param("limit=%C3%A9", id="limit-non-ascii"),
    pytest.param("limit=10&limit=20", id="limit-twice"),
]


@pytest.mark.parametrize("query", BAD_PARAMS)
def test_bad_query_parameters_are_400_naming_them(start_server, redis_client: redis.Redis, query: str) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "hat", 5)
    server = start_server("--admin-token", TOKEN)
    response = admin(server.port, "GET", f"/admin/items/hat/orders?{query}")
    assert response.status == 400, response.body
    assert query.split("=")[0] in response.json()["error"]
    assert admin(server.port, "GET", "/admin/items/hat/orders?limit=5").status == 200  # still serving


def test_json_nested_2000_deep_is_400(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--admin-token", TOKEN)
    for body in (b'{"stock": ' + b"[" * 2000 + b"]" * 2000 + b"}", b"[" * 2000 + b"]" * 2000):
        response = admin(server.port, "PUT", "/admin/items/hat", raw=body)
        assert response.status == 400, response.body
        assert "JSON" in response.json()["error"]
    assert not redis_client.exists(sale_store.sale_key("hat"))
    assert admin(server.port, "PUT", "/admin/items/hat", {"stock": 1}).status == 201


@pytest.mark.parametrize("when", [
    pytest.param("9999-12-31T23:59:59-01:00", id="year-10000-in-utc"),
    pytest.param("9999-12-31T23:59:59.999-00:01", id="a-minute-past-the-end"),
    pytest.param("+10000-01-01T00:00:00Z", id="five-digit-year"),
    pytest.param("1999-12-31T23:59:59.999Z", id="before-2000"),
    pytest.param("2000-01-01T00:30:00+01:00", id="before-2000-in-utc"),
    pytest.param("0001-01-01T00:00:00+01:00", id="year-0-in-utc"),
])
def test_times_out_of_range_are_400_naming_the_field(start_server, redis_client: redis.Redis,  # type: ignore[no-untyped-def]
                                                     when: str) -> None:
    server = start_server("--admin-token", TOKEN)
    for field in ("starts_at", "ends_at"):
        made = admin(server.port, "PUT", "/admin/items/hat", {"stock": 5, field: when})
        assert made.status == 400 and made.json()["error"].startswith(f"{field} must be"), made.body
        assert not redis_client.exists(sale_store.sale_key("hat"))
    create_sale(redis_client, "cap", 5)
    for field in ("starts_at", "ends_at"):
        updated = admin(server.port, "PUT", "/admin/items/cap", {field: when})
        assert updated.status == 400 and field in updated.json()["error"], updated.body
    assert admin(server.port, "GET", "/admin/items/cap").json()["ends_at"] is None


def test_a_stored_time_out_of_range_still_answers(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    """A sale whose hash already holds a time nothing can print (an older version took
    them) answers every read, and can be updated."""
    year_10000 = b"253402304399000"  # 9999-12-31T23:59:59-01:00
    create_sale(redis_client, "far", 5)
    redis_client.hset(sale_store.sale_key("far"), "ends_at", year_10000)
    create_sale(redis_client, "junk", 5)
    redis_client.hset(sale_store.sale_key("junk"), mapping={"starts_at": "soon", "ends_at": "-1e999"})
    server = start_server("--admin-token", TOKEN)
    port = server.port
    assert fetch(port, "GET", "/stock/far").json() == {"item": "far", "stock": 5, "sold": 0, "remaining": 5}
    assert fetch(port, "GET", "/stock/junk").status == 200
    far = admin(port, "GET", "/admin/items/far")
    assert far.status == 200 and far.json()["ends_at"] == "9999-12-31T23:59:59.999Z"  # clamped
    junk = admin(port, "GET", "/admin/items/junk").json()
    assert (junk["starts_at"], junk["ends_at"]) == (None, "0001-01-01T00:00:00Z")  # no number; clamped
    listed = admin(port, "GET", "/admin/items").json()["items"]
    assert [(s["item"], s["ends_at"]) for s in listed] == [
        ("far", "9999-12-31T23:59:59.999Z"), ("junk", "0001-01-01T00:00:00Z")]
    updated = admin(port, "PUT", "/admin/items/far", {"stock": 6})
    assert updated.status == 200 and updated.json()["stock"] == 6
    assert buy(port, "far", "ann")["result"] == "won"  # the admission script reads it as it did
