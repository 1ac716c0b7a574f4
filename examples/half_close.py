"""Half-close both ways: shutdown(SHUT_WR) sends FIN and the other direction lives on.

1. We send a document and shut down our sending side. Our FIN tells the kernel's
   server the request is complete; it answers with a summary afterwards, which we
   read in FIN_WAIT_2 (half-closed: we no longer send, we still receive).
2. The kernel's client does the same to our server: we read its FIN as b"" and go
   on sending from CLOSE_WAIT.

    sudo .venv/bin/python examples/half_close.py
"""

from __future__ import annotations

import socket
import sys
import threading

from tcpstack import TcpConfig
from tcpstack.core.state import State
from tcpstack.lab import Lab
from tcpstack.stack import Socket

DOCUMENT = b"".join(b"line %d of a request that ends with a FIN\n" % i for i in range(2000))
PORT = 5000


def read_to_end(sock: socket.socket | Socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def summary(data: bytes) -> bytes:
    return b"%d bytes, %d lines\n" % (len(data), data.count(b"\n"))


def kernel_server(listener: socket.socket, read: threading.Event) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(summary(read_to_end(conn)))  # only once our FIN said "that is all"
        read.wait(10)  # keep the connection half-open until the client has looked


def kernel_client(lab: Lab, address: tuple[str, int], reply: list[bytes]) -> None:
    with lab.in_peer():
        conn = socket.create_connection(address, timeout=10)
    with conn:
        conn.sendall(DOCUMENT)
        conn.shutdown(socket.SHUT_WR)
        reply.append(read_to_end(conn))


def main() -> int:
    ok = True
    with Lab("veth") as lab, lab.stack(config=TcpConfig(msl=0.5)) as stack:
        print("1. we are the client and half-close first")
        with lab.in_peer():
            listener = socket.create_server((lab.peer_address, PORT))
        listener.settimeout(10)
        read = threading.Event()
        server = threading.Thread(target=kernel_server, args=(listener, read))
        server.start()
        sock = stack.create_connection((lab.peer_address, PORT), timeout=10)
        sock.sendall(DOCUMENT)
        sock.shutdown(socket.SHUT_WR)
        print(f"   sent {len(DOCUMENT)} bytes, then shutdown(SHUT_WR): {sock.state.name}")
        with sock.makefile("rb") as stream:
            answer = stream.readline()
            print(f"   read the answer in {sock.state.name}: {answer.decode().strip()}")
            read.set()
            assert stream.read() == b""  # then the kernel's FIN
        sock.close()
        print(f"   after close(): {sock.wait_for_state(State.TIME_WAIT, timeout=5).name}")
        server.join(10)
        listener.close()
        ok &= answer == summary(DOCUMENT)

        print("2. we are the server and the kernel half-closes first")
        ours = stack.create_server(("", PORT))
        ours.settimeout(10)
        reply: list[bytes] = []
        client = threading.Thread(target=kernel_client, args=(lab, (stack.address, PORT), reply))
        client.start()
        conn, _ = ours.accept()
        conn.settimeout(10)
        request = read_to_end(conn)
        print(f"   read {len(request)} bytes and then b'' (the FIN): {conn.state.name}")
        conn.sendall(summary(request))
        print(f"   still sending from {conn.state.name}")
        conn.close()
        client.join(10)
        print(f"   the kernel's client read: {reply[0].decode().strip() if reply else None}")
        ours.close()
        ok &= reply == [summary(DOCUMENT)]
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
