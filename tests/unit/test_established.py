"""ESTABLISHED: data both ways, windows, ACK and sequence checks (RFC 9293 §3.10.7.4)."""

from dataclasses import replace

import pytest

from tcpstack.core import seq
from tcpstack.core.connection import InvalidStateError
from tcpstack.core.events import ConnectionReset, DataAcknowledged, DataReceived
from tcpstack.core.state import State
from tests.unit.helpers import (
    CONFIG,
    FACTORIES,
    established,
    expect,
    out,
    seg,
)

WIN = CONFIG.receive_buffer


def test_send_segments_by_mss_and_sets_psh_on_the_last() -> None:
    d = established()
    d.push(seg(".", d.r(1), d.l(1), win=65535))  # peer window 65535, send MSS 1460
    assert d.conn.send(b"a" * 3000) == 3000
    sent = d.flush()
    expect(
        sent,
        out(".", d.l(1), d.r(1), data=b"a" * 1460),
        out(".", d.l(1461), d.r(1), data=b"a" * 1460),
        out("P.", d.l(2921), d.r(1), data=b"a" * 80),
    )
    assert d.conn.in_flight == 3000


def test_ack_frees_the_send_buffer_and_stops_the_timer() -> None:
    d = established()
    d.conn.send(b"hello")
    d.flush()
    assert d.conn.get_timer() is not None
    expect(d.push(seg(".", d.r(1), d.l(6)), at=0.05))
    assert d.conn.in_flight == 0 and d.conn.snd_una == d.l(6)
    assert d.conn.get_timer() is None
    assert DataAcknowledged(5) in d.events
    # Second sample (the SYN gave 0.01): SRTT = 7/8 * 0.01 + 1/8 * 0.04.
    assert d.conn.rtt.srtt == pytest.approx(0.875 * 0.01 + 0.125 * 0.04)


def test_sender_respects_the_peer_window() -> None:
    d = established()
    d.push(seg(".", d.r(1), d.l(1), win=3000))
    d.conn.send(b"x" * 5000)
    sent = d.flush()
    assert sum(len(s.payload) for s in sent) == 2920  # two full segments of the 3000
    sent = d.push(seg(".", d.r(1), d.l(2921), win=3000))
    # The window update lets 2080 more through; the 80-byte tail waits (SWS).
    assert [len(s.payload) for s in sent] == [1460, 620]
    assert d.conn.snd_nxt == d.l(5001)


def test_silly_window_is_not_filled_with_a_tiny_segment() -> None:
    d = established()
    d.conn.send(b"x" * 5000)
    d.flush()  # 5000 bytes go out into the 65535 window
    d.push(seg(".", d.r(1), d.l(5001), win=100))
    d.conn.send(b"y" * 500)
    # 100 bytes would fit, but that is under half the largest window seen: wait.
    expect(d.flush())
    # With nothing in flight the persist timer sends what fits instead.
    assert [len(s.payload) for s in d.fire_timer()] == [100]


def test_zero_window_is_probed_with_one_byte() -> None:
    d = established()
    d.push(seg(".", d.r(1), d.l(1), win=0))
    d.conn.send(b"abc")
    expect(d.flush())  # nothing may be sent into a zero window
    probe = d.fire_timer()
    expect(probe, out(".", d.l(1), d.r(1), data=b"a"))
    assert d.conn.stats["window_probes"] == 1
    # The peer still has no room: it ACKs without taking the byte. That keeps
    # the connection alive however long it lasts.
    expect(d.push(seg(".", d.r(1), d.l(1), win=0)))
    for _ in range(30):
        d.fire_timer()
        d.push(seg(".", d.r(1), d.l(1), win=0))
    assert d.conn.state is State.ESTABLISHED
    # Window opens: everything goes.
    sent = d.push(seg(".", d.r(1), d.l(1), win=1000))
    # The probe byte goes again first: a Linux peer drops bytes sent into a zero window.
    assert sent[0].seq == d.l(1) and b"".join(s.payload for s in sent) == b"abc"


def test_receive_in_order_data_acks_and_buffers() -> None:
    d = established()
    expect(d.push(seg("P.", d.r(1), d.l(1), data=b"hello")), out(".", d.l(1), d.r(6), win=WIN - 5))
    assert DataReceived(5) in d.events
    assert d.conn.readable == 5
    assert d.conn.receive(3) == b"hel"
    assert d.conn.receive(10) == b"lo"


def test_reading_opens_the_window_with_an_update() -> None:
    config = replace(CONFIG, receive_buffer=8000, mss=1000)
    d = established(config=config)
    sent = d.push(seg("P.", d.r(1), d.l(1), data=b"z" * 8000))
    expect(sent, out(".", d.l(1), d.r(8001), win=0))
    # Reading reopens a closed window with an update at once (at least one MSS,
    # RFC 9293 §3.8.6.2.2); after that, only when the window would double, as
    # Linux does, and otherwise the next ACK carries the news.
    d.conn.receive(1000)
    expect(d.flush(), out(".", d.l(1), d.r(8001), win=1000))
    d.conn.receive(1000)
    expect(d.flush(), out(".", d.l(1), d.r(8001), win=2000))
    d.conn.receive(1000)
    expect(d.flush())


def test_data_beyond_the_window_is_trimmed() -> None:
    config = replace(CONFIG, receive_buffer=100)
    d = established(config=config)
    sent = d.push(seg("P.", d.r(1), d.l(1), data=b"q" * 150))
    expect(sent, out(".", d.l(1), d.r(101), win=0))
    assert d.conn.readable == 100


def test_zero_window_still_processes_acks_at_rcv_nxt() -> None:
    config = replace(CONFIG, receive_buffer=100)
    d = established(config=config)
    d.push(seg("P.", d.r(1), d.l(1), data=b"q" * 100))
    d.conn.send(b"mine")
    d.flush()
    # Window is zero; a data segment at RCV.NXT still carries a valid ACK.
    expect(d.push(seg("P.", d.r(101), d.l(5), data=b"more")), out(".", d.l(5), d.r(101), win=0))
    assert d.conn.snd_una == d.l(5)


def test_retransmitted_old_data_is_trimmed_and_reacked() -> None:
    d = established()
    d.push(seg("P.", d.r(1), d.l(1), data=b"abc"))
    # Fully old: unacceptable -> ACK.
    expect(d.push(seg("P.", d.r(1), d.l(1), data=b"abc")), out(".", d.l(1), d.r(4), win=WIN - 3))
    # Overlapping: only the new part is taken.
    d.push(seg("P.", d.r(2), d.l(1), data=b"bcdef"))
    assert d.conn.receive(100) == b"abcdef"


def test_out_of_order_data_is_held_and_acked_at_once() -> None:
    d = established()
    expect(d.push(seg("P.", d.r(6), d.l(1), data=b"world")), out(".", d.l(1), d.r(1)))
    assert d.conn.readable == 0 and d.conn.ooo_segments == 1
    # The hole fills: both pieces become readable and one ACK covers them.
    sent = d.push(seg("P.", d.r(1), d.l(1), data=b"hello"))
    expect(sent, out(".", d.l(1), d.r(11), win=WIN - 10))
    assert d.conn.receive(100) == b"helloworld"
    assert d.conn.ooo_segments == 0


def test_ack_of_unsent_data_is_answered_and_dropped() -> None:
    d = established()
    expect(d.push(seg("P.", d.r(1), d.l(500), data=b"x")), out(".", d.l(1), d.r(1)))
    assert d.conn.readable == 0


def test_segment_without_ack_bit_is_dropped() -> None:
    d = established()
    expect(d.push(seg("P", d.r(1), data=b"x")))
    assert d.conn.readable == 0


def test_duplicate_acks_are_counted() -> None:
    d = established()
    d.conn.send(b"x" * 100)
    d.flush()
    for _ in range(3):
        d.push(seg(".", d.r(1), d.l(1)))
    assert d.conn.stats["duplicate_acks"] == 3


@pytest.mark.parametrize(
    "state",
    [State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSE_WAIT],
)
def test_exact_rst_resets_synchronized_states(state: State) -> None:
    d = FACTORIES[state]()
    rcv_nxt = d.conn.rcv_nxt
    expect(d.push(seg("R", rcv_nxt)))
    assert d.conn.state is State.CLOSED
    assert d.event_types()[-1] is ConnectionReset
    assert d.conn.get_timer() is None


@pytest.mark.parametrize("state", [State.CLOSING, State.LAST_ACK, State.TIME_WAIT])
def test_exact_rst_closes_closing_states(state: State) -> None:
    d = FACTORIES[state]()
    expect(d.push(seg("R", d.conn.rcv_nxt)))
    assert d.conn.state is State.CLOSED


@pytest.mark.parametrize("state", [s for s in FACTORIES if s not in (State.LISTEN, State.SYN_SENT)])
def test_in_window_rst_gets_a_challenge_ack(state: State) -> None:
    # RFC 5961 §3.2 as adopted by RFC 9293: an RST not at RCV.NXT only draws an ACK.
    d = FACTORIES[state]()
    sent = d.push(seg("R", d.conn.rcv_nxt + 10))
    assert [s.describe() for s in sent] == [
        out(".", d.conn.snd_nxt, d.conn.rcv_nxt, win=d.conn.rcv_wnd).describe()
    ]
    assert d.conn.state is state
    assert d.conn.stats["challenge_acks"] == 1


@pytest.mark.parametrize("state", [s for s in FACTORIES if s not in (State.LISTEN, State.SYN_SENT)])
def test_out_of_window_rst_is_dropped_silently(state: State) -> None:
    d = FACTORIES[state]()
    expect(d.push(seg("R", d.conn.rcv_nxt + 70000)))
    expect(d.push(seg("R", d.conn.rcv_nxt - 1)))
    assert d.conn.state is state


@pytest.mark.parametrize("state", [s for s in FACTORIES if s.is_synchronized])
def test_syn_in_synchronized_state_gets_a_challenge_ack(state: State) -> None:
    d = FACTORIES[state]()
    before = (d.conn.snd_nxt, d.conn.rcv_nxt)
    sent = d.push(seg("S", d.conn.rcv_nxt + 5))
    assert [s.describe() for s in sent] == [
        out(".", d.conn.snd_nxt, d.conn.rcv_nxt, win=d.conn.rcv_wnd).describe()
    ]
    assert d.conn.state is state
    assert (d.conn.snd_nxt, d.conn.rcv_nxt) == before


def test_send_after_shutdown_is_misuse() -> None:
    d = established()
    d.conn.shutdown(d.now)
    with pytest.raises(InvalidStateError):
        d.conn.send(b"late")


def test_sequence_numbers_wrap_past_2_32() -> None:
    d = established(wrap=True)
    d.push(seg(".", d.r(1), d.l(1), win=65535))
    payload = bytes(range(256)) * 20  # 5120 bytes, crosses 2**32 on our side
    d.conn.send(payload)
    sent = d.flush()
    assert b"".join(s.payload for s in sent) == payload
    assert all(0 <= s.seq <= 0xFFFF_FFFF for s in sent)
    expect(d.push(seg(".", d.r(1), d.l(1 + len(payload)))))
    assert d.conn.in_flight == 0 and d.conn.snd_una == (d.local_iss + 1 + len(payload)) % 2**32
    # The peer's data crosses 2**32 too.
    d.push(seg("P.", d.r(1), d.l(5121), data=b"A" * 3000))
    assert d.conn.rcv_nxt == (d.remote_iss + 3001) % 2**32
    assert d.conn.receive(5000) == b"A" * 3000


def test_an_ack_older_than_the_largest_window_is_answered_and_dropped() -> None:
    # RFC 5961 §5.2: acceptable ACKs lie in SND.UNA - MAX.SND.WND .. SND.NXT.
    d = established()
    d.conn.send(b"w" * 3000)
    assert sum(len(s.payload) for s in d.flush()) == 3000
    d.push(seg(".", d.r(1), d.l(3001)))
    before = d.conn.snd_una
    # Older than SND.UNA by more than the largest window the peer offered (65535
    # at the handshake): challenged with an ACK, and the data in it is not taken.
    stale = seq.add(before, -70_000)
    expect(d.push(seg("P.", d.r(1), stale, data=b"x")), out(".", d.l(3001), d.r(1)))
    assert d.conn.readable == 0 and d.conn.stats["drop_ack_too_old"] == 1
    # Within the bound, an old ACK is a plain duplicate: the data goes in.
    d.push(seg("P.", d.r(1), seq.add(before, -500), data=b"y"))
    assert d.conn.readable == 1
