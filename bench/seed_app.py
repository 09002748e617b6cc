"""The seed's stack, rebuilt for comparison: Flask + redis-py behind `gunicorn -k gevent`.

Faithful to the original article's flash sale: every request seeds the Redis counter
with `SETNX limit 95` (100 units with 95 already gone; a no-op once it exists) and then
does `INCRBY 1`, answering "success" while the result is at most 100, else "failure"
(both 200). Two Redis round trips per request, no batching. (The per-request SETNX is
also the seed's correctness bug: after Redis loses its data it seeds the counter again
and sells the last units a second time.)

    SEED_REDIS_URL=redis://127.0.0.1:6379/0 gunicorn -k gevent -w 4 seed_app:app

Environment: SEED_REDIS_URL (default redis://127.0.0.1:6379/0), SEED_KEY (default
"seed:limit").
"""

from __future__ import annotations

import os

import redis
from flask import Flask

LIMIT = 100
ALREADY_SOLD = 95

app = Flask(__name__)
r = redis.Redis.from_url(os.environ.get("SEED_REDIS_URL", "redis://127.0.0.1:6379/0"))
KEY = os.environ.get("SEED_KEY", "seed:limit")


@app.route("/limit")
def limit() -> str:
    r.setnx(KEY, ALREADY_SOLD)
    count = r.incrby(KEY, 1)
    if count <= LIMIT:
        return "success"
    return "failure"
