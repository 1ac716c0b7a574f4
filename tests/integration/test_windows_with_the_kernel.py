"""Flow control and ACKs against the real kernel, checked on the wire from our trace:
zero windows both ways (W-01, W-03), receiver silly-window avoidance (W-06),
window-scale arithmetic (W-07), when we ACK (D-11) and ACKs riding on data (D-12).

The link makes no difference to any of these, so they run on veth only. Where the
size of the kernel's segments matters, its segmentation offload is turned off, so
each segment reaches us as a wire would carry it and not inside a 64 KB frame.

Two tests are strict xfails: each shows a way in which tcpstack still falls short
of its scenario, and says why in its reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

from tcpstack import TcpConfig, netns
from tcpstack.core import seq
from tcpstack.core.segment import Flags
from tcpstack.hooks import DELAY, Hook, HookContext
from tcpstack.lab import Lab
from tcpstack.stack import Socket, Stack, recv_exactly
from tcpstack.trace import SegmentEvent, TimerEvent, TraceEvent
from tests.integration.kernel import (
    MSL,
    PORT,
    TIMEOUT,
    connect,
    in_thread,
    kernel_server,
    recorded_stack,
    recv_all,
    sha256,
    wait_until,
)

pytestmark = pytest.mark.netns

# Small enough that the kernel fills it in a few milliseconds.
SMALL_BUFFER = 64 << 10
# The most an unscaled window can offer: with a shift of 0 the window we offer is
# exactly the one our core chose, with no rounding to the scale's unit.
UNSCALED_BUFFER = 0xFFFF


class Shortfall(AssertionError):
    """The one failure each strict xfail below expects: the shortcoming it shows.
    Anything else failing there (a precondition, a timeout) is a plain failure."""


def _shortfall(condition: bool, message: str) -> None:
    if not condition:
        raise Shortfall(message)


def _segments_on_the_wire(lab: Lab) -> None:
    """Segmentation offload off on the kernel's end of the link: each of its
    segments then reaches us one MSS at most, as sent."""
    ethtool = shutil.which("ethtool") or shutil.which("ethtool", path="/usr/sbin:/sbin")
    assert ethtool is not None, "ethtool is not installed: run scripts/setup"
    argv = [ethtool, "-K", lab.peer_interface, "tso", "off", "gso", "off"]
    done = netns.run(lab.peer_netns, argv, 10.0, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _peer_sysctl(lab: Lab, key: str, value: str) -> None:
    # /proc/sys/net resolves against the calling thread's namespace.
    with netns.enter(lab.peer_netns), open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(value)


@dataclass(frozen=True)
class KernelInfo:
    """The few fields of a kernel socket's TCP_INFO these tests read."""

    snd_wscale: int  # the shift the kernel applies to the windows we offer
    rcv_wscale: int  # the shift it applies to its own
    snd_mss: int  # its segment size: the MSS less the timestamp option
    unacked: int  # its segments in flight
    snd_wnd: int  # the window we last offered it, as it scaled it
    rcv_wnd: int  # the window it last offered us, scaled


def _kernel_info(sock: socket.socket) -> KernelInfo:
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    assert len(raw) >= 236, "this kernel's TCP_INFO has no tcpi_rcv_wnd (Linux 6.2 on)"
    # struct tcp_info: the two shifts share byte 6, snd_wscale in its low nibble.
    snd_mss, unacked = struct.unpack_from("I4xI", raw, 16)
    snd_wnd, rcv_wnd = struct.unpack_from("II", raw, 228)
    return KernelInfo(raw[6] & 0xF, raw[6] >> 4, snd_mss, unacked, snd_wnd, rcv_wnd)


def _send_and_shut(sock: Socket | socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def _segments(events: Sequence[TraceEvent]) -> list[SegmentEvent]:
    """The segments of our connection that were on the wire: not those lost on the
    way out, nor those that came for it once it was gone ("to no connection")."""
    return [
        e
        for e in list(events)
        if isinstance(e, SegmentEvent) and (not e.note or e.note.startswith("held"))
    ]


def _our_edges(segments: Sequence[SegmentEvent], shift: int) -> Iterator[tuple[SegmentEvent, int]]:
    """Each segment we sent after our SYN, with the right edge its window offered."""
    for e in segments:
        seg = e.segment
        if e.direction == "out" and seg.has_ack and not seg.syn and not seg.rst:
            yield e, seq.add(seg.ack, seg.window << shift)


def _edge_advances(segments: Sequence[SegmentEvent], shift: int, end: int) -> list[int]:
    """By how much each of our segments moved the furthest right edge we offered,
    until the peer's data ended at END (its FIN then moves the edge by one)."""
    furthest: int | None = None
    advances = []
    for e, edge in _our_edges(segments, shift):
        if seq.gt(e.segment.ack, end):
            break
        if furthest is not None and seq.gt(edge, furthest):
            advances.append(seq.sub(edge, furthest))
        if furthest is None or seq.gt(edge, furthest):
            furthest = edge
    return advances


def _data_in(segments: Sequence[SegmentEvent]) -> list[SegmentEvent]:
    return [e for e in segments if e.direction == "in" and e.segment.payload]


def _end(event: SegmentEvent) -> int:
    return seq.add(event.segment.seq, len(event.segment.payload))


# ------------------------------------------------- W-01: we stop reading


def _is_window_probe(event: SegmentEvent) -> bool:
    """Linux's zero-window probe: no data, one below what we expect next."""
    seg = event.segment
    return (
        event.direction == "in"
        and seg.flags == Flags.ACK
        and not seg.payload
        and seg.seq == seq.add(event.rcv_nxt, -1)
    )


def _probes_with_replies(
    segments: Sequence[SegmentEvent],
) -> list[tuple[SegmentEvent, SegmentEvent | None]]:
    """Each of the kernel's probes, with what we sent while processing it: the engine
    answers a segment in the same instant it took it in."""
    found = []
    for i, e in enumerate(segments):
        if _is_window_probe(e):
            after = segments[i + 1] if i + 1 < len(segments) else None
            same = after is not None and after.direction == "out" and after.time == e.time
            found.append((e, after if same else None))
    return found


def test_our_zero_window_answers_the_kernels_probes_and_opens_at_the_threshold(
    veth: Lab,
) -> None:
    """W-01: while our buffer is full each of the kernel's probes gets <ACK=RCV.NXT,
    WIN=0>; reading opens the window only once the free space reaches the threshold."""
    config = TcpConfig(msl=MSL, receive_buffer=SMALL_BUFFER)
    data = os.urandom(256 << 10)
    with recorded_stack(veth, config) as (stack, recorder):
        s, peer = connect(stack, veth)
        conn = s.connection
        assert conn is not None
        with s, peer:
            sending = in_thread(_send_and_shut, peer, data)
            # Probes back off 0.2, 0.4, 0.8 s: the third is past the rate limit below
            # whatever the first two met.
            wait_until(
                lambda: len(_probes_with_replies(_segments(recorder.events))) >= 3,
                "three zero-window probes from the kernel",
            )
            stack.sync()  # the reply to the last probe is in the trace too
            full = _segments(recorder.events)
            # The threshold our core opens the window at (_receive_edge): RFC 9293
            # §3.8.6.2.2's min(half the buffer, our announced MSS), on the free space
            # before the window is truncated to the scale's unit (see the W-06 xfail:
            # if that is fixed, this test's threshold moves with it).
            threshold = min(conn.config.receive_buffer // 2, conn.config.announced_mss)
            # The last window before zero may have been rounded down to the scale's
            # unit, so a little of the buffer is free, unoffered.
            free = conn.config.receive_buffer - conn.readable
            assert 0 <= free < threshold
            before = len(recorder.events)
            got = bytearray(recv_exactly(s, threshold - free - 1))
            stack.sync()
            # A window update is sent by the read itself (pump), so by now it is in
            # the trace: one byte short of the threshold, nothing may offer a window.
            short = [e for e in _segments(recorder.events[before:]) if e.direction == "out"]
            assert all(e.segment.window == 0 for e in short), short
            before = len(recorder.events)
            got += s.recv(1)
            stack.sync()
            updates = [e for e in _segments(recorder.events[before:]) if e.direction == "out"]
            got += recv_all(s)
            sending.result(TIMEOUT)
        stack.sync()
        suppressed = conn.stats["oow_acks_suppressed"]
        kernel_probes = veth.peer_nstat()["TcpExtTCPWinProbe"]

    assert sha256(bytes(got)) == sha256(data)
    assert updates, "reading up to the threshold sent no window update"
    update = updates[0]
    assert update.segment.flags == Flags.ACK and not update.segment.payload
    assert update.segment.ack == update.rcv_nxt
    # Opened at exactly the threshold of free space, and never beyond the buffer.
    # (The scale's truncation may offer less than the threshold: see W-06.)
    offered = update.segment.window << conn.rcv_wscale
    assert 0 < offered <= threshold and offered == update.rcv_wnd

    # Every probe the kernel sent reached us, and we saw nothing else as one.
    probes = _probes_with_replies(_segments(recorder.events))
    assert len(probes) == kernel_probes
    answered = 0
    last_answer: float | None = None
    for probe, reply in _probes_with_replies(full):
        if reply is None:
            # An ACK for an unacceptable segment without data goes at most once per
            # invalid_ack_interval, as Linux's tcp_invalid_ratelimit has it (500 ms,
            # pinned in the lab). Linux's own receiver skips the same probe: probes
            # 0.4 s apart meet it (TcpExtTCPACKSkippedSeq).
            assert last_answer is not None, f"the first probe went unanswered: {probe}"
            assert probe.time - last_answer < conn.config.invalid_ack_interval, probe
            continue
        seg = reply.segment
        assert seg.flags == Flags.ACK and not seg.payload, reply
        assert seg.ack == probe.rcv_nxt and seg.window == 0, reply
        answered += 1
        last_answer = probe.time
    assert answered >= 2
    assert suppressed >= len(_probes_with_replies(full)) - answered


# --------------------------------------------- W-03: the kernel stops reading

# SO_RCVBUF of the kernel's socket: the kernel doubles it, a window of a few KB.
KERNEL_RCVBUF = 4096


def _connect_small_kernel_buffer(stack: Stack, lab: Lab) -> tuple[Socket, socket.socket]:
    """Connect to a kernel listener whose accepted socket gets KERNEL_RCVBUF."""
    server = kernel_server(lab, PORT)
    # The accepted socket takes its buffer (and so its window and shift) from here.
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, KERNEL_RCVBUF)
    accepted = in_thread(server.accept)
    s = stack.socket()
    s.settimeout(TIMEOUT)
    s.connect((lab.peer_address, PORT))
    peer, _ = accepted.result(TIMEOUT)
    server.close()
    peer.settimeout(TIMEOUT)
    return s, peer


def _kernel_shift(segments: Sequence[SegmentEvent]) -> int:
    """The window shift the kernel's SYN-ACK announced."""
    syn_ack = next(e for e in segments if e.direction == "in" and e.segment.syn)
    assert syn_ack.segment.options.wscale is not None
    return syn_ack.segment.options.wscale


def _our_probes(segments: Sequence[SegmentEvent]) -> list[SegmentEvent]:
    """Data we sent into a window we knew to be shut: our zero-window probes."""
    return [e for e in segments if e.direction == "out" and e.segment.payload and e.snd_wnd == 0]


def _armed_for(events: Sequence[TraceEvent], probe: SegmentEvent) -> float:
    """How long the timer that sent PROBE (persist, or a tail loss probe) had been
    armed for."""
    timers = [e for e in list(events) if isinstance(e, TimerEvent)]
    fired = [
        e
        for e in timers
        if e.action == "fired" and e.time == probe.time and e.timer in ("persist", "tail_probe")
    ]
    assert fired, f"no timer sent {probe}"
    timer = fired[0]
    assert timer.deadline is not None
    armed = [
        e
        for e in timers
        if e.action == "armed"
        and e.timer == timer.timer
        and e.deadline == timer.deadline
        and e.time <= timer.time
    ]
    assert armed, timer
    return timer.deadline - armed[-1].time


# Our zero-window probes carry one byte of new data (README, "Probes carry data"):
# the kernel, its window shut and its queue full, drops each as beyond its window.
@pytest.mark.nstat_allows("TcpExtBeyondWindow")
def test_we_probe_the_kernels_zero_window_ever_more_slowly(veth: Lab) -> None:
    """W-03: against a shut window we send nothing but probes, ever further apart,
    each answered; when the kernel reads the transfer completes."""
    data = os.urandom(256 << 10)
    with recorded_stack(veth) as (stack, recorder):
        s, peer = _connect_small_kernel_buffer(stack, veth)
        conn = s.connection
        assert conn is not None
        with s, peer:
            sending = in_thread(_send_and_shut, s, data)
            wait_until(
                lambda: len(_our_probes(_segments(recorder.events))) >= 3,
                "three zero-window probes of ours",
            )
            reading_from = time.monotonic()  # the engine's clock too
            got = recv_all(peer)
            sending.result(TIMEOUT)
        stack.sync()
    segments = _segments(recorder.events)
    assert sha256(got) == sha256(data)

    kernel_shift = _kernel_shift(segments)
    probes = _our_probes(segments)
    shut_at = next(
        e.time
        for e in segments
        if e.direction == "in" and not e.segment.syn and e.segment.window == 0
    )
    # The persist timer, not the first ACK with a shut window, sends the first probe:
    # one RTO later at least.
    assert probes[0].time - shut_at >= conn.config.rto_min
    # Each later probe was sent by a timer armed for at least as long as the one
    # before it, and came no sooner. (The real gaps are compared with those, not with
    # each other: a probe the machine's load made late would lengthen one gap and
    # shorten the next.)
    intervals = [_armed_for(recorder.events, probe) for probe in probes[1:]]
    assert len(intervals) >= 2
    assert all(b >= a for a, b in zip(intervals, intervals[1:], strict=False)), intervals
    for before, probe, interval in zip(probes, probes[1:], intervals, strict=False):
        assert probe.time - before.time >= interval, (probe, interval)
    for probe, after in zip(probes, [*probes[1:], None], strict=True):
        # One byte at SND.UNA: the kernel must answer it, and a probe is never
        # 0 bytes at SND.NXT (which Linux would not answer).
        assert len(probe.segment.payload) == 1 and probe.segment.seq == probe.snd_una, probe
        if probe.time >= reading_from:
            continue
        window_end = after.time if after is not None else reading_from
        answers = [
            e
            for e in segments
            if e.direction == "in" and probe.time <= e.time < window_end and not e.segment.payload
        ]
        assert answers, f"the kernel did not answer {probe}"
        assert answers[0].segment.ack == probe.segment.seq and answers[0].segment.window == 0

    # Nothing beyond the window the kernel offered, by our variables when sending
    # and by its segments' own fields, but a probe's one byte at the shut edge.
    kernel_edge: int | None = None
    for e in segments:
        seg = e.segment
        if e.direction == "in" and seg.has_ack:
            edge = seq.add(seg.ack, seg.window << (0 if seg.syn else kernel_shift))
            kernel_edge = edge if kernel_edge is None or seq.gt(edge, kernel_edge) else kernel_edge
        elif e.direction == "out" and seg.payload:
            assert kernel_edge is not None
            probe_byte = len(seg.payload) == 1 and seg.seq == kernel_edge
            ours = seq.add(e.snd_una, e.snd_wnd)
            assert probe_byte or seq.le(_end(e), kernel_edge), e
            assert (e.snd_wnd == 0 and probe_byte) or seq.le(_end(e), ours), e


# ------------------------------------ W-06: receiver silly-window avoidance

# Bytes per read of the slow reader: far below any threshold, so a receiver without
# silly-window avoidance would offer each few bytes as soon as they are read.
SLOW_READ = 7
SLOW_SIZE = 256 << 10


@dataclass
class SlowRead:
    """What a transfer to a slow reader left: our segments and the thresholds."""

    segments: list[SegmentEvent]
    threshold: int  # min(half the buffer, our MSS), as our core computes it
    shift: int  # ours
    kernel_mss: int  # the size of the kernel's full segments
    end: int  # the sequence number after the kernel's last byte


def _slow_read(lab: Lab, config: TcpConfig) -> SlowRead:
    """The kernel sends SLOW_SIZE bytes to a reader that takes SLOW_READ at a time."""
    _segments_on_the_wire(lab)
    data = os.urandom(SLOW_SIZE)
    with recorded_stack(lab, config) as (stack, recorder):
        s, peer = connect(stack, lab)
        conn = s.connection
        assert conn is not None
        kernel_mss = _kernel_info(peer).snd_mss
        with s, peer:
            sending = in_thread(_send_and_shut, peer, data)
            got = bytearray()
            while chunk := s.recv(SLOW_READ):
                got += chunk
            sending.result(TIMEOUT)
        stack.sync()
        threshold = min(conn.config.receive_buffer // 2, conn.config.announced_mss)
        end = seq.add(conn.irs, 1 + SLOW_SIZE)
        shift = conn.rcv_wscale
    assert sha256(bytes(got)) == sha256(data)
    return SlowRead(_segments(recorder.events), threshold, shift, kernel_mss, end)


def test_a_slow_reader_opens_its_window_by_the_threshold_or_more(veth: Lab) -> None:
    """W-06: the right edge we offer moves only by the threshold or more, however
    little the application reads at a time (unscaled, so the field is exact)."""
    config = TcpConfig(msl=MSL, receive_buffer=UNSCALED_BUFFER, window_shift=0)
    run = _slow_read(veth, config)
    assert run.shift == 0
    advances = _edge_advances(run.segments, run.shift, run.end)
    # The window reopened many times, each time by the threshold or more.
    assert len(advances) >= SLOW_SIZE // UNSCALED_BUFFER
    assert min(advances) >= run.threshold, sorted(advances)[:10]


@pytest.mark.xfail(
    strict=True,
    raises=Shortfall,
    reason=(
        "bug: the threshold is met by the free space before the window is truncated "
        "to the scale's unit, so the window offered grows by as little as "
        "threshold - 127 (1408 bytes with MSS 1460 and a shift of 7): less than the "
        "kernel's 1448-byte segment, which waits for its persist timer (about 0.2 s) "
        "and then sends a 1408-byte one"
    ),
)
def test_a_slow_reader_opens_its_scaled_window_by_the_threshold_or_more(veth: Lab) -> None:
    """W-06 with our default shift of 7: the same rule, apart from the moves of less
    than one unit that rounding the window up to the unit makes (Linux's do too)."""
    run = _slow_read(veth, TcpConfig(msl=MSL, receive_buffer=SMALL_BUFFER))
    assert run.shift == 7
    advances = _edge_advances(run.segments, run.shift, run.end)
    assert len(advances) >= SLOW_SIZE // SMALL_BUFFER
    too_small = [a for a in advances if 1 << run.shift <= a < run.threshold]
    _shortfall(not too_small, f"{len(too_small)} openings below {run.threshold}: {too_small[:10]}")


@pytest.mark.xfail(
    strict=True,
    raises=Shortfall,
    reason=(
        "bug: our window opens to the exact free space, not a whole number of the "
        "sender's segments (Linux's unscaled receiver rounds down to its MSS "
        "estimate), so after each opening the kernel sends a full segment and then "
        "the odd remainder, e.g. 1448 + 15 bytes; a Linux receiver reading as "
        "slowly gets none"
    ),
)
def test_a_slow_reader_leaves_the_kernel_no_tiny_segments(veth: Lab) -> None:
    """W-06, the kernel's side: no segment smaller than the threshold (or a full
    segment of the kernel's, which timestamps make smaller) but the last."""
    config = TcpConfig(msl=MSL, receive_buffer=UNSCALED_BUFFER, window_shift=0)
    run = _slow_read(veth, config)
    smallest = min(run.threshold, run.kernel_mss)
    data = _data_in(run.segments)
    assert len(data) >= SLOW_SIZE // run.kernel_mss
    tiny = [len(e.segment.payload) for e in data if len(e.segment.payload) < smallest]
    last = [e for e in data if _end(e) == run.end]
    tiny_but_last = len(tiny) - sum(1 for e in last if len(e.segment.payload) < smallest)
    _shortfall(
        tiny_but_last <= 0, f"{len(tiny)} of {len(data)} segments under {smallest}: {tiny[:20]}"
    )


# ---------------------------------------------- W-07: window-scale arithmetic

BOTH_WAYS = 16 << 20
# The kernel's tcp_rmem maximum: 32 MiB makes its shift 10 (ilog2 - 15), whatever
# the host's default, so both shifts are large and unequal.
KERNEL_RMEM = "4096 131072 33554432"


def test_windows_are_scaled_by_each_sides_shift(veth: Lab) -> None:
    """W-07: 16 MiB each way at once. Every window we offer is our computed window
    shifted by our scale; the kernel's, shifted by its scale, is what we use, and no
    byte of ours goes past SND.UNA + SND.WND; at rest both kernels' views agree."""
    _peer_sysctl(veth, "net.ipv4.tcp_rmem", KERNEL_RMEM)
    up, down = os.urandom(BOTH_WAYS), os.urandom(BOTH_WAYS)
    with recorded_stack(veth) as (stack, recorder):
        s, peer = connect(stack, veth)
        conn = s.connection
        assert conn is not None
        kernel = _kernel_info(peer)
        with s, peer:
            sending_up = in_thread(s.sendall, up)
            sending_down = in_thread(peer.sendall, down)
            receiving_up = in_thread(recv_exactly, peer, BOTH_WAYS)
            got = recv_exactly(s, BOTH_WAYS)
            assert sha256(receiving_up.result(TIMEOUT)) == sha256(up)
            sending_up.result(TIMEOUT)
            sending_down.result(TIMEOUT)

            def agree() -> bool:
                ours, theirs = s.info(), _kernel_info(peer)
                assert ours is not None
                return theirs.snd_wnd == ours.rcv_wnd and theirs.rcv_wnd == ours.snd_wnd

            # The kernel's own arithmetic, independent of our trace: each side's idea
            # of the other's window is, at rest, what the other last offered.
            wait_until(agree, "the kernel's windows and ours to agree at rest")
        stack.sync()
        buffer = conn.config.receive_buffer
        our_shift, their_shift = conn.rcv_wscale, conn.snd_wscale
    assert sha256(got) == sha256(down)
    segments = _segments(recorder.events)

    assert our_shift == 7 == kernel.snd_wscale
    assert their_shift == _kernel_shift(segments) == kernel.rcv_wscale >= 7

    ours = [e for e in segments if e.direction == "out" and not e.segment.rst]
    (syn,) = [e for e in ours if e.segment.syn]
    # A SYN's window is never scaled (RFC 7323 §2.2).
    assert syn.segment.window == min(buffer, 0xFFFF)
    for e, _ in _our_edges(segments, our_shift):
        # The window field is the window our core computed (what Socket.info()
        # reports as rcv_wnd), exactly: its unit is 1 << shift.
        assert e.segment.ack == e.rcv_nxt, e
        assert e.segment.window << our_shift == e.rcv_wnd <= buffer, e

    _check_kernel_windows(segments, their_shift)

    # Nothing past the window the kernel offered: by our variables when sending, and
    # by the furthest edge its own segments named.
    kernel_edge: int | None = None
    checked = 0
    for e in segments:
        seg = e.segment
        if e.direction == "in" and seg.has_ack:
            edge = seq.add(seg.ack, seg.window << (0 if seg.syn else their_shift))
            kernel_edge = edge if kernel_edge is None or seq.gt(edge, kernel_edge) else kernel_edge
        elif e.direction == "out" and seg.payload:
            assert kernel_edge is not None
            assert seq.le(_end(e), seq.add(e.snd_una, e.snd_wnd)), e
            assert seq.le(_end(e), kernel_edge), e
            checked += 1
    assert checked >= BOTH_WAYS // (64 << 10)


def _check_kernel_windows(segments: Sequence[SegmentEvent], shift: int) -> None:
    """Our SND.WND after each of the kernel's segments: its window field, unscaled on
    its SYN-ACK and shifted by its scale after, whenever RFC 9293's update rule
    (SND.WL1, SND.WL2) takes it; otherwise unchanged."""
    syn_ack = next(e for e in segments if e.direction == "in" and e.segment.syn)
    assert syn_ack.snd_wnd == syn_ack.segment.window
    wl1, wl2 = syn_ack.segment.seq, syn_ack.segment.ack
    snd_wnd = syn_ack.snd_wnd
    rcv_nxt, snd_una = syn_ack.rcv_nxt, syn_ack.snd_una
    beyond: int | None = None  # the furthest start of a segment beyond RCV.NXT
    strict = 0
    for e in segments[segments.index(syn_ack) + 1 :]:
        seg = e.segment
        if e.direction == "in" and seg.has_ack:
            scaled = seg.window << shift
            # At RCV.NXT the segment is acceptable whatever our window; one beyond it
            # may have moved SND.WL1 past what this model saw.
            sure = seg.seq == rcv_nxt and (beyond is None or seq.ge(seg.seq, beyond))
            if sure and seq.le(snd_una, seg.ack):
                if seq.lt(wl1, seg.seq) or (wl1 == seg.seq and seq.le(wl2, seg.ack)):
                    assert e.snd_wnd == scaled, e
                    wl1, wl2 = seg.seq, seg.ack
                    strict += 1
                else:
                    assert e.snd_wnd == snd_wnd, e
            else:
                assert e.snd_wnd in (snd_wnd, scaled), e
            if seq.gt(seg.seq, rcv_nxt):
                beyond = seg.seq if beyond is None or seq.gt(seg.seq, beyond) else beyond
        snd_wnd, rcv_nxt, snd_una = e.snd_wnd, e.rcv_nxt, e.snd_una
    assert strict >= 100


# A pure ACK of ours reaches the kernel this late: long enough that the kernel fills
# the window a reopening offered before it sees any later ACK.
ACK_HELD = 0.03
REFILLS = 4


def _is_pure_ack(ctx: HookContext) -> bool:
    return ctx.segment.flags == Flags.ACK and not ctx.segment.payload


def _refused(segments: Sequence[SegmentEvent], shift: int) -> tuple[int, list[int]]:
    """How many of the kernel's segments ended on the furthest right edge we had
    offered; and, of those in order that ended no further, how many bytes of each
    we did not take."""
    furthest: int | None = None
    rcv_nxt: int | None = None
    to_the_edge = 0
    refused = []
    for e in segments:
        seg = e.segment
        if e.direction == "out" and seg.has_ack and not seg.syn and not seg.rst:
            edge = seq.add(seg.ack, seg.window << shift)
            furthest = edge if furthest is None or seq.gt(edge, furthest) else furthest
        elif e.direction == "in" and seg.payload and furthest is not None:
            assert rcv_nxt is not None
            end = _end(e)
            to_the_edge += end == furthest
            if seq.le(seg.seq, rcv_nxt) and seq.le(end, furthest) and seq.lt(e.rcv_nxt, end):
                refused.append(seq.sub(end, e.rcv_nxt))
        rcv_nxt = e.rcv_nxt
    return to_the_edge, refused


def test_data_up_to_the_furthest_edge_we_offered_is_taken(veth: Lab) -> None:
    """W-07: data the kernel sends up to the furthest right edge we ever offered is
    taken, even after a later window was rounded down."""
    config = TcpConfig(msl=MSL, receive_buffer=SMALL_BUFFER)
    data = os.urandom(1 << 20)
    with recorded_stack(veth, config) as (stack, recorder):
        s, peer = connect(stack, veth)
        conn = s.connection
        assert conn is not None
        with s, peer:
            sending = in_thread(_send_and_shut, peer, data)
            got = bytearray()
            wait_until(lambda: conn.advertised_window == 0, "our window to close")
            stack.add_hook(Hook("out", DELAY, where=_is_pure_ack, times=None, delay=ACK_HELD))
            for _ in range(REFILLS):
                # Reading all of it offers the whole buffer again; the kernel fills it
                # with several segments, while our ACKs of the first ones are held.
                got += s.recv(SMALL_BUFFER)
                wait_until(lambda: conn.advertised_window == 0, "the kernel to refill it")
            got += recv_all(s)
            sending.result(TIMEOUT)
        stack.sync()
        shift = conn.rcv_wscale
    assert sha256(bytes(got)) == sha256(data)
    to_the_edge, refused = _refused(_segments(recorder.events), shift)
    assert to_the_edge >= REFILLS
    _shortfall(not refused, f"bytes refused within the furthest edge offered: {refused}")


# --------------------------------------------------------- D-11: when we ACK

STREAM = 1 << 20


def test_we_ack_at_least_every_second_full_sized_segment(veth: Lab) -> None:
    """D-11: while the kernel streams, never a third full-sized segment before our
    ACK of the two before it."""
    _segments_on_the_wire(veth)
    data = os.urandom(STREAM)
    with recorded_stack(veth) as (stack, recorder):
        s, peer = connect(stack, veth)
        conn = s.connection
        assert conn is not None
        full = _kernel_info(peer).snd_mss
        with s, peer:
            sending = in_thread(peer.sendall, data)
            got = recv_exactly(s, STREAM)
            sending.result(TIMEOUT)
        stack.sync()
        quick = conn.config.quick_acks
    assert sha256(got) == sha256(data)
    segments = _segments(recorder.events)
    data_in = _data_in(segments)
    assert sum(len(e.segment.payload) == full for e in data_in) > STREAM // full // 2
    # Quick-ACK mode ACKs the first segments one by one; after it, count the
    # full-sized segments each of our ACKs covered.
    after_quick = segments[segments.index(data_in[quick]) :]
    runs = []
    run = 0
    for e in after_quick:
        if e.direction == "in" and len(e.segment.payload) == full:
            run += 1
        elif e.direction == "out" and e.segment.has_ack:
            runs.append(run)
            run = 0
    assert len(runs) >= STREAM // full // 8
    late = sum(r > 2 for r in runs)
    _shortfall(not late, f"{late} of {len(runs)} ACKs came after more than two full segments")


def _acks(event: SegmentEvent, end: int) -> bool:
    return event.direction == "out" and event.segment.has_ack and event.segment.ack == end


def test_a_lone_segment_is_acked_after_the_delayed_ack_timeout(veth: Lab) -> None:
    """D-11: past quick-ACK mode, a lone segment is ACKed by the delayed-ACK timer,
    no sooner than its timeout."""
    _segments_on_the_wire(veth)
    burst = os.urandom(64 << 10)
    with recorded_stack(veth) as (stack, recorder):
        s, peer = connect(stack, veth)
        conn = s.connection
        assert conn is not None
        with s, peer:
            peer.sendall(burst)
            assert recv_exactly(s, len(burst)) == burst
            wait_until(lambda: _kernel_info(peer).unacked == 0, "our ACK of the whole burst")
            lone_from = len(recorder.events)
            peer.sendall(b"lone")

            def acked() -> bool:
                # (A window update for the burst's read may go first: not this ACK.)
                later = _segments(recorder.events[lone_from:])
                data = _data_in(later)
                return bool(data) and any(_acks(e, _end(data[0])) for e in later)

            wait_until(acked, "our ACK of the lone segment")
            stack.sync()
            assert s.recv(16) == b"lone"
        quick = conn.config.quick_acks
        delay = conn.config.delayed_ack
    events = list(recorder.events)
    segments = _segments(events)
    (lone,) = _data_in(_segments(events[lone_from:]))
    # The burst alone took more segments than quick-ACK mode covers.
    assert len(_data_in(segments)) - 1 > quick
    ack = next(e for e in _segments(events[lone_from:]) if _acks(e, _end(lone)))
    assert ack.segment.flags == Flags.ACK and not ack.segment.payload
    assert ack.segment.ack == _end(lone)
    assert ack.time - lone.time >= delay
    fired = [
        e
        for e in events[lone_from:]
        if isinstance(e, TimerEvent) and e.timer == "delayed_ack" and e.action == "fired"
    ]
    assert fired and fired[0].time == ack.time


# -------------------------------------------------- D-12: ACKs ride on data

EXCHANGES = 24


def test_responses_carry_the_ack_of_their_request(veth: Lab) -> None:
    """D-12: once quick-ACK mode is over, a response written within the delayed-ACK
    time carries the ACK of its request, with no pure ACK before it.

    In quick-ACK mode (the first quick_acks data segments, as Linux at the start of
    a connection) each request is ACKed at once instead, so that a peer in slow
    start is not held back. Linux leaves that mode early once it sees request and
    response alternate (its pingpong mode); we do not, and that is right for us too:
    it costs only those first pure ACKs."""
    with recorded_stack(veth) as (stack, recorder):
        s, peer = connect(stack, veth)
        conn = s.connection
        assert conn is not None
        with s, peer:
            for i in range(EXCHANGES):
                peer.sendall(b"request %02d" % i)
                assert s.recv(64) == b"request %02d" % i
                s.sendall(b"response %02d" % i)
                assert peer.recv(64) == b"response %02d" % i
        stack.sync()
        quick, delay = conn.config.quick_acks, conn.config.delayed_ack
    assert EXCHANGES > quick
    segments = _segments(recorder.events)
    requests = _data_in(segments)
    assert len(requests) == EXCHANGES
    prompt = 0
    for n, request in enumerate(requests):
        start = segments.index(request) + 1
        response = next(e for e in segments[start:] if e.direction == "out" and e.segment.payload)
        between = [
            e
            for e in segments[start : segments.index(response)]
            if e.direction == "out" and e.segment.has_ack
        ]
        assert response.segment.ack == _end(request), response
        if n < quick:
            # Quick-ACK mode: the ACK goes out while the request is taken in.
            assert [e.time for e in between] == [request.time], (n, between)
            assert between[0].segment.ack == _end(request)
        elif response.time - request.time < delay:
            assert not between, (n, between)
            prompt += 1
        else:
            # Written too late (a loaded machine): the delayed ACK went first.
            assert all(e.time - request.time >= delay for e in between), (n, between)
    assert prompt >= 1
