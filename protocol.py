"""The HTTP/1.1 request parser, sans-I/O: it lives in `seckill.http.protocol`; this name
at the root is kept for those who know it from the design card."""

from seckill.http.protocol import (  # noqa: F401
    KNOWN_METHODS,
    MAX_BODY,
    MAX_HEAD,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    HttpError,
    Request,
    RequestParser,
)
