"""Closing against the real kernel: half-close both ways and SHUT_RD (C-05), abort
(C-07), an orphan's FIN-WAIT-2 timeout (C-14), close in SYN-SENT (C-16), and calls
blocked in other threads when the connection is reset or closed (C-18).

The link makes no difference to any of these, so they run on veth only. Where Linux
is the reference for a socket call (SHUT_RD, a listener's shutdown), the same script
runs against a kernel-to-kernel pair too and must give the same answers.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tcpstack import State, TcpConfig
from tcpstack.hooks import DROP, Hook, all_of, in_state, is_flags
from tcpstack.lab import Lab
from tcpstack.stack import Socket, Stack, recv_exactly
from tcpstack.trace import Recorder, SegmentEvent, StateEvent
from tests.integration.kernel import (
    MSL,
    PORT,
    TIMEOUT,
    connect,
    in_thread,
    kernel_server,
    kernel_socket,
    kernel_state,
    open_stack,
    recv_all,
    sha256,
    wait_until,
)

pytestmark = pytest.mark.netns

TEN_MIB = 10 << 20
# How long a call blocked in another thread may take to notice a reset or close
# (the plan's watchdog for C-18).
PROMPT = 5.0
LINGER_ZERO = struct.pack("ii", 1, 0)


@pytest.fixture
def lab(veth: Lab) -> Lab:
    """The conftest's `stack` on veth only: the link plays no part here."""
    return veth


def _outcome(future: concurrent.futures.Future[Any], timeout: float = PROMPT) -> Any:
    """What the call in `future` returned or raised; still running is a deadlock."""
    try:
        error = future.exception(timeout)
    except concurrent.futures.TimeoutError:
        raise AssertionError(f"a blocked call did not return within {timeout} s") from None
    return error if error is not None else future.result()


def _parked(
    fn: Callable[..., Any], *args: Any, inside: str = "wait"
) -> concurrent.futures.Future[Any]:
    """Run fn in a thread and return once that thread is inside `inside` (our
    sockets wait on a condition; a kernel socket's innermost Python frame is the
    call itself): a call that only starts after the close or reset proves nothing."""
    idents: list[int] = []

    def run() -> Any:
        idents.append(threading.get_ident())
        return fn(*args)

    future = in_thread(run)

    def there() -> bool:
        frame = sys._current_frames().get(idents[0]) if idents else None
        while frame is not None:
            if frame.f_code.co_name == inside:
                return True
            frame = frame.f_back
        return False

    wait_until(lambda: there() or future.done(), f"{fn.__name__}() to block")
    assert not future.done(), _outcome(future)
    return future


def _bytes_acked(sock: socket.socket) -> int:
    """tcpi_bytes_acked of a kernel socket (struct tcp_info, offset 120)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 128)
    return int(struct.unpack_from("Q", info, 120)[0])


# ------------------------------------------------------------ C-05: half-close


def test_we_shut_wr_and_still_receive_ten_mebibytes(stack: Stack, veth: Lab) -> None:
    s, peer = connect(stack, veth)
    kernel_end, ours = (veth.peer_address, PORT), s.getsockname()
    with s, peer:
        s.sendall(b"request")
        s.shutdown(socket.SHUT_WR)
        assert recv_all(peer) == b"request"
        s.wait_for_state(State.FIN_WAIT_2, timeout=TIMEOUT)
        assert kernel_state(veth, kernel_end, ours) == "CLOSE_WAIT"
        with pytest.raises(BrokenPipeError):
            s.send(b"after SHUT_WR")
        data = os.urandom(TEN_MIB)
        sending = in_thread(peer.sendall, data)
        got = recv_exactly(s, len(data))
        sending.result(TIMEOUT)
        assert len(got) == len(data) and sha256(got) == sha256(data)
        assert s.state is State.FIN_WAIT_2
        peer.close()
        assert s.recv(10) == b""
        assert s.state is State.TIME_WAIT


def test_kernel_shuts_wr_and_still_receives_ten_mebibytes(stack: Stack, veth: Lab) -> None:
    s, peer = connect(stack, veth)
    kernel_end, ours = (veth.peer_address, PORT), s.getsockname()
    with s, peer:
        peer.sendall(b"request")
        peer.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"request"
        assert s.state is State.CLOSE_WAIT
        assert kernel_state(veth, kernel_end, ours) == "FIN_WAIT_2"
        # The kernel, too, refuses to write after its SHUT_WR.
        with pytest.raises(BrokenPipeError):
            peer.send(b"after SHUT_WR")
        data = os.urandom(TEN_MIB)
        receiving = in_thread(recv_all, peer)
        s.sendall(data)
        s.close()
        got = receiving.result(TIMEOUT)
        assert len(got) == len(data) and sha256(got) == sha256(data)
        s.wait_for_state(State.CLOSED, timeout=TIMEOUT)
        wait_until(lambda: kernel_state(veth, kernel_end, ours) == "TIME_WAIT", "kernel TIME_WAIT")


@contextlib.contextmanager
def _pair(side: str) -> Iterator[tuple[Any, socket.socket, Callable[[], str]]]:
    """A connection to a kernel peer from our endpoint ("tcpstack"), or from a kernel
    socket ("linux", the reference) over the same veth link; yields the connecting
    socket, the kernel's accepted one, and a function reading the first one's state."""
    if side == "tcpstack":
        with Lab("veth") as lab, open_stack(lab) as stack:
            s, peer = connect(stack, lab)
            with s, peer:
                yield s, peer, lambda: s.state.name
        return
    with Lab("kernel") as lab:
        server = kernel_server(lab, PORT)
        with lab.in_endpoint():
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.settimeout(TIMEOUT)
        client.connect((lab.peer_address, PORT))
        peer, _ = server.accept()
        server.close()
        peer.settimeout(TIMEOUT)
        local, remote = client.getsockname(), (lab.peer_address, PORT)

        def state() -> str:
            found = [
                k.state
                for k in lab.endpoint_tcp_sockets()
                if (k.local, k.remote) == (local, remote)
            ]
            return found[0] if found else "CLOSED"

        with client, peer:
            yield client, peer, state


@pytest.mark.parametrize("side", ["tcpstack", "linux"])
def test_after_shut_rd_recv_says_eof_yet_later_data_is_acked_and_read(side: str) -> None:
    # Linux's quirk (packetdrill shutdown-rd-*): SHUT_RD only makes an empty queue
    # read as EOF; data that arrives later is still acknowledged and read.
    with _pair(side) as (a, peer, state):
        a.shutdown(socket.SHUT_RD)
        started = time.monotonic()
        assert a.recv(100) == b""  # a blocking recv, with nothing queued
        assert time.monotonic() - started < TIMEOUT / 2
        acked = _bytes_acked(peer)
        peer.sendall(b"after SHUT_RD")
        wait_until(lambda: _bytes_acked(peer) == acked + 13, "the late data acknowledged")
        assert a.recv(100) == b"after SHUT_RD"
        assert a.recv(100) == b""
        a.sendall(b"writes still work")
        assert peer.recv(100) == b"writes still work"
        assert state() == "ESTABLISHED"
        # Nothing is left unread: close() sends FIN, not RST.
        a.close()
        assert peer.recv(100) == b""
        wait_until(lambda: state() == "FIN_WAIT_2", "FIN_WAIT_2 after close()")


# Linux answers data that reaches a socket shut both ways with RST (TCPAbortOnData),
# which resets the peer kernel's CLOSE_WAIT connection (EstabResets).
@pytest.mark.nstat_allows("TcpExtTCPAbortOnData", "TcpEstabResets")
@pytest.mark.parametrize("side", ["tcpstack", "linux"])
def test_data_reaching_a_socket_shut_both_ways_is_reset(side: str) -> None:
    with _pair(side) as (a, peer, state):
        a.shutdown(socket.SHUT_RD)
        a.shutdown(socket.SHUT_WR)
        assert peer.recv(100) == b""
        wait_until(lambda: state() == "FIN_WAIT_2", "FIN_WAIT_2")
        acked = _bytes_acked(peer)
        peer.sendall(b"nobody will read this")
        # Either the data is taken (acknowledged) or the connection is reset.
        wait_until(
            lambda: state() == "CLOSED" or _bytes_acked(peer) > acked, "the data taken or reset"
        )
        assert state() == "CLOSED"
        assert _bytes_acked(peer) == acked
        with pytest.raises(ConnectionResetError):
            a.recv(100)
        # The peer took the RST in CLOSE_WAIT: EPIPE, as Linux's tcp_reset() says there.
        with pytest.raises(BrokenPipeError):
            peer.send(b"more")


# ------------------------------------------------------------------ C-07: abort


class _Reader:
    """Reads a kernel socket to its end in a thread; `got` grows as bytes arrive."""

    def __init__(self, sock: socket.socket) -> None:
        self.got = bytearray()
        self._sock = sock
        self.done = in_thread(self._run)

    def _run(self) -> OSError | None:
        try:
            while chunk := self._sock.recv(1 << 16):
                self.got += chunk
        except OSError as exc:
            return exc
        return None


class _Sent:
    """Follows one connection's outgoing segments: how far our sequence space
    reached, and the RSTs, numbered from our ISS."""

    def __init__(self, local: tuple[str, int]) -> None:
        self.local = local
        self.end = 0
        self.resets: list[SegmentEvent] = []

    def __call__(self, event: object) -> None:
        if not isinstance(event, SegmentEvent) or event.direction != "out":
            return
        if event.local != self.local or event.note.startswith("dropped"):
            return
        seg = event.segment
        if seg.rst:
            self.resets.append(event)
            return
        self.end = max(self.end, event.relative_seq + len(seg.payload) + seg.syn + seg.fin)


# The RST ends the kernel's established connection: EstabResets.
@pytest.mark.nstat_allows("TcpEstabResets")
def test_linger_zero_close_mid_transfer_resets_the_kernel(stack: Stack, veth: Lab) -> None:
    s, peer = connect(stack, veth)
    kernel_end, ours = (veth.peer_address, PORT), s.getsockname()
    sent = _Sent(ours)
    stack.subscribe(sent)
    # Far more than can reach the kernel before the abort: sendall is still blocked
    # on a full send buffer when close() comes.
    data = bytes(range(256)) * ((32 << 20) // 256)
    with peer:
        reader = _Reader(peer)
        sending = in_thread(s.sendall, data)
        wait_until(lambda: len(reader.got) >= 1 << 20, "the first mebibyte at the kernel")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
        s.close()
        # RFC 9293 §3.10.5: the TCB goes at once, without TIME-WAIT.
        assert s.state is State.CLOSED
        assert not [c for c in stack.connections() if c.local == ours]
        # The sendall blocked in another thread wakes: the socket is gone.
        error = _outcome(sending)
        assert isinstance(error, OSError) and error.errno in (errno.EBADF, errno.EPIPE), error
        problem = _outcome(reader.done, TIMEOUT)
        assert isinstance(problem, ConnectionResetError), problem
        assert len(reader.got) < len(data) and reader.got == data[: len(reader.got)]
        wait_until(lambda: kernel_state(veth, kernel_end, ours) is None, "kernel socket gone")
    stack.sync()
    # One RST from the connection, at SND.NXT. The kernel's ACKs already on their
    # way when it went find no connection, and each gets its own <SEQ=SEG.ACK><RST>.
    # (RFC 9293 §3.10.5 gives that RST no ACK bit and ours has none; Linux's carries
    # one. The kernel takes either, so the bit is not asserted.)
    first, *answers = sent.resets
    assert first.relative_seq == sent.end
    assert s.connection is not None and s.connection.stats["resets_sent"] == 1
    stats = stack.stats()
    assert stats["resets_sent"] == 1 + len(answers)
    assert stats.get("tcp_no_connection", 0) == len(answers)


# ------------------------------------------------- C-14: an orphan in FIN-WAIT-2

FIN_TIMEOUT = 0.5


# Our RST to the kernel's late write ends its CLOSE_WAIT connection: EstabResets.
@pytest.mark.nstat_allows("TcpEstabResets")
def test_an_orphan_in_fin_wait_2_times_out_and_a_late_write_is_reset(veth: Lab) -> None:
    recorder = Recorder()
    config = TcpConfig(msl=MSL, fin_timeout=FIN_TIMEOUT)
    with open_stack(veth, config=config) as stack:
        stack.subscribe(recorder)
        kept, kept_peer = connect(stack, veth, PORT)
        orphan, orphan_peer = connect(stack, veth, PORT + 1)
        kernel_end, ours = (veth.peer_address, PORT + 1), orphan.getsockname()
        with kept, kept_peer, orphan_peer:
            # Half-closed first, so it has been in FIN-WAIT-2 longest; but its socket
            # is still open for reading, so no timeout applies to it.
            kept.shutdown(socket.SHUT_WR)
            assert kept_peer.recv(10) == b""
            kept.wait_for_state(State.FIN_WAIT_2, timeout=TIMEOUT)
            orphan.close()
            assert orphan_peer.recv(10) == b""
            orphan.wait_for_state(State.CLOSED, timeout=FIN_TIMEOUT + TIMEOUT)
            changes = [e for e in recorder.events if isinstance(e, StateEvent) and e.local == ours]
            entered = next(e.time for e in changes if e.new is State.FIN_WAIT_2)
            gone = changes[-1]
            assert gone.new is State.CLOSED and gone.old is State.FIN_WAIT_2, changes
            # Not a moment sooner than the timer's deadline, nor anywhere near 60 s.
            assert entered + FIN_TIMEOUT <= gone.time < entered + FIN_TIMEOUT + 1.0
            # Quietly, as Linux does: no RST, and the kernel still sits in CLOSE_WAIT.
            assert stack.stats().get("resets_sent", 0) == 0
            assert kernel_state(veth, kernel_end, ours) == "CLOSE_WAIT"
            assert not [c for c in stack.connections() if c.local == ours]
            assert kept.state is State.FIN_WAIT_2
            kept_peer.sendall(b"still read")
            assert kept.recv(100) == b"still read"

            # The kernel writes late: the connection is unknown to us now, so RST.
            orphan_peer.sendall(b"late")
            wait_until(lambda: kernel_state(veth, kernel_end, ours) is None, "the kernel reset")
            assert stack.stats()["resets_sent"] == 1
            late = [
                e
                for e in recorder.segments
                if e.direction == "out" and e.segment.rst and e.local == ours
            ]
            assert len(late) == 1 and late[0].state is State.CLOSED
            # Reset in CLOSE_WAIT, Linux's tcp_reset() reports EPIPE; its recv() had
            # already returned our FIN's EOF and keeps saying so.
            with pytest.raises(BrokenPipeError):
                orphan_peer.send(b"again")
            assert orphan_peer.recv(10) == b""
            kept_peer.close()
            assert kept.recv(10) == b""
            assert kept.state is State.TIME_WAIT


# ------------------------------------------------------- C-16: close in SYN-SENT


def test_close_in_syn_sent_sends_nothing_and_a_late_syn_ack_is_reset(
    stack: Stack, veth: Lab
) -> None:
    recorder = Recorder()
    stack.subscribe(recorder)
    # Every SYN-ACK is held back while we are in SYN-SENT, so nothing races the close.
    held = stack.add_hook(
        Hook("in", DROP, where=all_of(is_flags("S."), in_state(State.SYN_SENT)), times=None)
    )
    server = kernel_server(veth, PORT)
    with server:
        s = stack.socket()
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.connect((veth.peer_address, PORT))
        ours, kernel_end = s.getsockname(), (veth.peer_address, PORT)
        wait_until(lambda: held.fired >= 1, "the kernel's SYN-ACK, held back")
        assert s.state is State.SYN_SENT
        assert kernel_state(veth, kernel_end, ours) == "SYN_RECEIVED"
        closed_at = len(recorder.events)
        s.close()
        assert s.state is State.CLOSED
        assert not [c for c in stack.connections() if c.local == ours]
        assert stack.stats().get("resets_sent", 0) == 0
        # The kernel's SYN-ACK timer (1 s) sends it again; it finds no connection,
        # and our RST makes the kernel drop its half-open request.
        wait_until(lambda: kernel_state(veth, kernel_end, ours) is None, "the request dropped")
        server.settimeout(0)
        with pytest.raises(BlockingIOError):
            server.accept()
    stack.sync()
    after = [e for e in recorder.events[closed_at:] if isinstance(e, SegmentEvent)]
    after = [e for e in after if e.local == ours and not e.note.startswith("dropped")]
    # Nothing at close(): first the kernel's SYN-ACK again, then our RST <SEQ=SEG.ACK>.
    assert [e.direction for e in after] == ["in", "out"], after
    syn_ack, reset = after[0].segment, after[1].segment
    assert syn_ack.syn and syn_ack.has_ack
    assert reset.rst and not reset.has_ack and reset.seq == syn_ack.ack
    assert stack.stats()["resets_sent"] == 1


# ------------------------------------------------ C-18: blocked calls wake up


# The kernel's zero-linger close is counted as TCPAbortOnData; the RST it sends
# ends our established connection, which the kernel counts as EstabResets.
@pytest.mark.nstat_allows("TcpExtTCPAbortOnData", "TcpEstabResets")
def test_a_blocked_recv_wakes_with_reset_when_the_kernel_resets(stack: Stack, veth: Lab) -> None:
    s, peer = connect(stack, veth)
    with s:
        receiving = _parked(s.recv, 100)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
        peer.close()
        error = _outcome(receiving)
        assert isinstance(error, ConnectionResetError), error
        assert s.state is State.CLOSED


# The kernel closes with our data unread (TCPAbortOnClose), a reset that ends both
# established connections (EstabResets). Our zero-window probes carry one byte of new
# data (README, "Probes carry data"), dropped as BeyondWindow if one goes out first.
@pytest.mark.nstat_allows("TcpExtTCPAbortOnClose", "TcpEstabResets", "TcpExtBeyondWindow")
def test_a_sendall_blocked_on_a_full_buffer_wakes_with_reset(stack: Stack, veth: Lab) -> None:
    s, peer = connect(stack, veth)
    conn = s.connection
    assert conn is not None
    with s:
        # The kernel reads nothing: its window and then our send buffer fill up.
        sending = _parked(s.sendall, bytes(4 << 20))
        wait_until(lambda: conn.send_space == 0, "our send buffer full")
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
        peer.close()
        error = _outcome(sending)
        assert isinstance(error, ConnectionResetError), error
        assert s.state is State.CLOSED


def test_a_blocked_recv_fails_with_ebadf_when_we_close(stack: Stack, veth: Lab) -> None:
    s, peer = connect(stack, veth)
    with peer:
        receiving = _parked(s.recv, 100)
        s.close()
        error = _outcome(receiving)
        # The facade wakes at once with the errno CPython gives any call on a closed
        # socket. CPython's own recv() is not woken by a close in another thread: it
        # sleeps on until data arrives or, with a timeout, fails with EBADF only then.
        assert isinstance(error, OSError) and error.errno == errno.EBADF, error
        reference = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        reference.close()
        with pytest.raises(OSError) as closed:
            reference.recv(100)
        assert closed.value.errno == error.errno
        # Nothing was unread: the close was an orderly one.
        assert recv_all(peer) == b""
        s.wait_for_state(State.FIN_WAIT_2, timeout=TIMEOUT)


def _our_listener(stack: Stack) -> Socket:
    listener = stack.socket()
    listener.bind(("", PORT))
    listener.listen(8)
    listener.settimeout(TIMEOUT)
    return listener


def test_a_blocked_accept_fails_with_ebadf_when_the_listener_closes(
    stack: Stack, veth: Lab
) -> None:
    listener = _our_listener(stack)
    accepting = _parked(listener.accept)
    listener.close()
    error = _outcome(accepting)
    assert isinstance(error, OSError) and error.errno == errno.EBADF, error
    assert listener.state is State.CLOSED
    with kernel_socket(veth) as client, pytest.raises(ConnectionRefusedError):
        client.connect((veth.endpoint_address, PORT))


def test_a_blocked_accept_fails_with_einval_on_shut_rd_as_on_linux(stack: Stack, veth: Lab) -> None:
    listener = _our_listener(stack)
    reference = kernel_server(veth, PORT + 1)
    with listener, reference:
        accepting = _parked(listener.accept)
        listener.shutdown(socket.SHUT_RD)
        error = _outcome(accepting)
        assert isinstance(error, OSError) and error.errno == errno.EINVAL, error
        assert listener.state is State.CLOSED
        with kernel_socket(veth) as client, pytest.raises(ConnectionRefusedError):
            client.connect((veth.endpoint_address, PORT))
        # Linux wakes its own blocked accept() the same way.
        kernel_accepting = _parked(reference.accept, inside="accept")
        reference.shutdown(socket.SHUT_RD)
        kernel_error = _outcome(kernel_accepting)
        assert isinstance(kernel_error, OSError) and kernel_error.errno == error.errno
