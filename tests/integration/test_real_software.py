"""Real software at the other end: programs in the kernel's namespace talk to the
standard library's clients and servers running over our endpoint, unchanged, through
Stack.patched(), tcpstack.aio and plain Socket calls. Every transfer's bytes are
checked end to end."""

from __future__ import annotations

import asyncio
import ftplib
import functools
import hashlib
import http.client
import http.server
import os
import smtplib
import socket
import sys
import threading
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tcpstack import aio
from tcpstack.lab import Lab
from tcpstack.stack import Socket, Stack
from tests.integration.kernel import TIMEOUT, in_thread, open_stack, recv_all, sha256
from tests.integration.software import PeerProgram, need

BLOB = os.urandom(2_000_000)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[tuple[Lab, Stack]]:
    """One veth lab and one stack for the module: every test uses its own ports."""
    with Lab("veth") as lab:
        stack = open_stack(lab)
        try:
            yield lab, stack
        finally:
            stats = stack.stats()
            stack.close()
        assert stats.get("internal_errors", 0) == 0


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "blob").write_bytes(BLOB)
    (tmp_path / "hello.txt").write_text("hello from the kernel's side\n")
    return tmp_path


def python(*args: str) -> list[str]:
    return [sys.executable, "-u", *args]


# ---------------------------------------------------------------------- HTTP


def test_http_client_and_urllib_fetch_from_python_http_server(
    endpoint: tuple[Lab, Stack], files: Path
) -> None:
    lab, stack = endpoint
    port = 8001
    argv = python("-m", "http.server", "--bind", lab.peer_address, str(port), "-d", str(files))
    with PeerProgram(lab, argv, listens_on=port), stack.patched():
        conn = http.client.HTTPConnection(lab.peer_address, port, timeout=TIMEOUT)
        conn.request("GET", "/blob")
        assert isinstance(conn.sock, Socket)
        reply = conn.getresponse()
        assert reply.status == 200
        assert sha256(reply.read()) == sha256(BLOB)
        conn.close()
        url = f"http://{lab.peer_address}:{port}/hello.txt"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as page:
            assert page.read() == b"hello from the kernel's side\n"


class _FilesAndUploads(http.server.SimpleHTTPRequestHandler):
    """GET serves the directory; PUT answers with the SHA-256 of the body it read."""

    protocol_version = "HTTP/1.1"  # keep-alive, and Expect: 100-continue for curl -T

    def do_PUT(self) -> None:  # noqa: N802 - the stdlib's name
        length = int(self.headers["Content-Length"])
        digest = hashlib.sha256(self.rfile.read(length)).hexdigest().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(digest)))
        self.end_headers()
        self.wfile.write(digest)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_curl_fetches_and_uploads_to_http_server_on_our_endpoint(
    endpoint: tuple[Lab, Stack], files: Path, tmp_path: Path
) -> None:
    lab, stack = endpoint
    curl = need("curl")
    port = 8002
    handler = functools.partial(_FilesAndUploads, directory=str(files))
    with stack.patched():
        server = http.server.ThreadingHTTPServer(("", port), handler)
    assert any(c.local == (stack.address, port) for c in stack.connections())
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    serving.start()
    try:
        base = f"http://{stack.address}:{port}"
        out = tmp_path / "fetched"
        result = lab.peer_run(
            [curl, "-sS", "--fail", "--max-time", "30", "-o", str(out), f"{base}/blob",
             "-o", str(tmp_path / "hello"), f"{base}/hello.txt"],
            timeout=40, capture_output=True,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert sha256(out.read_bytes()) == sha256(BLOB)
        assert (tmp_path / "hello").read_bytes() == b"hello from the kernel's side\n"
        upload = lab.peer_run(
            [curl, "-sS", "--fail", "--max-time", "30", "-T", str(files / "blob"),
             f"{base}/upload"],
            timeout=40, capture_output=True,
        )  # fmt: skip
        assert upload.returncode == 0, upload.stderr
        assert upload.stdout.decode() == sha256(BLOB)
    finally:
        server.shutdown()
        server.server_close()
        serving.join(TIMEOUT)


# ---------------------------------------------------------------- nc and socat


def test_we_send_a_file_to_nc_listening_in_the_kernel(
    endpoint: tuple[Lab, Stack], files: Path, tmp_path: Path
) -> None:
    lab, stack = endpoint
    nc = need("nc")
    port = 8003
    out = tmp_path / "received"
    argv = [nc, "-d", "-l", lab.peer_address, str(port)]  # -d: never read stdin
    with out.open("wb") as sink, PeerProgram(lab, argv, listens_on=port, stdout=sink) as prog:
        sock = stack.create_connection((lab.peer_address, port), timeout=TIMEOUT)
        with (files / "blob").open("rb") as f:
            assert sock.sendfile(f) == len(BLOB)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""  # nc closes once it has read our FIN
        sock.close()
        assert prog.wait()[0] == 0
    assert sha256(out.read_bytes()) == sha256(BLOB)


def test_socat_sends_a_file_to_our_listener(endpoint: tuple[Lab, Stack], files: Path) -> None:
    lab, stack = endpoint
    socat = need("socat")
    port = 8004
    listener = stack.create_server(("", port))
    listener.settimeout(TIMEOUT)
    with PeerProgram(lab, [socat, "-u", f"OPEN:{files / 'blob'}", f"TCP:{stack.address}:{port}"]):
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT)
        with conn.makefile("rb") as stream:
            received = stream.read()
        conn.close()
    listener.close()
    assert sha256(received) == sha256(BLOB)


def test_socat_echo_in_the_kernel_round_trips_our_bytes(endpoint: tuple[Lab, Stack]) -> None:
    lab, stack = endpoint
    socat = need("socat")
    port = 8005
    # -b 4096: see the asyncio test below.
    argv = [socat, "-b", "4096", f"TCP-LISTEN:{port},bind={lab.peer_address},reuseaddr", "PIPE"]
    with PeerProgram(lab, argv, listens_on=port):
        sock = stack.create_connection((lab.peer_address, port), timeout=TIMEOUT)
        echoed = in_thread(recv_all, sock)
        sock.sendall(BLOB[:500_000])
        sock.shutdown(socket.SHUT_WR)
        assert sha256(echoed.result(TIMEOUT)) == sha256(BLOB[:500_000])
        sock.close()


# ------------------------------------------------------------ SMTP and FTP


def test_smtplib_sends_mail_to_a_python_smtp_server(endpoint: tuple[Lab, Stack]) -> None:
    lab, stack = endpoint
    port = 8025
    argv = python("-W", "ignore", "-m", "smtpd", "-n", "-c", "DebuggingServer",
                  f"{lab.peer_address}:{port}")  # fmt: skip
    message = EmailMessage()
    message["From"] = "tcpstack@example.test"
    message["To"] = "kernel@example.test"
    message["Subject"] = "over a userspace TCP"
    token = os.urandom(8).hex()
    message.set_content(f"body {token}\n")
    with PeerProgram(lab, argv, listens_on=port) as server:
        with stack.patched(), smtplib.SMTP(lab.peer_address, port, timeout=TIMEOUT) as smtp:
            assert isinstance(smtp.sock, Socket)
            refused = smtp.send_message(message)
        assert refused == {}
        output = server.stop()
    assert f"body {token}" in output


def test_ftplib_passive_and_active_transfers_with_pyftpdlib(
    endpoint: tuple[Lab, Stack], files: Path
) -> None:
    lab, stack = endpoint
    pytest.importorskip("pyftpdlib")
    port = 8021
    argv = python("-m", "pyftpdlib", "-i", lab.peer_address, "-p", str(port),
                  "-d", str(files), "-w")  # fmt: skip
    with PeerProgram(lab, argv, listens_on=port), stack.patched():
        with ftplib.FTP(timeout=TIMEOUT) as ftp:
            ftp.connect(lab.peer_address, port)
            assert isinstance(ftp.sock, Socket)
            ftp.login()
            for passive in (True, False):  # PASV: we connect; PORT: the server does
                ftp.set_pasv(passive)
                chunks: list[bytes] = []
                ftp.retrbinary("RETR blob", chunks.append)
                assert sha256(b"".join(chunks)) == sha256(BLOB)
            ftp.set_pasv(True)
            upload = os.urandom(300_000)
            ftp.storbinary("STOR upload", _Reader(upload))
    assert (files / "upload").read_bytes() == upload


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def read(self, n: int) -> bytes:
        chunk = self.data[self.offset : self.offset + n]
        self.offset += len(chunk)
        return chunk


# ------------------------------------------------------------------ redis


def test_redis_py_talks_to_redis_server_over_our_socket(endpoint: tuple[Lab, Stack]) -> None:
    lab, stack = endpoint
    server_binary = need("redis-server", optional=True)
    redis = pytest.importorskip("redis")
    port = 8379
    argv = [server_binary, "--bind", lab.peer_address, "--port", str(port), "--save", "",
            "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no"]  # fmt: skip

    class OverStack(redis.Connection):  # type: ignore[misc, name-defined]
        def _connect(self) -> Socket:
            sock = stack.create_connection((self.host, self.port), timeout=TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock

    with PeerProgram(lab, argv, listens_on=port):
        pool = redis.ConnectionPool(
            connection_class=OverStack, host=lab.peer_address, port=port, socket_timeout=TIMEOUT
        )
        client = redis.Redis(connection_pool=pool)
        value = os.urandom(1_000_000)
        assert client.set("blob", value)
        used = pool.get_connection()
        assert isinstance(used._sock, Socket)
        pool.release(used)
        assert sha256(client.get("blob")) == sha256(value)
        pipe = client.pipeline()
        for _ in range(200):
            pipe.incr("counter")
        assert pipe.execute()[-1] == 200
        client.close()
        pool.disconnect()


# ---------------------------------------------------------------- asyncio


def test_asyncio_client_and_server_with_kernel_programs(
    endpoint: tuple[Lab, Stack], files: Path
) -> None:
    lab, stack = endpoint
    socat = need("socat")
    port, echo_port = 8006, 8007

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()
        writer.write(hashlib.sha256(data).hexdigest().encode())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main() -> tuple[bytes, bytes]:
        server = await aio.start_server(stack, handle, port=port)
        # The kernel's socat sends the file to our asyncio server and prints its reply.
        with (files / "blob").open("rb") as blob:
            client = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", lab.peer_netns, socat, "-t", "10",
                "STDIO", f"TCP:{stack.address}:{port}",
                stdin=blob, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            digest, _ = await client.communicate()
        server.close()
        await server.wait_closed()
        # Our asyncio client through the kernel's socat echo.
        reader, writer = await aio.open_connection(stack, lab.peer_address, echo_port)
        writer.write(BLOB)
        writer.write_eof()
        echoed = await reader.read()
        writer.close()
        await writer.wait_closed()
        return digest, echoed

    # -b 4096: socat writes into its echo pipe with blocking writes of its block size
    # (8192) once select() says the pipe is writable, which is so with 4096 bytes
    # free; a fast sender fills the pipe and socat then blocks writing into the pipe
    # that only it reads (seen: socat asleep in anon_pipe_write for 30 s). No write
    # of PIPE_BUF bytes or less can block so.
    argv = [
        socat, "-b", "4096",
        f"TCP-LISTEN:{echo_port},bind={lab.peer_address},reuseaddr", "PIPE",
    ]  # fmt: skip
    with PeerProgram(lab, argv, listens_on=echo_port):
        digest, echoed = asyncio.run(asyncio.wait_for(main(), 30))
    assert digest.decode() == sha256(BLOB)
    assert sha256(echoed) == sha256(BLOB)
