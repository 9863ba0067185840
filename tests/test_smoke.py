from __future__ import annotations

from tests.conftest import ServerProcess
from tests.rawhttp import RawConnection, get


def test_hello_keepalive_and_pipelining(start_server: type[ServerProcess]) -> None:
    server = start_server("apps:app")
    with RawConnection(server.address) as conn:
        for _ in range(3):
            resp = conn.request(get("/hello"))
            assert resp.status == 200
            assert resp.body == b"Hello, world!"
        conn.send(get("/hello") + get("/echo?x=1") + get("/hello"))
        assert conn.read_response().body == b"Hello, world!"
        assert b'"QUERY_STRING": "x=1"' in conn.read_response().body
        assert conn.read_response().body == b"Hello, world!"
