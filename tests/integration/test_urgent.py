"""Urgent data against Linux (RFC 9293 §3.8.5): both read the urgent pointer as the
offset of the octet after the urgent data, so each finds the other's mark."""

from __future__ import annotations

import socket

import pytest

from tcpstack.lab import Lab
from tcpstack.stack import Stack
from tcpstack.trace import UrgentEvent
from tests.integration.kernel import connect, wait_until

pytestmark = pytest.mark.netns


def test_linux_finds_the_urgent_byte_we_mark(lab: Lab, stack: Stack) -> None:
    s, peer = connect(stack, lab, 7301)
    with s, peer:
        s.sendall(b"routine")
        s.send(b"!", socket.MSG_OOB)
        s.sendall(b"more")
        # Linux, without SO_OOBINLINE, takes the urgent octet out of the stream: the
        # one our pointer marks, or nothing if it were off by one.
        wait_until(lambda: _oob(peer) is not None, "the kernel to see urgent data")
        assert _oob(peer) == b"!"
        got = b""
        while len(got) < len(b"routinemore"):
            got += peer.recv(100)
        assert got == b"routinemore"


def _oob(peer: socket.socket) -> bytes | None:
    try:
        return peer.recv(1, socket.MSG_OOB | socket.MSG_PEEK)
    except (BlockingIOError, OSError):
        return None


def test_we_find_the_urgent_byte_linux_marks(lab: Lab, stack: Stack) -> None:
    notices: list[UrgentEvent] = []
    stack.subscribe(lambda e: notices.append(e) if isinstance(e, UrgentEvent) else None)
    s, peer = connect(stack, lab, 7302)
    with s, peer:
        peer.sendall(b"abc")
        peer.send(b"U", socket.MSG_OOB)
        peer.sendall(b"xyz")
        wait_until(lambda: bool(notices), "the urgent notice")  # MUST-32
        assert s.urgent_pending() > 0
        # Reads stop at the mark: what comes before, then the urgent octet in line.
        before = b""
        while not s.sockatmark():
            before += s.recv(100)
        assert before == b"abc" and s.urgent_pending() == 1
        rest = b""
        while len(rest) < 4:
            rest += s.recv(100)
        assert rest == b"Uxyz"
        with pytest.raises(OSError):
            s.recv(1, socket.MSG_OOB)  # in line, as with SO_OOBINLINE: EINVAL
