"""Trace events as subscribers see them: segments, states, timers, retransmissions
and other frames, and the helpers that log, serialise and record them.

The test plays the peer over the in-memory link (our ISN is fixed at 1000, the
peer's is 7000), so relative numbers, causes and deadlines can be pinned exactly.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tcpstack import State, TcpConfig, wire
from tcpstack.core.segment import Flags, Options, Segment
from tcpstack.stack import Stack
from tcpstack.trace import (
    FrameEvent,
    JsonLines,
    Recorder,
    RetransmitEvent,
    SegmentEvent,
    StateEvent,
    TimerEvent,
    TraceEvent,
    log_to,
)
from tests.unit.peer import (
    DEFAULT_CONFIG,
    OUR_IP,
    OUR_ISN,
    PEER_IP,
    PEER_ISN,
    PEER_MAC,
    PEER_PORT,
    TIMEOUT,
    MakeRecordedPair,
    Peer,
    open_to_peer,
    pool,
)

DEFAULT = DEFAULT_CONFIG  # make_recorded_pair's, unless told
# For the tests that want retransmissions, soon.
FAST = TcpConfig(msl=0.2, rto_initial=0.05, rto_min=0.05)

E = TypeVar("E", bound=TraceEvent)


def from_peer(
    port: int, seq: int, ack: int, flags: Flags = Flags.ACK, payload: bytes = b""
) -> Segment:
    return Segment(PEER_PORT, port, seq, ack, flags, 65535, payload=payload)


def tcp_where(peer: Peer, want: Callable[[Segment], object], what: str) -> Segment:
    """The next segment we sent that `want` accepts (earlier ones are passed over)."""
    packet = peer.receive(lambda p: isinstance(p, wire.TcpPacket) and bool(want(p.segment)), what)
    assert isinstance(packet, wire.TcpPacket)
    return packet.segment


def data_at(start: int) -> Callable[[Segment], bool]:
    return lambda s: s.seq == start and bool(s.payload)


def of(kind: type[E], events: list[TraceEvent]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


# ----------------------------------------------------------------- segments


def test_handshake_numbers_count_from_each_sides_isn(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair()
    open_to_peer(stack, peer)
    tcp_where(peer, lambda s: s.flags == Flags.ACK, "our handshake ACK")
    stack.sync()
    syn, syn_ack, ack = recorder.segments[:3]
    assert [(e.direction, e.segment.flags) for e in (syn, syn_ack, ack)] == [
        ("out", Flags.SYN),
        ("in", Flags.SYN | Flags.ACK),
        ("out", Flags.ACK),
    ]
    # Absolute numbers stay in the segment; relative ones start at 0 on each SYN.
    assert (syn.segment.seq, syn.iss) == (OUR_ISN, OUR_ISN)
    assert (syn.relative_seq, syn.relative_ack) == (0, None)
    assert (syn_ack.segment.seq, syn_ack.irs) == (PEER_ISN, PEER_ISN)
    assert (syn_ack.relative_seq, syn_ack.relative_ack) == (0, 1)
    assert (ack.relative_seq, ack.relative_ack) == (1, 1)


def test_relative_numbers_count_payload_bytes(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair()
    sock, syn, _ = open_to_peer(stack, peer)
    port = syn.src_port
    sock.sendall(b"hello")
    tcp_where(peer, lambda s: s.payload == b"hello", "our data")
    peer.send_tcp(from_peer(port, PEER_ISN + 1, OUR_ISN + 6, Flags.ACK | Flags.PSH, b"hi"))
    assert sock.recv(10) == b"hi"
    tcp_where(peer, lambda s: s.ack == PEER_ISN + 3, "our ACK of the peer's data")
    stack.sync()
    ours = next(e for e in recorder.segments if e.segment.payload == b"hello")
    theirs = next(e for e in recorder.segments if e.segment.payload == b"hi")
    assert (ours.relative_seq, ours.relative_ack) == (1, 1)
    assert (theirs.relative_seq, theirs.relative_ack) == (1, 6)
    acked = next(e for e in recorder.segments if e.direction == "out" and e.relative_ack == 3)
    assert acked.relative_seq == 6  # after our five bytes


def test_relative_numbers_wrap_around_the_sequence_space() -> None:
    # An ISN just below 2**32: the segment's number has wrapped, its offset has not.
    seg = Segment(40000, 80, 0x10, 0x20, Flags.ACK)
    local, remote = (OUR_IP, 40000), (PEER_IP, 80)
    event = SegmentEvent(
        0.0, "out", local, remote, seg, State.ESTABLISHED, 0xFFFF_FFF0, 0xFFFF_FFFF
    )
    assert (event.relative_seq, event.relative_ack) == (0x20, 0x21)
    incoming = SegmentEvent(
        0.0, "in", local, remote, seg, State.ESTABLISHED, 0xFFFF_FFFF, 0xFFFF_FFF0
    )
    assert (incoming.relative_seq, incoming.relative_ack) == (0x20, 0x21)


def test_snapshot_is_taken_after_the_segment(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair()
    sock, _, _ = open_to_peer(stack, peer)
    stack.sync()
    syn, syn_ack = recorder.segments[:2]
    # Our SYN: one sequence number used, nothing known of the peer, no RTT sample yet.
    assert (syn.state, syn.snd_una, syn.snd_nxt) == (State.SYN_SENT, OUR_ISN, OUR_ISN + 1)
    assert syn.srtt is None and syn.rto == DEFAULT.rto_initial
    # The SYN-ACK, processed: everything acknowledged, the peer's window learnt, and
    # the handshake timed (the SYN was sent once, so Karn's rule allows the sample).
    assert syn_ack.state is State.ESTABLISHED
    assert (syn_ack.snd_una, syn_ack.snd_nxt, syn_ack.rcv_nxt) == (1001, 1001, 7001)
    assert (syn_ack.snd_wnd, syn_ack.rcv_wnd) == (65535, 65535)
    assert syn_ack.cwnd == 10 * 1400  # RFC 6928's IW10 of the peer's MSS
    assert syn_ack.srtt is not None and 0 < syn_ack.srtt < TIMEOUT
    assert syn_ack.rto >= DEFAULT.rto_min


def test_snapshot_follows_data_in_flight_and_its_ack(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair()
    sock, syn, _ = open_to_peer(stack, peer)
    sock.sendall(b"hello")
    tcp_where(peer, lambda s: s.payload == b"hello", "our data")
    peer.send_tcp(from_peer(syn.src_port, PEER_ISN + 1, OUR_ISN + 6))
    peer.ping(1)  # the ACK has been processed
    stack.sync()
    sent = next(e for e in recorder.segments if e.segment.payload == b"hello")
    assert (sent.snd_una, sent.snd_nxt) == (1001, 1006)
    [acked] = [e for e in recorder.segments if e.direction == "in" and e.relative_ack == 6]
    assert (acked.snd_una, acked.snd_nxt) == (1006, 1006)


def test_segment_frame_is_the_ethernet_frame_on_the_wire(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, recorder = make_recorded_pair()
    sock = stack.socket()
    sock.settimeout(TIMEOUT)
    connecting = pool.submit(sock.connect, (PEER_IP, PEER_PORT))
    peer.answer_arp()
    syn = peer.tcp()
    frame = wire.encode_tcp(
        PEER_MAC,
        peer.our_mac,
        PEER_IP,
        OUR_IP,
        Segment(80, syn.src_port, PEER_ISN, 1001, Flags.SYN | Flags.ACK, 65535, Options(mss=1400)),
    )
    peer.send(frame)
    connecting.result(TIMEOUT)
    stack.sync()
    ours, theirs = recorder.segments[:2]
    # Ours: the frame as sent, to the peer's MAC (the SYN waited for ARP to learn it).
    decoded = wire.decode_frame(ours.frame)
    assert isinstance(decoded, wire.TcpPacket)
    assert decoded.segment == syn == ours.segment
    assert (decoded.src_mac, decoded.dst_mac) == (peer.our_mac, PEER_MAC)
    # Theirs: byte for byte what arrived.
    assert theirs.frame == frame


def test_segment_to_dict_is_json_with_both_numberings(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair()
    _, syn, _ = open_to_peer(stack, peer)
    stack.sync()
    ours, theirs = recorder.segments[:2]
    data = json.loads(json.dumps(theirs.to_dict()))
    assert data == {
        "event": "segment",
        "time": theirs.time,
        "direction": "in",
        "local": [OUR_IP, syn.src_port],
        "remote": [PEER_IP, PEER_PORT],
        "flags": "S.",
        "seq": PEER_ISN,
        "ack": OUR_ISN + 1,
        "relative_seq": 0,
        "relative_ack": 1,
        "len": 0,
        "window": 65535,
        "options": "mss 1400",
        "state": "ESTABLISHED",
        "snd_una": 1001,
        "snd_nxt": 1001,
        "rcv_nxt": 7001,
        "snd_wnd": 65535,
        "rcv_wnd": 65535,
        "cwnd": 14000,
        "srtt": theirs.srtt,
        "rto": theirs.rto,
        "note": "",
    }
    # A segment without ACK has no ack at all, not the raw zero in its header.
    assert (ours.to_dict()["ack"], ours.to_dict()["relative_ack"]) == (None, None)


def test_segment_str_reads_like_tcpdump_relative(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair()
    open_to_peer(stack, peer)
    stack.sync()
    ours, theirs = recorder.segments[:2]
    assert str(ours) == "> S seq 0 len 0 win 65535 [SYN_SENT]"
    assert str(theirs) == "< S. seq 0 ack 1 len 0 win 65535 [ESTABLISHED]"


def test_segment_to_no_connection_and_our_reset_are_traced(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, recorder = make_recorded_pair()
    peer.send_tcp(Segment(5555, 81, 4242, 0, Flags.SYN, 64240, Options(mss=1460)))
    peer.answer_arp()
    assert peer.tcp().flags == Flags.RST | Flags.ACK
    stack.sync()
    syn, rst = recorder.segments
    assert (syn.direction, syn.state, syn.note) == ("in", State.CLOSED, "to no connection")
    assert syn.relative_seq == 0  # numbered from the SYN, as a connection would
    assert (rst.direction, rst.state) == ("out", State.CLOSED)
    assert (rst.relative_seq, rst.relative_ack) == (0, 1)
    assert rst.remote == (PEER_IP, 5555) and rst.local == (OUR_IP, 81)


# ------------------------------------------------------------------- states


def test_state_events_name_the_call_or_segment_that_caused_them(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, recorder = make_recorded_pair()
    sock, syn, syn_ack = open_to_peer(stack, peer)
    port = syn.src_port
    sock.close()
    fin = tcp_where(peer, lambda s: s.fin, "our FIN")
    ack_of_fin = from_peer(port, PEER_ISN + 1, fin.seq + 1)
    peer.send_tcp(ack_of_fin)
    their_fin = from_peer(port, PEER_ISN + 1, fin.seq + 1, Flags.FIN | Flags.ACK)
    peer.send_tcp(their_fin)
    tcp_where(peer, lambda s: s.ack == PEER_ISN + 2, "our ACK of the peer's FIN")
    sock.wait_for_state(State.CLOSED, timeout=TIMEOUT)  # after TIME-WAIT's 2*MSL
    stack.sync()
    assert [(e.old, e.new, e.cause) for e in recorder.states] == [
        (State.CLOSED, State.SYN_SENT, "connect()"),
        (State.SYN_SENT, State.ESTABLISHED, syn_ack.describe()),
        (State.ESTABLISHED, State.FIN_WAIT_1, "close()"),
        (State.FIN_WAIT_1, State.FIN_WAIT_2, ack_of_fin.describe()),
        (State.FIN_WAIT_2, State.TIME_WAIT, their_fin.describe()),
        (State.TIME_WAIT, State.CLOSED, "2MSL timer"),
    ]
    assert recorder.states[1].cause == "S. 7000:7000(0) ack 1001 win 65535 <mss 1400>"


def test_passive_open_states_are_caused_by_the_peers_segments(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, recorder = make_recorded_pair()
    listener = stack.socket()
    listener.bind(("", 80))
    listener.listen()
    listener.settimeout(TIMEOUT)
    syn = Segment(5555, 80, 4242, 0, Flags.SYN, 64240, Options(mss=1460))
    peer.send_tcp(syn)
    peer.answer_arp()
    syn_ack = peer.tcp()
    ack = Segment(5555, 80, 4243, syn_ack.seq + 1, Flags.ACK, 64240)
    peer.send_tcp(ack)
    listener.accept()
    stack.sync()
    assert [(e.old, e.new, e.cause) for e in recorder.states][-2:] == [
        (State.LISTEN, State.SYN_RECEIVED, syn.describe()),
        (State.SYN_RECEIVED, State.ESTABLISHED, ack.describe()),
    ]


def test_reset_state_event_names_the_rst(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair()
    sock, syn, _ = open_to_peer(stack, peer)
    rst = Segment(PEER_PORT, syn.src_port, PEER_ISN + 1, 0, Flags.RST, 0)
    peer.send_tcp(rst)
    sock.wait_for_state(State.CLOSED, timeout=TIMEOUT)
    stack.sync()
    last = recorder.states[-1]
    assert (last.old, last.new, last.cause) == (
        State.ESTABLISHED,
        State.CLOSED,
        "R 7001:7001(0) win 0",
    )


def test_state_event_str_and_dict(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair()
    _, syn, _ = open_to_peer(stack, peer)
    stack.sync()
    first = recorder.states[0]
    assert str(first) == "CLOSED -> SYN_SENT (connect())"
    assert json.loads(json.dumps(first.to_dict())) == {
        "event": "state",
        "time": first.time,
        "local": [OUR_IP, syn.src_port],
        "remote": [PEER_IP, PEER_PORT],
        "old": "CLOSED",
        "new": "SYN_SENT",
        "cause": "connect()",
    }


# ------------------------------------------------------------------- timers


def test_retransmit_timer_is_armed_for_the_initial_rto_and_cancelled_by_the_syn_ack(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, recorder = make_recorded_pair()
    open_to_peer(stack, peer)
    stack.sync()
    timers = [(e.timer, e.action) for e in of(TimerEvent, recorder.events)]
    assert timers[:2] == [("retransmit", "armed"), ("retransmit", "cancelled")]
    armed = of(TimerEvent, recorder.events)[0]
    assert armed.deadline is not None
    assert armed.deadline - armed.time == pytest.approx(DEFAULT.rto_initial)
    assert str(armed) == "timer retransmit armed for +1000.0 ms"


def test_delayed_ack_timer_is_armed_and_fires(make_recorded_pair: MakeRecordedPair) -> None:
    # No quick ACKs: the first segment of data waits for the delayed-ACK timer.
    config = TcpConfig(msl=0.2, quick_acks=0, delayed_ack=0.04)
    stack, peer, recorder = make_recorded_pair(config)
    _, syn, _ = open_to_peer(stack, peer)
    peer.send_tcp(from_peer(syn.src_port, PEER_ISN + 1, OUR_ISN + 1, Flags.ACK | Flags.PSH, b"x"))
    # Not read: a read could send a window update, which would cancel the timer.
    tcp_where(peer, lambda s: s.ack == PEER_ISN + 2, "our delayed ACK")
    stack.sync()
    delack = [e for e in of(TimerEvent, recorder.events) if e.timer == "delayed_ack"]
    assert [e.action for e in delack] == ["armed", "fired"]
    armed, fired = delack
    assert armed.deadline is not None
    assert armed.deadline - armed.time == pytest.approx(0.04)
    assert fired.deadline == armed.deadline and fired.time >= armed.deadline
    ack = next(e for e in recorder.segments if e.direction == "out" and e.relative_ack == 2)
    assert ack.time >= armed.deadline
    assert str(fired) == "timer delayed_ack fired"


def test_time_wait_timer_is_armed_for_twice_the_msl(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair()
    sock, syn, _ = open_to_peer(stack, peer)
    sock.close()
    fin = tcp_where(peer, lambda s: s.fin, "our FIN")
    peer.send_tcp(from_peer(syn.src_port, PEER_ISN + 1, fin.seq + 1, Flags.FIN | Flags.ACK))
    sock.wait_for_state(State.CLOSED, timeout=TIMEOUT)
    stack.sync()
    time_wait = [e for e in of(TimerEvent, recorder.events) if e.timer == "time_wait"]
    assert [e.action for e in time_wait] == ["armed", "fired"]
    armed, fired = time_wait
    assert armed.deadline is not None
    assert armed.deadline - armed.time == pytest.approx(2 * DEFAULT.msl)
    assert str(armed) == "timer time_wait armed for +400.0 ms"
    # The 2MSL timer is what closed the connection, no earlier than its deadline.
    closed = recorder.states[-1]
    assert (closed.new, closed.cause) == (State.CLOSED, "2MSL timer")
    assert closed.time == fired.time >= armed.deadline
    assert recorder.events.index(fired) < recorder.events.index(closed)


def test_timer_event_to_dict(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair()
    _, syn, _ = open_to_peer(stack, peer)
    stack.sync()
    cancelled = of(TimerEvent, recorder.events)[1]
    assert json.loads(json.dumps(cancelled.to_dict())) == {
        "event": "timer",
        "time": cancelled.time,
        "local": [OUR_IP, syn.src_port],
        "remote": [PEER_IP, PEER_PORT],
        "timer": "retransmit",
        "action": "cancelled",
        "deadline": cancelled.deadline,
    }
    assert str(cancelled) == "timer retransmit cancelled"


# ---------------------------------------------------------- retransmissions


def test_unanswered_syn_is_retransmitted_with_reason_syn(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, recorder = make_recorded_pair(FAST)
    sock = stack.socket()
    sock.settimeout(TIMEOUT)
    connecting = pool.submit(sock.connect, (PEER_IP, PEER_PORT))
    peer.answer_arp()
    first, again = peer.tcp(), peer.tcp()  # the first goes unanswered
    assert (first.flags, first.seq) == (again.flags, again.seq) == (Flags.SYN, OUR_ISN)
    peer.send_tcp(Segment(80, first.src_port, PEER_ISN, 1001, Flags.SYN | Flags.ACK, 65535))
    connecting.result(TIMEOUT)
    stack.sync()
    event = of(RetransmitEvent, recorder.events)[0]
    assert (event.seq, event.length, event.reason) == (OUR_ISN, 0, "syn")
    assert str(event) == "retransmit 1000 len 0 (syn)"
    fired = next(e for e in of(TimerEvent, recorder.events) if e.action == "fired")
    assert fired.timer == "retransmit" and fired.deadline is not None
    assert event.time >= fired.deadline


def data_retransmits(recorder: Recorder) -> list[RetransmitEvent]:
    """Retransmissions after the handshake (with FAST, a slow test may see the SYN's)."""
    return [e for e in of(RetransmitEvent, recorder.events) if e.reason != "syn"]


def test_unacknowledged_data_is_retransmitted_on_timeout(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, recorder = make_recorded_pair(FAST)
    sock, syn, _ = open_to_peer(stack, peer)  # no SACK: no tail loss probe first
    sock.sendall(b"hello")
    tcp_where(peer, lambda s: s.payload == b"hello", "our data")
    tcp_where(peer, lambda s: s.payload == b"hello", "our data again")
    stack.sync()
    event = data_retransmits(recorder)[0]
    assert (event.seq, event.length, event.reason) == (OUR_ISN + 1, 5, "timeout")
    assert json.loads(json.dumps(event.to_dict())) == {
        "event": "retransmit",
        "time": event.time,
        "local": [OUR_IP, syn.src_port],
        "remote": [PEER_IP, PEER_PORT],
        "seq": OUR_ISN + 1,
        "len": 5,
        "reason": "timeout",
    }


def test_three_duplicate_acks_trigger_a_fast_retransmit(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    # The RTO of 200 ms cannot resend the head first; a tail loss probe may come if
    # the test is slow (it resends the tail), and is not what this is about.
    stack, peer, recorder = make_recorded_pair()
    sock, syn, _ = open_to_peer(stack, peer, options=Options(mss=1000, sack_permitted=True))
    port = syn.src_port
    sock.sendall(b"x" * 5000)
    for n in range(5):
        tcp_where(peer, data_at(1001 + 1000 * n), f"segment {n}")
    # The first segment is lost; the next three arrive, each SACKed.
    for n in range(1, 4):
        sack = Options(sack_blocks=((2001, 2001 + 1000 * n),))
        peer.send_tcp(Segment(80, port, PEER_ISN + 1, 1001, Flags.ACK, 65535, sack))
    tcp_where(peer, data_at(1001), "the fast retransmission")
    stack.sync()
    [event] = [e for e in of(RetransmitEvent, recorder.events) if e.seq == 1001]
    assert (event.length, event.reason) == (1000, "fast")


def test_tail_loss_probe_resends_the_last_segment(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair()
    sock, _, _ = open_to_peer(stack, peer, options=Options(mss=1000, sack_permitted=True))
    sock.sendall(b"x" * 2000)  # two segments: the probe is due in 10 ms, the RTO in 200
    for start in (1001, 2001, 2001):
        tcp_where(peer, data_at(start), f"data at {start}")
    stack.sync()
    event = of(RetransmitEvent, recorder.events)[0]
    assert (event.seq, event.length, event.reason) == (2001, 1000, "tail_probe")


def test_zero_window_probe_is_resent_with_reason_probe(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, recorder = make_recorded_pair(FAST)
    sock, _, _ = open_to_peer(stack, peer, options=Options(mss=1000), window=0)
    sock.sendall(b"hello")
    # The persist timer sends one byte into the closed window, then sends it again.
    for _ in range(2):
        tcp_where(peer, lambda s: s.payload == b"h", "a window probe")
    stack.sync()
    event = data_retransmits(recorder)[0]
    assert (event.seq, event.length, event.reason) == (OUR_ISN + 1, 1, "probe")


# ------------------------------------------------------------- other frames


def test_arp_frames_are_traced_with_notes(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair()
    open_to_peer(stack, peer)
    stack.sync()
    frames = of(FrameEvent, recorder.events)
    assert [(f.direction, f.note) for f in frames] == [("out", "arp request"), ("in", "arp")]
    request = wire.decode_frame(frames[0].frame)
    assert isinstance(request, wire.ArpPacket) and request.op == 1
    assert request.target_ip == PEER_IP
    reply = wire.decode_frame(frames[1].frame)
    assert isinstance(reply, wire.ArpPacket) and reply.op == 2


def test_icmp_echo_and_reply_are_traced(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair()
    reply = peer.ping(3)
    stack.sync()
    frames = of(FrameEvent, recorder.events)
    assert [(f.direction, f.note) for f in frames] == [("in", "icmp"), ("out", "icmp echo reply")]
    decoded = wire.decode_frame(frames[1].frame)
    assert decoded == reply


def test_frame_with_a_bad_checksum_is_traced_as_dropped(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, recorder = make_recorded_pair()
    good = wire.encode_tcp(PEER_MAC, peer.our_mac, PEER_IP, OUR_IP, Segment(1, 80, 1, 0, Flags.SYN))
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    peer.send(bytes(bad))
    peer.ping(1)  # processed after the bad frame
    stack.sync()
    dropped = of(FrameEvent, recorder.events)[0]
    assert (dropped.direction, dropped.note, dropped.frame) == (
        "in",
        "dropped: tcp_bad_checksum",
        bytes(bad),
    )
    assert str(dropped) == f"frame in {len(bad)} bytes dropped: tcp_bad_checksum"
    assert dropped.to_dict() == {
        "event": "frame",
        "time": dropped.time,
        "direction": "in",
        "len": len(bad),
        "note": "dropped: tcp_bad_checksum",
    }
    assert not recorder.segments  # it never reached TCP


# -------------------------------------------------------------- subscribers


def test_unsubscribed_subscriber_gets_nothing_more(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair()
    other = stack.subscribe(Recorder())
    assert isinstance(other, Recorder)
    peer.ping(1)
    stack.sync()
    assert len(recorder.events) == len(other.events) == 2
    stack.unsubscribe(recorder)
    stack.unsubscribe(recorder)  # a second time is harmless
    peer.ping(2)
    stack.sync()
    assert len(recorder.events) == 2
    assert len(other.events) == 4


def test_subscriber_may_read_the_stack_from_its_callback(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    # Subscribers run on the engine's thread with the stack locked; the lock is
    # reentrant so that this does not deadlock.
    stack, peer, _ = make_recorded_pair()
    seen: list[int] = []
    stack.subscribe(lambda event: seen.append(stack.stats().get("frames_out", 0)))
    peer.ping(1)
    stack.sync()
    assert seen == [0, 1]  # at the request nothing was sent; at the reply, the reply was


def test_recorder_sorts_events_by_kind() -> None:
    recorder = Recorder()
    seg = Segment(40000, 80, 1000, 0, Flags.SYN)
    events: list[TraceEvent] = [
        StateEvent(0.0, (OUR_IP, 40000), (PEER_IP, 80), State.CLOSED, State.SYN_SENT, "connect()"),
        TimerEvent(0.0, (OUR_IP, 40000), (PEER_IP, 80), "retransmit", "armed", 1.0),
        SegmentEvent(0.0, "out", (OUR_IP, 40000), (PEER_IP, 80), seg, State.SYN_SENT, 1000, 0),
        FrameEvent(0.0, "out", b"\0" * 42, "arp request"),
        RetransmitEvent(1.0, (OUR_IP, 40000), (PEER_IP, 80), 1000, 0, "syn"),
        StateEvent(2.0, (OUR_IP, 40000), (PEER_IP, 80), State.SYN_SENT, State.CLOSED, "abort()"),
    ]
    for event in events:
        recorder(event)
    assert recorder.events == events
    assert recorder.segments == [events[2]]
    assert recorder.states == [events[0], events[5]]


# ------------------------------------------------------------------ logging


def test_log_to_writes_each_event_to_tcpstack_trace(
    make_recorded_pair: MakeRecordedPair, caplog: pytest.LogCaptureFixture
) -> None:
    stack, peer, _ = make_recorded_pair()
    stack.subscribe(log_to())
    with caplog.at_level(logging.DEBUG, logger="tcpstack.trace"):
        _, syn, _ = open_to_peer(stack, peer)
        stack.sync()
    lines = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    where = f"{syn.src_port}<>{PEER_IP}:{PEER_PORT}"
    # Connection events say which connection; frames have none to name.
    for expected in (
        f"{where} CLOSED -> SYN_SENT (connect())",
        f"{where} > S seq 0 len 0 win 65535 [SYN_SENT]",
        f"{where} < S. seq 0 ack 1 len 0 win 65535 [ESTABLISHED]",
        f"{where} timer retransmit armed for +1000.0 ms",
        "frame out 42 bytes arp request",
    ):
        assert ("tcpstack.trace", logging.DEBUG, expected) in lines


def test_log_to_uses_the_given_logger_and_level(
    make_recorded_pair: MakeRecordedPair, caplog: pytest.LogCaptureFixture
) -> None:
    stack, peer, _ = make_recorded_pair()
    stack.subscribe(log_to(logging.getLogger("test.trace"), logging.WARNING))
    with caplog.at_level(logging.WARNING, logger="test.trace"):
        peer.ping(1)
        stack.sync()
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("test.trace", logging.WARNING, "frame in 55 bytes icmp"),
        ("test.trace", logging.WARNING, "frame out 55 bytes icmp echo reply"),
    ]


def test_log_to_is_silent_below_the_loggers_level(
    make_recorded_pair: MakeRecordedPair, caplog: pytest.LogCaptureFixture
) -> None:
    stack, peer, _ = make_recorded_pair()
    stack.subscribe(log_to())  # DEBUG, into a logger that only takes INFO
    with caplog.at_level(logging.INFO, logger="tcpstack.trace"):
        peer.ping(1)
        stack.sync()
    assert [r for r in caplog.records if r.name == "tcpstack.trace"] == []


# --------------------------------------------------------------- JSON lines


def converse(stack: Stack, peer: Peer) -> None:
    """A connection, a ping and a close: every kind of event but retransmissions."""
    sock, syn, _ = open_to_peer(stack, peer)
    peer.ping(1)
    sock.close()
    fin = tcp_where(peer, lambda s: s.fin, "our FIN")
    peer.send_tcp(from_peer(syn.src_port, PEER_ISN + 1, fin.seq + 1, Flags.FIN | Flags.ACK))
    tcp_where(peer, lambda s: s.ack == PEER_ISN + 2, "our ACK of the peer's FIN")
    stack.sync()


def test_json_lines_to_a_path_writes_one_object_per_event(
    make_recorded_pair: MakeRecordedPair, tmp_path: Path
) -> None:
    stack, peer, recorder = make_recorded_pair()
    path = tmp_path / "trace.jsonl"
    writer = JsonLines(str(path))
    stack.subscribe(writer)
    converse(stack, peer)
    stack.unsubscribe(writer)
    writer.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert all("event" in line for line in lines)
    assert {line["event"] for line in lines} == {"segment", "state", "timer", "frame"}
    # The recorder was subscribed first and saw the same events in the same order.
    assert lines == [json.loads(json.dumps(e.to_dict())) for e in recorder.events]
    with pytest.raises(ValueError):  # close() closed the file it opened
        writer(recorder.events[0])


def test_json_lines_to_a_file_flushes_but_leaves_it_open(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, _ = make_recorded_pair()
    buffer = io.StringIO()
    writer = JsonLines(buffer)
    stack.subscribe(writer)
    peer.ping(1)
    stack.sync()
    writer.close()
    assert not buffer.closed  # the caller's file stays the caller's
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [(line["event"], line["direction"], line["note"]) for line in lines] == [
        ("frame", "in", "icmp"),
        ("frame", "out", "icmp echo reply"),
    ]
