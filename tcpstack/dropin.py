"""Stack.patched(): standard-library networking code over a userspace stack, unchanged.

What is replaced, and why these names:

- socket.create_connection and socket.create_server. http.client (and so
  urllib.request), smtplib and ftplib open every connection through them, looking
  them up in the socket module at call time. Addresses on the stack's network go to
  the stack; everything else still reaches the kernel.
- socketserver's own reference to the socket module. TCPServer makes its socket with
  socket.socket(family, type) before it knows the address, so within the patch
  every IPv4 stream server of socketserver (http.server's too) listens on the
  stack. socket.socket itself is left alone: replacing the class would break
  isinstance() checks all over the library and in other threads.
"""

from __future__ import annotations

import contextlib
import socket as _socket
import socketserver
import types
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tcpstack.stack import Stack


class _SocketModuleView(types.ModuleType):
    """The socket module as socketserver sees it within the patch."""

    def __init__(self, stack: Stack) -> None:
        super().__init__("socket", "socket, with IPv4 stream sockets from a tcpstack Stack")
        self._stack = stack

    def __getattr__(self, name: str) -> Any:
        return getattr(_socket, name)

    def socket(
        self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None
    ) -> Any:
        if (
            fileno is None
            and family in (-1, _socket.AF_INET)
            and type in (-1, _socket.SOCK_STREAM)
            and proto in (-1, 0, _socket.IPPROTO_TCP)
        ):
            return self._stack.socket()
        return _socket.socket(family, type, proto, fileno)


@contextlib.contextmanager
def patched(stack: Stack) -> Iterator[Stack]:
    real_connect = _socket.create_connection
    real_server = _socket.create_server
    real_module = socketserver.socket  # type: ignore[attr-defined]

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        if stack.owns(address[0]):
            return stack.create_connection(address, *args, **kwargs)
        return real_connect(address, *args, **kwargs)

    def create_server(address: tuple[str, int], **kwargs: Any) -> Any:
        if stack.owns(address[0]) and kwargs.get("family", _socket.AF_INET) == _socket.AF_INET:
            return stack.create_server(address, **kwargs)
        return real_server(address, **kwargs)

    _socket.create_connection = create_connection  # type: ignore[assignment]
    _socket.create_server = create_server  # type: ignore[assignment]
    socketserver.socket = _SocketModuleView(stack)  # type: ignore[attr-defined]
    try:
        yield stack
    finally:
        _socket.create_connection = real_connect
        _socket.create_server = real_server
        socketserver.socket = real_module  # type: ignore[attr-defined]
