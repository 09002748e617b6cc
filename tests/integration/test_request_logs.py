"""--access-log (nginx's combined format), --result-log (a JSON line per purchase decision),
their rotation, and --forwarded-allow-ips."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from seckill.ops import request_logs
from support.helpers import ROOT, create_sale, poll
from support.http_client import Conn, fetch, hammer

# nginx's combined format: $remote_addr - $remote_user [$time_local] "$request" $status
# $body_bytes_sent "$http_referer" "$http_user_agent"
COMBINED = re.compile(
    r'(?P<client>\S+) - - \[(?P<time>\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] '
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<sent>\d+) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)"'
)


def lines(*paths: Path) -> list[str]:
    return [line for path in paths if path.exists() for line in path.read_text().splitlines()]


def test_access_log_in_the_combined_format(start_server, redis_client: redis.Redis, tmp_path: Path) -> None:
    create_sale(redis_client, "phone", 1)
    log = tmp_path / "access.log"
    server = start_server("--access-log", str(log))
    answers = [
        fetch(server.port, "GET", "/seckill/phone?user=a", headers={"User-Agent": 'ab "2.3"', "Referer": "http://x/"}),
        fetch(server.port, "GET", "/seckill/phone?user=b"),  # sold out: answered by Redis or the gate
        fetch(server.port, "HEAD", "/stock/phone"),
        fetch(server.port, "GET", "/nope"),
    ]
    with Conn(server.port) as conn:
        answers.append(conn.request(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n"))
    assert server.stop() == 0  # a stopping worker writes what it holds

    entries = [COMBINED.fullmatch(line) for line in lines(log)]
    assert all(entries), lines(log)
    got = [(e["client"], e["request"], e["status"], e["referer"], e["agent"]) for e in entries if e]
    assert got == [
        ("127.0.0.1", "GET /seckill/phone?user=a HTTP/1.1", "200", "http://x/", r"ab \x222.3\x22"),
        ("127.0.0.1", "GET /seckill/phone?user=b HTTP/1.1", "409", "-", "-"),
        ("127.0.0.1", "HEAD /stock/phone HTTP/1.1", "200", "-", "-"),
        ("127.0.0.1", "GET /nope HTTP/1.1", "404", "-", "-"),
        ("127.0.0.1", "-", "400", "-", "-"),  # refused before a request line was read whole
    ]
    assert [int(e["sent"]) for e in entries if e] == [len(a.body) for a in answers]  # HEAD: 0


@pytest.mark.parametrize(("allow", "peer_says", "logged"), [
    ("127.0.0.1", {"X-Forwarded-For": "203.0.113.7"}, "203.0.113.7"),  # our nginx, the default
    ("127.0.0.1", {"X-Real-IP": "203.0.113.8"}, "203.0.113.8"),
    # The right-most address that is not a trusted proxy: the client could have written the rest.
    ("127.0.0.1,10.0.0.0/8", {"X-Forwarded-For": "6.6.6.6, 203.0.113.9, 10.1.2.3"}, "203.0.113.9"),
    ("10.0.0.1", {"X-Forwarded-For": "203.0.113.7"}, "127.0.0.1"),  # not a trusted peer: ignored
    ("*", {"X-Forwarded-For": "not-an-address"}, "127.0.0.1"),  # not an address: the peer is named
    # An IPv6 scope id is any text: written into the log it would forge fields.
    ("127.0.0.1", {"X-Forwarded-For": 'fe80::1%x - - [02/Dec/2026] "DELETE /admin'}, "127.0.0.1"),
    ("127.0.0.1", {"X-Real-IP": 'fe80::1%x - - [02/Dec/2026] "DELETE /admin'}, "127.0.0.1"),
    ("127.0.0.1", {}, "127.0.0.1"),
])
def test_forwarded_allow_ips(start_server, tmp_path: Path, allow: str, peer_says: dict[str, str],
                             logged: str) -> None:
    log = tmp_path / "access.log"
    server = start_server("--access-log", str(log), "--forwarded-allow-ips", allow)
    fetch(server.port, "GET", "/healthz", headers=peer_says)
    assert server.stop() == 0
    entry = COMBINED.fullmatch(lines(log)[0])
    assert entry is not None and entry["client"] == logged


# What a forwarded address may be: a plain IPv4 or IPv6 address. ipaddress itself takes an
# IPv6 scope id of any text and prints it back, which would write into the log's client field.
NOT_PLAIN = [
    pytest.param('fe80::1%x - - [25/Nov/2026:04:41:38 +0000] "DELETE /admin HTTP/1.1" 200',
                 id="scope-id-fake-log-line"),
    pytest.param("fe80::1%eth0", id="scope-id-interface"),
    pytest.param("fe80::1%1", id="scope-id-number"),
    pytest.param("fe80::1%a b", id="scope-id-space"),
    pytest.param('fe80::1%"', id="scope-id-quote"),
    pytest.param("fe80::1%]", id="scope-id-bracket"),
    pytest.param("fe80::1%[x]", id="scope-id-brackets"),
    pytest.param("fe80::1%25eth0", id="scope-id-percent-encoded"),
    pytest.param("fe80::1%2520", id="scope-id-percent-encoded-space"),
    pytest.param("fe80::1%0a", id="scope-id-encoded-newline"),
    pytest.param("fe80::1%\n127.0.0.1", id="scope-id-newline"),
    pytest.param("::ffff:1.2.3.4%x", id="scope-id-on-ipv4-mapped"),
    pytest.param("[2001:db8::1]", id="ipv6-in-brackets"),
    pytest.param("[2001:db8::1]:443", id="ipv6-with-port"),
    pytest.param("203.0.113.7:5678", id="ipv4-with-port"),
    pytest.param("not-an-address", id="garbage"),
    pytest.param("unknown", id="nginx-unknown"),
    pytest.param("unix", id="unix"),
    pytest.param("*", id="asterisk"),
    pytest.param("-", id="dash"),
    pytest.param("203.0.113.7 foo", id="address-then-text"),
    pytest.param("203.0.113.7\x0b", id="address-then-vertical-tab"),
    pytest.param("203.0.113.7\xa0", id="address-then-nbsp"),  # obs-text, which the parser lets by
    pytest.param("\x85203.0.113.7", id="nel-then-address"),
    pytest.param("203.0.113.007", id="ipv4-leading-zeros"),
    pytest.param("203.0.113", id="ipv4-three-parts"),
    pytest.param("203.0.113.256", id="ipv4-octet-over-255"),
    pytest.param("3405803783", id="ipv4-as-integer"),
    pytest.param("0xcb.0.113.7", id="ipv4-hex-octet"),
    pytest.param("\u0662\u0660\u0663.0.113.7", id="arabic-indic-digits"),
    pytest.param("２０３.0.113.7", id="fullwidth-digits"),
    pytest.param("2001:db8::1::2", id="ipv6-two-double-colons"),
    pytest.param("2001:db8:" + "0:" * 40 + "1", id="ipv6-too-long"),
    pytest.param("::ffff:1.2.3.4.5", id="ipv4-mapped-five-parts"),
]


def as_header(text: str) -> bytes:
    """The bytes a header would carry: latin-1 as the server decodes them, else UTF-8."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


@pytest.mark.parametrize("bad", NOT_PLAIN)
@pytest.mark.parametrize("header", ["x-forwarded-for", "x-real-ip"])
def test_a_forwarded_value_that_is_not_a_plain_address_names_the_peer(bad: str, header: str) -> None:
    trust = request_logs.ProxyTrust("127.0.0.1")
    raw = as_header(bad)
    got = trust.client("127.0.0.1", raw if header == "x-forwarded-for" else None,
                       raw if header == "x-real-ip" else None)
    assert got == "127.0.0.1"


@pytest.mark.parametrize("bad", NOT_PLAIN)
def test_a_value_that_is_not_a_plain_address_is_never_a_trusted_proxy(bad: str) -> None:
    for spec in ("*", "0.0.0.0/0,::/0", "fe80::/10,127.0.0.1"):
        assert not request_logs.ProxyTrust(spec).trusts(bad)


@pytest.mark.parametrize("bad", NOT_PLAIN)
def test_a_right_most_hop_that_is_not_plain_names_the_peer_not_a_hop_before_it(bad: str) -> None:
    # What precedes the hop our proxy wrote could be the client's own text.
    trust = request_logs.ProxyTrust("127.0.0.1,10.0.0.0/8")
    forwarded = b"203.0.113.9, " + as_header(bad) + b", 10.1.2.3"
    assert trust.client("10.0.0.5", forwarded, None) == "10.0.0.5"
    assert request_logs.ProxyTrust("*").client("10.0.0.5", forwarded, None) == "10.0.0.5"


@pytest.mark.parametrize(("given", "logged"), [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:DB8::1", "2001:db8::1"),  # as ipaddress writes it: lower case, compressed
    ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
    ("fe80::1", "fe80::1"),
    ("::1", "::1"),
    # IPv4-mapped: the IPv4 client of a dual-stack proxy, logged as IPv4 (the same text on
    # every Python: 3.11 writes ::ffff:203.0.113.7 as ::ffff:cb00:7107).
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("::FFFF:203.0.113.7", "203.0.113.7"),
    ("::ffff:cb00:7107", "203.0.113.7"),
    ("0:0:0:0:0:ffff:203.0.113.7", "203.0.113.7"),
    ("0000:0000:0000:0000:0000:ffff:255.255.255.255", "255.255.255.255"),  # the longest text
    ("::203.0.113.7", "::cb00:7107"),  # IPv4-compatible (deprecated), not mapped: IPv6
])
def test_a_plain_forwarded_address_is_logged_as_ipaddress_writes_it(given: str, logged: str) -> None:
    trust = request_logs.ProxyTrust("127.0.0.1")
    assert trust.client("127.0.0.1", given.encode(), None) == logged
    assert trust.client("127.0.0.1", b"\t" + given.encode() + b" ", None) == logged
    assert trust.client("127.0.0.1", None, b" " + given.encode() + b" ") == logged


@pytest.mark.parametrize(("spec", "peer", "trusted"), [
    ("127.0.0.1", "127.0.0.1", True),
    ("127.0.0.1", "127.0.0.2", False),
    # A dual-stack socket's IPv4 peer (Linux drops IPv4-mapped sources from the wire).
    ("127.0.0.1", "::ffff:127.0.0.1", True),
    ("10.0.0.0/8", "::ffff:10.1.2.3", True),
    ("10.0.0.0/8", "::ffff:11.1.2.3", False),
    ("::ffff:127.0.0.1/128", "::ffff:127.0.0.1", True),
    ("::/0", "127.0.0.1", False),  # a network of one version holds no address of the other
    ("0.0.0.0/0", "::1", False),
    ("fe80::/10", "fe80::1", True),
    ("fe80::/10", "fe80::1%eth0", False),  # scoped: never trusted
    ("*", "fe80::1%eth0", False),
    ("*", "203.0.113.7", True),
    ("*", "::ffff:203.0.113.7", True),
])
def test_trusts(spec: str, peer: str, trusted: bool) -> None:
    assert request_logs.ProxyTrust(spec).trusts(peer) is trusted


def test_an_untrusted_peer_is_named_whatever_it_forwards() -> None:
    trust = request_logs.ProxyTrust("127.0.0.1")
    assert trust.client("203.0.113.1", b"198.51.100.1", b"198.51.100.2") == "203.0.113.1"
    assert trust.client("fe80::1%eth0", b"198.51.100.1", None) == "fe80::1%eth0"  # the kernel's text
    # A unix-socket peer is our nginx: trusted; what it forwards must still be plain.
    assert trust.client("unix", b"198.51.100.1", None) == "198.51.100.1"
    assert trust.client("unix", b"fe80::1%x", None) == "unix"
    assert trust.client("unix", b"", b"") == "unix"


@pytest.mark.slow
def test_result_log_records_every_decision_of_two_workers(start_server, redis_client: redis.Redis,
                                                          tmp_path: Path) -> None:
    stock, users = 50, 400
    create_sale(redis_client, "phone", stock)
    log = tmp_path / "results.log"
    server = start_server("--result-log", str(log), workers=2)
    paths = [[f"/seckill/phone?user=u{c}-{i}" for i in range(10)] for c in range(users // 10)]
    answers = asyncio.run(hammer(server.port, paths))
    fetch(server.port, "GET", "/seckill/phone?user=%ff")  # malformed: no decision, no line
    assert server.stop() == 0

    records = [json.loads(line) for line in lines(log)]
    assert len(records) == users
    assert {tuple(sorted(r)) for r in records} == {("client", "item", "order", "result", "time", "user")}
    won = {r["user"]: r["order"] for r in records if r["result"] == "won"}
    assert len(won) == stock and sum(r["result"] == "sold_out" for r in records) == users - stock
    assert sorted(r["user"] for r in records) == sorted(p.split("=")[1] for conn in paths for p in conn)
    # The log's orders are the ones the buyers were told.
    told = {a.json()["order"] for a in answers if a.status == 200}
    assert set(won.values()) == told
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]) for r in records)


@pytest.mark.slow
def test_rotation_by_time_loses_no_line(start_server, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    server = start_server("--access-log", str(log), "--log-rotate", "1s", "--log-backups", "100", workers=2)
    sent = 0

    def rotated_twice() -> bool:
        nonlocal sent
        fetch(server.port, "GET", "/healthz")
        sent += 1
        return len(list(tmp_path.glob("access.log.*"))) >= 2

    poll(rotated_twice, "two rotations", timeout=20, every=0.05)
    assert server.stop() == 0
    backups = sorted(tmp_path.glob("access.log.*"))
    assert all(re.fullmatch(r"access\.log\.\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", p.name) for p in backups)
    # Both workers follow worker 0's renames: every line is in exactly one file.
    assert len(lines(log, *backups)) == sent
    assert any(p.stat().st_size for p in backups)


def test_rotation_deletes_backups_past_the_count(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        (tmp_path / f"access.log.{day}_00-00-00").write_text("old\n")
    writer = request_logs.LineLog(str(log), rotate_every=1, backups=2, rotator=True)

    def rotated() -> bool:
        writer.tick()  # as the worker's once-a-second tick does
        return any(not p.name.startswith("access.log.2026-01") for p in tmp_path.glob("access.log.*"))

    try:
        poll(rotated, "a rotation", timeout=5, every=0.05)
    finally:
        writer.close()  # the rotation, deletions included, is done when its thread ends
    kept = sorted(p.name for p in tmp_path.glob("access.log.*"))
    assert len(kept) == 2 and "access.log.2026-01-01_00-00-00" not in kept


@pytest.mark.parametrize(("args", "message"), [
    (["--log-rotate", "weekly"], "midnight, hourly, never or a number of seconds"),
    (["--log-backups", "-1"], "out of range"),
    (["--forwarded-allow-ips", "10.0.0.300"], "10.0.0.300"),
    (["--access-log", "/nonexistent-dir/access.log"], "cannot write the log /nonexistent-dir/access.log"),
])
def test_bad_log_flags_are_refused_in_one_line(args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "seckill_server.py"), "--port", "1", *args],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
