"""Helpers for tests that talk to the real kernel inside a lab.

Kernel sockets are created inside the peer namespace by the test process itself
(a socket keeps the namespace it was born in), and blocking kernel-side work runs
in threads whose results the test collects with a deadline.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from tcpstack import TcpConfig
from tcpstack.lab import Lab
from tcpstack.stack import Socket, Stack
from tcpstack.trace import Recorder

T = TypeVar("T")
TIMEOUT = 10.0
PORT = 9000
MSL = 0.25  # TIME-WAIT of half a second keeps the suite quick

_pool = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="kernel-side")


def in_thread(fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
    return _pool.submit(fn, *args)


def kernel_server(lab: Lab, port: int, backlog: int = 64) -> socket.socket:
    with lab.in_peer():
        server = socket.create_server((lab.peer_address, port), backlog=backlog)
    server.settimeout(TIMEOUT)
    return server


def kernel_socket(lab: Lab) -> socket.socket:
    with lab.in_peer():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    return sock


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll a condition until it holds or the deadline passes (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)


def kernel_state(lab: Lab, kernel: tuple[str, int], ours: tuple[str, int]) -> str | None:
    return lab.peer_tcp_state(kernel, ours)


def recv_all(sock: Any) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_stack(lab: Lab, **kw: Any) -> Stack:
    """Our endpoint on the lab's interface, with a short MSL unless told otherwise."""
    config = kw.pop("config", TcpConfig(msl=MSL))
    return Stack(
        lab.endpoint_interface, lab.endpoint_cidr, netns=lab.endpoint_netns, config=config, **kw
    )


def connect(stack: Stack, lab: Lab, port: int = PORT) -> tuple[Socket, socket.socket]:
    """Connect to a kernel listener; returns (our socket, the kernel's accepted socket)."""
    server = kernel_server(lab, port)
    accepted = in_thread(server.accept)
    s = stack.socket()
    s.settimeout(TIMEOUT)
    s.connect((lab.peer_address, port))
    peer, _ = accepted.result(TIMEOUT)
    server.close()
    peer.settimeout(TIMEOUT)
    return s, peer


@contextlib.contextmanager
def recorded_stack(lab: Lab, config: TcpConfig | None = None) -> Iterator[tuple[Stack, Recorder]]:
    """Our endpoint (open_stack) and a recorder of its trace from the start; fails
    if the engine hit an internal error."""
    stack = open_stack(lab, config=config or TcpConfig(msl=MSL))
    recorder = Recorder()
    stack.subscribe(recorder)
    try:
        yield stack, recorder
    finally:
        stats = stack.stats()
        stack.close()
    assert stats.get("internal_errors", 0) == 0
