"""Data on a kernel client's SYN (H-11), closing a listener that holds connections
nobody accepted (C-17), and our socket API driven from several threads at once
(L-09), each against the real kernel on veth and on TAP."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import functools
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tcpstack import State
from tcpstack.core.segment import Flags, Segment
from tcpstack.hooks import REWRITE, Hook, all_of, carries_data, is_flags
from tcpstack.lab import Lab
from tcpstack.stack import Socket, Stack
from tcpstack.trace import Recorder, SegmentEvent
from tests.integration.kernel import (
    PORT,
    TIMEOUT,
    connect,
    in_thread,
    kernel_server,
    kernel_socket,
    recv_all,
    wait_until,
)

pytestmark = pytest.mark.netns

# How long a call blocked in another thread may take to notice a close or shutdown.
PROMPT = 2.0


def _listen(stack: Stack, port: int = PORT, backlog: int = 8) -> Socket:
    listener = stack.socket()
    listener.bind(("", port))
    listener.listen(backlog)
    listener.settimeout(TIMEOUT)
    return listener


def _segments(recorder: Recorder, direction: str, remote: tuple[str, int]) -> list[SegmentEvent]:
    return [e for e in list(recorder.segments) if e.direction == direction and e.remote == remote]


def _outcome(future: concurrent.futures.Future[Any], deadline: float) -> Any:
    """What the call in `future` returned, or the exception it raised; a call still
    running at the deadline is a deadlock and fails the test."""
    try:
        error = future.exception(max(deadline - time.monotonic(), 0.0))
    except concurrent.futures.TimeoutError:
        raise AssertionError("a call did not return before the deadline") from None
    return error if error is not None else future.result()


def _read_until_end(sock: socket.socket) -> tuple[bytes, OSError | None]:
    """A kernel socket's bytes up to EOF, or up to the error that ended them."""
    chunks = []
    try:
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    except OSError as exc:
        return b"".join(chunks), exc
    return b"".join(chunks), None


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    deadline = time.monotonic() + TIMEOUT
    while len(got) < n and time.monotonic() < deadline:
        chunk = sock.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return bytes(got)


# ------------------------------------------------------- H-11: data on the SYN

# net.ipv4.tcp_fastopen bits: 0x1 lets clients use Fast Open, 0x4 lets them put
# data on the SYN with no cookie cached. With 0x1 alone and no cookie the kernel
# sends a SYN that asks for one (an empty option 34) and keeps the data back.
FASTOPEN_CLIENT = 0x1
FASTOPEN_NO_COOKIE = 0x1 | 0x4
TFO_OPTION = 34
SYN_DATA = b"GET / HTTP/1.0\r\n\r\n" * 8


def _set_fastopen(lab: Lab, flags: int) -> None:
    # /proc/sys/net answers for the namespace of the thread that opens it.
    with lab.in_peer(), open("/proc/sys/net/ipv4/tcp_fastopen", "w") as f:
        f.write(str(flags))


def _with_cookie(segment: Segment) -> Segment:
    options = dataclasses.replace(
        segment.options, unknown=(*segment.options.unknown, (TFO_OPTION, bytes(range(8))))
    )
    return dataclasses.replace(segment, options=options)


def _option_kinds(event: SegmentEvent) -> list[int]:
    return [kind for kind, _ in event.segment.options.unknown]


@pytest.mark.parametrize("mode", ["data", "cookie-request", "data+cookie"])
def test_fast_open_syn_data_is_acked_only_after_the_kernel_resends_it(
    stack: Stack, lab: Lab, mode: str
) -> None:
    recorder = stack.subscribe(Recorder())
    if mode == "data+cookie":
        # Linux sends a cookie only once a server has given it one, and we never do:
        # this stands in for a client that cached one from an earlier server here.
        stack.add_hook(
            Hook("in", REWRITE, where=all_of(is_flags("S"), carries_data), rewrite=_with_cookie)
        )
    _set_fastopen(lab, FASTOPEN_CLIENT if mode == "cookie-request" else FASTOPEN_NO_COOKIE)
    before = lab.peer_nstat()
    listener = _listen(stack)
    client = kernel_socket(lab)
    with listener, client:
        try:
            taken = client.sendto(SYN_DATA, socket.MSG_FASTOPEN, (lab.endpoint_address, PORT))
        except BlockingIOError:
            # EINPROGRESS: with no cookie to spend the kernel queued nothing.
            assert mode == "cookie-request"
            client.sendall(SYN_DATA)
        else:
            assert mode != "cookie-request" and taken == len(SYN_DATA)
        s, address = listener.accept()
        with s:
            assert address == client.getsockname()
            client.shutdown(socket.SHUT_WR)
            s.settimeout(TIMEOUT)
            # Up to the kernel's FIN: a copy of the SYN's data would show here.
            assert recv_all(s) == SYN_DATA
        stack.sync()
        kernel = client.getsockname()
        inbound = _segments(recorder, "in", kernel)
        outbound = _segments(recorder, "out", kernel)
        syn = inbound[0]
        assert syn.segment.flags == Flags.SYN
        irs = syn.segment.seq
        if mode == "cookie-request":
            assert syn.segment.payload == b"" and (TFO_OPTION, b"") in syn.segment.options.unknown
        else:
            assert syn.segment.payload == SYN_DATA
            assert (TFO_OPTION in _option_kinds(syn)) == (mode == "data+cookie")
        synack = outbound[0]
        assert synack.segment.flags == Flags.SYN | Flags.ACK
        assert synack.segment.ack == (irs + 1) & 0xFFFF_FFFF
        assert synack.segment.payload == b""
        assert TFO_OPTION not in _option_kinds(synack)
        # We did not take the SYN's data (RCV.NXT stayed at IRS+1), took its copy
        # sent after the handshake, and never acknowledged part of it.
        assert syn.rcv_nxt == (irs + 1) & 0xFFFF_FFFF
        first_data = next(e for e in inbound[1:] if e.segment.payload)
        assert first_data.segment.seq == (irs + 1) & 0xFFFF_FFFF
        acked = {(e.segment.ack - irs - 1) & 0xFFFF_FFFF for e in outbound}
        assert all(n == 0 or n >= len(SYN_DATA) for n in acked), sorted(acked)
    after = lab.peer_nstat()
    if mode != "cookie-request":
        # The kernel saw its SYN data go unacknowledged and sent it again.
        assert after["TcpExtTCPFastOpenActiveFail"] - before["TcpExtTCPFastOpenActiveFail"] == 1
        assert after["TcpRetransSegs"] > before["TcpRetransSegs"]


# ------------------------------------------- C-17: closing a listener, unaccepted


# Our RSTs end the kernel's two established connections: that is what C-17 asks.
@pytest.mark.nstat_allows("TcpEstabResets")
def test_closing_a_listener_resets_the_connections_nobody_accepted(stack: Stack, lab: Lab) -> None:
    recorder = stack.subscribe(Recorder())
    listener = _listen(stack, backlog=4)
    clients = [kernel_socket(lab) for _ in range(2)]
    for client in clients:
        client.connect((lab.endpoint_address, PORT))
    # One of them has also sent data that no one will ever read.
    clients[1].sendall(b"unread")
    kernel_ends = [c.getsockname() for c in clients]

    def queued() -> bool:
        rows = {(c.remote, c.state) for c in stack.connections() if c.local[1] == PORT}
        data_in = any(e.segment.payload for e in _segments(recorder, "in", kernel_ends[1]))
        return data_in and all((k, State.ESTABLISHED) in rows for k in kernel_ends)

    wait_until(queued, "both connections established and queued")
    listener.close()
    for client in clients:
        with client, pytest.raises(ConnectionResetError):
            client.recv(100)
    stack.sync()
    for kernel_end, sent_by_kernel in zip(kernel_ends, (0, len(b"unread")), strict=True):
        outbound = _segments(recorder, "out", kernel_end)
        inbound = _segments(recorder, "in", kernel_end)
        resets = [e for e in outbound if e.segment.flags & Flags.RST]
        assert len(resets) == 1, [str(e) for e in outbound]
        rst = resets[0]
        # At SND.NXT, our only sequence number used so far being the SYN's.
        assert rst.segment.seq == (rst.iss + 1) & 0xFFFF_FFFF
        if rst.segment.flags & Flags.ACK:
            assert rst.segment.ack == (inbound[0].segment.seq + 1 + sent_by_kernel) & 0xFFFF_FFFF
        assert not [c for c in stack.connections() if c.remote == kernel_end]
    # The port is closed now: a new client is refused.
    late = kernel_socket(lab)
    with late, pytest.raises(ConnectionRefusedError):
        late.connect((lab.endpoint_address, PORT))
    with pytest.raises(OSError) as e:
        listener.accept()
    assert e.value.errno == errno.EBADF


# -------------------------------------------------------- L-09: API concurrency


def test_close_ends_a_connect_still_waiting_for_its_syn_ack(stack: Stack, lab: Lab) -> None:
    recorder = stack.subscribe(Recorder())
    # The kernel never sees our SYNs, so connect() has nothing to wait for but us.
    lab.peer_loss(direction="in", tcp_flags="syn")
    s = stack.socket()
    s.settimeout(TIMEOUT)
    target = (lab.peer_address, PORT)
    connecting = in_thread(s.connect, target)
    wait_until(lambda: lab.peer_loss_dropped() >= 1, "our SYN dropped at the kernel")
    assert s.state is State.SYN_SENT and not connecting.done()
    started = time.monotonic()
    s.close()
    error = _outcome(connecting, started + PROMPT)
    assert isinstance(error, OSError) and error.errno == errno.EBADF, error
    assert time.monotonic() - started < PROMPT
    assert s.state is State.CLOSED
    stack.sync()
    # Nothing was synchronized, so there is nobody to reset; and with the connection
    # gone no SYN can be retransmitted.
    assert not [e for e in _segments(recorder, "out", target) if e.segment.flags & Flags.RST]
    assert not [c for c in stack.connections() if c.remote == target]


def _kernel_server_small_window(lab: Lab, port: int) -> socket.socket:
    with lab.in_peer():
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Set before listen() so the accepted socket inherits it: its window shuts
    # after a few kilobytes nobody reads.
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server.bind((lab.peer_address, port))
    server.listen(4)
    server.settimeout(TIMEOUT)
    return server


def _stalled_sendall(
    stack: Stack, lab: Lab, data: bytes
) -> tuple[Socket, socket.socket, concurrent.futures.Future[None]]:
    """A connection to a kernel that does not read, with a sendall of `data` in
    another thread, returned once it is blocked on a shut window and a full send
    buffer."""
    server = _kernel_server_small_window(lab, PORT)
    with server:
        accepted = in_thread(server.accept)
        s = stack.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        s.settimeout(TIMEOUT)
        s.connect((lab.peer_address, PORT))
        peer, _ = accepted.result(TIMEOUT)
    peer.settimeout(TIMEOUT)
    conn = s.connection
    assert conn is not None
    sending = in_thread(s.sendall, data)
    wait_until(lambda: conn.snd_wnd == 0 and conn.send_space == 0, "zero window, full buffer")
    assert not sending.done()
    return s, peer, sending


# Our zero-window probes carry one byte of new data (README, "Probes carry data"):
# with its window shut and its queue full, the kernel drops each as BeyondWindow.
@pytest.mark.nstat_allows("TcpExtBeyondWindow")
def test_a_sendall_blocked_on_a_zero_window_wakes_only_when_the_kernel_reads(
    stack: Stack, lab: Lab
) -> None:
    recorder = stack.subscribe(Recorder())
    data = os.urandom(200_000)
    s, peer, sending = _stalled_sendall(stack, lab, data)
    with s, peer:
        conn = s.connection
        assert conn is not None
        kernel = (lab.peer_address, PORT)
        stack.sync()
        mark = len(_segments(recorder, "in", kernel))

        def shut_acks() -> int:
            later = _segments(recorder, "in", kernel)[mark:]
            return sum(1 for e in later if e.segment.window == 0 and not e.segment.payload)

        # Our window probes are answered, each answer freeing nothing: none of those
        # ACKs may let the sendall through.
        wait_until(
            lambda: conn.stats["window_probes"] >= 2 and shut_acks() >= 2,
            "two window probes, answered with the window still shut",
        )
        assert not sending.done()
        assert conn.send_space == 0
        received = in_thread(_recv_exactly, peer, len(data))
        assert _outcome(sending, time.monotonic() + TIMEOUT) is None
        assert received.result(TIMEOUT) == data
        s.shutdown(socket.SHUT_WR)
        assert peer.recv(10) == b""


# Our zero-window probes carry one byte of new data (README, "Probes carry data"):
# with its window shut and its queue full, the kernel drops each as BeyondWindow.
@pytest.mark.nstat_allows("TcpExtBeyondWindow")
def test_shutdown_in_one_thread_releases_a_blocked_recv_and_sendall(stack: Stack, lab: Lab) -> None:
    data = os.urandom(200_000)
    s, peer, sending = _stalled_sendall(stack, lab, data)
    with s, peer:
        receiving = in_thread(s.recv, 100)
        started = time.monotonic()
        s.shutdown(socket.SHUT_RDWR)
        deadline = started + PROMPT
        assert _outcome(receiving, deadline) == b""
        error = _outcome(sending, deadline)
        assert isinstance(error, BrokenPipeError), error
        # What the sendall had queued before the shutdown still goes, then our FIN.
        got, problem = _read_until_end(peer)
        assert problem is None
        assert 0 < len(got) < len(data) and got == data[: len(got)]
        s.wait_for_state(State.FIN_WAIT_2, timeout=TIMEOUT)


# Our zero-window probes carry one byte of new data (README, "Probes carry data"):
# with its window shut and its queue full, the kernel drops each as BeyondWindow.
@pytest.mark.nstat_allows("TcpExtBeyondWindow")
def test_close_in_one_thread_releases_blocked_recv_sendall_and_accept(
    stack: Stack, lab: Lab
) -> None:
    data = os.urandom(200_000)
    s, peer, sending = _stalled_sendall(stack, lab, data)
    listener = _listen(stack, port=PORT + 1)
    with peer:
        receiving = in_thread(s.recv, 100)
        accepting = in_thread(listener.accept)
        started = time.monotonic()
        s.close()
        listener.close()
        deadline = started + PROMPT
        for call, errnos in (
            (receiving, {errno.EBADF}),
            (accepting, {errno.EBADF}),
            # The close's FIN ends our sending direction, which the woken sendall
            # notices before it notices the socket is gone.
            (sending, {errno.EBADF, errno.EPIPE}),
        ):
            error = _outcome(call, deadline)
            assert isinstance(error, OSError) and error.errno in errnos, error
        # Like Linux, a close() with nothing unread still delivers what was queued.
        got, problem = _read_until_end(peer)
        assert problem is None
        assert 0 < len(got) < len(data) and got == data[: len(got)]


def _blocked_in(ident: int, function: str) -> bool:
    """Whether the thread `ident` is inside `function` right now."""
    frame = sys._current_frames().get(ident)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


# With SO_LINGER 0 our close() resets the kernel's established connection.
@pytest.mark.nstat_allows("TcpEstabResets", how="linger-0")
@pytest.mark.parametrize(
    "how",
    ["graceful", "linger-0"],
)
def test_a_recv_blocked_in_another_thread_fails_with_ebadf_on_close(
    stack: Stack, lab: Lab, how: str
) -> None:
    s, peer = connect(stack, lab)
    with peer:
        if how == "linger-0":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        idents: list[int] = []

        def receive() -> bytes:
            idents.append(threading.get_ident())
            return s.recv(100)

        receiving = in_thread(receive)
        # Parked in the condition wait, not merely about to call recv(): a recv()
        # that starts after the close fails with EBADF whatever the close did.
        wait_until(lambda: bool(idents) and _blocked_in(idents[0], "wait"), "recv() blocked")
        s.close()
        error = _outcome(receiving, time.monotonic() + PROMPT)
        assert isinstance(error, OSError), error
        assert error.errno == errno.EBADF, error


@dataclasses.dataclass
class _Side:
    """One of our connections in the race, and how far its sender got."""

    sock: Socket
    peer: socket.socket
    up: bytes
    down: bytes
    accepted: int = 0
    sender_done: threading.Event = dataclasses.field(default_factory=threading.Event)
    receiver_done: threading.Event = dataclasses.field(default_factory=threading.Event)
    shut_done: threading.Event = dataclasses.field(default_factory=threading.Event)


# The errors a call may meet while another thread shuts down or closes the socket:
# the kernel never resets these connections, so ECONNRESET would be a bug.
RACE_ERRNOS = {errno.EBADF, errno.EPIPE}
CHUNK = 16 << 10
UP = 1 << 20
# When each connection's shutdown(SHUT_WR) and close() threads act: once the sender
# has had this many bytes taken, or "end" (shutdown once the sender is done, close
# once the receiver has seen EOF and the shutdown is done).
PLANS: list[tuple[int | str, int | str]] = [
    ("end", "end"),
    (64 << 10, "end"),
    ("end", 128 << 10),
    (0, 0),
]


def _when(at: int | str, side: _Side, *done: threading.Event) -> None:
    if at == "end":
        for event in done:
            assert event.wait(TIMEOUT)
    else:
        wait_until(lambda: side.accepted >= int(at) or side.sender_done.is_set(), f"{at} sent")


def _sender(side: _Side) -> None:
    try:
        while side.accepted < len(side.up):
            side.accepted += side.sock.send(side.up[side.accepted : side.accepted + CHUNK])
    finally:
        side.sender_done.set()


def _receiver(side: _Side) -> bytes | OSError:
    got = bytearray()
    try:
        while chunk := side.sock.recv(1 << 16):
            got += chunk
    except OSError as exc:
        # The bytes read before the error still count; keep both.
        exc.got = bytes(got)  # type: ignore[attr-defined]
        return exc
    finally:
        side.receiver_done.set()
    return bytes(got)


def _kernel_writer(side: _Side) -> None:
    side.peer.sendall(side.down)
    side.peer.shutdown(socket.SHUT_WR)


# A close() with unread data resets, as Linux does, and the kernel's data reaching a
# connection we closed is answered with RST: either ends a kernel connection.
@pytest.mark.nstat_allows("TcpEstabResets")
def test_threads_race_send_recv_shutdown_and_close(stack: Stack, lab: Lab) -> None:
    server = kernel_server(lab, PORT, backlog=len(PLANS))
    sides: list[_Side] = []
    with server:
        for i in range(len(PLANS)):
            accepted = in_thread(server.accept)
            s = stack.socket()
            # A small send buffer paces the sender by the kernel's ACKs, so that
            # the shutdowns and closes land in the middle of the stream.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 10)
            s.settimeout(TIMEOUT)
            s.connect((lab.peer_address, PORT))
            peer, _ = accepted.result(TIMEOUT)
            peer.settimeout(TIMEOUT)
            sides.append(_Side(s, peer, os.urandom(UP), os.urandom((64 << 10) * (i + 1))))
    start = threading.Barrier(6 * len(sides), timeout=TIMEOUT)

    def released(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            start.wait()
            return fn()

        return run

    calls = []
    for side, (shut_at, close_at) in zip(sides, PLANS, strict=True):

        def shut(side: _Side = side, at: int | str = shut_at) -> None:
            _when(at, side, side.sender_done)
            try:
                side.sock.shutdown(socket.SHUT_WR)
            finally:
                side.shut_done.set()

        def close(side: _Side = side, at: int | str = close_at) -> None:
            _when(at, side, side.receiver_done, side.shut_done)
            side.sock.close()

        jobs: dict[str, Callable[[], Any]] = {
            "send": functools.partial(_sender, side),
            "recv": functools.partial(_receiver, side),
            "shutdown": shut,
            "close": close,
            "kernel read": functools.partial(_read_until_end, side.peer),
            "kernel write": functools.partial(_kernel_writer, side),
        }
        calls.append({name: in_thread(released(fn)) for name, fn in jobs.items()})
    deadline = time.monotonic() + TIMEOUT
    results = [{name: _outcome(f, deadline) for name, f in c.items()} for c in calls]
    for i, (side, result) in enumerate(zip(sides, results, strict=True)):
        side.peer.close()
        side.sock.close()
        for name, value in result.items():
            if isinstance(value, BaseException) and not name.startswith("kernel"):
                # Only the socket errors a racing shutdown or close explains.
                assert isinstance(value, OSError) and value.errno in RACE_ERRNOS, (i, name, value)
        assert not isinstance(result["kernel read"], BaseException), result
        conn = side.sock.connection
        assert conn is not None
        reset = conn.stats["resets_sent"] > 0
        sent = side.up[: side.accepted]
        got_by_kernel, _ = result["kernel read"]
        received = result["recv"]
        got_by_us = received if isinstance(received, bytes) else received.got
        # Whatever the interleaving: the kernel has a prefix of what our send() calls
        # took (all of it unless we reset), and we have a prefix of the kernel's data.
        assert got_by_kernel == sent[: len(got_by_kernel)], i
        assert reset or got_by_kernel == sent, i
        assert got_by_us == side.down[: len(got_by_us)], i
        if i == 0:
            # Shut down once everything was sent, closed once everything was read.
            assert sent == side.up and got_by_us == side.down and not reset
            errors = [v for v in result.values() if isinstance(v, BaseException)]
            assert not errors, errors
        elif i == 1:
            # Shut down mid-stream but closed only after EOF: nothing to reset, and
            # the sender stopped with EPIPE (or EBADF, if it was between two calls
            # when the close came), unless it had already finished.
            assert len(sent) >= 64 << 10 and got_by_us == side.down and not reset
