"""The front door, tried as a new user would: the CLI where the README says it is, the
demo after a second `make run`, --help, `orders | head`, a multipart form, the log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

from support.helpers import ROOT, admit, create_sale
from support.http_client import TOKEN, fetch


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "seckill_server.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_the_console_script_is_where_the_readme_says() -> None:
    # README: after `make run`, the CLI is .venv/bin/seckill-server (the venv the tests run in).
    script = Path(sys.executable).parent / "seckill-server"
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout.strip()) == (0, "seckill 0.1.0"), done
    assert ".venv/bin/seckill-server" in (ROOT / "README.md").read_text()


def test_help_shows_no_default_for_a_switch() -> None:
    done = run("--help")
    assert done.returncode == 0
    assert "(default: True)" not in done.stdout and "(default: False)" not in done.stdout, done.stdout
    assert "--reset-demo" in done.stdout
    assert "(default: 5000)" in done.stdout  # values keep theirs


def test_a_sold_out_demo_says_so_and_reset_demo_sells_it_again(start_server, own_redis) -> None:  # type: ignore[no-untyped-def]
    own, r = own_redis
    first = start_server(redis_url=own.url, demo=True)
    for i in range(5):  # the demo: stock 100, 95 sold
        assert fetch(first.port, "GET", f"/limit?user=u{i}").json()["result"] == "won"
    assert fetch(first.port, "GET", "/limit").json()["result"] == "sold_out"
    assert first.stop() == 0

    again = start_server(redis_url=own.url, demo=True)  # a second `make run`
    assert fetch(again.port, "GET", "/limit").json()["result"] == "sold_out"
    assert again.stop() == 0
    assert "the demo sale 'limit' is sold out (100 of 100, from an earlier run)" in again.log
    assert "--reset-demo" in again.log

    reset = start_server("--reset-demo", redis_url=own.url, demo=True)
    assert fetch(reset.port, "GET", "/limit?user=new").json()["result"] == "won"
    assert reset.stop() == 0
    assert "created the demo sale 'limit': stock 100, 95 already sold (--reset-demo)" in reset.log
    assert int(r.hget("seckill:{limit}", "sold") or 0) == 96


def test_orders_into_a_closed_pipe_ends_quietly_with_0(redis_client: redis.Redis, redis_server) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "piped", 3000)
    for batch in range(3):  # 3000 orders: far more than a pipe buffer holds
        admit(redis_client, "piped", f"b{batch}", [f"user-{batch}-{i}" for i in range(1000)])
    with subprocess.Popen([sys.executable, str(ROOT / "seckill_server.py"), "orders", "piped",
                           "--redis", redis_server.url],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT) as process:
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.readline()  # `| head -1`
        assert b'"event": "won"' in first
        process.stdout.close()
        stderr = process.stderr.read().decode()
        assert process.wait(timeout=30) == 0, stderr
    assert stderr == ""


def test_a_multipart_form_is_415_naming_what_is_accepted(start_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    create_sale(redis_client, "mp", 5)
    server = start_server()
    body = (b"--X\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\neve\r\n--X--\r\n")
    answer = fetch(server.port, "POST", "/seckill/mp", body,
                   headers={"Content-Type": "multipart/form-data; boundary=X"})
    assert answer.status == 415
    error = answer.json()["error"]
    assert "application/x-www-form-urlencoded" in error and "application/json" in error, error
    assert "multipart/form-data" in error and "curl -d" in error, error
    other = fetch(server.port, "POST", "/seckill/mp", b"user=eve", headers={"Content-Type": "text/plain"})
    assert other.status == 415
    assert other.json()["error"] == "body must be application/x-www-form-urlencoded or application/json"


def test_the_log_names_the_dashboard_and_the_admin_api(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--dashboard", "--admin-token", TOKEN)
    assert server.stop() == 0
    where = f"http://127.0.0.1:{server.port}"
    assert f"admin API at {where}/admin/items" in server.log
    assert f"dashboard at {where}/dashboard (its data needs the admin token)" in server.log
    assert TOKEN not in server.log
    plain = start_server()
    assert plain.stop() == 0
    assert "admin API at" not in plain.log and "dashboard at" not in plain.log
