"""The uvloop floor: ``uvloop_floor.py HOST PORT``.

A bare asyncio Protocol on uvloop that answers each request head it receives (each
``\\r\\n\\r\\n``) with one fixed 13-byte hello response, and closes the connection after
answering an HTTP/1.0 request. No parsing, no WSGI: what uvloop itself costs per
keep-alive request and per new connection before any server code runs
(bench/instructions.py measures it beside the servers).
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world!"
HEAD_END = b"\r\n\r\n"
HTTP10 = b" HTTP/1.0\r\n"


class Floor(asyncio.Protocol):
    """One fixed response per head; close after an HTTP/1.0 one."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        heads = data.count(HEAD_END)
        if heads:
            self.transport.write(RESPONSE * heads)
            if HTTP10 in data:
                self.transport.close()


async def serve(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Floor, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: uvloop_floor.py HOST PORT")
    uvloop.run(serve(sys.argv[1], int(sys.argv[2])))


if __name__ == "__main__":
    main()
