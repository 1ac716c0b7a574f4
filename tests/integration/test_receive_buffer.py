"""Scenario W-10: our receive buffer made smaller under an open window, with the
kernel sending into it.

The window already offered is not taken back (SHLD-14; the wire-trace checker's I-7
holds every test to that), so the kernel goes on sending to its right edge; what the
smaller buffer cannot hold is trimmed, the ACK says what we took, and the kernel
sends the rest again once we read.
"""

from __future__ import annotations

import hashlib
import socket

import pytest

from tcpstack.lab import Lab
from tcpstack.stack import Stack
from tcpstack.trace import SegmentEvent, TraceEvent
from tests.integration.kernel import TIMEOUT, connect, in_thread, wait_until

pytestmark = pytest.mark.netns

SIZE = 256 << 10
FIRST = 64 << 10  # what arrives before the buffer shrinks
SMALL = 16 << 10  # SO_RCVBUF: the buffer becomes twice this, as on Linux


def test_a_buffer_made_smaller_takes_only_what_fits_and_loses_nothing(
    lab: Lab, stack: Stack
) -> None:
    s, peer = connect(stack, lab)
    data = bytes(i % 251 for i in range(SIZE))
    conn = s.connection
    assert conn is not None
    # The kernel sends the rest only once the buffer is smaller: by then our window
    # reaches far beyond it.
    peer.sendall(data[:FIRST])
    wait_until(lambda: conn.readable == FIRST, "the first data in, unread")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)
    assert conn.advertised_window > 2 * SMALL
    sending = in_thread(peer.sendall, data[FIRST:])
    buffer = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    assert buffer == 2 * SMALL
    held = conn.readable
    most = [held]

    def watch(event: TraceEvent) -> None:
        if isinstance(event, SegmentEvent) and event.direction == "in":
            most[0] = max(most[0], conn.readable)

    stack.subscribe(watch)
    # The kernel fills the window it was offered before the change; we keep no more
    # than was there, or than the new buffer holds.
    wait_until(lambda: conn.stats.get("trimmed_to_window", 0) > 0, "in-window data trimmed")
    assert most[0] <= max(held, buffer)
    got = bytearray()
    while len(got) < SIZE:
        chunk = s.recv(1 << 16)
        assert chunk, f"EOF after {len(got)} bytes"
        got += chunk
        assert conn.readable <= buffer or conn.readable <= held
    sending.result(TIMEOUT)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert lab.peer_nstat()["TcpRetransSegs"] > 0  # the trimmed bytes came again
    s.close()
    assert peer.recv(1) == b""
    peer.close()
