"""The access and result logs, as a wrapper around the app's dispatch.

With `--access-log` or `--result-log` the connections talk to a `LoggedApp` instead of
the `SeckillApp` itself: it dispatches through the app and reports each answer, at once
for an answer made at once, and when it is set for one made later (the app then makes
`ReportingSlot`s and `ReportingPurchase`s, which call back). The result log is told the
decision itself (outcome, item, order), never a re-reading of the answer's bytes. Without
logs nothing of this is on the request path.
"""

from __future__ import annotations

import time

from seckill.app.purchases import Decision, ReportingPurchase, ReportingSlot
from seckill.app.routes import SeckillApp, request_user, route_name
from seckill.config import Config
from seckill.http.connection import HttpConnection, Slot
from seckill.http.protocol import HttpError, Request, Shape
from seckill.http.responses import Responses
from seckill.ops import request_logs
from seckill.sales.outcomes import ANSWERS


class LoggedApp:
    """The connection's App: SeckillApp's routes, every answer logged."""

    def __init__(self, app: SeckillApp, config: Config, rotator: bool) -> None:
        self.app = app
        self.responses: Responses = app.responses
        every = request_logs.parse_rotation(config.log_rotate)
        self.access_log = self.result_log = None
        if config.access_log is not None:
            self.access_log = request_logs.LineLog(config.access_log, every, config.log_backups, rotator)
        if config.result_log is not None:
            self.result_log = request_logs.LineLog(config.result_log, every, config.log_backups, rotator)
        self.logs = [log for log in (self.access_log, self.result_log) if log is not None]
        self._trust = request_logs.ProxyTrust(config.forwarded_allow_ips)
        self._when = (0, "")  # $time_local, made once a second

    def dispatch(self, request: Request, conn: HttpConnection) -> bytes | Slot:
        answers = self.app.purchase_answers
        answers.decided = None
        answer = self.app.dispatch(request, conn)
        if isinstance(answer, bytes):
            self.report(request, conn, answer, answers.decided)
        elif isinstance(answer, ReportingSlot | ReportingPurchase):
            answer.watch(self, request)
        return answer

    def lane(self, shape: Shape, data: bytes, conn: HttpConnection) -> bytes | Slot | None:
        return None  # (never offered: every answer here is logged with its request)

    def internal_error(self, site: str, exc: BaseException) -> bytes:
        return self.app.internal_error(site, exc)

    def refused(self, conn: HttpConnection, status: int, answer: bytes) -> None:
        self.app.refused(conn, status, answer)
        self.report(None, conn, answer, None)

    def report(self, request: Request | None, conn: HttpConnection, answer: bytes,
               decision: Decision | None) -> None:
        """Log one answer: the access log's line, and the result log's for a purchase decision."""
        now = time.time()
        second = int(now)
        if self._when[0] != second:
            self._when = (second, request_logs.local_time(now))
        client = conn.peer_address
        if request is not None:
            client = self._trust.client_of(client, request.headers)
        if self.access_log is not None:
            if request is None:
                line, referer, agent = None, None, None
            else:
                line = b"%s %s %s" % (request.method, request.target, b"HTTP/1.0" if request.http10 else b"HTTP/1.1")
                referer, agent = request.header(b"referer"), request.header(b"user-agent")
            status = int(answer[9:12])  # (our own status line: "HTTP/1.1 200 ...")
            sent = len(answer) - answer.index(b"\r\n\r\n") - 4
            self.access_log.add(request_logs.combined(client, self._when[1], line, status, sent, referer, agent))
        if self.result_log is not None and request is not None and decision is not None:
            if route_name(request.path) != "purchase":
                return
            outcome, item, order = decision
            try:
                user = request_user(request).decode()
            except HttpError:
                return  # a malformed request: no decision was made for it
            self.result_log.add(request_logs.result_line(now, item, user, ANSWERS[outcome][1], order, client))
