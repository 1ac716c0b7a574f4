"""Property tests: any sequence of segments, calls and timer firings keeps the core sane."""

from dataclasses import replace

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tcpstack.core import seq
from tcpstack.core.segment import Flags, Options, Segment
from tcpstack.core.state import ALLOWED_TRANSITIONS, State
from tests.unit.helpers import FACTORIES, FULL, LOCAL_PORT, REMOTE_PORT, Driver, Pair

flag_sets = st.sets(st.sampled_from([Flags.SYN, Flags.ACK, Flags.FIN, Flags.RST, Flags.PSH]))


@st.composite
def segments_near(draw: st.DrawFn, d: Driver) -> Segment:
    """Segments whose numbers sit near the connection's own, so they hit every branch."""
    flags = Flags(0)
    for f in draw(flag_sets):
        flags |= f
    base_seq = draw(st.sampled_from([d.conn.rcv_nxt, d.conn.irs, d.remote_iss, 0]))
    base_ack = draw(st.sampled_from([d.conn.snd_nxt, d.conn.snd_una, d.conn.iss, 0]))
    sq = seq.add(base_seq, draw(st.integers(-3, 70_000)))
    ack = seq.add(base_ack, draw(st.integers(-3, 3)))
    payload = draw(st.sampled_from([b"", b"x", b"y" * 1460]))
    window = draw(st.sampled_from([0, 1, 1000, 65535]))
    mss = draw(st.sampled_from([None, 0, 1, 536, 1460]))
    return Segment(REMOTE_PORT, LOCAL_PORT, sq, ack, flags, window, Options(mss=mss), payload)


actions = st.sampled_from(["segment"] * 6 + ["timer", "send", "receive", "shutdown", "abort"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.sampled_from(sorted(FACTORIES, key=lambda s: s.value)),
    wrap=st.booleans(),
    data=st.data(),
)
def test_random_inputs_never_raise_and_follow_the_diagram(
    start: State, wrap: bool, data: st.DataObject
) -> None:
    d = FACTORIES[start](wrap=wrap)
    for _ in range(data.draw(st.integers(1, 25))):
        action = data.draw(actions)
        if action == "segment":
            d.push(data.draw(segments_near(d)), at=d.now + 0.001)
        elif action == "timer":
            if d.conn.get_timer() is not None:
                d.fire_timer()
        elif action == "send" and d.conn.state.can_send and not d.conn.eof:
            try:
                d.conn.send(b"payload")
            except Exception as exc:  # only misuse errors are allowed
                assert type(exc).__name__ == "InvalidStateError"
            d.flush()
        elif action == "receive":
            d.conn.receive(100)
            d.flush()
        elif action == "shutdown":
            d.conn.shutdown(d.now)
            d.flush()
        elif action == "abort":
            d.conn.abort(d.now)
            d.flush()
        c = d.conn
        assert isinstance(c.state, State)
        assert seq.le(c.snd_una, c.snd_nxt)
        assert c.in_flight >= 0 and c.unsent >= 0
        assert c.readable <= c.config.receive_buffer
        assert 0 <= c.rcv_wnd <= 0xFFFF
    for old, new in d.transitions():
        assert (old, new) in ALLOWED_TRANSITIONS, f"{old.name} -> {new.name}"


@settings(max_examples=60, deadline=None)
@given(
    drops=st.sets(st.integers(0, 60), max_size=12),
    a_iss=st.sampled_from([0, 1000, 0xFFFF_FF00, 0xFFFF_FFFF]),
    b_iss=st.sampled_from([0, 7, 0xFFFF_FFF0]),
    size=st.integers(0, 20_000),
)
def test_pair_delivers_everything_despite_losses(
    drops: set[int], a_iss: int, b_iss: int, size: int
) -> None:
    p = Pair(a_iss=a_iss, b_iss=b_iss)
    p.drop = drops
    p.a.open_passive()
    p.b.remote_port = p.a.local_port
    p.b.open_active(0.0)
    p.run(until=200.0)
    # Six lost segments in a row can exhaust the SYN-ACK's five retransmissions:
    # then the handshake rightly failed, and there is no transfer to check.
    assume(p.a.state is State.ESTABLISHED and p.b.state is State.ESTABLISHED)
    payload = bytes(i % 251 for i in range(size))
    sent = 0
    while sent < size:
        sent += p.b.send(payload[sent:])
        p.run(until=p.now + 50.0)
    p.b.shutdown(p.now)
    p.run(until=p.now + 500.0)
    assert bytes(p.received["a"]) == payload
    assert p.a.eof
    for name in ("a", "b"):
        for old, new in p.transitions(name):
            assert (old, new) in ALLOWED_TRANSITIONS


@settings(max_examples=150, deadline=None)
@given(
    drops=st.sets(st.integers(0, 120), max_size=15),
    dups=st.sets(st.integers(0, 120), max_size=10),
    delays=st.dictionaries(st.integers(0, 120), st.floats(0.0005, 0.01), max_size=15),
    size=st.integers(0, 60_000),
    congestion=st.sampled_from(["cubic", "reno"]),
    sack=st.booleans(),
)
def test_pair_with_every_option_survives_loss_duplication_and_reordering(
    drops: set[int],
    dups: set[int],
    delays: dict[int, float],
    size: int,
    congestion: str,
    sack: bool,
) -> None:
    # Both directions at once, Linux-like defaults, through a wire that loses,
    # duplicates and reorders: every byte arrives, in order, exactly once.
    config = replace(FULL, congestion=congestion, sack=sack, delayed_ack=0.04, quick_acks=4)
    p = Pair(config=config, a_iss=0xFFFF_FF00, b_iss=0x7FFF_FFF0)
    p.drop, p.duplicate, p.delay = drops, dups, delays
    assume(p.connect())
    p.exchange(size)
    for name in ("a", "b"):
        for old, new in p.transitions(name):
            assert (old, new) in ALLOWED_TRANSITIONS
