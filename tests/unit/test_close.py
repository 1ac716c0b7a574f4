"""FIN-WAIT-1/2, CLOSING, TIME-WAIT, CLOSE-WAIT, LAST-ACK and half-close (RFC 9293 §3.6)."""

from tcpstack.core.events import ConnectionClosed, EofReceived
from tcpstack.core.state import State
from tests.unit.helpers import (
    CONFIG,
    Pair,
    close_wait,
    closing,
    established,
    expect,
    fin_wait_1,
    fin_wait_2,
    last_ack,
    out,
    seg,
    time_wait,
)

TWO_MSL = 2 * CONFIG.msl


def test_active_close_walks_fin_wait_1_fin_wait_2_time_wait() -> None:
    d = time_wait()
    assert d.transitions()[-3:] == [
        (State.ESTABLISHED, State.FIN_WAIT_1),
        (State.FIN_WAIT_1, State.FIN_WAIT_2),
        (State.FIN_WAIT_2, State.TIME_WAIT),
    ]
    assert EofReceived in d.event_types()


def test_time_wait_lasts_two_msl_then_closes() -> None:
    d = time_wait()
    entered = d.now
    assert d.conn.get_timer() == entered + TWO_MSL
    expect(d.advance(entered + TWO_MSL - 0.001))
    assert d.conn.state is State.TIME_WAIT
    expect(d.advance(entered + TWO_MSL))
    assert d.conn.state is State.CLOSED
    assert d.event_types()[-1] is ConnectionClosed
    assert d.conn.get_timer() is None


def test_time_wait_reacks_a_retransmitted_fin_and_restarts_2msl() -> None:
    # The peer in LAST-ACK lost our ACK and retransmits its FIN.
    d = time_wait()
    d.advance(d.now + 1.5)
    expect(d.push(seg("F.", d.r(1), d.l(2))), out(".", d.l(2), d.r(2)))
    assert d.conn.state is State.TIME_WAIT
    assert d.conn.get_timer() == d.now + TWO_MSL
    assert d.conn.stats["fin_retransmits_seen"] == 1


def test_fin_and_ack_together_go_fin_wait_1_to_time_wait() -> None:
    d = fin_wait_1()
    expect(d.push(seg("F.", d.r(1), d.l(2))), out(".", d.l(2), d.r(2)))
    # The ACK is processed before the FIN (fifth step before eighth).
    assert d.transitions()[-2:] == [
        (State.FIN_WAIT_1, State.FIN_WAIT_2),
        (State.FIN_WAIT_2, State.TIME_WAIT),
    ]


def test_simultaneous_close_through_closing() -> None:
    d = closing()
    expect(d.push(seg(".", d.r(2), d.l(2))))
    assert d.transitions()[-2:] == [
        (State.FIN_WAIT_1, State.CLOSING),
        (State.CLOSING, State.TIME_WAIT),
    ]


def test_closing_ignores_an_ack_that_does_not_cover_our_fin() -> None:
    d = closing()
    expect(d.push(seg(".", d.r(2), d.l(1))))
    assert d.conn.state is State.CLOSING


def test_passive_close_close_wait_then_last_ack_then_closed() -> None:
    d = last_ack()
    expect(d.push(seg(".", d.r(2), d.l(2))))
    assert d.conn.state is State.CLOSED
    assert d.transitions()[-3:] == [
        (State.ESTABLISHED, State.CLOSE_WAIT),
        (State.CLOSE_WAIT, State.LAST_ACK),
        (State.LAST_ACK, State.CLOSED),
    ]
    assert d.event_types()[-1] is ConnectionClosed


def test_last_ack_retransmits_fin_on_timeout() -> None:
    d = last_ack()
    expect(d.fire_timer(), out("F.", d.l(1), d.r(2)))
    assert d.conn.state is State.LAST_ACK


def test_fin_wait_1_retransmits_fin_on_timeout() -> None:
    d = fin_wait_1()
    assert d.conn.get_timer() == d.now + d.conn.rtt.rto
    expect(d.fire_timer(), out("F.", d.l(1), d.r(1)))


def test_half_close_data_keeps_flowing_to_fin_wait_2() -> None:
    d = fin_wait_2()
    sent = d.push(seg("P.", d.r(1), d.l(2), data=b"still talking"))
    expect(sent, out(".", d.l(2), d.r(14), win=CONFIG.receive_buffer - 13))
    assert d.conn.receive(100) == b"still talking"
    assert d.conn.state is State.FIN_WAIT_2


def test_half_close_data_keeps_flowing_from_close_wait() -> None:
    d = close_wait()
    d.conn.send(b"reply after your FIN")
    expect(d.flush(), out("P.", d.l(1), d.r(2), data=b"reply after your FIN"))
    assert d.conn.eof and d.conn.receive(10) == b""


def test_fin_after_data_is_sent_once_the_data_is_out() -> None:
    d = established()
    d.conn.send(b"bye")
    d.conn.shutdown(d.now)
    expect(d.flush(), out("FP.", d.l(1), d.r(1), data=b"bye"))
    assert d.conn.state is State.FIN_WAIT_1
    expect(d.push(seg(".", d.r(1), d.l(5))))
    assert d.conn.state is State.FIN_WAIT_2


def test_fin_waits_for_the_window_to_drain_data() -> None:
    d = established()
    d.push(seg(".", d.r(1), d.l(1), win=3000))
    d.conn.send(b"x" * 4000)
    d.conn.shutdown(d.now)
    # Two full segments fit; the 80 bytes left in the window would be a silly
    # segment (RFC 9293 §3.8.6.2.1), so they wait, and the FIN behind them.
    sent = d.flush()
    assert [len(s.payload) for s in sent] == [1460, 1460] and not any(s.fin for s in sent)
    sent = d.push(seg(".", d.r(1), d.l(2921), win=3000))
    expect(sent, out("FP.", d.l(2921), d.r(1), data=b"x" * 1080))


def test_shutdown_twice_is_harmless() -> None:
    d = fin_wait_1()
    d.conn.shutdown(d.now)
    expect(d.flush())
    assert d.conn.state is State.FIN_WAIT_1


def test_data_after_peer_fin_is_dropped() -> None:
    d = close_wait()
    d.push(seg("P.", d.r(2), d.l(1), data=b"zombie"))
    assert d.conn.readable == 0


def test_abort_sends_rst_and_closes() -> None:
    d = established()
    d.conn.abort(d.now)
    expect(d.flush(), out("R", d.l(1), 0, win=0))
    assert d.conn.state is State.CLOSED


def test_pair_four_way_close_and_simultaneous_close() -> None:
    p = Pair()
    p.a.open_passive()
    p.b.remote_port = p.a.local_port
    p.b.open_active(0.0)
    p.run(until=1.0)
    assert p.a.state is State.ESTABLISHED and p.b.state is State.ESTABLISHED
    # Both close at once: FINs cross and both sides pass CLOSING.
    p.a.shutdown(p.now)
    p.b.shutdown(p.now)
    p.run(until=p.now + 0.5)
    for name in ("a", "b"):
        assert (State.FIN_WAIT_1, State.CLOSING) in p.transitions(name)
        assert (State.CLOSING, State.TIME_WAIT) in p.transitions(name)
    p.run(until=p.now + 2 * CONFIG.msl + 1)
    assert p.a.state is State.CLOSED and p.b.state is State.CLOSED


def test_pair_lost_last_ack_is_recovered_from_time_wait() -> None:
    p = Pair()
    p.b.remote_port = p.a.local_port
    p.a.open_passive()
    p.b.open_active(0.0)
    p.run(until=1.0)
    p.b.shutdown(p.now)  # b closes first
    p.run(until=p.now + 0.1)
    assert p.b.state is State.FIN_WAIT_2 and p.a.state is State.CLOSE_WAIT
    p.a.shutdown(p.now)
    # Lose b's ACK of a's FIN: the next segment logged is a's FIN, then b's ACK.
    p.drop.add(len(p.log) + 1)
    p.run(until=p.now + 0.1)
    assert p.b.state is State.TIME_WAIT and p.a.state is State.LAST_ACK
    p.run(until=p.now + 1.5)  # a's RTO fires, FIN again, b re-ACKs from TIME-WAIT
    assert p.a.state is State.CLOSED
    assert p.b.state is State.TIME_WAIT
    assert p.b.stats["fin_retransmits_seen"] == 1


def test_a_fin_below_data_queued_out_of_order_ends_the_stream_there() -> None:
    # Found by the differential fuzzer (M-12): the FIN at 2 was taken as if after
    # the 300 octets queued at 2..302, which were delivered and acknowledged with it.
    # RFC 9293 §3.10.7.4 eighth step: RCV.NXT goes past the FIN where it is; Linux
    # drops what is queued beyond it.
    d = established()
    expect(d.push(seg("P.", d.r(2), d.l(1), data=b"z" * 300)), d.out(".", d.l(1), d.r(1)))
    sent = d.push(seg("F.", d.r(1), d.l(1), data=b"a"))
    assert [s.ack for s in sent] == [d.r(3)]
    assert d.conn.state is State.CLOSE_WAIT
    assert d.conn.receive(1000) == b"a"
