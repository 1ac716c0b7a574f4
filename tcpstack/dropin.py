"""Stack.patched(): standard-library networking code over a userspace stack, unchanged.

What is replaced, and why these names:

- socket.create_connection and socket.create_server. http.client (and so
  urllib.request), smtplib and ftplib open every connection through them, looking
  them up in the socket module when they connect (an http.client.HTTPConnection
  when it is made). Addresses on a patched stack's network go to that stack;
  everything else still reaches the kernel.
- socketserver's own reference to the socket module. TCPServer makes its socket with
  socket.socket(family, type) before it knows the address, so it gets a socket
  whose kind is chosen at bind(): a stack's if the address is that stack's (or
  "", any address), the kernel's otherwise. socket.socket itself is left alone:
  replacing the class would break isinstance() checks all over the library.

Patches nest and overlap (two stacks, two threads, tasks): the names are replaced
when the first patch begins and put back when the last one ends, and in between the
most recent patch whose stack owns an address wins.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket as _socket
import socketserver
import threading
import types
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tcpstack.stack import Stack

_lock = threading.Lock()
_active: list[Stack] = []  # the stacks of the patches in force, oldest first
_originals: dict[str, Any] = {}


def _owner(host: str) -> Stack | None:
    with _lock:
        stacks = list(reversed(_active))
    return next((stack for stack in stacks if stack.owns(host)), None)


def _create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
    stack = _owner(address[0])
    if stack is not None:
        return stack.create_connection(address, *args, **kwargs)
    return _originals["create_connection"](address, *args, **kwargs)


def _create_server(address: tuple[str, int], **kwargs: Any) -> Any:
    stack = _owner(address[0])
    if stack is not None and kwargs.get("family", _socket.AF_INET) == _socket.AF_INET:
        return stack.create_server(address, **kwargs)
    return _originals["create_server"](address, **kwargs)


class _ChosenAtBind:
    """An IPv4 stream socket for socketserver whose kind bind() decides. Options and
    timeouts set before then are replayed on the socket chosen."""

    family = _socket.AF_INET
    type = _socket.SOCK_STREAM
    proto = _socket.IPPROTO_TCP

    def __init__(self) -> None:
        self._sock: Any = None
        self._before: list[tuple[str, tuple[Any, ...]]] = []

    def _record(self, method: str, *args: Any) -> None:
        if self._sock is None:
            self._before.append((method, args))
        else:
            getattr(self._sock, method)(*args)

    def setsockopt(self, *args: Any) -> None:
        self._record("setsockopt", *args)

    def settimeout(self, value: float | None) -> None:
        self._record("settimeout", value)

    def setblocking(self, flag: bool) -> None:
        self._record("setblocking", flag)

    def bind(self, address: tuple[str, int]) -> None:
        if self._sock is not None:
            self._sock.bind(address)
            return
        stack = _owner(address[0])
        sock = stack.socket() if stack is not None else _socket.socket()
        try:
            for method, args in self._before:
                getattr(sock, method)(*args)
            sock.bind(address)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()

    def __getattr__(self, name: str) -> Any:
        if self._sock is None:
            raise OSError(errno.ENOTCONN, f"{os.strerror(errno.ENOTCONN)}: {name} before bind()")
        return getattr(self._sock, name)

    def __repr__(self) -> str:
        return f"<socket chosen at bind(): {self._sock!r}>"


class _SocketModuleView(types.ModuleType):
    """The socket module as socketserver sees it within a patch."""

    def __init__(self) -> None:
        super().__init__("socket", "socket, with IPv4 stream sockets chosen at bind()")

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
            return _ChosenAtBind()
        return _socket.socket(family, type, proto, fileno)


def _install() -> None:
    _originals["create_connection"] = _socket.create_connection
    _originals["create_server"] = _socket.create_server
    _originals["socketserver"] = socketserver.socket  # type: ignore[attr-defined]
    _socket.create_connection = _create_connection  # type: ignore[assignment]
    _socket.create_server = _create_server  # type: ignore[assignment]
    socketserver.socket = _SocketModuleView()  # type: ignore[attr-defined]


def _uninstall() -> None:
    _socket.create_connection = _originals.pop("create_connection")
    _socket.create_server = _originals.pop("create_server")
    socketserver.socket = _originals.pop("socketserver")  # type: ignore[attr-defined]


@contextlib.contextmanager
def patched(stack: Stack) -> Iterator[Stack]:
    with _lock:
        if not _active:
            _install()
        _active.append(stack)
    try:
        yield stack
    finally:
        with _lock:
            _active.remove(stack)
            if not _active:
                _uninstall()
