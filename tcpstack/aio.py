"""asyncio over a userspace stack: the standard StreamReader and StreamWriter.

A Socket's fileno() is ready for the event loop's selector exactly when the socket
is (tcpstack.readiness), so asyncio's own selector transports drive our sockets as
they drive kernel ones: no thread per connection, and everything asyncio layers on
a transport (TLS through ssl=, protocols, flow control) works unchanged. This needs
a selector event loop, which is asyncio's default on Linux.
"""

from __future__ import annotations

import asyncio
import socket as _socket
from collections.abc import Awaitable, Callable
from typing import Any

from tcpstack.stack import Socket, Stack

_LIMIT = 2**16  # asyncio's default buffer limit for a StreamReader

ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]


async def connect(stack: Stack, host: str, port: int) -> Socket:
    """A non-blocking Socket connected to (host, port), without blocking the loop."""
    sock = stack.socket()
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))  # type: ignore[arg-type]
    except BaseException:
        sock.close()
        raise
    return sock


async def open_connection(
    stack: Stack, host: str, port: int, *, limit: int = _LIMIT, **kwargs: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Like asyncio.open_connection, over the stack; kwargs go to it (ssl=, ...)."""
    sock = await connect(stack, host, port)
    try:
        return await asyncio.open_connection(sock=sock, limit=limit, **kwargs)
    except BaseException:
        sock.close()
        raise


async def start_server(
    stack: Stack,
    client_connected_cb: ClientConnected,
    host: str | None = None,
    port: int = 0,
    *,
    backlog: int = 100,
    limit: int = _LIMIT,
    **kwargs: Any,
) -> asyncio.Server:
    """Like asyncio.start_server, listening on the stack; host None or "" means the
    stack's address. The returned Server's sockets() name the listening address."""
    sock = stack.socket()
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.bind((host or "", port))
        sock.listen(backlog)
        return await asyncio.start_server(
            client_connected_cb,
            sock=sock,
            limit=limit,
            **kwargs,
        )
    except BaseException:
        sock.close()
        raise
