"""Fetch a page with urllib, unchanged, over the userspace endpoint.

A lab puts Python's http.server in the kernel's namespace at 198.18.0.1; inside
`with stack.patched():` urllib.request (and http.client below it) connect through
tcpstack at 198.18.0.2. The body is checked against the file the server serves.

    sudo .venv/bin/python examples/http_client.py
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tcpstack.lab import Lab

PORT = 8000


def main() -> int:
    with tempfile.TemporaryDirectory() as site, Lab("veth") as lab:
        page = os.urandom(1_000_000)
        Path(site, "page.bin").write_bytes(page)
        server = lab.peer_popen(
            [sys.executable, "-m", "http.server", "--bind", lab.peer_address, str(PORT),
             "--directory", site],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            lab.wait_peer_listening(PORT)
            with lab.stack() as stack, stack.patched():
                url = f"http://{lab.peer_address}:{PORT}/page.bin"
                started = time.perf_counter()
                with urllib.request.urlopen(url, timeout=10) as reply:
                    body = reply.read()
                    status, kind = reply.status, reply.headers["Content-Type"]
                elapsed = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(10)
    ok = hashlib.sha256(body).digest() == hashlib.sha256(page).digest()
    print(f"GET {url}: {status} {kind}, {len(body)} bytes in {elapsed * 1000:.1f} ms")
    print("body matches the served file" if ok else "BODY DIFFERS from the served file")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
