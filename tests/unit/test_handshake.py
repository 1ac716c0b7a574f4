"""CLOSED, LISTEN, SYN-SENT and SYN-RECEIVED (RFC 9293 §3.5, §3.10.7.1-3)."""

import pytest

from tcpstack.core.connection import InvalidStateError, TcpConnection, reset_for_unknown
from tcpstack.core.events import (
    ConnectionClosed,
    ConnectionEstablished,
    ConnectionRefused,
    ReturnedToListen,
)
from tcpstack.core.state import State
from tests.unit.helpers import (
    CONFIG,
    LOCAL_PORT,
    REMOTE_PORT,
    established,
    established_passive,
    expect,
    listen,
    out,
    seg,
    syn_received,
    syn_sent,
)

# ------------------------------------------------------------------ CLOSED


def test_closed_port_syn_gets_rst_ack_with_seq_zero() -> None:
    # §3.10.7.1: ACK off -> <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>
    reply = reset_for_unknown(seg("S", 100))
    assert reply is not None
    assert reply.describe() == "R. 0:0(0) ack 101 win 0"
    assert (reply.src_port, reply.dst_port) == (LOCAL_PORT, REMOTE_PORT)


def test_closed_port_data_without_ack_counts_payload_and_fin() -> None:
    reply = reset_for_unknown(seg("F", 100, data=b"abc"))
    assert reply is not None and reply.describe() == "R. 0:0(0) ack 104 win 0"


def test_closed_port_ack_gets_rst_at_seg_ack() -> None:
    # §3.10.7.1: ACK on -> <SEQ=SEG.ACK><CTL=RST>
    reply = reset_for_unknown(seg("P.", 100, 777, data=b"x"))
    assert reply is not None and reply.describe() == "R 777:777(0) win 0"


def test_closed_port_never_answers_rst() -> None:
    assert reset_for_unknown(seg("R", 100)) is None
    assert reset_for_unknown(seg("R.", 100, 5)) is None


# ------------------------------------------------------------------ LISTEN


def test_listen_syn_moves_to_syn_received_and_sends_syn_ack() -> None:
    d = syn_received()
    assert d.transitions() == [(State.CLOSED, State.LISTEN), (State.LISTEN, State.SYN_RECEIVED)]
    assert d.conn.remote_port == REMOTE_PORT
    assert d.conn.peer_mss == 1460


def test_listen_ignores_rst() -> None:
    d = listen()
    expect(d.push(seg("R", 1)))
    assert d.conn.state is State.LISTEN


def test_listen_answers_any_ack_with_rst() -> None:
    d = listen()
    expect(d.push(seg(".", 1, 4242)), out("R", 4242, win=0))
    expect(d.push(seg("S.", 1, 4243)), out("R", 4243, win=0))
    assert d.conn.state is State.LISTEN


def test_listen_drops_fin_and_bare_data() -> None:
    d = listen()
    expect(d.push(seg("F", 1)))
    expect(d.push(seg("P", 1, data=b"x")))
    assert d.conn.state is State.LISTEN


def test_close_in_listen_goes_to_closed() -> None:
    d = listen()
    d.conn.shutdown(d.now)
    d.flush()
    assert d.conn.state is State.CLOSED
    assert ConnectionClosed in d.event_types()


# ----------------------------------------------------------------- SYN-SENT


def test_active_open_three_way_handshake() -> None:
    d = established()
    assert d.transitions() == [
        (State.CLOSED, State.SYN_SENT),
        (State.SYN_SENT, State.ESTABLISHED),
    ]
    assert d.event_types() == [ConnectionEstablished]
    assert d.conn.snd_una == d.l(1) and d.conn.rcv_nxt == d.r(1)
    assert d.conn.get_timer() is None  # nothing in flight after the SYN is acked


def test_syn_sent_bad_ack_gets_rst_and_stays() -> None:
    d = syn_sent()
    # SEG.ACK =< ISS or SEG.ACK > SND.NXT -> <SEQ=SEG.ACK><CTL=RST>
    expect(d.push(seg("S.", d.r(0), d.l(0))), out("R", d.l(0), win=0))
    expect(d.push(seg("S.", d.r(0), d.l(2))), out("R", d.l(2), win=0))
    expect(d.push(seg(".", d.r(0), d.l(5))), out("R", d.l(5), win=0))
    assert d.conn.state is State.SYN_SENT


def test_syn_sent_bad_ack_with_rst_is_dropped_silently() -> None:
    d = syn_sent()
    expect(d.push(seg("R.", d.r(0), d.l(5))))
    assert d.conn.state is State.SYN_SENT


def test_syn_sent_drops_bare_ack_fin_and_syn_fin_without_ack() -> None:
    d = syn_sent()
    expect(d.push(seg(".", d.r(0), d.l(1))))  # acceptable ACK, no SYN: drop
    expect(d.push(seg("F", d.r(0))))
    assert d.conn.state is State.SYN_SENT


def test_syn_sent_rst_with_acceptable_ack_is_refused() -> None:
    d = syn_sent()
    expect(d.push(seg("R.", 0, d.l(1))))
    assert d.conn.state is State.CLOSED
    assert d.event_types() == [ConnectionRefused]
    assert d.conn.get_timer() is None


def test_syn_sent_rst_without_ack_is_ignored() -> None:
    d = syn_sent()
    expect(d.push(seg("R", 0)))
    assert d.conn.state is State.SYN_SENT


def test_syn_ack_mss_option_sets_send_mss() -> None:
    d = syn_sent()
    d.push(seg("S.", d.r(0), d.l(1), mss=536))
    assert d.conn.send_mss == 536


def test_missing_mss_option_means_536() -> None:
    d = syn_sent()
    d.push(seg("S.", d.r(0), d.l(1)))
    assert d.conn.send_mss == 536


def test_simultaneous_open() -> None:
    # §3.5 Figure 7: SYN-SENT gets a SYN without ACK -> SYN-RECEIVED, SYN-ACK with the same ISS.
    d = syn_sent()
    expect(d.push(seg("S", d.r(0), mss=1460)), out("S.", d.l(0), d.r(1), mss=CONFIG.announced_mss))
    assert d.conn.state is State.SYN_RECEIVED
    # Line 6: their SYN-ACK completes our side; no reply is needed (Figure 7).
    expect(d.push(seg("S.", d.r(0), d.l(1))))
    assert d.conn.state is State.ESTABLISHED
    assert d.transitions() == [
        (State.CLOSED, State.SYN_SENT),
        (State.SYN_SENT, State.SYN_RECEIVED),
        (State.SYN_RECEIVED, State.ESTABLISHED),
    ]


def test_simultaneous_open_completed_by_a_plain_ack() -> None:
    d = syn_sent()
    d.push(seg("S", d.r(0)))
    expect(d.push(seg(".", d.r(1), d.l(1))))
    assert d.conn.state is State.ESTABLISHED


def test_syn_ack_carrying_data_delivers_it() -> None:
    d = syn_sent()
    sent = d.push(seg("S.", d.r(0), d.l(1), data=b"early"))
    expect(sent, out(".", d.l(1), d.r(6), win=65535 - 5))
    assert d.conn.receive(100) == b"early"


def test_close_in_syn_sent_deletes_the_tcb() -> None:
    d = syn_sent()
    d.conn.shutdown(d.now)
    expect(d.flush())
    assert d.conn.state is State.CLOSED


# ------------------------------------------------------------- SYN-RECEIVED


def test_passive_open_completes_on_the_third_segment() -> None:
    d = established_passive()
    assert d.transitions()[-1] == (State.SYN_RECEIVED, State.ESTABLISHED)
    assert ConnectionEstablished in d.event_types()


def test_syn_received_unacceptable_ack_gets_rst_and_stays() -> None:
    d = syn_received()
    # ack = ISS (acknowledges nothing new) and ack = ISS+2 (beyond SND.NXT)
    expect(d.push(seg(".", d.r(1), d.l(0))), out("R", d.l(0), win=0))
    expect(d.push(seg(".", d.r(1), d.l(2))), out("R", d.l(2), win=0))
    assert d.conn.state is State.SYN_RECEIVED
    expect(d.push(seg(".", d.r(1), d.l(1))))
    assert d.conn.state is State.ESTABLISHED


def test_syn_received_first_data_segment_completes_handshake() -> None:
    d = syn_received()
    sent = d.push(seg("P.", d.r(1), d.l(1), data=b"hello"))
    expect(sent, out(".", d.l(1), d.r(6), win=65535 - 5))
    assert d.conn.state is State.ESTABLISHED
    assert d.conn.receive(10) == b"hello"


def test_passive_syn_received_rst_returns_to_listen() -> None:
    d = syn_received()
    expect(d.push(seg("R", d.r(1))))
    assert d.conn.state is State.LISTEN
    assert ReturnedToListen in d.event_types()
    assert d.conn.get_timer() is None  # the SYN-ACK retransmission is cancelled


def test_passive_syn_received_in_window_rst_gets_challenge_ack() -> None:
    d = syn_received()
    expect(d.push(seg("R", d.r(100))), out(".", d.l(1), d.r(1)))
    assert d.conn.state is State.SYN_RECEIVED


def test_active_syn_received_rst_is_refused() -> None:
    d = syn_sent()
    d.push(seg("S", d.r(0)))
    expect(d.push(seg("R", d.r(1))))
    assert d.conn.state is State.CLOSED
    assert ConnectionRefused in d.event_types()


def test_passive_syn_received_new_syn_returns_to_listen() -> None:
    # §3.10.7.4 fourth step: SYN in a passive SYN-RECEIVED -> LISTEN.
    d = syn_received()
    expect(d.push(seg("S", d.r(50))))
    assert d.conn.state is State.LISTEN


def test_syn_received_retransmitted_syn_repeats_the_syn_ack() -> None:
    # Linux answers a duplicate SYN in SYN-RECV with the SYN-ACK again.
    d = syn_received()
    expect(d.push(seg("S", d.r(0))), out("S.", d.l(0), d.r(1), mss=CONFIG.announced_mss))
    assert d.conn.state is State.SYN_RECEIVED


def test_close_in_syn_received_sends_fin_at_once() -> None:
    # §3.10.4: nothing queued -> FIN now, FIN-WAIT-1 (Figure 5: SYN-RCVD --CLOSE--> FIN-WAIT-1).
    d = syn_received()
    d.conn.shutdown(d.now)
    expect(d.flush(), out("F.", d.l(1), d.r(1)))
    assert d.conn.state is State.FIN_WAIT_1
    # The SYN-ACK is still unacknowledged, so a timeout resends it, and the FIN.
    expect(
        d.fire_timer(),
        out("S.", d.l(0), d.r(1), mss=CONFIG.announced_mss),
        out("F.", d.l(1), d.r(1)),
    )
    # The peer acknowledges only the SYN: the FIN goes again at the next timeout.
    expect(d.push(seg(".", d.r(1), d.l(1))))
    assert d.conn.state is State.FIN_WAIT_1
    expect(d.fire_timer(), out("F.", d.l(1), d.r(1)))
    expect(d.push(seg(".", d.r(1), d.l(2))))
    assert d.conn.state is State.FIN_WAIT_2


def test_close_in_syn_received_with_data_queued_waits_for_established() -> None:
    d = syn_received()
    d.conn.send(b"first")
    d.conn.shutdown(d.now)
    expect(d.flush())
    assert d.conn.state is State.SYN_RECEIVED
    sent = d.push(seg(".", d.r(1), d.l(1)))
    expect(sent, out("FP.", d.l(1), d.r(1), data=b"first"))
    assert d.conn.state is State.FIN_WAIT_1


# -------------------------------------------------------------- API misuse


def test_open_twice_raises_and_names_the_state() -> None:
    d = established()
    with pytest.raises(InvalidStateError, match="ESTABLISHED"):
        d.conn.open_active(d.now)
    assert d.conn.state is State.ESTABLISHED


def test_active_open_needs_remote_port() -> None:
    c = TcpConnection(CONFIG, LOCAL_PORT, 0, iss=1)
    with pytest.raises(ValueError):
        c.open_active(0.0)
