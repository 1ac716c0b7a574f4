"""A banner grabber: non-blocking connects to many ports at once, with selectors.

The kernel's side of a lab runs a few services that greet their clients (an SSH-,
an SMTP- and an FTP-like banner) on some ports and nothing on the others. From the
userspace endpoint, every port is connected to at the same time; `selectors` says
when each connect finishes (writable, then SO_ERROR) and when its banner arrives
(readable). Closed ports answer with a RST: connection refused.

    sudo .venv/bin/python examples/banner_grab.py
"""

from __future__ import annotations

import errno
import selectors
import socket
import sys
import threading
import time

from tcpstack.lab import Lab
from tcpstack.stack import Socket, Stack

SERVICES = {
    21: b"220 lab FTP service ready\r\n",
    22: b"SSH-2.0-lab_sshd_1.0\r\n",
    25: b"220 mail.lab ESMTP service ready\r\n",
}
PORTS = range(20, 31)
DEADLINE = 5.0


def serve_banners(lab: Lab, stop: threading.Event) -> list[threading.Thread]:
    """Kernel listeners in the lab's peer namespace that greet and hang up."""
    threads = []
    for port, banner in SERVICES.items():
        with lab.in_peer():
            listener = socket.create_server((lab.peer_address, port))
        listener.settimeout(0.1)

        def greet(listener: socket.socket = listener, banner: bytes = banner) -> None:
            with listener:
                while not stop.is_set():
                    try:
                        conn, _ = listener.accept()
                    except TimeoutError:
                        continue
                    with conn:
                        conn.sendall(banner)

        thread = threading.Thread(target=greet, daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def grab(stack: Stack, host: str, ports: range) -> dict[int, str]:
    results: dict[int, str] = {}
    with selectors.DefaultSelector() as sel:
        for port in ports:
            sock = stack.socket()
            sock.setblocking(False)
            code = sock.connect_ex((host, port))
            if code not in (0, errno.EINPROGRESS):
                results[port] = f"error: {errno.errorcode[code]}"
                sock.close()
                continue
            sel.register(sock, selectors.EVENT_WRITE, port)
        deadline = time.monotonic() + DEADLINE
        while sel.get_map() and (remaining := deadline - time.monotonic()) > 0:
            for key, events in sel.select(remaining):
                sock, port = key.fileobj, key.data
                assert isinstance(sock, Socket)
                if events & selectors.EVENT_WRITE:  # the connect has finished
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        results[port] = "closed" if code == errno.ECONNREFUSED else os_error(code)
                        sel.unregister(sock)
                        sock.close()
                    else:
                        sel.modify(sock, selectors.EVENT_READ, port)
                else:  # the banner (or the end of the stream)
                    results[port] = "open: " + sock.recv(1024).decode(errors="replace").strip()
                    sel.unregister(sock)
                    sock.close()
        for key in list(sel.get_map().values()):
            results[key.data] = "no answer"
            sel.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
    return results


def os_error(code: int) -> str:
    return f"error: {errno.errorcode.get(code, code)}"


def main() -> int:
    stop = threading.Event()
    with Lab("veth") as lab, lab.stack() as stack:
        threads = serve_banners(lab, stop)
        started = time.perf_counter()
        results = grab(stack, lab.peer_address, PORTS)
        elapsed = time.perf_counter() - started
        stop.set()
        for thread in threads:
            thread.join(5)
    print(f"{lab.peer_address}: {len(PORTS)} ports in {elapsed * 1000:.0f} ms")
    for port in PORTS:
        print(f"  {port:>5}/tcp  {results.get(port, '?')}")
    found = {port for port, text in results.items() if text.startswith("open")}
    return 0 if found == set(SERVICES) else 1


if __name__ == "__main__":
    sys.exit(main())
