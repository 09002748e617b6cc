"""The live sale dashboard: one self-contained HTML page, served at GET /dashboard.

The page holds no data: its script polls `dashboard.json` (a relative URL, so the page
works behind a path prefix) once a second and draws what it gets. Every counter in the
JSON is cumulative since the server started, so rates (wins and requests per second, the
Redis round trip's average latency and batch size) are differences between two polls
over the server's own clock, never the browser's.

Everything is inline (no CDN, fonts or images), so it works offline and fits a strict
Content-Security-Policy: `PAGE_CSP` allows exactly the inline script and style below by
their SHA-256 hashes, and requests only to the page's own origin. Data goes into the
page through `textContent` and attribute values only, never through `innerHTML`, so an
item name cannot become markup.

The admin token (when the server has one) comes from the URL fragment
(`/dashboard#token=T`: a fragment never reaches the server or its logs), else from
sessionStorage; when the JSON answers 401 the page asks for it. The fragment is removed
from the address bar once read, and the token is kept in sessionStorage for the tab.

Hooks for tests: each item is an element with `data-item="<name>"` holding `.sold`,
`.stock` and `.remaining` (plain integers); totals have ids (`total-won`,
`wins-per-second`, `requests-per-second`, `redis-rtt-ms`, ...); `#last-update` carries
`data-state` = "wait" | "ok" | "stale" | "error" | "token".
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from seckill.ops.metrics import Totals

_CSS = """
:root{--bg:#f6f7f9;--fg:#1d2330;--mute:#6b7280;--card:#fff;--line:#dde1e7;--acc:#2563eb;--win:#16a34a;
--bad:#dc2626;--warn:#d97706;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
@media (prefers-color-scheme:dark){:root{--bg:#12151b;--fg:#e5e7eb;--mute:#9ca3af;--card:#1b2029;
--line:#2d3440;--acc:#60a5fa;--win:#4ade80}}
*{box-sizing:border-box}
body{margin:0;padding:16px;background:var(--bg);color:var(--fg)}
header{display:flex;flex-wrap:wrap;gap:6px 16px;align-items:baseline;margin-bottom:12px}
h1{font-size:18px;margin:0}
.mute{color:var(--mute)}
#last-update{margin-left:auto}
#last-update::before{content:"";display:inline-block;width:9px;height:9px;border-radius:50%;
margin-right:6px;background:var(--mute)}
#last-update[data-state=ok]::before{background:var(--win)}
#last-update[data-state=stale]::before{background:var(--warn)}
#last-update[data-state=error]::before,#last-update[data-state=token]::before{background:var(--bad)}
#error{background:var(--bad);color:#fff;padding:6px 10px;border-radius:6px;margin-bottom:12px}
form{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px;margin-bottom:12px}
input{font:inherit;padding:3px 6px;width:22em;max-width:100%}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(230px,1fr));gap:12px;margin-bottom:12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 12px;min-width:0}
.card h2{font-size:12px;font-weight:600;text-transform:uppercase;letter-spacing:.04em;color:var(--mute);margin:0 0 4px}
.big{font-size:26px;font-weight:600;font-variant-numeric:tabular-nums}
canvas{display:block;width:100%;height:70px;color:var(--acc)}
#chart-wins{color:var(--win)}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
td{padding:1px 0}td+td{text-align:right}
.items{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:6px 12px}
.items.stale{opacity:.55}
.item{display:grid;grid-template-columns:minmax(80px,14em) 1fr 11em 8em;gap:4px 12px;align-items:center;
padding:6px 0;border-top:1px solid var(--line);font-variant-numeric:tabular-nums}
.item:first-child{border-top:0}
.name{font-weight:600;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar{height:12px;background:var(--line);border-radius:6px;overflow:hidden}
.fill{height:100%;width:0;background:var(--acc);transition:width .4s}
.soldout .fill{background:var(--win)}
.counts,.left{text-align:right}
.res{grid-column:1/-1;font-size:12px;color:var(--mute)}
"""

_JS = r"""
"use strict";
(function () {
  var KEYS = ["won", "sold_out", "already_bought", "unknown_item", "unavailable", "not_started", "ended",
    "user_required"];
  var PERIOD = 1000, TIMEOUT = 5000, STALE = 3500, WINDOW = 60, STORE = "seckill-dashboard-token";
  var $ = function (id) { return document.getElementById(id); };
  var token = null, prev = null, lastOk = 0, lastItems = 0, lastTime = 0, failure = "", asking = false, timer = 0;
  var series = {wins: [], requests: []};
  var rows = new Map();

  function num(v) { v = Number(v); return isFinite(v) ? v : 0; }
  function int(v) { return v === undefined || v === null || !isFinite(Number(v)) ? "-" : String(Math.round(v)); }
  function rate(v) { return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2); }
  function put(id, text) { var el = $(id); if (el.textContent !== text) el.textContent = text; }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function readToken() {
    var m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (m) {
      try { token = decodeURIComponent(m[1]); } catch (e) { token = m[1]; }
      try { sessionStorage.setItem(STORE, token); } catch (e) { /* storage off: keep it in memory */ }
      history.replaceState(null, "", location.pathname + location.search);
    } else if (token === null) {
      try { token = sessionStorage.getItem(STORE); } catch (e) { token = null; }
    }
  }

  function askToken(refused) {
    asking = true;
    if (refused) {
      token = null;
      try { sessionStorage.removeItem(STORE); } catch (e) { /* nothing kept */ }
    }
    put("token-msg", refused ? "that token was refused" : "");
    $("items").classList.add("stale");
    $("token-form").hidden = false;
    $("token-input").focus();
    indicator();
  }

  function schedule(ms) { clearTimeout(timer); timer = setTimeout(poll, ms); }

  async function poll() {
    var ctl = new AbortController(), stop = setTimeout(function () { ctl.abort(); }, TIMEOUT);
    var headers = {Accept: "application/json"};
    if (token) headers.Authorization = "Bearer " + token;
    try {
      var r = await fetch("dashboard.json", {headers: headers, cache: "no-store", signal: ctl.signal});
      if (r.status === 401) {
        askToken(!!token);
        return;  // no polling until a token is given
      }
      var data = null;
      try { data = await r.json(); } catch (e) { data = null; }
      if (!r.ok || !data || typeof data !== "object") {
        throw new Error((data && data.error) || "HTTP " + r.status);
      }
      update(data);
    } catch (e) {
      failure = e.name === "AbortError" ? "no answer in " + TIMEOUT / 1000 + " s" : String(e.message || e);
      put("error", failure);
      $("error").hidden = false;
      $("items").classList.add("stale");
    } finally {
      clearTimeout(stop);
    }
    indicator();
    schedule(PERIOD);
  }

  function update(d) {
    lastOk = Date.now();
    lastTime = num(d.time);
    failure = d.error ? String(d.error) : "";
    put("error", failure);
    $("error").hidden = !failure;
    put("version", d.version === undefined ? "-" : String(d.version));
    put("workers", int(d.workers));
    put("connections", int(d.connections));
    put("requests-total", int(d.requests));
    put("rate-limited", int(d.rate_limited));
    var res = d.results || {}, redis = d.redis || {};
    KEYS.concat(Object.keys(res).filter(function (k) { return KEYS.indexOf(k) < 0; })).forEach(function (k) {
      resultRow(k).textContent = int(num(res[k]));
    });
    put("redis-round-trips", int(redis.round_trips));
    var cur = {time: lastTime, won: num(res.won), requests: num(d.requests), rt: num(redis.round_trips),
      rs: num(redis.seconds), rr: num(redis.requests)};
    if (prev && cur.time > prev.time) {
      var dt = cur.time - prev.time, dw = cur.won - prev.won, dr = cur.requests - prev.requests;
      var drt = cur.rt - prev.rt;
      // Counters that went back (a restarted server or worker, or another worker's
      // snapshot read a moment older) give no rate: this poll only becomes the new base.
      if (dw >= 0 && dr >= 0 && drt >= 0) {
        add(series.wins, cur.time, dw / dt);
        add(series.requests, cur.time, dr / dt);
        put("wins-per-second", rate(dw / dt));
        put("requests-per-second", rate(dr / dt));
        put("redis-rtt-ms", drt > 0 ? ((cur.rs - prev.rs) / drt * 1000).toFixed(2) : "-");
        put("redis-batch-size", drt > 0 ? ((cur.rr - prev.rr) / drt).toFixed(1) : "-");
      }
    }
    if (!prev || cur.time > prev.time) prev = cur;
    draw("chart-wins", series.wins);
    draw("chart-requests", series.requests);
    if (Array.isArray(d.items)) {
      items(d.items);
      lastItems = lastOk;
      $("items").classList.remove("stale");
    } else {
      $("items").classList.add("stale");
    }
  }

  function resultRow(key) {
    var id = "total-" + key.replace(/_/g, "-"), cell = $(id);
    if (!cell) {
      var tr = el("tr");
      tr.appendChild(el("td", "", key.replace(/_/g, " ")));
      cell = el("td", "", "-");
      cell.id = id;
      tr.appendChild(cell);
      $("results").appendChild(tr);
    }
    return cell;
  }

  function add(list, t, v) {
    list.push([t, v]);
    while (list.length && list[0][0] < t - WINDOW) list.shift();
  }

  function items(list) {
    var box = $("item-rows"), seen = new Set();
    list.forEach(function (it) {
      var name = String(it.item), row = rows.get(name);
      seen.add(name);
      if (!row) {
        row = el("div", "item");
        row.setAttribute("data-item", name);
        var label = el("div", "name", name);
        label.title = name;
        var bar = el("div", "bar");
        bar.appendChild(el("div", "fill"));
        var counts = el("div", "counts");
        counts.appendChild(el("span", "sold"));
        counts.appendChild(document.createTextNode(" / "));
        counts.appendChild(el("span", "stock"));
        counts.appendChild(el("span", "mute", " sold"));
        var left = el("div", "left");
        left.appendChild(el("span", "remaining"));
        left.appendChild(el("span", "mute", " left"));
        [label, bar, counts, left, el("div", "res")].forEach(function (c) { row.appendChild(c); });
        rows.set(name, row);
      }
      box.appendChild(row);  // (re)appending keeps the server's order
      var stock = num(it.stock), sold = num(it.sold);
      row.querySelector(".sold").textContent = int(it.sold);
      row.querySelector(".stock").textContent = int(it.stock);
      row.querySelector(".remaining").textContent = int(it.remaining);
      row.querySelector(".fill").style.width = (stock > 0 ? Math.min(100, sold / stock * 100) : 0) + "%";
      row.classList.toggle("soldout", stock > 0 && num(it.remaining) <= 0);
      var r = it.results || {};
      row.querySelector(".res").textContent = Object.keys(r).filter(function (k) { return num(r[k]) > 0; })
        .map(function (k) { return k.replace(/_/g, " ") + " " + int(r[k]); }).join(" \u00b7 ");
    });
    rows.forEach(function (row, name) {
      if (!seen.has(name)) { row.remove(); rows.delete(name); }
    });
    $("no-items").hidden = list.length > 0;
  }

  function draw(id, pts) {
    var c = $(id), ctx = c.getContext("2d"), dpr = window.devicePixelRatio || 1;
    var w = c.clientWidth, h = c.clientHeight;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    var color = getComputedStyle(c).color, max = 0;
    pts.forEach(function (p) { max = Math.max(max, p[1]); });
    var top = max > 0 ? max * 1.15 : 1, now = lastTime;
    var x = function (t) { return w - (now - t) / WINDOW * w; };
    var y = function (v) { return h - 1 - v / top * (h - 14); };
    ctx.globalAlpha = 0.3;
    ctx.strokeStyle = color;
    ctx.beginPath(); ctx.moveTo(0, h - 0.5); ctx.lineTo(w, h - 0.5); ctx.stroke();
    ctx.globalAlpha = 1;
    ctx.fillStyle = color;
    ctx.font = "11px system-ui,sans-serif";
    ctx.fillText("max " + rate(max) + "/s, last " + WINDOW + " s", 2, 10);
    if (pts.length < 1) return;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    pts.forEach(function (p, i) { if (i) ctx.lineTo(x(p[0]), y(p[1])); else ctx.moveTo(x(p[0]), y(p[1])); });
    ctx.stroke();
    ctx.lineTo(x(pts[pts.length - 1][0]), h);
    ctx.lineTo(x(pts[0][0]), h);
    ctx.globalAlpha = 0.15;
    ctx.fill();
    ctx.globalAlpha = 1;
  }

  function indicator() {
    var box = $("last-update"), age = (Date.now() - lastOk) / 1000, state, text;
    if (asking) {
      state = "token"; text = "admin token needed";
    } else if (!lastOk) {
      state = failure ? "error" : "wait"; text = failure ? "no data: " + failure : "connecting";
    } else if (failure) {
      var since = lastItems === lastOk ? age : (Date.now() - lastItems) / 1000;
      state = "error";
      text = "error: " + failure + (lastItems ? " (sales as of " + since.toFixed(0) + " s ago)" : "");
    } else if (age * 1000 > STALE) {
      state = "stale"; text = "stale: last update " + age.toFixed(0) + " s ago";
    } else {
      state = "ok"; text = "live, server time " + new Date(lastTime * 1000).toLocaleTimeString();
    }
    box.setAttribute("data-state", state);
    put("last-update", text);
  }

  $("token-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var value = $("token-input").value.trim();
    if (!value) return;
    token = value;
    try { sessionStorage.setItem(STORE, token); } catch (err) { /* keep it in memory */ }
    $("token-input").value = "";
    $("token-form").hidden = true;
    asking = false;
    schedule(0);
  });
  window.addEventListener("hashchange", function () {
    readToken();
    if (asking) { asking = false; $("token-form").hidden = true; }
    schedule(0);
  });
  setInterval(indicator, 1000);  // ages the indicator while a poll hangs
  KEYS.forEach(resultRow);
  draw("chart-wins", []);
  draw("chart-requests", []);
  readToken();
  poll();
})();
"""

_BODY = """
<header><h1>seckill dashboard</h1>
<span class="mute">version <b id="version">-</b> &middot; workers <b id="workers">-</b> &middot;
connections <b id="connections">-</b> &middot; requests <b id="requests-total">-</b> &middot;
rate limited <b id="rate-limited">-</b></span>
<span id="last-update" data-state="wait">connecting</span></header>
<div id="error" hidden></div>
<form id="token-form" hidden><label>Admin token <input id="token-input" type="password" autocomplete="off"
spellcheck="false"></label> <button>Show</button> <span id="token-msg" class="mute"></span></form>
<div class="grid">
<div class="card"><h2>Wins / s</h2><div class="big" id="wins-per-second">-</div><canvas id="chart-wins"></canvas></div>
<div class="card"><h2>Requests / s</h2><div class="big" id="requests-per-second">-</div>
<canvas id="chart-requests"></canvas></div>
<div class="card"><h2>Redis round trip</h2><div class="big"><span id="redis-rtt-ms">-</span>
<span class="mute">ms</span></div><table><tr><td>purchases per round trip</td><td id="redis-batch-size">-</td></tr>
<tr><td>round trips</td><td id="redis-round-trips">-</td></tr></table></div>
<div class="card"><h2>Results</h2><table id="results"></table></div>
</div>
<div class="items" id="items"><div id="item-rows"></div><div id="no-items" class="mute" hidden>no sales</div></div>
"""


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


PAGE: bytes = (
    '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width,initial-scale=1">\n'
    '<link rel="icon" href="data:,">\n'  # no /favicon.ico request
    "<title>seckill dashboard</title>\n"
    f"<style>{_CSS}</style>\n</head><body>{_BODY}<script>{_JS}</script>\n</body></html>\n"
).encode()

# The Content-Security-Policy header value for PAGE: its one script and one style by hash,
# fetches to its own origin, nothing else (no frames, no forms that leave, no plugins).
PAGE_CSP: bytes = (
    f"default-src 'none'; script-src '{_sha256(_JS)}'; style-src '{_sha256(_CSS)}'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
).encode()


def data(totals: Totals, version: str, now: float, sales: list[dict[str, Any]] | None) -> dict[str, Any]:
    """`/dashboard.json`: the totals, and each sale's counts from Redis (None: Redis did not answer)."""
    data: dict[str, Any] = {
        "time": now,
        "version": version,
        "workers": totals.workers,
        "connections": totals.connections,
        "requests": sum(totals.requests.values()),
        "rate_limited": sum(totals.rate_limited.values()),  # purchases answered 429
        "results": totals.results_by_label(),
        "redis": {"round_trips": sum(totals.round_trip.counts), "seconds": totals.round_trip.sum,
                  "requests": int(totals.batch_size.sum)},
        "items": None,
    }
    if sales is None:
        data["error"] = "redis unavailable"
    else:
        data["items"] = [
            {key: sale[key] for key in ("item", "stock", "sold", "remaining")}
            | {"results": totals.results_by_label(sale["item"])}
            for sale in sales
        ]
    return data
