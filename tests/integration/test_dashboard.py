"""The live dashboard (`--dashboard`) in a real headless Chromium.

Chromium is driven over the DevTools protocol (CDP) on one websocket to its browser
endpoint: every test opens its own tab (a fresh sessionStorage), navigates, and reads the
page's numbers with `Runtime.evaluate`, polling with a bound until they say what is
expected. The numbers are read from the page's test hooks (`data-item` rows with `.sold`,
ids like `total-won`), so what is checked is what a person sees, after the page's own
polling, parsing and arithmetic. Every tab also records Content-Security-Policy
violations and uncaught errors from before the page's first script; each test asserts
there were none.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import html.parser
import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from seckill.ops import dashboard
from support.helpers import create_sale, poll, require_tool
from support.http_client import Conn, buy, fetch, get

# Installed into every tab before any page script runs (DevTools-injected scripts are not
# subject to the page's CSP): collects what the page would otherwise only log.
_PROBLEMS = """
window.__problems = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__problems.push("CSP violation: " + e.violatedDirective + " " + e.blockedURI);
});
window.addEventListener("error", function (e) { window.__problems.push("error: " + e.message); });
window.addEventListener("unhandledrejection", function (e) {
  window.__problems.push("unhandled rejection: " + e.reason);
});
"""

# What the page shows, as one JSON value: every number as the text the page displays.
_READ = """(item) => {
  const text = (root, sel) => { const e = root && root.querySelector(sel); return e ? e.textContent : null; };
  const byId = (id) => { const e = document.getElementById(id); return e ? e.textContent : null; };
  const row = [...document.querySelectorAll("[data-item]")].find((e) => e.dataset.item === item) || null;
  return {
    sold: text(row, ".sold"), stock: text(row, ".stock"), remaining: text(row, ".remaining"),
    items: [...document.querySelectorAll("[data-item]")].map((e) => e.dataset.item),
    won: byId("total-won"), sold_out: byId("total-sold-out"), requests: byId("requests-total"),
    wps: byId("wins-per-second"), rps: byId("requests-per-second"), rtt: byId("redis-rtt-ms"),
    workers: byId("workers"), version: byId("version"),
    state: document.getElementById("last-update").dataset.state, status: byId("last-update"),
    error: document.getElementById("error").hidden ? null : byId("error"),
    prompt: !document.getElementById("token-form").hidden,
    hash: location.hash, stored: sessionStorage.getItem("seckill-dashboard-token"),
  };
}"""


class CdpError(Exception):
    pass


class Chromium:
    """A headless Chromium in its own process group, and one CDP connection to it."""

    def __init__(self, binary: str, profile: Path) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        self.log_path = profile.parent / "chromium.log"
        self._ids = itertools.count(1)
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=500)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, "--headless=new", "--no-sandbox", "--remote-debugging-port=0",
                 f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
                 "--disable-gpu", "--disable-extensions", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--metrics-recording-only",
                 "--disable-dev-shm-usage", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True,  # its renderers and helpers die with the group
            )
        try:
            port, path = self._endpoint(profile / "DevToolsActivePort", timeout=30.0)
            # No Origin header: Chromium refuses websocket clients that send one it does not know.
            self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=30,
                                                  suppress_origin=True)
        except BaseException:
            self.close()
            raise
        self.version = self.call("Browser.getVersion")["product"]

    def _endpoint(self, active_port: Path, timeout: float) -> tuple[int, str]:
        """Chromium writes its port and browser path to DevToolsActivePort once it listens."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"chromium exited with {self.proc.returncode}:\n{self.log}")
            try:
                lines = active_port.read_text().split("\n")
                if len(lines) >= 2 and lines[0].isdigit() and lines[1].startswith("/devtools/"):
                    return int(lines[0]), lines[1].strip()
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"chromium did not open its DevTools port in {timeout} s:\n{self.log}")

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """One CDP command; its result. Events that arrive meanwhile are kept in `events`."""
        msg_id = next(self._ids)
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            answer = json.loads(self.ws.recv())
            if answer.get("id") == msg_id:
                if "error" in answer:
                    raise CdpError(f"{method}: {answer['error']}")
                return answer["result"]  # type: ignore[no-any-return]
            self.events.append(answer)

    def new_tab(self) -> Tab:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        return Tab(self, target, session)

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # helpers that outlived the browser process


class Tab:
    """One page target, attached with a flat session."""

    def __init__(self, browser: Chromium, target: str, session: str) -> None:
        self.browser = browser
        self.target = target
        self.session = session
        self.call("Page.enable")
        self.call("Page.addScriptToEvaluateOnNewDocument", source=_PROBLEMS)
        self.call("Emulation.setDeviceMetricsOverride", width=1200, height=760, deviceScaleFactor=1,
                  mobile=False)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self.browser.call(method, self.session, **params)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise CdpError(f"{expression[:80]!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        answer = self.call("Page.navigate", url=url)
        if answer.get("errorText"):
            raise CdpError(f"navigate {url}: {answer['errorText']}")
        self.wait_until(lambda: self.evaluate("document.readyState") == "complete", f"{url} loaded")

    def read(self, item: str) -> dict[str, Any]:
        return self.evaluate(f"({_READ})({json.dumps(item)})")  # type: ignore[no-any-return]

    def wait_until(self, check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
        """Poll check() until it returns something truthy; fail after timeout."""
        return poll(check, f"the page to show {what}", timeout, every=0.1)

    def wait_shows(self, item: str, predicate: Callable[[dict[str, Any]], bool], what: str,
                   timeout: float = 20.0) -> dict[str, Any]:
        """Poll the page's numbers until predicate(numbers) holds; fail with the last ones seen."""
        seen: dict[str, Any] = {}

        def check() -> dict[str, Any] | None:
            nonlocal seen
            seen = self.read(item)
            return seen if predicate(seen) else None

        try:
            return self.wait_until(check, what, timeout)  # type: ignore[no-any-return]
        except AssertionError as exc:
            raise AssertionError(f"{exc}; it showed {seen}") from None

    def problems(self) -> list[str]:
        return self.evaluate("window.__problems || []")  # type: ignore[no-any-return]

    def screenshot(self, path: Path) -> Path:
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(data)
        return path

    def close(self) -> None:
        self.browser.call("Target.closeTarget", targetId=self.target)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    binary = require_tool("chromium")
    chromium = Chromium(binary, tmp_path_factory.mktemp("chromium") / "profile")
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture
def tab(browser: Chromium) -> Iterator[Tab]:
    page = browser.new_tab()
    yield page
    page.close()


def _count(text: str | None) -> int:
    """A count as the page shows it: a plain integer, no separators."""
    assert text is not None and re.fullmatch(r"\d+", text), f"not a plain count: {text!r}"
    return int(text)


def _rate(text: str | None) -> float:
    try:
        return float(text or "")
    except ValueError:  # "-" before two polls
        return 0.0


class Load(threading.Thread):
    """Purchases by distinct users, paced so that the sale lasts a few seconds (the page
    must see it move), on several keep-alive connections so that both workers serve some."""

    def __init__(self, port: int, item: str, total: int, per_second: int, connections: int = 4) -> None:
        super().__init__(daemon=True)
        self.port, self.item, self.total = port, item, total
        self.per_second, self.connections = per_second, connections
        self.statuses: collections.Counter[int] = collections.Counter()
        self.error: BaseException | None = None

    def run(self) -> None:
        batch = 10
        conns = [Conn(self.port) for _ in range(self.connections)]
        try:
            start = time.monotonic()
            for n in range(0, self.total, batch):
                conn = conns[(n // batch) % len(conns)]
                conn.send(b"".join(get(f"/seckill/{self.item}?user=dash-{i}")
                                   for i in range(n, min(n + batch, self.total))))
                for response in conn.responses(min(batch, self.total - n)):
                    self.statuses[response.status] += 1
                ahead = start + (n + batch) / self.per_second - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)  # pacing, not synchronisation
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            for conn in conns:
                conn.close()


def test_dashboard_follows_a_sale_under_load(start_server, redis_client, tab: Tab, tmp_path: Path) -> None:
    server = start_server("--dashboard", workers=2)
    create_sale(redis_client, "phone", 2000)
    page = fetch(server.port, "GET", "/dashboard")
    assert page.status == 200, page
    assert page.headers["content-type"].startswith("text/html")
    assert page.body == dashboard.PAGE
    assert page.headers.get("content-security-policy") == dashboard.PAGE_CSP.decode()

    tab.navigate(server.url + "/dashboard")
    assert tab.evaluate("document.title") == "seckill dashboard"
    shown = tab.wait_shows("phone", lambda s: s["stock"] == "2000" and s["sold"] == "0", "the new sale")
    assert shown["workers"] == "2" and shown["state"] == "ok", shown

    load = Load(server.port, "phone", total=2600, per_second=500)
    load.start()
    try:
        first = tab.wait_shows("phone", lambda s: _count(s["sold"]) > 0, "the first wins")
        moving = tab.wait_shows(
            "phone", lambda s: _count(s["sold"]) > _count(first["sold"]) and _rate(s["wps"]) > 0,
            "the sold count rising", timeout=30)
        assert _rate(moving["rps"]) > 0 and _rate(moving["rtt"]) > 0, moving
        shot = tab.screenshot(tmp_path / "dashboard.png")
    finally:
        load.join(60)
    assert not load.is_alive() and load.error is None, load.error
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    print(f"dashboard screenshot: {shot}")

    assert load.statuses == {200: 2000, 409: 600}, load.statuses
    stock = fetch(server.port, "GET", "/stock/phone").json()
    assert stock == {"item": "phone", "stock": 2000, "sold": 2000, "remaining": 0}
    final = tab.wait_shows("phone", lambda s: s["sold"] == str(stock["sold"]) and s["won"] == "2000"
                           and s["sold_out"] == "600", "the final counts")
    assert _count(final["sold"]) == stock["sold"]
    assert _count(final["remaining"]) == stock["remaining"]
    assert _count(final["requests"]) >= 2600
    assert tab.problems() == []


def test_dashboard_token_from_fragment_storage_or_prompt(start_server, redis_client, tab: Tab,
                                                         browser: Chromium) -> None:
    token = "dash-T0ken/+="
    server = start_server("--dashboard", "--admin-token", token)
    create_sale(redis_client, "tv", 10, sold=3)
    assert buy(server.port, "tv", "ann")["result"] == "won"
    refused = fetch(server.port, "GET", "/dashboard.json")
    assert refused.status == 401 and refused.headers["www-authenticate"].startswith("Bearer"), refused
    assert "error" in refused.json()
    assert fetch(server.port, "GET", "/dashboard").status == 200  # the page itself needs no token

    def shows_numbers(s: dict[str, Any]) -> bool:
        return s["sold"] == "4" and s["stock"] == "10" and s["won"] == "1" and not s["prompt"]

    # No token anywhere: the JSON answers 401 and the page asks.
    tab.navigate(server.url + "/dashboard")
    asked = tab.wait_shows("tv", lambda s: s["prompt"] and s["state"] == "token", "the token prompt")
    assert asked["sold"] is None  # nothing shown without the token
    # Typed in: the numbers, and the token kept for the tab.
    tab.evaluate(f"document.getElementById('token-input').value = {json.dumps(token)};"
                 "document.getElementById('token-form').requestSubmit()")
    typed = tab.wait_shows("tv", shows_numbers, "the numbers after the token was typed in")
    assert typed["stored"] == token
    # Reloaded without a fragment: the token comes from sessionStorage.
    tab.navigate(server.url + "/dashboard")
    tab.wait_shows("tv", lambda s: shows_numbers(s) and s["state"] == "ok", "the numbers after a reload")

    other = browser.new_tab()  # a new tab has an empty sessionStorage
    try:
        other.navigate(f"{server.url}/dashboard#token={token}")
        shown = other.wait_shows("tv", shows_numbers, "the numbers with the token in the fragment")
        assert shown["hash"] == "" and shown["stored"] == token  # the fragment is not left in the address bar
        # A wrong token (a same-document fragment change): refused, forgotten, asked for.
        other.evaluate("location.hash = 'token=wrong'")
        again = other.wait_shows("tv", lambda s: s["prompt"] and s["state"] == "token", "the prompt again")
        assert again["stored"] is None
        assert other.problems() == []
    finally:
        other.close()
    assert tab.problems() == []


def test_dashboard_shows_redis_down_and_recovers(start_server, own_redis, tab: Tab) -> None:
    own, client = own_redis
    create_sale(client, "cam", 5)
    server = start_server("--dashboard", redis_url=own.url)
    tab.navigate(server.url + "/dashboard")
    tab.wait_shows("cam", lambda s: s["stock"] == "5" and s["state"] == "ok", "the sale")
    own.kill()
    try:
        down = tab.wait_shows("cam", lambda s: s["state"] == "error" and s["error"] is not None,
                              "the Redis error", timeout=30)
        assert "redis unavailable" in down["error"], down
        assert down["workers"] == "1"  # the counters still come
    finally:
        own.restart()
    tab.wait_shows("cam", lambda s: s["state"] == "ok" and s["error"] is None and s["stock"] == "5",
                   "the sale again after Redis came back", timeout=30)
    assert tab.problems() == []


class _Refs(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: collections.Counter[str] = collections.Counter()
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.refs += [value or "" for name, value in attrs if name in ("src", "href", "action", "srcset")]
        if tag in ("script", "style"):
            self._in = tag

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.scripts.append(data)
        elif self._in == "style":
            self.styles.append(data)


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_page_is_self_contained_and_matches_its_csp() -> None:
    text = dashboard.PAGE.decode("utf-8")
    assert len(dashboard.PAGE) < 15 * 1024
    refs = _Refs()
    refs.feed(text)
    refs.close()
    assert "<title>seckill dashboard</title>" in text
    for ref in refs.refs:
        assert not re.match(r"(?i)\s*([a-z][a-z0-9+.-]*:|//)", ref) or ref.startswith("data:"), ref
    assert not re.search(r"(?i)https?:|url\(|@import|\bsrc\s*=\s*[\"']?//", text)
    assert refs.tags["script"] == 1 and refs.tags["style"] == 1 and refs.tags["link"] == 1
    assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "document.write" not in text
    assert "dashboard.json" in refs.scripts[0] and "/dashboard.json" not in refs.scripts[0]  # relative
    csp = dict(part.strip().split(" ", 1) for part in dashboard.PAGE_CSP.decode().split(";"))
    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == _csp_hash(refs.scripts[0])
    assert csp["style-src"] == _csp_hash(refs.styles[0])
    assert csp["connect-src"] == "'self'"
