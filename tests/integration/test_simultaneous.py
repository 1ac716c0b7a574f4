"""Simultaneous open (H-06) and simultaneous close (C-03) with the real kernel, and our
FIN sent again from CLOSING when its ACK is lost (R-13).

Two segments cross only if each leaves before the other arrives. An "in" hook holds
the kernel's SYN or FIN, and everything the kernel sends after it (so nothing
overtakes it), for a fixed time; we send ours as soon as the hook has the kernel's.
That is the one timing these tests rely on: ours must leave within the hold, a few
milliseconds against hundreds. Each test checks it from the trace first, so a
machine too slow for it fails saying so rather than testing something else.

The kernel's passing states (SYN_RECV, CLOSING) last only until our answer arrives.
So that `ss` sees them however the threads are scheduled, a gate drops that answer
until the test has seen the state; a slow test costs a retransmission, not a miss.

The link makes no difference to any of this, so these run on veth only.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable

import pytest

from tcpstack import State
from tcpstack.core import seq
from tcpstack.hooks import (
    DELAY,
    DROP,
    Hook,
    HookContext,
    all_of,
    fin_received,
    from_first,
    has_flags,
    is_flags,
    local_port,
)
from tcpstack.lab import Lab
from tcpstack.stack import Socket, Stack, recv_exactly
from tcpstack.trace import Recorder, RetransmitEvent, SegmentEvent, TraceEvent
from tests.integration.kernel import (
    PORT,
    TIMEOUT,
    connect,
    in_thread,
    kernel_socket,
    kernel_state,
    sha256,
    wait_until,
)

pytestmark = pytest.mark.netns

OUR_PORT = PORT + 1
ONE_MIB = 1 << 20
# The kernel retransmits its SYN (or, once in SYN_RECV, its SYN-ACK) after 1 s; a
# hold well short of that leaves the handshake to the segments that crossed.
SYN_HOLD = 0.5
# Short of Linux's 200 ms minimum RTO (and tail loss probe), so the kernel's FIN is
# answered before the kernel sends it again; and of our own 200 ms floor, so our FIN
# goes again from CLOSING, not FIN_WAIT_1 (R-13 counts only those).
FIN_HOLD = 0.15


@pytest.fixture
def lab(veth: Lab) -> Lab:
    """The conftest's `stack` on veth only: the link plays no part here."""
    return veth


class KernelStateGate:
    """A hook predicate that matches until the test has seen, with `ss`, the kernel's
    socket for this connection in `state`: a DROP hook with it loses our segments
    that would move the kernel on before the test could look."""

    def __init__(self, lab: Lab, kernel_end: tuple[str, int], our_end: tuple[str, int]) -> None:
        self.lab = lab
        self.kernel_end = kernel_end
        self.our_end = our_end
        self.is_open = False

    def __call__(self, ctx: HookContext) -> bool:
        return not self.is_open

    def open_once_seen(self, state: str) -> None:
        wait_until(
            lambda: kernel_state(self.lab, self.kernel_end, self.our_end) == state,
            f"ss to show the kernel in {state}",
        )
        self.is_open = True


def _first(
    recorder: Recorder, direction: str, wanted: Callable[[SegmentEvent], bool]
) -> SegmentEvent:
    """The first segment our core sent, or took in, in `direction`, that `wanted`
    accepts. One we sent counts even if a hook dropped it: the gate may have."""
    for event in recorder.segments:
        taken = event.direction == "out" or not event.note.startswith("dropped")
        if event.direction == direction and taken and wanted(event):
            return event
    raise AssertionError(f"no such segment {direction} in the trace")


def _bare_syn(event: SegmentEvent) -> bool:
    return event.segment.syn and not event.segment.has_ack


def _syn_ack(event: SegmentEvent) -> bool:
    return event.segment.syn and event.segment.has_ack


def _fin(event: SegmentEvent) -> bool:
    return event.segment.fin


def _path(recorder: Recorder) -> list[str]:
    """Our states in order, starting with the first one left."""
    states = recorder.states
    return [states[0].old.name, *(e.new.name for e in states)] if states else []


def _released(stack: Stack, recorder: Recorder, hold: Hook) -> int:
    """How many segments `hold` has let go so far."""
    stack.sync()
    return sum(
        1
        for e in recorder.segments
        if e.direction == "in" and e.note.startswith("held") and hold.name in e.note
    )


def _assert_ours_left_while_held(stack: Stack, recorder: Recorder, hold: Hook, what: str) -> None:
    """Ours is sent: the kernel's, held since it arrived, must not have been let go
    yet, or the two did not cross."""
    assert _released(stack, recorder, hold) == 0, (
        f"our {what} left only after the kernel's had been held {hold.delay} s: "
        f"the machine was too slow for the {what}s to cross"
    )


def _exchange(s: Socket, peer: socket.socket, size: int = ONE_MIB) -> None:
    """`size` random bytes each way at once, each side reading all the other sent."""
    ours, theirs = os.urandom(size), os.urandom(size)
    kernel_sends = in_thread(peer.sendall, theirs)
    kernel_reads = in_thread(recv_exactly, peer, size)
    we_send = in_thread(s.sendall, ours)
    assert sha256(recv_exactly(s, size)) == sha256(theirs)
    assert sha256(kernel_reads.result(TIMEOUT)) == sha256(ours)
    kernel_sends.result(TIMEOUT)
    we_send.result(TIMEOUT)


def _kernel_client(lab: Lab, bind_port: int) -> socket.socket:
    """A kernel socket bound to `bind_port`, not yet connected, that will not block."""
    client = kernel_socket(lab)
    client.bind((lab.peer_address, bind_port))
    client.setblocking(False)
    return client


# ------------------------------------------------------ H-06: simultaneous open


def test_syns_cross_and_both_sides_pass_syn_received(stack: Stack, veth: Lab) -> None:
    """H-06: both connect() to each other, the SYNs cross, each side answers the other's
    SYN with a SYN-ACK from its own ISS, and a mebibyte then goes each way."""
    recorder = Recorder()
    stack.subscribe(recorder)
    kernel_end = (veth.peer_address, PORT)
    our_end = (veth.endpoint_address, OUR_PORT)
    hold = stack.add_hook(
        Hook(
            "in",
            DELAY,
            # Only until we are ESTABLISHED: the data that follows is not held.
            where=all_of(
                local_port(OUR_PORT),
                from_first(has_flags("S")),
                lambda ctx: ctx.state is not State.ESTABLISHED,
            ),
            times=None,
            delay=SYN_HOLD,
            name="hold the kernel's SYN",
        )
    )
    gate = KernelStateGate(veth, kernel_end, our_end)
    # Our SYN-ACK or ACK would take the kernel out of SYN_RECV.
    stack.add_hook(
        Hook(
            "out",
            DROP,
            where=all_of(local_port(OUR_PORT), has_flags("."), gate),
            times=None,
            name="until ss saw SYN_RECV",
        )
    )
    s = stack.socket()
    s.bind(("", OUR_PORT))
    client = _kernel_client(veth, PORT)
    with s, client:
        assert client.connect_ex(our_end) == errno.EINPROGRESS
        wait_until(lambda: hold.fired >= 1, "the kernel's SYN to reach our hook")
        # At once, with no `ss` first: the hold is short (see SYN_HOLD).
        s.setblocking(False)
        assert s.connect_ex(kernel_end) == errno.EINPROGRESS
        _assert_ours_left_while_held(stack, recorder, hold, "SYN")
        gate.open_once_seen("SYN_RECEIVED")
        s.wait_for_state(State.ESTABLISHED, timeout=TIMEOUT)
        wait_until(
            lambda: kernel_state(veth, kernel_end, our_end) == "ESTABLISHED",
            "the kernel to be ESTABLISHED",
        )
        # What the hook still holds would arrive after the data and out of order.
        wait_until(
            lambda: _released(stack, recorder, hold) == hold.fired, "the held segments to arrive"
        )

        our_syn = _first(recorder, "out", _bare_syn)
        kernel_syn = _first(recorder, "in", _bare_syn)
        assert _path(recorder) == ["CLOSED", "SYN_SENT", "SYN_RECEIVED", "ESTABLISHED"]
        # RFC 9293 §3.5 Figure 7: each SYN-ACK repeats its sender's SYN (same ISS) and
        # acknowledges the other's SYN.
        our_syn_ack = _first(recorder, "out", _syn_ack)
        assert our_syn_ack.segment.seq == our_syn.segment.seq
        assert our_syn_ack.segment.ack == seq.add(kernel_syn.segment.seq, 1)
        kernel_syn_ack = _first(recorder, "in", _syn_ack)
        assert kernel_syn_ack.segment.seq == kernel_syn.segment.seq
        assert kernel_syn_ack.segment.ack == seq.add(our_syn.segment.seq, 1)

        client.setblocking(True)
        client.settimeout(TIMEOUT)
        s.settimeout(TIMEOUT)
        _exchange(s, client)


def test_our_syn_lost_the_kernels_syn_finds_us_in_syn_sent(stack: Stack, veth: Lab) -> None:
    """H-06, the drop on our SYN: the kernel's SYN reaches us in SYN_SENT, we answer
    with a SYN-ACK from our ISS, and the kernel completes the handshake with it."""
    recorder = Recorder()
    stack.subscribe(recorder)
    kernel_end = (veth.peer_address, PORT)
    our_end = (veth.endpoint_address, OUR_PORT)
    # Every bare SYN of ours, so a retransmission cannot reach the kernel first.
    lost = stack.add_hook(
        Hook(
            "out",
            DROP,
            where=all_of(local_port(OUR_PORT), is_flags("S")),
            times=None,
            name="lose our SYN",
        )
    )
    s = stack.socket()
    s.bind(("", OUR_PORT))
    client = _kernel_client(veth, PORT)
    with s, client:
        s.setblocking(False)
        assert s.connect_ex(kernel_end) == errno.EINPROGRESS
        assert s.state is State.SYN_SENT and lost.fired == 1
        assert client.connect_ex(our_end) == errno.EINPROGRESS
        s.wait_for_state(State.ESTABLISHED, timeout=TIMEOUT)
        wait_until(
            lambda: kernel_state(veth, kernel_end, our_end) == "ESTABLISHED",
            "the kernel to be ESTABLISHED",
        )
        stack.sync()

        assert _path(recorder) == ["CLOSED", "SYN_SENT", "SYN_RECEIVED", "ESTABLISHED"]
        lost_syn = next(
            e for e in recorder.segments if e.direction == "out" and e.note.startswith("dropped")
        )
        kernel_syn = _first(recorder, "in", _bare_syn)
        our_syn_ack = _first(recorder, "out", _syn_ack)
        assert our_syn_ack.segment.seq == lost_syn.segment.seq
        assert our_syn_ack.segment.ack == seq.add(kernel_syn.segment.seq, 1)

        client.setblocking(True)
        client.settimeout(TIMEOUT)
        s.settimeout(TIMEOUT)
        _exchange(s, client)


def test_kernels_syn_lost_our_syn_finds_the_kernel_in_syn_sent(stack: Stack, veth: Lab) -> None:
    """H-06, the drop on the kernel's SYN: ours reaches the kernel in SYN_SENT, the
    kernel goes to SYN_RECV and answers from its own ISS, and our ACK ends it there."""
    recorder = Recorder()
    stack.subscribe(recorder)
    kernel_end = (veth.peer_address, PORT)
    our_end = (veth.endpoint_address, OUR_PORT)
    # The kernel's SYN arrives before we have a connection to trace it on.
    lost_syns: list[int] = []

    def remember(ctx: HookContext) -> bool:
        lost_syns.append(ctx.segment.seq)
        return True

    lost = stack.add_hook(
        Hook(
            "in",
            DROP,
            where=all_of(local_port(OUR_PORT), is_flags("S"), remember),
            times=None,
            name="lose the kernel's SYN",
        )
    )
    # Our ACK follows the kernel's SYN-ACK at once, before ss can look: the gate holds
    # it back, and the kernel's SYN-ACK, sent again after 1 s, gets the ACK instead.
    gate = KernelStateGate(veth, kernel_end, our_end)
    stack.add_hook(
        Hook(
            "out",
            DROP,
            where=all_of(local_port(OUR_PORT), is_flags("."), gate),
            times=None,
            name="until ss saw SYN_RECV",
        )
    )
    s = stack.socket()
    s.bind(("", OUR_PORT))
    client = _kernel_client(veth, PORT)
    with s, client:
        assert client.connect_ex(our_end) == errno.EINPROGRESS
        wait_until(lambda: lost.fired >= 1, "the kernel's SYN to reach our hook")
        assert kernel_state(veth, kernel_end, our_end) == "SYN_SENT"
        s.setblocking(False)
        assert s.connect_ex(kernel_end) == errno.EINPROGRESS
        gate.open_once_seen("SYN_RECEIVED")
        s.wait_for_state(State.ESTABLISHED, timeout=TIMEOUT)
        wait_until(
            lambda: kernel_state(veth, kernel_end, our_end) == "ESTABLISHED",
            "the kernel to be ESTABLISHED",
        )
        stack.sync()

        assert _path(recorder) == ["CLOSED", "SYN_SENT", "ESTABLISHED"]
        our_syn = _first(recorder, "out", _bare_syn)
        # A socket that never listened sends a SYN-ACK only from SYN_RECV, reached from
        # SYN_SENT; it repeats the SYN that was lost.
        kernel_syn_ack = _first(recorder, "in", _syn_ack)
        assert set(lost_syns) == {kernel_syn_ack.segment.seq}
        assert kernel_syn_ack.segment.ack == seq.add(our_syn.segment.seq, 1)

        client.setblocking(True)
        client.settimeout(TIMEOUT)
        s.settimeout(TIMEOUT)
        _exchange(s, client)


# ---------------------------------------------- C-03 and R-13: simultaneous close


class AcksOfOurFinLost:
    """Subscriber and hook predicate: every segment from the kernel that acknowledges
    our FIN is lost until we have sent the FIN again from CLOSING `times` times.
    Counting our sends rather than the kernel's ACKs keeps it right whichever
    retransmission the kernel answers."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.fin_end: int | None = None  # the sequence number after our FIN
        self.sent_from_closing = 0

    def __call__(self, event: TraceEvent) -> None:
        if (
            isinstance(event, SegmentEvent)
            and event.direction == "out"
            and event.segment.fin
            and not event.note.startswith("dropped")
        ):
            self.fin_end = event.segment.end_seq
            if event.state is State.CLOSING:
                self.sent_from_closing += 1

    def matches(self, ctx: HookContext) -> bool:
        seg = ctx.segment
        return (
            self.fin_end is not None
            and seg.has_ack
            and seq.ge(seg.ack, self.fin_end)
            and self.sent_from_closing < self.times
        )


def _close_at_once(
    stack: Stack,
    lab: Lab,
    s: Socket,
    peer: socket.socket,
    recorder: Recorder,
    gate: KernelStateGate | None,
) -> Hook:
    """Have the kernel close, hold its FIN (and what follows) at our side, and close
    at once; with a gate, our ACK of the kernel's FIN waits for it. Returns the hold."""
    port = s.getsockname()[1]
    hold = stack.add_hook(
        Hook(
            "in",
            DELAY,
            where=all_of(local_port(port), from_first(has_flags("F"))),
            times=None,
            delay=FIN_HOLD,
            name="hold the kernel's FIN",
        )
    )
    if gate is not None:
        stack.add_hook(
            Hook(
                "out",
                DROP,
                where=all_of(local_port(port), fin_received, gate),
                times=None,
                name="until ss saw CLOSING",
            )
        )
    peer.close()
    wait_until(lambda: hold.fired >= 1, "the kernel's FIN to reach our hook")
    # At once: the hold is short (see FIN_HOLD), so no `ss` between the two (the
    # core has not seen the kernel's FIN, so nothing of ours can have answered it).
    s.close()
    _assert_ours_left_while_held(stack, recorder, hold, "FIN")
    return hold


def _assert_neither_fin_acknowledges_the_other(
    stack: Stack, recorder: Recorder, hold: Hook
) -> None:
    wait_until(lambda: _released(stack, recorder, hold) >= 1, "the kernel's FIN to arrive")
    our_fin = _first(recorder, "out", _fin)
    kernel_fin = _first(recorder, "in", _fin)
    # Each left before the other arrived.
    assert our_fin.segment.ack == kernel_fin.segment.seq
    assert kernel_fin.segment.ack == our_fin.segment.seq


def test_fins_cross_and_both_sides_pass_closing(stack: Stack, veth: Lab) -> None:
    """C-03: both close at once; each side gets the other's FIN in FIN_WAIT_1, goes
    to CLOSING, and on the ACK of its own FIN to TIME_WAIT."""
    s, peer = connect(stack, veth)
    kernel_end, our_end = (veth.peer_address, PORT), s.getsockname()
    recorder = Recorder()
    stack.subscribe(recorder)
    gate = KernelStateGate(veth, kernel_end, our_end)
    hold = _close_at_once(stack, veth, s, peer, recorder, gate)
    gate.open_once_seen("CLOSING")
    _assert_neither_fin_acknowledges_the_other(stack, recorder, hold)
    s.wait_for_state(State.TIME_WAIT, State.CLOSED, timeout=TIMEOUT)
    wait_until(
        lambda: kernel_state(veth, kernel_end, our_end) == "TIME_WAIT",
        "ss to show the kernel in TIME_WAIT",
    )
    assert _path(recorder)[:4] == ["ESTABLISHED", "FIN_WAIT_1", "CLOSING", "TIME_WAIT"]


def test_fin_is_sent_again_from_closing_with_backoff(stack: Stack, veth: Lab) -> None:
    """R-13 in CLOSING: after the FINs crossed, the kernel's ACKs of our FIN are lost
    twice; our FIN goes again from CLOSING, its timeout doubling, and the kernel's
    ACK of the last one takes us to TIME_WAIT."""
    s, peer = connect(stack, veth)
    kernel_end, our_end = (veth.peer_address, PORT), s.getsockname()
    recorder = Recorder()
    stack.subscribe(recorder)
    lost = AcksOfOurFinLost(times=2)
    stack.subscribe(lost)
    # Added before the hold: the first hook that matches a segment acts on it.
    loss = stack.add_hook(
        Hook(
            "in",
            DROP,
            where=all_of(local_port(our_end[1]), lost.matches),
            times=None,
            name="lose the ACK of our FIN",
        )
    )
    # The kernel's CLOSING is C-03's to check: no gate on our ACK here.
    hold = _close_at_once(stack, veth, s, peer, recorder, gate=None)
    _assert_neither_fin_acknowledges_the_other(stack, recorder, hold)
    s.wait_for_state(State.TIME_WAIT, State.CLOSED, timeout=TIMEOUT)
    wait_until(
        lambda: kernel_state(veth, kernel_end, our_end) == "TIME_WAIT",
        "ss to show the kernel in TIME_WAIT",
    )
    stack.sync()

    assert _path(recorder)[:4] == ["ESTABLISHED", "FIN_WAIT_1", "CLOSING", "TIME_WAIT"]
    assert loss.fired >= 2
    fins = [
        e
        for e in recorder.segments
        if e.direction == "out" and e.segment.fin and not e.note.startswith("dropped")
    ]
    assert fins[0].state is State.FIN_WAIT_1
    assert len({e.segment.seq for e in fins}) == 1, "the FIN moved"
    from_closing = [e for e in fins if e.state is State.CLOSING]
    assert len(from_closing) == 2
    retransmits = [e for e in recorder.events if isinstance(e, RetransmitEvent)]
    assert len(retransmits) == len(fins) - 1
    assert all(e.seq == fins[0].segment.seq and e.reason == "timeout" for e in retransmits)
    # Backoff: each retransmission doubles the timeout (the RTO snapshot after each
    # send), and the next one waits at least that long (timers never fire early).
    first, second = from_closing
    assert second.rto == pytest.approx(2 * first.rto)
    assert second.time - first.time >= first.rto - 0.001
