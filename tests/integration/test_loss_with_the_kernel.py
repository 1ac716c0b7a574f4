"""Loss recovery with the real kernel as receiver: fast retransmit (R-03), several
losses in one window (R-04), tail loss (R-05), a lost retransmission (R-06), RTO
backoff and Karn through a blackout (R-01), and the restart window after idle (R-12).

Our segments are lost by "out" hooks that pick them by sequence number (the one that
carries a given byte of the stream), so which segment is lost never hangs on timing;
the blackout of R-01 is nftables in the kernel's namespace, lifted once the trace has
shown enough timeouts. The kernel's duplicate ACKs and SACK blocks, not a script's,
drive the recovery. Segment offload is off (tso_max=0), so that each segment is one
MSS on the wire and in the hook, and "the 20th segment" means what it says.

The link makes no difference to any of this, so these run on veth only.
"""

from __future__ import annotations

import os
import socket
import time

import pytest

from tcpstack import State, TcpConfig
from tcpstack.core import seq
from tcpstack.hooks import DROP, Hook, HookContext, Predicate
from tcpstack.lab import Lab
from tcpstack.stack import Socket, Stack, recv_exactly
from tcpstack.trace import Recorder, RetransmitEvent, SegmentEvent
from tests.integration.kernel import (
    MSL,
    TIMEOUT,
    connect,
    in_thread,
    recorded_stack,
    sha256,
    wait_until,
)

pytestmark = pytest.mark.netns

# RFC 7323 §3: the timestamps option takes 12 bytes of every segment, padded.
TS_OPTION = 12
INITIAL_WINDOW = 10  # segments (RFC 6928), as our congestion control starts
PER_MSS = TcpConfig(msl=MSL, tso_max=0)
NO_SACK = TcpConfig(msl=MSL, tso_max=0, sack=False)


def segment_size(s: Socket) -> int:
    """The payload of a full segment on this connection."""
    info = s.info()
    assert info is not None
    return info.send_mss - (TS_OPTION if info.timestamps else 0)


def carrying(offset: int) -> Predicate:
    """Our data segments that carry byte `offset` of the stream (0 is the first byte
    after the SYN), first transmission or not."""

    def match(ctx: HookContext) -> bool:
        conn, payload = ctx.connection, ctx.segment.payload
        if conn is None or not payload:
            return False
        start = seq.sub(ctx.segment.seq, seq.add(conn.iss, 1))
        return start <= offset < start + len(payload)

    return match


def lose(stack: Stack, offset: int, times: int = 1) -> Hook:
    """Lose the first `times` transmissions of the segment carrying byte `offset`."""
    return stack.add_hook(
        Hook("out", DROP, where=carrying(offset), times=times, name=f"byte {offset}")
    )


def deliver(s: Socket, peer: socket.socket, data: bytes) -> None:
    """Send `data` while the kernel reads it; it must arrive intact."""
    reading = in_thread(recv_exactly, peer, len(data))
    s.sendall(data)
    assert sha256(reading.result(TIMEOUT)) == sha256(data)


def all_acknowledged(s: Socket) -> bool:
    info = s.info()
    return info is not None and info.snd_una == info.snd_nxt


def dropped(recorder: Recorder) -> list[SegmentEvent]:
    """Our segments that a hook lost, in order."""
    return [e for e in recorder.segments if e.direction == "out" and e.note.startswith("dropped")]


def retransmits(recorder: Recorder, *, probes: bool = False) -> list[RetransmitEvent]:
    """Our retransmissions, in order; tail loss probes only if `probes`. A probe may
    go needlessly whenever the kernel's ACK is a little late (its timeout is 2 SRTT,
    a few milliseconds here), so what repaired a loss is told without them."""
    return [
        e
        for e in recorder.events
        if isinstance(e, RetransmitEvent) and (probes or e.reason != "tail_probe")
    ]


def sent_at(recorder: Recorder, start: int) -> list[SegmentEvent]:
    """Every transmission of ours starting at sequence `start` that reached the wire."""
    return [
        e
        for e in recorder.segments
        if e.direction == "out"
        and e.segment.payload
        and e.segment.seq == start
        and not e.note.startswith("dropped")
    ]


def exchange_after(s: Socket, peer: socket.socket) -> None:
    """The connection is sound after the repair: data both ways, and recovery over."""
    ours, theirs = os.urandom(64 << 10), os.urandom(64 << 10)
    kernel_sends = in_thread(peer.sendall, theirs)
    deliver(s, peer, ours)
    assert sha256(recv_exactly(s, len(theirs))) == sha256(theirs)
    kernel_sends.result(TIMEOUT)
    wait_until(lambda: all_acknowledged(s), "the kernel to acknowledge everything")
    info = s.info()
    assert info is not None
    assert info.state is State.ESTABLISHED and info.recovery == "open"


# ------------------------------------------------------------ fast retransmit


def lose_the_twentieth(stack: Stack, recorder: Recorder, lab: Lab) -> tuple[SegmentEvent, int]:
    """A transfer of 200 segments whose 20th is lost once; returns its loss and the
    duplicates the kernel saw meanwhile (D-SACKs it sent for data it already had)."""
    s, peer = connect(stack, lab)
    size = segment_size(s)
    hook = lose(stack, 19 * size)
    data = os.urandom(200 * size)
    with s, peer:
        deliver(s, peer, data)
        wait_until(lambda: all_acknowledged(s), "the kernel to acknowledge everything")
        duplicates = lab.peer_nstat()["TcpExtTCPDSACKOldSent"]
    stack.sync()
    assert hook.fired == 1
    (lost,) = dropped(recorder)
    assert seq.sub(lost.segment.seq, lost.iss) == 1 + 19 * size
    return lost, duplicates


# Our lost segment never reached the wire, so the checker sees the next one leave a
# gap in our sequence space (I-3) until the retransmission fills it.
@pytest.mark.trace_allows("I-3")
def test_one_lost_segment_is_repaired_by_the_kernels_sacks(veth: Lab) -> None:
    """R-03 with SACK: the 20th segment of a transfer is lost; the kernel's SACKs
    make us resend it, and nothing else, without a timeout."""
    with recorded_stack(veth, PER_MSS) as (stack, recorder):
        lost, _ = lose_the_twentieth(stack, recorder, veth)
        stats = stack.stats()

    repairs = retransmits(recorder)
    assert repairs, "the lost segment was never sent again"
    # (Once, it should be: see the next test.)
    assert {(e.seq, e.reason) for e in repairs} == {(lost.segment.seq, "fast")}
    sacks = [
        e
        for e in recorder.segments
        if e.direction == "in"
        and lost.time < e.time <= repairs[0].time
        and e.segment.ack == lost.segment.seq
        and any(seq.gt(left, lost.segment.seq) for left, _ in e.segment.options.sack_blocks)
    ]
    assert sacks, "no SACK from the kernel came before the retransmission"
    assert stats.get("fast_retransmits", 0) == 1
    assert stats.get("timeouts", 0) == 0


@pytest.mark.trace_allows("I-3")  # the lost segment leaves a gap (see above)
def test_one_lost_segment_is_resent_only_once(veth: Lab) -> None:
    """R-03 with SACK: the hole is resent once, and the kernel never receives it twice."""
    with recorded_stack(veth, PER_MSS) as (stack, recorder):
        lost, duplicates = lose_the_twentieth(stack, recorder, veth)

    repairs = [e for e in retransmits(recorder, probes=True) if e.seq == lost.segment.seq]
    assert len(repairs) == 1, f"the lost segment was sent again {len(repairs)} times"
    assert duplicates == 0, f"the kernel sent {duplicates} D-SACKs for data it had"


@pytest.mark.trace_allows("I-3")  # the lost segment leaves a gap (see above)
def test_one_lost_segment_is_resent_on_the_third_duplicate_ack(veth: Lab) -> None:
    """R-03 without SACK: the kernel's third duplicate ACK has the 20th segment resent,
    and ssthresh (cwnd, with Reno) becomes max(FlightSize / 2, 2 SMSS)."""
    config = TcpConfig(msl=MSL, tso_max=0, sack=False, congestion="reno")
    with recorded_stack(veth, config) as (stack, recorder):
        s, peer = connect(stack, veth)
        size = segment_size(s)
        hook = lose(stack, 19 * size)
        data = os.urandom(200 * size)
        with s, peer:
            deliver(s, peer, data)
            wait_until(lambda: all_acknowledged(s), "the kernel to acknowledge everything")
        stack.sync()
        stats = stack.stats()

    assert hook.fired == 1
    (lost,) = dropped(recorder)
    (repair,) = retransmits(recorder, probes=True)
    assert repair.seq == lost.segment.seq and repair.reason == "fast"
    # A duplicate ACK (RFC 5681 §2): at the hole once SND.UNA had reached it, with
    # the same window as the ACK before it (the kernel's window moves now and then,
    # and such an ACK counts as a window update instead).
    received = [e for e in recorder.segments if e.direction == "in" and e.time <= repair.time]
    duplicates = [
        (before, e)
        for before, e in zip(received, received[1:], strict=False)
        if before.snd_una == lost.segment.seq
        and e.segment.ack == lost.segment.seq
        and e.segment.window == before.segment.window
        and not e.segment.payload
    ]
    assert len(duplicates) >= 3, f"resent after {len(duplicates)} duplicate ACKs"
    # The third duplicate ACK is where the window was cut (RFC 5681 §3.2 step 2):
    # its snapshot has the flight it found.
    before, third = duplicates[2]
    assert before.cwnd > third.cwnd, "the window was not cut on the third duplicate ACK"
    flight = seq.sub(third.snd_nxt, third.snd_una)
    assert third.cwnd == max(flight // 2, 2 * size)
    assert stats.get("fast_retransmits", 0) == 1
    assert stats.get("timeouts", 0) == 0


# ------------------------------------------------- several losses in one window

# Three segments, none next to another, all in the second flight of slow start
# (cwnd has grown past 30 segments by the time the 30th is sent).
SEVERAL = (30, 33, 36)


@pytest.mark.trace_allows("I-3")  # each lost segment leaves a gap (see above)
@pytest.mark.parametrize("config", [PER_MSS, NO_SACK], ids=["sack", "newreno"])
def test_three_losses_in_one_window_are_repaired_in_one_episode(
    veth: Lab, config: TcpConfig
) -> None:
    """R-04: segments 30, 33 and 36 are lost; one recovery episode resends those and
    nothing else, without a timeout: from SACK blocks, or from NewReno's partial ACKs."""
    with recorded_stack(veth, config) as (stack, recorder):
        s, peer = connect(stack, veth)
        size = segment_size(s)
        hooks = [lose(stack, (n - 1) * size) for n in SEVERAL]
        data = os.urandom(300 * size)
        with s, peer:
            deliver(s, peer, data)
            wait_until(lambda: all_acknowledged(s), "the kernel to acknowledge everything")
            final = s.info()
        stack.sync()
        stats = stack.stats()

    assert [h.fired for h in hooks] == [1, 1, 1]
    lost = [e.segment.seq for e in dropped(recorder)]
    iss = dropped(recorder)[0].iss
    assert [seq.sub(x, seq.add(iss, 1)) for x in lost] == [(n - 1) * size for n in SEVERAL]
    repairs = retransmits(recorder)
    assert all(e.reason == "fast" for e in repairs)
    # Each hole in turn, once, and nothing else.
    assert [e.seq for e in repairs] == lost
    if not config.sack:
        # Each hole after the first was found by the ACK that stopped at it.
        for hole, repair in zip(lost[1:], repairs[1:], strict=True):
            partial = [
                e
                for e in recorder.segments
                if e.direction == "in" and e.time <= repair.time and e.segment.ack == hole
            ]
            assert partial, f"no partial ACK at {hole} before its retransmission"
    assert stats.get("fast_retransmits", 0) == 1, "more than one recovery episode"
    assert stats.get("timeouts", 0) == 0
    assert final is not None and final.recovery == "open"


# ------------------------------------------------------------------ tail loss


@pytest.mark.trace_allows("I-3")  # the lost segment leaves a gap (see above)
def test_lost_tail_of_a_write_is_repaired_by_a_probe_before_the_rto(veth: Lab) -> None:
    """R-05: a write of one initial window, its last segment lost, and nothing more
    to send: a tail loss probe resends it and the RTO never fires."""
    with recorded_stack(veth, PER_MSS) as (stack, recorder):
        s, peer = connect(stack, veth)
        size = segment_size(s)
        data = os.urandom(INITIAL_WINDOW * size)
        hook = lose(stack, len(data) - 1)
        with s, peer:
            deliver(s, peer, data)
            wait_until(lambda: all_acknowledged(s), "the kernel to acknowledge everything")
            stack.sync()
            stats = stack.stats()
            exchange_after(s, peer)

    assert hook.fired == 1
    (lost,) = dropped(recorder)
    assert lost.segment.end_seq == seq.add(lost.iss, 1 + len(data))
    probes = [e for e in retransmits(recorder, probes=True) if e.seq == lost.segment.seq]
    assert probes and probes[0].reason == "tail_probe"
    assert stats.get("tail_loss_probes", 0) >= 1
    assert stats.get("timeouts", 0) == 0


# ----------------------------------------------------- a retransmission lost too


@pytest.mark.trace_allows("I-3")  # the lost segment leaves a gap (see above)
def test_lost_fast_retransmission_is_found_by_rack(veth: Lab) -> None:
    """R-06 with SACK: the 20th segment and its fast retransmission are both lost;
    RACK finds the retransmission lost from the SACKs that follow it, and resends it
    again without waiting for the RTO."""
    with recorded_stack(veth, PER_MSS) as (stack, recorder):
        s, peer = connect(stack, veth)
        size = segment_size(s)
        hook = lose(stack, 19 * size, times=2)
        data = os.urandom(300 * size)
        with s, peer:
            deliver(s, peer, data)
            wait_until(lambda: all_acknowledged(s), "the kernel to acknowledge everything")
            stack.sync()
            stats = stack.stats()
            exchange_after(s, peer)

    assert hook.fired == 2
    first, second = dropped(recorder)
    assert first.segment.seq == second.segment.seq
    # Both lost, then one more that got through, none of them by the timer.
    repairs = [e for e in retransmits(recorder) if e.seq == first.segment.seq]
    assert len(repairs) == 2 and all(e.reason == "fast" for e in repairs)
    assert sent_at(recorder, first.segment.seq)
    assert stats.get("fast_retransmits", 0) == 1
    assert stats.get("timeouts", 0) == 0


@pytest.mark.trace_allows("I-3")  # the lost segment leaves a gap (see above)
def test_lost_timeout_retransmission_is_resent_after_the_doubled_rto(veth: Lab) -> None:
    """R-06 by the timer: without SACK a lost tail brings no duplicate ACK, so the RTO
    resends it; that is lost too, and the next goes after twice the timeout."""
    with recorded_stack(veth, NO_SACK) as (stack, recorder):
        s, peer = connect(stack, veth)
        size = segment_size(s)
        data = os.urandom(INITIAL_WINDOW * size)
        hook = lose(stack, len(data) - 1, times=2)
        with s, peer:
            deliver(s, peer, data)
            wait_until(lambda: all_acknowledged(s), "the kernel to acknowledge everything")
            stack.sync()
            stats = stack.stats()
            exchange_after(s, peer)

    assert hook.fired == 2
    original, first = dropped(recorder)
    assert original.segment.seq == first.segment.seq
    (second,) = sent_at(recorder, original.segment.seq)
    repairs = retransmits(recorder, probes=True)
    assert [(e.seq, e.reason) for e in repairs] == [(original.segment.seq, "timeout")] * 2
    assert stats.get("timeouts", 0) == 2
    # Each timeout doubles the RTO armed with the retransmission (its snapshot), and
    # the next one waits at least that long: timers never fire early.
    assert second.rto == pytest.approx(2 * first.rto)
    assert first.rto >= 2 * original.rto - 0.001
    assert first.time - original.time >= original.rto - 0.001
    assert second.time - first.time >= first.rto - 0.001


# --------------------------------------------------- RTO, backoff and Karn


def test_blackout_backs_off_and_karn_keeps_the_rto_until_a_fresh_sample(veth: Lab) -> None:
    """R-01: between two writes of a transfer everything we send starts being lost,
    until three timeouts have passed. Each timeout resends the earliest
    unacknowledged segment with cwnd at one segment, the RTO doubling each time; the
    ACK of the retransmission that gets through leaves the backed-off RTO in place
    (Karn: without timestamps it times nothing), and it collapses only once new data
    is acknowledged."""
    config = TcpConfig(msl=MSL, tso_max=0, timestamps=False)
    with recorded_stack(veth, config) as (stack, recorder):
        s, peer = connect(stack, veth)
        size = segment_size(s)
        before, during, after = (os.urandom(256 << 10) for _ in range(3))
        with s, peer:
            reading = in_thread(recv_exactly, peer, len(before + during + after))
            s.sendall(before)
            wait_until(lambda: all_acknowledged(s), "the kernel to acknowledge the first write")
            # Started between writes, not in mid-flight: loading the rules takes
            # longer than a transfer on veth, which could end before they were in.
            veth.peer_loss(100, direction="in")
            try:
                s.sendall(during)  # within the send buffer: it returns at once
                wait_until(
                    lambda: stack.stats().get("timeouts", 0) >= 3,
                    "three timeouts during the blackout",
                )
            finally:
                veth.peer_loss_clear()
            # New data once more, to be timed afresh.
            s.sendall(after)
            assert sha256(reading.result(TIMEOUT)) == sha256(before + during + after)
            wait_until(lambda: all_acknowledged(s), "the kernel to acknowledge everything")
            final = s.info()
        stack.sync()
        stats = stack.stats()

    timeouts = [e for e in retransmits(recorder) if e.reason == "timeout"]
    head = timeouts[0].seq
    same = [e for e in timeouts if e.seq == head]
    assert len(same) >= 4, "three retransmissions lost and one through"
    resent = sent_at(recorder, head)[-len(same) :]
    # The earliest unacknowledged segment each time, in a window of one segment
    # (RFC 5681 §3.1), and never under Linux's 200 ms minimum.
    assert all(e.segment.seq == e.snd_una and e.cwnd == size for e in resent)
    assert resent[0].rto >= 2 * config.rto_min
    # Backoff: each RTO twice the last, and each gap at least the RTO armed before it,
    # so at least the gap before it too (unless a timer fired a whole RTO late).
    for earlier, later in zip(resent, resent[1:], strict=False):
        assert later.rto == pytest.approx(2 * earlier.rto)
        assert later.time - earlier.time >= earlier.rto - 0.001
    gaps = [later.time - earlier.time for earlier, later in zip(resent, resent[1:], strict=False)]
    assert all(b >= a for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    backed_off = resent[-1].rto
    # Karn (RFC 6298 §3, §5): whatever was first sent before the retransmission that
    # got through was lost in the blackout and sent again, so the ACKs that cover
    # no more than that give no sample, and the backed-off RTO stays ...
    lost_end = head
    for e in recorder.segments:
        if e.direction == "out" and e.time <= resent[-1].time:
            lost_end = e.segment.end_seq if seq.gt(e.segment.end_seq, lost_end) else lost_end
    karn = [
        e
        for e in recorder.segments
        if e.direction == "in" and e.time > resent[-1].time and seq.le(e.snd_una, lost_end)
    ]
    assert any(seq.gt(e.snd_una, head) for e in karn), "no ACK of the retransmission"
    assert {e.rto for e in karn} == {backed_off}
    # ... until new data, timed afresh, is acknowledged.
    assert final is not None and final.rto < backed_off
    assert stats.get("connections_timed_out", 0) == 0


# ---------------------------------------------------- restart after idle


def test_after_idling_longer_than_the_rto_the_window_restarts(veth: Lab) -> None:
    """R-12: after a transfer has grown cwnd far past the initial window, the
    connection idles for more than an RTO; the next write goes out in a first flight
    of no more than the initial window (RFC 5681 §4.1)."""
    with recorded_stack(veth, PER_MSS) as (stack, recorder):
        s, peer = connect(stack, veth)
        size = segment_size(s)
        with s, peer:
            deliver(s, peer, os.urandom(1 << 20))
            wait_until(lambda: all_acknowledged(s), "the kernel to acknowledge everything")
            grown = s.info()
            assert grown is not None
            assert grown.cwnd > 4 * INITIAL_WINDOW * size
            stack.sync()
            last_sent = max(e.time for e in recorder.segments if e.direction == "out")
            # The idle period is the scenario itself, not a wait for something to
            # happen: it lasts twice the RTO, measured on the engine's clock.
            idle_until = last_sent + 2 * grown.rto
            wait_until(lambda: time.monotonic() > idle_until, "the connection to idle")
            mark = len(recorder.events)
            more = os.urandom(3 * INITIAL_WINDOW * size)
            deliver(s, peer, more)
            wait_until(lambda: all_acknowledged(s), "the kernel to acknowledge everything")
            after = s.info()
        stack.sync()

    assert after is not None
    later = [e for e in recorder.events[mark:] if isinstance(e, SegmentEvent)]
    first_ack = next(
        i for i, e in enumerate(later) if e.direction == "in" and seq.gt(e.snd_una, grown.snd_una)
    )
    flight = [e for e in later[:first_ack] if e.direction == "out" and e.segment.payload]
    assert flight, "nothing sent after the idle period"
    assert flight[0].time - last_sent > grown.rto
    assert flight[0].cwnd <= INITIAL_WINDOW * size
    assert len(flight) <= INITIAL_WINDOW
    assert sum(len(e.segment.payload) for e in flight) <= INITIAL_WINDOW * size
    # Slow start from there, not from the grown window: it grows by at most what
    # was acknowledged since.
    assert after.cwnd <= INITIAL_WINDOW * size + len(more) < grown.cwnd
