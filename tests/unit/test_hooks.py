"""Segment hooks: their validation and predicates, and what each action does to a
live connection over the in-memory link, as the peer and the trace see it.

Our ISN is fixed at 1000 and the peer's is 7000. Times are only bounded below:
a loaded machine may be late, never early.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from tcpstack import State, TcpConfig, wire
from tcpstack.core.connection import TcpConnection
from tcpstack.core.segment import Flags, Segment, parse_flags
from tcpstack.hooks import (
    DELAY,
    DROP,
    DUPLICATE,
    REWRITE,
    Hook,
    HookContext,
    all_of,
    any_of,
    carries_data,
    fin_received,
    from_first,
    has_flags,
    in_state,
    is_flags,
    local_port,
)
from tcpstack.stack import Socket, Stack
from tcpstack.trace import FrameEvent, Recorder, RetransmitEvent, SegmentEvent
from tests.unit.helpers import FACTORIES
from tests.unit.peer import (
    OUR_ISN,
    PEER_IP,
    PEER_ISN,
    PEER_PORT,
    TIMEOUT,
    MakeRecordedPair,
    Peer,
    open_to_peer,
    pool,
)

# make_recorded_pair's default config has RTOs of a second (SYN) and 200 ms, so a
# busy machine does not see retransmissions a test did not ask for. The tests that
# want one sooner ask for a shorter RTO.
QUICK_SYN = TcpConfig(msl=0.2, rto_initial=0.1, rto_min=0.1)


def connect(stack: Stack, peer: Peer) -> tuple[Socket, int]:
    """Our socket connected to the peer's port 80, and its local port. Our handshake
    ACK is left for the caller to read or pass over."""
    sock, syn, _ = open_to_peer(stack, peer)
    return sock, syn.src_port


def from_peer(
    port: int, seq: int, ack: int = OUR_ISN + 1, flags: Flags = Flags.ACK, payload: bytes = b""
) -> Segment:
    return Segment(PEER_PORT, port, seq, ack, flags, 65535, payload=payload)


def data_from_peer(port: int, payload: bytes, seq: int = PEER_ISN + 1) -> Segment:
    return from_peer(port, seq, flags=Flags.ACK | Flags.PSH, payload=payload)


def tcp_where(peer: Peer, want: Callable[[Segment], object], what: str) -> Segment:
    """The next segment we sent that `want` accepts (earlier ones are passed over)."""
    packet = peer.receive(lambda p: isinstance(p, wire.TcpPacket) and bool(want(p.segment)), what)
    assert isinstance(packet, wire.TcpPacket)
    return packet.segment


def noted(recorder: Recorder, note: str) -> list[SegmentEvent]:
    return [e for e in recorder.segments if e.note == note]


# --------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"direction": "both", "action": DROP}, "direction must be 'in' or 'out'"),
        ({"direction": "in", "action": "explode"}, "unknown hook action 'explode'"),
        ({"direction": "out", "action": REWRITE}, "a rewrite hook needs rewrite="),
    ],
)
def test_invalid_hooks_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Hook(**kwargs)


def test_action_constants_are_the_documented_names() -> None:
    assert (DROP, DELAY, DUPLICATE, REWRITE) == ("drop", "delay", "duplicate", "rewrite")
    assert Hook("in", "drop").action == DROP  # the plain strings are accepted too


def test_a_hook_is_spent_after_times_matches() -> None:
    once = Hook("in", DROP)
    assert once.times == 1 and not once.spent
    once.fired = 1
    assert once.spent
    twice = Hook("in", DROP, times=2, fired=1)
    assert not twice.spent
    forever = Hook("in", DROP, times=None, fired=10**6)
    assert not forever.spent
    assert Hook("in", DROP, times=0).spent


def test_matches_needs_the_direction_an_unspent_hook_and_the_predicate() -> None:
    seg = Segment(80, 40000, 1, 0, Flags.SYN)
    incoming = HookContext(seg, "in", PEER_IP, None)
    outgoing = HookContext(seg, "out", PEER_IP, None)
    hook = Hook("in", DROP, where=is_flags("S"))
    assert hook.matches(incoming) and not hook.matches(outgoing)
    assert not Hook("in", DROP, where=is_flags("S.")).matches(incoming)
    hook.fired = 1
    assert not hook.matches(incoming)


# --------------------------------------------------------------- predicates


def ctx(
    flags: str = ".",
    payload: bytes = b"",
    direction: str = "in",
    connection: TcpConnection | None = None,
    src: int = PEER_PORT,
    dst: int = 40000,
) -> HookContext:
    seg = Segment(src, dst, 1, 1, parse_flags(flags), 100, payload=payload)
    return HookContext(seg, direction, PEER_IP, connection)


def test_is_flags_wants_exactly_those_flags() -> None:
    assert is_flags("S.")(ctx("S."))
    assert not is_flags("S")(ctx("S."))
    assert not is_flags("F.")(ctx("FP."))
    assert is_flags("none")(ctx("none"))


def test_has_flags_wants_at_least_those_flags() -> None:
    assert has_flags("F")(ctx("FP."))
    assert has_flags("F.")(ctx("F."))
    assert not has_flags("F")(ctx("P."))
    assert has_flags("none")(ctx("R"))  # no flags asked for: every segment has them


def test_in_state_and_fin_received_look_at_our_connection() -> None:
    established = FACTORIES[State.ESTABLISHED]().conn
    close_wait = FACTORIES[State.CLOSE_WAIT]().conn
    assert in_state(State.ESTABLISHED)(ctx(connection=established))
    assert in_state(State.LAST_ACK, State.CLOSE_WAIT)(ctx(connection=close_wait))
    assert not in_state(State.ESTABLISHED)(ctx(connection=close_wait))
    assert not in_state(State.CLOSED)(ctx())  # no connection is no state, not CLOSED
    assert fin_received(ctx(connection=close_wait))
    assert not fin_received(ctx(connection=established))
    assert not fin_received(ctx())


def test_carries_data() -> None:
    assert carries_data(ctx("P.", b"x"))
    assert not carries_data(ctx("F."))


def test_all_of_and_any_of_combine_predicates() -> None:
    fin_with_data = ctx("FP.", b"x")
    assert all_of(has_flags("F"), carries_data)(fin_with_data)
    assert not all_of(has_flags("F"), carries_data)(ctx("F."))
    assert any_of(is_flags("S"), carries_data)(fin_with_data)
    assert not any_of(is_flags("S"), is_flags("R"))(fin_with_data)
    assert all_of()(fin_with_data) and not any_of()(fin_with_data)


def test_local_port_is_the_source_going_out_and_the_destination_coming_in() -> None:
    assert local_port(40000)(ctx(direction="in", src=80, dst=40000))
    assert not local_port(80)(ctx(direction="in", src=80, dst=40000))
    assert local_port(40000)(ctx(direction="out", src=40000, dst=80))
    assert not local_port(80)(ctx(direction="out", src=40000, dst=80))


def test_from_first_matches_from_the_first_acceptance_on() -> None:
    after_fin = from_first(has_flags("F"))
    answers = [after_fin(ctx(flags)) for flags in (".", "P.", "F.", ".", "P.")]
    assert answers == [False, False, True, True, True]
    # Each call makes a predicate of its own: another starts afresh.
    assert not from_first(has_flags("F"))(ctx("."))


# ------------------------------------------------------------- drop, going out


def test_dropping_our_first_syn_makes_connect_retransmit_it(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, recorder = make_recorded_pair(QUICK_SYN)
    hook = stack.add_hook(Hook("out", DROP, where=is_flags("S"), name="lose-syn"))
    sock = stack.socket()
    sock.settimeout(TIMEOUT)
    started = time.monotonic()
    connecting = pool.submit(sock.connect, (PEER_IP, PEER_PORT))
    peer.answer_arp()  # asked only for the retransmission: the drop came before ARP
    syn = peer.tcp()
    assert time.monotonic() - started >= QUICK_SYN.rto_initial
    assert (syn.flags, syn.seq) == (Flags.SYN, OUR_ISN)
    peer.send_tcp(Segment(80, syn.src_port, PEER_ISN, 1001, Flags.SYN | Flags.ACK, 65535))
    connecting.result(TIMEOUT)
    # The peer saw the SYN once: what follows it is our handshake ACK, no other SYN.
    assert peer.tcp().flags == Flags.ACK
    stack.sync()
    assert (hook.fired, hook.spent) == (1, True)
    assert stack.stats()["hook_drop_out"] == 1
    syns = [e for e in recorder.segments if e.segment.flags == Flags.SYN]
    assert [e.note for e in syns] == ["dropped by hook lose-syn", ""]
    assert syns[0].frame == b"" and syns[1].frame  # the dropped one never became a frame
    [retransmit] = [e for e in recorder.events if isinstance(e, RetransmitEvent)]
    assert (retransmit.seq, retransmit.reason) == (OUR_ISN, "syn")
    assert retransmit.time - syns[0].time >= QUICK_SYN.rto_initial - 1e-9


def test_unnamed_hook_notes_end_without_a_name(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair(QUICK_SYN)
    stack.add_hook(Hook("out", DROP, where=is_flags("S")))
    connect(stack, peer)
    stack.sync()
    assert recorder.segments[0].note == "dropped by hook"


def test_an_ack_after_the_peers_fin_is_dropped_and_sent_again(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    # The module docstring's example: the peer's FIN is then retransmitted and ACKed again.
    stack, peer, recorder = make_recorded_pair()
    sock, port = connect(stack, peer)
    stack.add_hook(Hook("out", DROP, where=all_of(is_flags("."), fin_received), name="lose-ack"))
    fin = from_peer(port, PEER_ISN + 1, flags=Flags.FIN | Flags.ACK)
    peer.send_tcp(fin)
    assert sock.recv(10) == b""
    peer.send_tcp(fin)  # the peer's retransmission
    ack = tcp_where(peer, lambda s: s.ack == PEER_ISN + 2, "our ACK of the FIN")
    assert ack.flags == Flags.ACK
    stack.sync()
    [dropped] = noted(recorder, "dropped by hook lose-ack")
    assert dropped.segment.ack == PEER_ISN + 2 and dropped.state is State.CLOSE_WAIT


def test_in_state_sees_the_state_a_segment_is_sent_in(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair()
    sock, port = connect(stack, peer)
    stack.add_hook(
        Hook("out", DROP, where=all_of(has_flags("F"), in_state(State.FIN_WAIT_1)), name="no-fin")
    )
    sock.close()
    fin = tcp_where(peer, lambda s: s.fin, "our FIN, resent by the timer")
    stack.sync()
    [dropped] = noted(recorder, "dropped by hook no-fin")
    assert dropped.state is State.FIN_WAIT_1 and dropped.segment.seq == fin.seq == OUR_ISN + 1
    retransmits = [e for e in recorder.events if isinstance(e, RetransmitEvent)]
    assert [(e.seq, e.reason) for e in retransmits] == [(OUR_ISN + 1, "timeout")]


# ------------------------------------------------------------ drop, coming in


def test_dropped_incoming_data_is_replaced_by_the_peers_retransmission(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, recorder = make_recorded_pair()
    sock, port = connect(stack, peer)
    hook = stack.add_hook(Hook("in", DROP, where=carries_data, name="lose-data"))
    # Same sequence number, different bytes: which one we read says which arrived.
    peer.send_tcp(data_from_peer(port, b"first"))
    peer.send_tcp(data_from_peer(port, b"again"))
    assert sock.recv(10) == b"again"
    stack.sync()
    assert hook.fired == 1 and stack.stats()["hook_drop_in"] == 1
    [dropped] = noted(recorder, "dropped by hook lose-data")
    assert dropped.direction == "in" and dropped.segment.payload == b"first"
    assert dropped.rcv_nxt == PEER_ISN + 1  # the core never saw it
    assert dropped.frame  # it did arrive, unlike a dropped outgoing segment


def test_an_incoming_hook_drops_a_segment_for_no_connection(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, recorder = make_recorded_pair()
    stack.add_hook(Hook("in", DROP, where=is_flags("S"), name="deaf"))
    peer.send_tcp(Segment(5555, 81, 100, 0, Flags.SYN, 64240))
    peer.send_tcp(Segment(5556, 81, 100, 0, Flags.SYN, 64240))
    peer.answer_arp()
    rst = peer.tcp()  # the second SYN's: the first was dropped before a RST was due
    assert (rst.dst_port, rst.flags) == (5556, Flags.RST | Flags.ACK)
    stack.sync()
    # With no connection to number it against, it is traced as a frame, not a segment.
    [dropped] = [e for e in recorder.events if isinstance(e, FrameEvent) and "hook" in e.note]
    assert (dropped.direction, dropped.note) == ("in", "dropped by hook deaf")
    decoded = wire.decode_frame(dropped.frame)
    assert isinstance(decoded, wire.TcpPacket) and decoded.segment.src_port == 5555
    assert [e.remote[1] for e in recorder.segments] == [5556, 5556]  # SYN in, RST out
    assert stack.stats()["tcp_no_connection"] == 1


def test_times_counts_the_matches_acted_on(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, _ = make_recorded_pair()
    sock, port = connect(stack, peer)
    hook = stack.add_hook(Hook("in", DROP, where=carries_data, times=2))
    for payload in (b"one", b"two", b"three"):
        peer.send_tcp(data_from_peer(port, payload))
    assert sock.recv(10) == b"three"
    assert (hook.fired, hook.spent) == (2, True)
    assert stack.stats()["hook_drop_in"] == 2


def test_times_none_acts_on_every_match_until_removed(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair()
    sock, port = connect(stack, peer)
    hook = stack.add_hook(Hook("in", DROP, where=carries_data, times=None, name="all"))
    for n in range(5):
        peer.send_tcp(data_from_peer(port, b"lost %d" % n))
    peer.ping(1)  # all five have been through the engine
    assert hook.fired == 5 and not hook.spent
    assert sock.connection is not None and sock.connection.readable == 0
    stack.remove_hook(hook)
    stack.remove_hook(hook)  # a second time is harmless
    peer.send_tcp(data_from_peer(port, b"kept"))
    assert sock.recv(10) == b"kept"
    stack.sync()
    assert hook.fired == 5 and len(noted(recorder, "dropped by hook all")) == 5


def test_hooks_are_tried_in_order_and_a_spent_one_steps_aside(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, _ = make_recorded_pair()
    sock, port = connect(stack, peer)
    first = stack.add_hook(Hook("in", DROP, where=carries_data, name="first"))
    second = stack.add_hook(Hook("in", DROP, where=carries_data, name="second"))
    for payload in (b"a", b"b", b"c"):
        peer.send_tcp(data_from_peer(port, payload))
    assert sock.recv(10) == b"c"
    assert (first.fired, second.fired) == (1, 1)


# ------------------------------------------------------------------- delay


def test_an_outgoing_delay_holds_the_segment_for_its_delay(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    # The RTO is 200 ms: a delay of 100 ms does not race the retransmission.
    stack, peer, recorder = make_recorded_pair()
    sock, _ = connect(stack, peer)
    stack.add_hook(Hook("out", DELAY, where=carries_data, delay=0.1, name="slow"))
    started = time.monotonic()
    sock.sendall(b"hello")
    tcp_where(peer, lambda s: s.payload == b"hello", "our delayed data")
    assert time.monotonic() - started >= 0.1
    stack.sync()
    [held] = [e for e in recorder.segments if e.segment.payload == b"hello"]
    assert held.note == "held 100 ms by hook slow"
    assert held.frame  # traced once, when it really left
    assert stack.stats()["hook_delay_out"] == 1


def test_an_incoming_delay_holds_the_segment_for_its_delay(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, recorder = make_recorded_pair()
    sock, port = connect(stack, peer)
    stack.add_hook(Hook("in", DELAY, where=carries_data, delay=0.1, name="late"))
    started = time.monotonic()
    peer.send_tcp(data_from_peer(port, b"hi"))
    assert sock.recv(10) == b"hi"
    assert time.monotonic() - started >= 0.1
    stack.sync()
    [held] = [e for e in recorder.segments if e.segment.payload == b"hi"]
    assert held.note == "held 100 ms by hook late" and held.rcv_nxt == PEER_ISN + 3
    assert stack.stats()["hook_delay_in"] == 1


def test_a_delayed_incoming_segment_is_counted_once(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, _ = make_recorded_pair()
    sock, port = connect(stack, peer)
    peer.ping(1)
    before = stack.stats()["tcp_in"]
    stack.add_hook(Hook("in", DELAY, where=carries_data, delay=0.01))
    peer.send_tcp(data_from_peer(port, b"hi"))
    assert sock.recv(10) == b"hi"
    assert stack.stats()["tcp_in"] == before + 1


def test_a_hooks_note_is_kept_for_a_segment_to_no_connection(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, recorder = make_recorded_pair()
    stack.add_hook(Hook("in", DELAY, where=is_flags("S"), delay=0.01, name="late"))
    peer.send_tcp(Segment(5555, 81, 100, 0, Flags.SYN, 64240))
    peer.answer_arp()
    peer.tcp()  # our RST, after the delay
    stack.sync()
    incoming = [e for e in recorder.segments if e.direction == "in"]
    assert len(incoming) == 1 and "held 10 ms by hook late" in incoming[0].note


# --------------------------------------------------------------- duplicate


def test_an_outgoing_duplicate_sends_the_segment_twice(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, recorder = make_recorded_pair()
    sock, _ = connect(stack, peer)
    stack.add_hook(Hook("out", DUPLICATE, where=carries_data, name="twice"))
    sock.sendall(b"hello")
    first = tcp_where(peer, lambda s: s.payload == b"hello", "our data")
    second = peer.tcp()
    assert second == first
    stack.sync()
    sent = [e for e in recorder.segments if e.segment.payload == b"hello"]
    assert len(sent) == 2 and all(e.frame for e in sent)
    assert stack.stats()["hook_duplicate_out"] == 1


def test_an_outgoing_duplicate_is_the_same_frame(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair()
    sock, _ = connect(stack, peer)
    stack.add_hook(Hook("out", DUPLICATE, where=carries_data))
    sock.sendall(b"hello")
    tcp_where(peer, lambda s: s.payload == b"hello", "our data")
    peer.tcp()
    stack.sync()
    original, copy = [e.frame for e in recorder.segments if e.segment.payload == b"hello"]
    assert copy == original


def test_an_outgoing_duplicate_is_noted(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair()
    sock, _ = connect(stack, peer)
    stack.add_hook(Hook("out", DUPLICATE, where=carries_data, name="twice"))
    sock.sendall(b"hello")
    tcp_where(peer, lambda s: s.payload == b"hello", "our data")
    peer.tcp()
    stack.sync()
    notes = [e.note for e in recorder.segments if e.segment.payload == b"hello"]
    assert sorted(notes) == ["", "duplicated by hook twice"]


def test_an_incoming_duplicate_is_input_twice_and_read_once(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, recorder = make_recorded_pair()
    sock, port = connect(stack, peer)
    stack.add_hook(Hook("in", DUPLICATE, where=carries_data, name="echo"))
    peer.send_tcp(data_from_peer(port, b"hi"))
    assert sock.recv(10) == b"hi"
    peer.ping(1)
    assert sock.connection is not None and sock.connection.readable == 0
    stack.sync()
    copies = [e for e in recorder.segments if e.segment.payload == b"hi"]
    assert [e.note for e in copies] == ["", "duplicated by hook echo"]
    assert stack.stats()["hook_duplicate_in"] == 1


# ----------------------------------------------------------------- rewrite


def test_rewriting_our_window_changes_what_the_peer_sees(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, recorder = make_recorded_pair()
    stack.add_hook(
        Hook("out", REWRITE, where=is_flags("."), rewrite=lambda s: replace(s, window=1234))
    )
    connect(stack, peer)
    ack = tcp_where(peer, lambda s: s.flags == Flags.ACK, "our handshake ACK")
    assert ack.window == 1234
    stack.sync()
    [traced] = [e for e in recorder.segments if e.segment.flags == Flags.ACK]
    assert traced.segment.window == 1234
    decoded = wire.decode_frame(traced.frame)
    assert isinstance(decoded, wire.TcpPacket) and decoded.segment.window == 1234
    assert stack.stats()["hook_rewrite_out"] == 1


def test_an_outgoing_rewrite_is_noted(make_recorded_pair: MakeRecordedPair) -> None:
    stack, peer, recorder = make_recorded_pair()
    stack.add_hook(
        Hook(
            "out",
            REWRITE,
            where=is_flags("."),
            rewrite=lambda s: replace(s, window=1234),
            name="small-window",
        )
    )
    connect(stack, peer)
    tcp_where(peer, lambda s: s.flags == Flags.ACK, "our handshake ACK")
    stack.sync()
    [traced] = [e for e in recorder.segments if e.segment.flags == Flags.ACK]
    assert traced.note == "rewritten by hook small-window"


def test_rewriting_incoming_data_into_a_reset_resets_the_connection(
    make_recorded_pair: MakeRecordedPair,
) -> None:
    stack, peer, recorder = make_recorded_pair()
    sock, port = connect(stack, peer)
    stack.add_hook(
        Hook(
            "in",
            REWRITE,
            where=carries_data,
            rewrite=lambda s: replace(s, flags=Flags.RST, payload=b""),
            name="to-rst",
        )
    )
    peer.send_tcp(data_from_peer(port, b"hi"))
    with pytest.raises(ConnectionResetError):
        sock.recv(10)
    stack.sync()
    [rewritten] = noted(recorder, "rewritten by hook to-rst")
    assert rewritten.segment.flags == Flags.RST and rewritten.state is State.CLOSED
    closed = recorder.states[-1]
    assert (closed.new, closed.cause) == (State.CLOSED, "R 7001:7001(0) win 65535")
    assert stack.stats()["hook_rewrite_in"] == 1
