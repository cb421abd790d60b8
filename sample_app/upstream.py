"""A slow upstream service on loopback, started by each worker of the sample app for ``/upstream``.

It answers every HTTP/1.1 request after ``delay_s``, keeping the connection alive, so the
app's shared client with a small pool is what limits ``/upstream``, not the upstream.
"""

from __future__ import annotations

import asyncio


async def start_upstream(delay_s: float) -> tuple[asyncio.AbstractServer, str]:
    """Start the upstream on a free loopback port; return the server and its base URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await asyncio.sleep(delay_s)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"
