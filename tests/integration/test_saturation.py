"""L-06, receive-path saturation: the kernel sends 32 MiB as fast as it can (IW10, a
window of 1 MiB) to our reader, on veth and on TAP.

Frames the kernel cannot queue for us (the packet socket's receive buffer, or the
TAP's ring, is full) are lost before the engine sees them. The test checks that they
are counted in Stack.stats() ("link_rx_dropped"), that TCP recovers them (the
kernel retransmits, our SACKs report the holes) and that the bytes arrive exact.
With the link's default queue they do not happen here (on veth they cannot: a whole
window fits in the socket's buffer), so a second variant shrinks that queue until
bursts of the kernel's overflow it: the drop path is then exercised on every run,
dozens to hundreds of times.

Throughout, what we advertise must not exceed the receive buffer, and what the
core holds (in order and out of order) must stay within it, but for one unit of the
window scale. The last test stalls the reader with MSS-sized segments: the window's
round-up to the scale unit once let the edge creep past the buffer on every ACK
(29 KB over a 1 MiB window; without bound with tiny segments, see
tests/unit/test_window_edge.py). The process's RSS is no usable bound: the suite's
evidence recorder keeps the last 20,000 trace events of every stack, frames included.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute

from tcpstack import TcpConfig, netns
from tcpstack.lab import Lab
from tcpstack.link import Link, PacketLink, TapLink
from tcpstack.stack import Socket, Stack
from tcpstack.trace import SegmentEvent, TraceEvent
from tests.integration.kernel import MSL, TIMEOUT, connect, in_thread, wait_until

pytestmark = pytest.mark.netns

SIZE = 32 << 20
RECEIVE_BUFFER = 1 << 20  # TcpConfig's default, named for the assertions
READ = 1 << 18
# The reader stops at these fractions of the stream until our window has closed.
READER_PAUSES = (0.25, 0.5, 0.75)
# Queues that the kernel's bursts overflow on every run (it sends 64 KiB GSO frames
# far faster than the engine reads them), yet big enough that the losses are mostly
# recovered by SACK: much smaller, and retransmission timeouts back off for seconds.
TINY_RCVBUF = 64 << 10  # AF_PACKET SO_RCVBUF (the kernel books twice that)
TINY_QUEUE = 2  # TAP ring, in frames


@dataclass
class Watch:
    """What our segments and buffers looked like while the data came in."""

    port: int = 0
    wscale: int = 0
    segments: int = 0
    max_window: int = 0  # bytes, as advertised on the wire
    max_window_and_unread: int = 0  # advertised window + bytes the reader had not read
    max_held: int = 0  # bytes the core held: unread in order + out of order
    sacks: int = 0  # our segments carrying SACK blocks


def open_link(lab: Lab, queue: str) -> Link:
    tiny = queue == "tiny"
    if lab.kind == "tap":
        return TapLink(
            lab.endpoint_interface, lab.endpoint_netns, queue_len=TINY_QUEUE if tiny else None
        )
    if tiny:
        return PacketLink(lab.endpoint_interface, lab.endpoint_netns, rcvbuf=TINY_RCVBUF)
    return PacketLink(lab.endpoint_interface, lab.endpoint_netns)


def tap_tx_dropped(lab: Lab) -> int:
    """The TAP's tx_dropped as netlink reports it: a second opinion on the link's
    reading of /proc/net/dev."""
    with netns.enter(lab.endpoint_netns), IPRoute() as ipr:
        (dev,) = ipr.link("get", ifname=lab.endpoint_interface)
    return int(dev.get("IFLA_STATS64")["tx_dropped"])


@pytest.fixture(params=["default", "tiny"])
def queue(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def saturated(lab: Lab, queue: str) -> Iterator[Stack]:
    """Our endpoint on a link whose kernel-side queue the `queue` parameter sizes."""
    before = tap_tx_dropped(lab) if lab.kind == "tap" else 0
    link = open_link(lab, queue)
    try:
        stack = Stack(link, lab.endpoint_cidr, netns=lab.endpoint_netns, config=TcpConfig(msl=MSL))
    except BaseException:
        link.close()
        raise
    try:
        yield stack
    finally:
        stats = stack.stats()
        if lab.kind == "tap":
            # Both readings are taken with the stack still open and quiet.
            assert tap_tx_dropped(lab) - before == stats["link_rx_dropped"]
        stack.close()
    assert stats.get("internal_errors", 0) == 0


def observe(stack: Stack, watch: Watch) -> None:
    flows = stack._engine.flows  # the core's buffers, which no public call shows

    def on_event(event: TraceEvent) -> None:
        if not isinstance(event, SegmentEvent) or event.direction != "out":
            return
        seg = event.segment
        if seg.src_port != watch.port or seg.syn or seg.rst:
            return
        flow = flows.get((event.remote[0], seg.dst_port, seg.src_port))
        if flow is None:
            return
        conn = flow.conn
        window = seg.window << watch.wscale
        watch.segments += 1
        watch.max_window = max(watch.max_window, window)
        watch.max_window_and_unread = max(watch.max_window_and_unread, window + conn.readable)
        watch.max_held = max(watch.max_held, conn.readable + conn._ooo.held_bytes)
        if seg.options.sack_blocks:
            watch.sacks += 1

    stack.subscribe(on_event)


def blast(peer: socket.socket, data: bytes) -> None:
    peer.sendall(data)
    peer.shutdown(socket.SHUT_WR)


def read_all(s: Socket) -> tuple[int, str]:
    """Read to EOF, hashing as it goes (holding the stream would blur what the stack
    itself holds); at each of READER_PAUSES stop until the window has closed, so
    that a zero window and its reopening happen under load too."""
    digest = hashlib.sha256()
    received = 0
    marks = [int(SIZE * f) for f in READER_PAUSES]
    deadline = time.monotonic() + 4 * TIMEOUT
    while time.monotonic() < deadline:
        chunk = s.recv(READ)
        if not chunk:
            return received, digest.hexdigest()
        digest.update(chunk)
        received += len(chunk)
        if marks and received >= marks[0]:
            marks.pop(0)

            def window_closed() -> bool:
                info = s.info()
                return info is None or info.rcv_wnd < 4 * info.send_mss

            # The sender fills the buffer: up to the last few segments, which it
            # may hold back rather than send a sliver (its own SWS avoidance).
            wait_until(window_closed, "our window to close while the reader waits")
    raise AssertionError(f"the transfer did not end: {received} of {SIZE} bytes read")


def test_kernel_blast_is_received_whole(
    lab: Lab,
    queue: str,
    saturated: Stack,
    record_property: Callable[[str, object], None],
) -> None:
    stack = saturated
    data = os.urandom(SIZE)
    watch = Watch()
    observe(stack, watch)
    retrans_before = lab.peer_nstat().get("TcpRetransSegs", 0)

    s, peer = connect(stack, lab)
    info = s.info()
    assert info is not None and info.rcv_wscale > 0
    watch.port, watch.wscale = s.getsockname()[1], info.rcv_wscale
    sender = in_thread(blast, peer, data)
    with s, peer:
        received, digest = read_all(s)
        sender.result(TIMEOUT)
    retransmitted = lab.peer_nstat().get("TcpRetransSegs", 0) - retrans_before

    assert received == SIZE
    assert digest == hashlib.sha256(data).hexdigest()

    stats = stack.stats()
    dropped = stats["link_rx_dropped"]
    record_property("link_rx_dropped", dropped)
    record_property("kernel_retransmitted", retransmitted)
    over = watch.max_held - RECEIVE_BUFFER
    print(f"{lab.kind}/{queue}: {dropped} dropped at the link, {retransmitted} retransmitted;")
    print(f"  {watch.sacks} SACKs sent; held at most {over:+} bytes beside the buffer")
    if lab.kind == "veth":
        # Every frame the socket took was read by the engine, and every other was a
        # drop: the counts add up exactly once the link is quiet.
        def accounted() -> bool:
            now = stack.stats()
            return now["link_rx_frames"] - now["link_rx_dropped"] == now["frames_in"]

        wait_until(accounted, "the link's counts to add up")
    if queue == "tiny":
        assert dropped > 0
    elif lab.kind == "veth":
        # Even all of a 1 MiB window queued at once is far below the socket's buffer.
        assert dropped == 0
    if dropped:
        # Lost, and recovered by TCP: the holes showed in our SACKs and the kernel
        # resent them. Every frame it sends here carries data (or SYN, FIN), so
        # each one lost needed at least one segment sent again.
        assert retransmitted >= dropped
        assert watch.sacks > 0 and stats["sack_blocks_sent"] > 0

    # What we advertise never exceeds the buffer, and what the core holds stays
    # near it, whatever the kernel sends; "near": see test_stalled_reader_window_creep.
    assert watch.segments > 0
    assert watch.max_window <= RECEIVE_BUFFER
    # One rounding of the window up to the scale unit, no more (see the last test).
    slack = (1 << watch.wscale) - 1
    assert watch.max_window_and_unread <= RECEIVE_BUFFER + slack
    assert watch.max_held <= RECEIVE_BUFFER + slack


def test_stalled_reader_window_creep() -> None:
    """While the reader is stalled, each ACK re-advertises what is left of the old
    window, rounded up to 2**shift so the edge never moves left; with RCV.NXT moved
    by whole segments (1448 bytes, not a multiple of 128) the remainder is rarely
    aligned, so every ACK can push the edge up to 127 bytes further past what the
    buffer holds, and the kernel fills it. Over one stall of a 1 MiB window in
    MSS-sized frames (a TAP without offloads: no GSO frames, an ACK every two
    segments) that was about 29 KB. One rounding (127 bytes) is unavoidable if the
    edge must not retract; more is not."""
    with Lab("tap") as lab:
        link = TapLink(lab.endpoint_interface, lab.endpoint_netns, offload=False)
        stack = Stack(link, lab.endpoint_cidr, netns=lab.endpoint_netns, config=TcpConfig(msl=MSL))
        try:
            watch = Watch()
            observe(stack, watch)
            s, peer = connect(stack, lab)
            info = s.info()
            assert info is not None
            watch.port, watch.wscale = s.getsockname()[1], info.rcv_wscale
            data = os.urandom(4 * RECEIVE_BUFFER)
            sender = in_thread(blast, peer, data)
            with s, peer:

                def window_closed() -> bool:
                    now = s.info()
                    return now is None or now.rcv_wnd == 0

                wait_until(window_closed, "the stalled reader's window to close")
                digest = hashlib.sha256()
                while chunk := s.recv(READ):
                    digest.update(chunk)
                sender.result(TIMEOUT)
            assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
        finally:
            stack.close()
    slack = (1 << watch.wscale) - 1
    assert watch.max_held <= RECEIVE_BUFFER + slack, watch
    assert watch.max_window_and_unread <= RECEIVE_BUFFER + slack, watch
