"""Drop-in behaviour of the facade, between two stacks joined by a MemoryLink (no root):
fileno() readiness for select/selectors/asyncio, makefile, sendfile, the socket
options a server sets, create_connection/create_server and Stack.patched()."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import http.server
import io
import os
import select
import selectors
import socket
import socketserver
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tcpstack import TcpConfig, aio
from tcpstack.core.state import State
from tcpstack.link import MemoryLink
from tcpstack.stack import Socket, Stack

A_IP, B_IP = "198.18.0.1", "198.18.0.2"
PORT = 8080
TIMEOUT = 5.0


@pytest.fixture
def twin() -> Iterator[tuple[Stack, Stack]]:
    """Stack A (198.18.0.1) and stack B (198.18.0.2) on one in-memory wire."""
    a_link, b_link = MemoryLink.pair()
    config = TcpConfig(msl=0.1)
    a = Stack(a_link, f"{A_IP}/24", config=config)
    b = Stack(b_link, f"{B_IP}/24", config=config)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def ready(sock: Socket, timeout: float = 0.0) -> tuple[bool, bool]:
    r, w, _ = select.select([sock], [sock], [], timeout)
    return bool(r), bool(w)


def wait_ready(sock: Socket, *, readable: bool = False, writable: bool = False) -> None:
    r, w, _ = select.select([sock] if readable else [], [sock] if writable else [], [], TIMEOUT)
    assert r or w, "select timed out"


def connected(a: Stack, b: Stack, port: int = PORT) -> tuple[Socket, Socket, Socket]:
    """(listener on B, client on A, accepted on B)."""
    listener = b.create_server(("", port))
    client = a.create_connection((B_IP, port), timeout=TIMEOUT)
    server, _ = listener.accept()
    server.settimeout(TIMEOUT)
    return listener, client, server


# ----------------------------------------------------------------- readiness


def test_listener_is_readable_exactly_while_a_connection_waits(twin: tuple[Stack, Stack]) -> None:
    a, b = twin
    listener = b.create_server(("", PORT))
    assert ready(listener) == (False, False)
    client = a.create_connection((B_IP, PORT), timeout=TIMEOUT)
    wait_ready(listener, readable=True)
    listener.accept()
    assert ready(listener) == (False, False)
    client.close()


def test_nonblocking_connect_completes_as_writable_with_so_error_zero(
    twin: tuple[Stack, Stack],
) -> None:
    a, b = twin
    listener = b.create_server(("", PORT))
    client = a.socket()
    client.setblocking(False)
    with pytest.raises(BlockingIOError) as raised:
        client.connect((B_IP, PORT))
    assert raised.value.errno == errno.EINPROGRESS
    wait_ready(client, writable=True)
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    assert client.state is State.ESTABLISHED
    listener.close()


def test_refused_nonblocking_connect_reports_through_so_error_once(
    twin: tuple[Stack, Stack],
) -> None:
    a, _ = twin
    client = a.socket()
    client.setblocking(False)
    assert client.connect_ex((B_IP, PORT)) == errno.EINPROGRESS
    wait_ready(client, writable=True)
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


def test_readable_while_data_waits_and_at_end_of_file(twin: tuple[Stack, Stack]) -> None:
    a, b = twin
    _, client, server = connected(a, b)
    assert ready(server) == (False, True)
    client.sendall(b"ping")
    wait_ready(server, readable=True)
    assert server.recv(100) == b"ping"
    assert ready(server) == (False, True)
    client.shutdown(socket.SHUT_WR)
    wait_ready(server, readable=True)
    assert server.recv(100) == b""


def test_not_writable_while_the_send_buffer_is_full(twin: tuple[Stack, Stack]) -> None:
    a, b = twin
    listener = b.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("", PORT))
    listener.listen()
    client = a.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.settimeout(TIMEOUT)
    client.connect((B_IP, PORT))
    server, _ = listener.accept()
    client.setblocking(False)
    sent = 0
    conn = client.connection
    assert conn is not None
    deadline = time.monotonic() + TIMEOUT
    # Fill until the receiver's window is shut and everything sent is acknowledged:
    # from then on no ACK can free space, and the socket must stay unwritable.
    while not (conn.snd_wnd == 0 and conn.in_flight == 0 and conn.send_space == 0):
        assert time.monotonic() < deadline, "the send buffer never filled"
        try:
            sent += client.send(bytes(4096))
        except BlockingIOError:
            select.select([], [], [], 0.01)
    assert ready(client) == (False, False)
    received = 0
    while received < sent:
        received += len(server.recv(65536))
    wait_ready(client, writable=True)
    assert ready(client)[1]


def test_selectors_drive_an_echo_server_and_client(twin: tuple[Stack, Stack]) -> None:
    a, b = twin
    listener = b.create_server(("", PORT))
    listener.setblocking(False)
    client = a.create_connection((B_IP, PORT), timeout=TIMEOUT)
    payload = os.urandom(200_000)
    echoed = bytearray()

    def echo() -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ)
            conn: Socket | None = None
            while True:
                events = sel.select(TIMEOUT)
                assert events, "selector timed out"
                for key, _ in events:
                    if key.fileobj is listener:
                        conn, _ = listener.accept()
                        conn.setblocking(False)
                        sel.register(conn, selectors.EVENT_READ)
                    else:
                        assert conn is not None
                        data = conn.recv(65536)
                        if not data:
                            conn.close()
                            return
                        conn.setblocking(True)
                        conn.sendall(data)
                        conn.setblocking(False)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    client.sendall(payload)
    client.shutdown(socket.SHUT_WR)
    while chunk := client.recv(65536):
        echoed += chunk
    thread.join(TIMEOUT)
    assert bytes(echoed) == payload


# ------------------------------------------------------------- file objects


def test_makefile_text_and_binary(twin: tuple[Stack, Stack]) -> None:
    a, b = twin
    _, client, server = connected(a, b)
    writer = client.makefile("w", encoding="utf-8", newline="\r\n")
    reader = server.makefile("rb")
    writer.write("héllo\nworld\n")
    writer.flush()
    assert reader.readline() == "héllo\r\n".encode()
    assert reader.readline() == b"world\r\n"
    rw = server.makefile("rwb")
    rw.write(b"back\n")
    rw.flush()
    assert client.makefile("r").readline() == "back\n"


def test_close_waits_for_open_file_objects(twin: tuple[Stack, Stack]) -> None:
    a, b = twin
    _, client, server = connected(a, b)
    reader = server.makefile("rb")
    server.close()
    assert server.state is State.ESTABLISHED  # the file object still holds it
    client.sendall(b"still here\n")
    assert reader.readline() == b"still here\n"
    reader.close()
    assert client.recv(10) == b""  # now the FIN
    with pytest.raises(OSError) as raised:
        server.recv(1)
    assert raised.value.errno == errno.EBADF


def test_sendfile_sends_the_range_and_moves_the_file_position(twin: tuple[Stack, Stack]) -> None:
    a, b = twin
    _, client, server = connected(a, b)
    content = os.urandom(700_000)
    file = io.BytesIO(content)
    assert client.sendfile(file, offset=1000, count=500_000) == 500_000
    assert file.tell() == 501_000
    client.shutdown(socket.SHUT_WR)
    received = bytearray()
    while chunk := server.recv(65536):
        received += chunk
    assert bytes(received) == content[1000:501_000]
    with pytest.raises(ValueError):
        client.sendfile(io.StringIO("text"))


# ------------------------------------------------------------------ options


def test_linger_zero_resets_instead_of_closing(twin: tuple[Stack, Stack]) -> None:
    a, b = twin
    _, client, server = connected(a, b)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8) == struct.pack("ii", 1, 0)
    client.close()
    assert client.state is State.CLOSED  # no FIN-WAIT, no TIME-WAIT
    with pytest.raises(ConnectionResetError):
        server.recv(10)


def test_linger_with_a_timeout_waits_for_the_fin_to_be_acknowledged(
    twin: tuple[Stack, Stack],
) -> None:
    a, b = twin
    _, client, server = connected(a, b)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 5))
    client.sendall(b"x" * 100_000)
    client.close()
    assert client.state in (State.FIN_WAIT_2, State.TIME_WAIT)
    server.close()


def test_reuseaddr_decides_whether_a_port_in_time_wait_can_be_bound(
    twin: tuple[Stack, Stack],
) -> None:
    a, b = twin
    listener, client, server = connected(a, b)
    listener.close()
    server.close()  # B closes first, so B's side goes to TIME-WAIT on port 8080
    assert client.recv(1) == b""
    client.close()
    server.wait_for_state(State.TIME_WAIT, timeout=TIMEOUT)
    plain = b.socket()
    with pytest.raises(OSError) as raised:
        plain.bind(("", PORT))
    assert raised.value.errno == errno.EADDRINUSE
    reusing = b.socket()
    reusing.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reusing.bind(("", PORT))
    assert reusing.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1


def test_socket_attributes_match_a_kernel_tcp_socket(twin: tuple[Stack, Stack]) -> None:
    sock = twin[0].socket()
    assert (sock.family, sock.type, sock.proto) == (
        socket.AF_INET,
        socket.SOCK_STREAM,
        socket.IPPROTO_TCP,
    )
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
    assert sock.fileno() >= 0
    sock.close()
    assert sock.fileno() == -1


# ------------------------------------------------------- helpers and patch


def test_create_connection_reports_refusal_like_the_socket_module(
    twin: tuple[Stack, Stack],
) -> None:
    a, _ = twin
    with pytest.raises(ConnectionRefusedError):
        a.create_connection((B_IP, PORT), timeout=TIMEOUT)
    with pytest.raises(ExceptionGroup):
        a.create_connection((B_IP, PORT), timeout=TIMEOUT, all_errors=True)


def test_patched_http_server_and_urllib_client(twin: tuple[Stack, Stack], tmp_path: object) -> None:
    a, b = twin
    body = os.urandom(300_000)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with b.patched():
        server = http.server.ThreadingHTTPServer((B_IP, PORT), Handler)
    assert ((B_IP, PORT), State.LISTEN) in [(c.local, c.state) for c in b.connections()]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        with a.patched():
            with urllib.request.urlopen(f"http://{B_IP}:{PORT}/", timeout=TIMEOUT) as reply:
                got = reply.read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


def test_patch_leaves_other_addresses_and_restores_every_name(
    twin: tuple[Stack, Stack],
) -> None:
    a, _ = twin
    originals = (socket.create_connection, socket.create_server, socketserver.socket)
    kernel = socket.create_server(("127.0.0.1", 0))
    try:
        with a.patched():
            assert socket.create_connection is not originals[0]
            local = socket.create_connection(kernel.getsockname(), timeout=TIMEOUT)
            assert isinstance(local, socket.socket)  # 127.0.0.1 is not the stack's
            local.close()
    finally:
        kernel.close()
    assert (socket.create_connection, socket.create_server, socketserver.socket) == originals


def test_overlapping_patches_restore_the_originals_whatever_the_exit_order(
    twin: tuple[Stack, Stack],
) -> None:
    a, b = twin
    originals = (socket.create_connection, socket.create_server, socketserver.socket)
    first, second = a.patched(), b.patched()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first to begin ends first
    assert socket.create_connection is not originals[0]  # b's patch is still on
    second.__exit__(None, None, None)
    assert (socket.create_connection, socket.create_server, socketserver.socket) == originals


def test_patched_socketserver_on_another_address_stays_with_the_kernel(
    twin: tuple[Stack, Stack],
) -> None:
    a, _ = twin
    with a.patched():
        server = socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1" and port > 0
        assert not a.connections()
        kernel = socket.create_connection((host, port), timeout=TIMEOUT)
        kernel.close()
    finally:
        server.server_close()


def test_a_broken_readiness_descriptor_does_not_stop_the_stack(
    twin: tuple[Stack, Stack],
) -> None:
    a, b = twin
    _, client, server = connected(a, b)
    os.close(server.fileno())  # as ssl.wrap_socket's failed attempt ends up doing
    client.sendall(b"still fine")
    assert server.recv(100) == b"still fine"
    assert b.stats().get("internal_errors", 0) == 0


def test_a_listener_of_a_closed_stack_is_not_ready(twin: tuple[Stack, Stack]) -> None:
    _, b = twin
    listener = b.create_server(("", PORT))
    listener.fileno()
    b.close()
    assert ready(listener) == (False, False)  # an event loop would spin on accept()


# ------------------------------------------------------------------ asyncio


def test_asyncio_streams_both_ways(twin: tuple[Stack, Stack]) -> None:
    a, b = twin
    payload = os.urandom(500_000)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()
        writer.write(hashlib.sha256(data).digest() + data[:1000])
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main() -> bytes:
        server = await aio.start_server(b, handle, port=PORT)
        assert server.sockets[0].getsockname() == (B_IP, PORT)
        reader, writer = await aio.open_connection(a, B_IP, PORT)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        reply = await reader.read()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return reply

    reply = asyncio.run(asyncio.wait_for(main(), TIMEOUT * 2))
    assert reply == hashlib.sha256(payload).digest() + payload[:1000]


def test_asyncio_many_connections_share_one_thread(twin: tuple[Stack, Stack]) -> None:
    a, b = twin
    threads_before = threading.active_count()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()

    async def one(i: int) -> bytes:
        reader, writer = await aio.open_connection(a, B_IP, PORT)
        writer.write(f"client {i}\n".encode())
        reply = await reader.readline()
        writer.close()
        return reply

    async def main() -> list[bytes]:
        server = await aio.start_server(b, handle, port=PORT)
        replies = await asyncio.gather(*(one(i) for i in range(50)))
        assert threading.active_count() == threads_before
        server.close()
        await server.wait_closed()
        return replies

    replies = asyncio.run(asyncio.wait_for(main(), TIMEOUT * 2))
    assert replies == [f"CLIENT {i}\n".encode() for i in range(50)]


def test_asyncio_connect_refused_raises_connection_refused(twin: tuple[Stack, Stack]) -> None:
    a, _ = twin

    async def main() -> None:
        await aio.open_connection(a, B_IP, PORT)

    with pytest.raises(ConnectionRefusedError):
        asyncio.run(asyncio.wait_for(main(), TIMEOUT))


def _reset_by(server: Socket) -> None:
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.close()


def test_shutdown_after_a_reset_is_enotconn_as_on_linux(twin: tuple[Stack, Stack]) -> None:
    # Found by the differential fuzzer (M-12): it returned 0. RFC 9293 §3.10.4: a
    # CLOSE without a connection is an error.
    a, b = twin
    _, client, server = connected(a, b)
    _reset_by(server)
    client.wait_for_state(State.CLOSED, timeout=TIMEOUT)
    with pytest.raises(ConnectionResetError):
        client.recv(10)
    with pytest.raises(OSError) as raised:
        client.shutdown(socket.SHUT_WR)
    assert raised.value.errno == errno.ENOTCONN


def test_a_reset_after_the_peers_fin_reads_as_eof_as_on_linux(twin: tuple[Stack, Stack]) -> None:
    # Found by the differential fuzzer (M-12): recv() raised EPIPE. Linux's recv()
    # sees the FIN first and says EOF; the reset is for the next send.
    a, b = twin
    _, client, server = connected(a, b)
    server.shutdown(socket.SHUT_WR)
    client.wait_for_state(State.CLOSE_WAIT, timeout=TIMEOUT)
    _reset_by(server)
    client.wait_for_state(State.CLOSED, timeout=TIMEOUT)
    assert client.recv(10) == b""
    with pytest.raises(OSError):
        client.sendall(b"x")
