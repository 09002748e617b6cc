"""ProxyTrust.client_of (one pass over a request's headers, the per-address limiter's) names
the same client as client() given the first of each field."""

from __future__ import annotations

import pytest

from seckill.ops.request_logs import ProxyTrust


@pytest.mark.parametrize("peer", ["127.0.0.1", "10.0.0.9", "unix", "192.0.2.7"])
@pytest.mark.parametrize("headers", [
    (),
    ((b"host", b"t"),),
    ((b"x-forwarded-for", b"192.0.2.1"),),
    ((b"x-forwarded-for", b"198.51.100.2, 10.0.0.9"), (b"x-real-ip", b"192.0.2.3")),
    ((b"x-real-ip", b"192.0.2.3"),),
    ((b"x-real-ip", b"not an address"),),
    ((b"x-forwarded-for", b"192.0.2.1"), (b"x-forwarded-for", b"192.0.2.2")),  # the first counts
    ((b"x-real-ip", b"192.0.2.4"), (b"x-real-ip", b"192.0.2.5"), (b"x-forwarded-for", b"")),
])
def test_client_of_names_who_client_names(peer: str, headers: tuple[tuple[bytes, bytes], ...]) -> None:
    trust = ProxyTrust("127.0.0.1,10.0.0.0/8")

    def first(name: bytes) -> bytes | None:
        return next((value for key, value in headers if key == name), None)

    assert trust.client_of(peer, headers) == trust.client(peer, first(b"x-forwarded-for"), first(b"x-real-ip"))
