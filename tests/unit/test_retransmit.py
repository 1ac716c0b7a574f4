"""RTO-driven retransmission of SYN, SYN-ACK, data and FIN (RFC 6298, RFC 9293 §3.8)."""

from dataclasses import replace

import pytest

from tcpstack.core.events import ConnectionTimedOut, DeliveryTrouble
from tcpstack.core.state import State
from tests.unit.helpers import (
    CONFIG,
    Pair,
    established,
    expect,
    listen,
    out,
    seg,
    syn_received,
    syn_sent,
)


def test_syn_is_retransmitted_with_exponential_backoff_then_gives_up() -> None:
    d = syn_sent()
    times = []
    for _ in range(CONFIG.syn_retries):
        sent = d.fire_timer()
        expect(sent, out("S", d.l(0), mss=CONFIG.announced_mss))  # same ISS every time
        times.append(d.now)
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert gaps == pytest.approx([1, 2, 4, 8, 16, 32])
    expect(d.fire_timer())
    assert d.conn.state is State.CLOSED
    assert d.event_types() == [ConnectionTimedOut]
    assert d.conn.get_timer() is None


def test_lost_syn_then_syn_ack_completes() -> None:
    d = syn_sent()
    d.fire_timer()
    expect(d.push(seg("S.", d.r(0), d.l(1))), out(".", d.l(1), d.r(1)))
    assert d.conn.state is State.ESTABLISHED
    # Karn's rule: the SYN was retransmitted, so it gave no RTT sample.
    assert d.conn.rtt.srtt is None


def test_syn_ack_is_retransmitted_then_half_open_gives_up() -> None:
    d = syn_received()
    for _ in range(CONFIG.synack_retries):
        expect(d.fire_timer(), out("S.", d.l(0), d.r(1), mss=CONFIG.announced_mss))
    expect(d.fire_timer())
    assert d.conn.state is State.CLOSED
    assert ConnectionTimedOut in d.event_types()


def test_data_retransmits_the_earliest_unacked_segment() -> None:
    d = established()
    d.conn.send(b"a" * 1460 + b"b" * 100)
    first = d.flush()
    assert len(first) == 2
    rto = d.conn.rtt.rto
    start = d.now
    expect(d.fire_timer(), out(".", d.l(1), d.r(1), data=b"a" * 1460))
    assert d.now == pytest.approx(start + rto)
    assert d.conn.stats["retransmissions"] == 1
    # Backed off: the next one comes after twice the RTO.
    expect(d.fire_timer(), out(".", d.l(1), d.r(1), data=b"a" * 1460))
    assert d.now == pytest.approx(start + 3 * rto)
    # The ACK of the retransmitted segment gives no RTT sample (Karn), so the
    # backed-off RTO stays until a fresh measurement (RFC 6298 §5).
    srtt_before = d.conn.rtt.srtt
    d.push(seg(".", d.r(1), d.l(1461)))
    assert d.conn.rtt.srtt == srtt_before
    assert d.conn.get_timer() == pytest.approx(d.now + 4 * rto)
    expect(d.fire_timer(), out("P.", d.l(1461), d.r(1), data=b"b" * 100))


def test_retransmission_limit_aborts_with_timed_out() -> None:
    d = established(config=replace(CONFIG, max_retries=3))
    d.conn.send(b"x")
    d.flush()
    for _ in range(3):
        assert d.fire_timer()
    expect(d.fire_timer())
    assert d.conn.state is State.CLOSED
    assert d.event_types()[-1] is ConnectionTimedOut


def test_new_data_after_ack_rearms_and_rto_never_below_minimum() -> None:
    d = established()
    d.conn.send(b"1")
    d.flush()
    d.push(seg(".", d.r(1), d.l(2)), at=d.now + 0.0001)
    assert d.conn.rtt.rto == CONFIG.rto_min


def test_listen_needs_no_timer() -> None:
    assert listen().conn.get_timer() is None


def test_pair_recovers_from_a_lost_syn_ack() -> None:
    p = Pair()
    p.a.open_passive()
    p.b.remote_port = p.a.local_port
    p.b.open_active(0.0)
    p.drop.add(1)  # log[0] is b's SYN, log[1] is a's SYN-ACK
    p.run(until=5.0)
    assert p.a.state is State.ESTABLISHED and p.b.state is State.ESTABLISHED
    assert p.b.stats["retransmissions"] == 1  # b's SYN again; a answers with its SYN-ACK


def test_pair_moves_data_through_losses() -> None:
    p = Pair()
    p.a.open_passive()
    p.b.remote_port = p.a.local_port
    p.b.open_active(0.0)
    p.run(until=1.0)
    data = bytes(range(256)) * 400
    p.drop.update({len(p.log) + 3, len(p.log) + 10, len(p.log) + 11})
    sent = 0
    while sent < len(data):
        sent += p.b.send(data[sent:])
        p.run(until=p.now + 5.0)
    p.run(until=p.now + 60.0)
    assert bytes(p.received["a"]) == data
    assert p.b.stats["retransmissions"] >= 1


def test_after_a_syn_timeout_the_rto_is_at_least_three_seconds_until_measured() -> None:
    # RFC 6298 §5.7: the SYN was retransmitted and gave no RTT sample (Karn), so
    # data starts with an RTO of 3 s, not the backed-off 1 s initial value.
    d = syn_sent()
    d.fire_timer()
    d.push(seg("S.", d.r(0), d.l(1)))
    assert d.conn.state is State.ESTABLISHED and d.conn.rtt.srtt is None
    assert d.conn.rtt.rto >= 3.0


def test_r1_reports_delivery_trouble_once_and_new_data_acked_clears_it() -> None:
    # RFC 9293 §3.8.3: at R1 the application hears of it (SHLD-9) and IP gets
    # negative advice (MUST-20, the engine's part); the connection goes on to R2.
    assert CONFIG.r1 == 3  # SHLD-10: at least three retransmissions
    d = established(config=replace(CONFIG, max_retries=8))
    d.conn.send(b"x")
    d.flush()
    for _ in range(2):
        assert d.fire_timer()
    assert not d.conn.delivery_trouble
    assert DeliveryTrouble not in d.event_types()
    assert d.fire_timer()  # the third retransmission
    assert d.conn.delivery_trouble
    assert [e for e in d.events if isinstance(e, DeliveryTrouble)] == [DeliveryTrouble(3)]
    assert d.fire_timer()  # still going, and said only once
    assert d.event_types().count(DeliveryTrouble) == 1
    d.push(seg(".", d.r(1), d.l(2)), at=d.now + 0.01)
    assert not d.conn.delivery_trouble and d.conn.state is State.ESTABLISHED
    assert d.conn.stats["delivery_trouble"] == 1
