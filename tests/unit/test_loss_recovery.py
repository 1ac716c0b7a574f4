"""Loss recovery with a fake clock: NewReno, SACK with RACK, tail loss probes, RTO,
spurious-retransmission undo, and congestion-window behaviour (RFC 5681, 6582,
6675, 8985, 3522)."""

from dataclasses import replace

import pytest

from tcpstack.core import congestion, seq
from tcpstack.core.reassembly import Reassembler
from tcpstack.core.rtxqueue import Rack, RetransmitQueue
from tcpstack.core.segment import Segment
from tests.unit.helpers import (
    FULL,
    ISS,
    PEER_TS,
    REMOTE_ISS,
    Driver,
    active,
    established,
    established_passive,
    peer,
    seg,
)

MSS = 1460
R1 = REMOTE_ISS + 1


def sending(d: Driver, n_segments: int) -> list[tuple[int, int]]:
    """Queue and send n full segments; return their (start, end) sequence ranges."""
    mss = d.conn.send_mss - (12 if d.conn.ts_ok else 0)
    d.conn.send(b"x" * (mss * n_segments))
    sent = d.flush()
    assert len(sent) == n_segments
    return [(s.seq, seq.add(s.seq, len(s.payload))) for s in sent]


# ------------------------------------------------------------------ NewReno


def newreno() -> Driver:
    d, _ = active(replace(FULL, sack=False, timestamps=False), mss=MSS)
    return d


def test_three_duplicate_acks_trigger_fast_retransmit_without_sack() -> None:
    d = newreno()
    segs = sending(d, 6)
    first = segs[0][0]
    # The first segment is lost: every later arrival produces a duplicate ACK.
    assert d.push(peer(".", R1, first, win=65535)) == []  # dupack 1 (limited transmit may apply)
    d.push(peer(".", R1, first, win=65535))
    sent = d.push(peer(".", R1, first, win=65535))
    assert [s.seq for s in sent][:1] == [first]  # fast retransmit of the first segment
    assert d.conn.recovery == "recovery"
    assert d.conn.stats["fast_retransmits"] == 1


def test_newreno_partial_ack_retransmits_the_next_hole() -> None:
    d = newreno()
    segs = sending(d, 6)
    for _ in range(3):
        d.push(peer(".", R1, segs[0][0], win=65535))
    # The retransmission fills the first hole, but the third segment was lost too:
    # the ACK stops there (a partial ACK), and NewReno resends it at once.
    sent = d.push(peer(".", R1, segs[2][0], win=65535))
    assert sent and sent[0].seq == segs[2][0]
    assert d.conn.recovery == "recovery"
    # The full ACK ends recovery and deflates the window to ssthresh.
    d.push(peer(".", R1, segs[-1][1], win=65535))
    assert d.conn.recovery == "open"
    assert d.conn.cc.cwnd == d.conn.cc.ssthresh


# --------------------------------------------------------------- SACK + RACK


def sack_conn() -> Driver:
    d, _ = active(mss=MSS, sack_permitted=True, ts=(PEER_TS, 5000))
    # An RTT sample first, so RACK has a minimum RTT and TLP a timeout to work with.
    d.conn.send(b"warm")
    (s,) = d.flush()
    assert s.options.timestamps is not None
    d.push(
        peer(".", R1, seq.add(s.seq, 4), ts=(PEER_TS, s.options.timestamps[0])), at=d.now + 0.001
    )
    return d


def ts_of(d: Driver) -> tuple[int, int]:
    return (PEER_TS + 1, (int(d.now * 1000) + 5000) & 0xFFFF_FFFF)


def test_sack_above_a_hole_marks_it_lost_after_the_reordering_window() -> None:
    d = sack_conn()
    segs = sending(d, 3)
    start, end = segs[0]
    # The peer SACKs segments 2-3, fewer than DupThresh: RACK waits a reordering
    # window (a quarter of the minimum RTT) in case segment 1 is only late, then
    # retransmits it.
    d.now += 0.0001
    assert d.push(peer(".", R1, start, ts=ts_of(d), sack=((segs[1][0], segs[2][1]),))) == []
    timer = d.conn.get_timer()
    assert timer is not None and timer - d.now < 0.001
    sent = d.advance(timer)
    assert [s.seq for s in sent] == [start]
    assert d.conn.recovery == "recovery" and d.conn.stats["fast_retransmits"] == 1
    # Its ACK covers everything: recovery is over.
    d.push(peer(".", R1, segs[2][1], ts=ts_of(d)))
    assert d.conn.recovery == "open" and d.conn.in_flight == 0


def test_dupthresh_sacked_segments_retransmit_the_hole_at_once() -> None:
    # RFC 8985 §6.2 step 4: with no reordering seen, DupThresh segments SACKed above
    # a hole leave no reordering window (as Linux does).
    d = sack_conn()
    segs = sending(d, 4)
    d.now += 0.0001
    sent = d.push(peer(".", R1, segs[0][0], ts=ts_of(d), sack=((segs[1][0], segs[3][1]),)))
    assert [s.seq for s in sent] == [segs[0][0]]
    assert d.conn.stats["fast_retransmits"] == 1


def test_reordering_seen_keeps_the_reordering_window() -> None:
    d = sack_conn()
    segs = sending(d, 2)
    # Segment 2 is SACKed, then segment 1 arrives late: reordering, never resent.
    d.now += 0.0005
    d.push(peer(".", R1, segs[0][0], ts=ts_of(d), sack=((segs[1][0], segs[1][1]),)))
    d.push(peer(".", R1, segs[1][1], ts=ts_of(d)))
    assert d.conn.stats["fast_retransmits"] == 0
    segs = sending(d, 5)
    d.now += 0.0001
    sent = d.push(peer(".", R1, segs[0][0], ts=ts_of(d), sack=((segs[1][0], segs[4][1]),)))
    assert sent == []  # DupThresh SACKed, but reordering was seen: wait
    timer = d.conn.get_timer()
    assert timer is not None
    assert [s.seq for s in d.advance(timer)] == [segs[0][0]]


def test_rack_detects_a_lost_retransmission_without_an_rto() -> None:
    d = sack_conn()
    segs = sending(d, 6)
    d.now += 0.0001
    resent = d.push(peer(".", R1, segs[0][0], ts=ts_of(d), sack=((segs[1][0], segs[5][1]),)))
    assert [s.seq for s in resent] == [segs[0][0]]  # DupThresh SACKed: at once
    d.conn.send(b"y" * 1448)
    (new,) = d.flush()  # something sent after the retransmission
    # The new segment is SACKed but the retransmission is not: it was lost again,
    # which RACK sees by time where counting duplicate ACKs would not.
    d.now += 0.002
    sack = ((segs[1][0], seq.add(new.seq, 1448)),)
    resent = d.push(peer(".", R1, segs[0][0], ts=ts_of(d), sack=sack))
    assert [s.seq for s in resent] == [segs[0][0]]  # in recovery: no reordering window
    assert d.conn.stats["timeouts"] == 0


def test_tail_loss_probe_resends_the_last_segment_before_the_rto() -> None:
    d = sack_conn()
    segs = sending(d, 3)
    # Nothing comes back. Before the 200 ms RTO, a probe resends the tail.
    probe_at = d.conn.get_timer()
    assert probe_at is not None and probe_at - d.now < 0.2
    sent = d.advance(probe_at)
    assert [s.seq for s in sent] == [segs[-1][0]]
    assert d.conn.stats["tail_loss_probes"] == 1 and d.conn.stats["timeouts"] == 0


def test_tail_loss_probe_sends_new_data_when_there_is_some() -> None:
    # RFC 8985 §7.3: new data the peer's window allows goes first, beyond cwnd: it
    # probes as well, and is no duplicate should the tail have arrived.
    d = sack_conn()
    d.conn.send(b"x" * (40 * 1448))
    flight = d.flush()
    sent_to = d.conn.snd_nxt
    probe_at = d.conn.get_timer()
    assert probe_at is not None
    (probe,) = d.advance(probe_at)
    assert probe.seq == sent_to and len(probe.payload) == 1448
    assert d.conn.stats["tail_loss_probes_new_data"] == 1 and flight


def _timed_out(d: Driver, n: int) -> list[tuple[int, int]]:
    """n segments out, no ACK: the tail loss probe, then the RTO's retransmission."""
    segs = sending(d, n)
    while not d.conn.stats["timeouts"]:
        d.fire_timer()
    assert d.conn.recovery == "loss"
    return segs


def test_a_timeout_whose_retransmission_comes_back_dsacked_is_undone() -> None:
    # Only ACKs were lost: the data had arrived, and the peer reports the
    # retransmission of the head as a duplicate (RFC 2883), so the reduction goes
    # (RFC 3708; Linux's undo_retrans).
    d = sack_conn()
    before = d.conn.cc.cwnd
    segs = _timed_out(d, 5)
    assert d.conn.cc.cwnd == d.conn.cc.mss
    srtt = d.conn.rtt.srtt
    # An echo Eifel cannot tell from the retransmission's: the D-SACK decides.
    d.now += 0.005
    d.push(peer(".", R1, segs[-1][1], ts=ts_of(d), sack=(segs[0],)))
    assert d.conn.stats["dsack_undos"] == 1 and d.conn.stats["spurious_recoveries_undone"] == 1
    assert d.conn.recovery == "open" and d.conn.cc.cwnd >= before
    # And an ACK with a D-SACK gives no RTT sample: it answers a duplicate whose
    # TSval the peer did not take, so its echo is some older segment's.
    assert d.conn.rtt.srtt == srtt


def test_a_tail_probe_does_not_start_the_eifel_episode() -> None:
    # The RTO's retransmission is what Eifel compares against: an ACK echoing the
    # tail probe's TSval shows the timeout was spurious.
    d = sack_conn()
    segs = sending(d, 5)
    d.now += 0.002
    probe_at = d.conn.get_timer()
    assert probe_at is not None
    (probe,) = d.advance(probe_at)
    assert probe.options.timestamps is not None
    while not d.conn.stats["timeouts"]:
        d.fire_timer()
    d.push(peer(".", R1, segs[-1][1], ts=(PEER_TS + 3, probe.options.timestamps[0])))
    assert d.conn.stats["spurious_recoveries_undone"] == 1 and d.conn.recovery == "open"


def test_rto_goes_back_and_retransmits_in_slow_start() -> None:
    d = sack_conn()
    segs = sending(d, 5)
    sent = []
    while not d.conn.stats["timeouts"]:  # the tail loss probe first, then the RTO
        sent = d.fire_timer()
    assert d.conn.stats["tail_loss_probes"] == 1 and d.conn.stats["timeouts"] == 1
    assert d.conn.cc.cwnd == d.conn.cc.mss  # the loss window, RFC 5681 §3.1
    assert d.conn.recovery == "loss"
    assert sent[-1].seq == segs[0][0]  # go back to SND.UNA, one segment
    # Each ACK grows the window (slow start) and lets more retransmissions out.
    more = d.push(peer(".", R1, segs[1][0], ts=ts_of(d)))
    assert [s.seq for s in more] == [segs[1][0], segs[2][0]]


def test_spurious_fast_retransmit_is_undone_by_timestamps() -> None:
    d = sack_conn()
    segs = sending(d, 4)
    before = d.conn.cc.cwnd
    original_ts = (int(d.now * 1000) + 5000) & 0xFFFF_FFFF
    d.now += 0.005  # a later millisecond: TSval tells the transmissions apart
    resent = d.push(peer(".", R1, segs[0][0], ts=ts_of(d), sack=((segs[1][0], segs[3][1]),)))
    assert [s.seq for s in resent] == [segs[0][0]]  # segment 1, at once (DupThresh SACKed)
    d.now += 0.01
    assert d.conn.cc.cwnd < before
    # The original was only reordered: the ACK echoes its (older) timestamp.
    d.push(peer(".", R1, segs[3][1], ts=(PEER_TS + 2, original_ts)))
    assert d.conn.stats["spurious_recoveries_undone"] == 1
    assert d.conn.cc.cwnd >= before and d.conn.recovery == "open"


def test_sender_never_exceeds_the_peer_window_or_cwnd() -> None:
    d, _ = active(mss=MSS)
    d.push(peer(".", R1, ISS + 1, win=3000))
    d.conn.send(b"z" * 100_000)
    sent = d.flush()
    assert sum(len(s.payload) for s in sent) <= 3000
    d.push(peer(".", R1, ISS + 1, win=65535))
    sent = d.flush()
    assert sum(len(s.payload) for s in sent) <= d.conn.cc.cwnd


# ------------------------------------------------------------ the collaborators


def test_congestion_control_slow_start_avoidance_and_loss() -> None:
    for name in ("reno", "cubic"):
        cc = congestion.create(name, 1000)
        assert cc.cwnd == 10_000  # IW10
        cc.on_ack(1000, 0.0, 0.01)
        assert cc.cwnd == 11_000  # slow start: one segment per segment acked
        cc.on_congestion(0.1, flight=20_000)
        assert cc.cwnd == cc.ssthresh < 11_000
        reduced = cc.cwnd
        for i in range(200):
            cc.on_ack(1000, 0.2 + i * 0.01, 0.01)
        assert cc.cwnd > reduced  # congestion avoidance grows it again
        cc.on_timeout(5.0, flight=10_000)
        assert cc.cwnd == 1000
        cc.undo()
        assert cc.cwnd >= reduced


def test_cubic_backs_off_less_than_reno() -> None:
    reno, cubic = congestion.create("reno", 1000), congestion.create("cubic", 1000)
    for cc in (reno, cubic):
        cc.cwnd = 100_000
        cc.on_congestion(0.0, flight=100_000)
    assert reno.cwnd == 50_000 and cubic.cwnd == 70_000


def test_unknown_congestion_control_is_refused() -> None:
    with pytest.raises(ValueError):
        congestion.create("bbr", 1000)


def test_reassembler_merges_trims_and_releases_in_order() -> None:
    r = Reassembler()
    r.add(100, 200, b"c" * 50)
    r.add(100, 150, b"b" * 50)  # adjacent: merged into one block
    r.add(100, 300, b"e" * 10)
    assert len(r) == 2 and r.held_bytes == 110
    assert r.sack_blocks(4) == ((300, 310), (150, 250))
    r.add(100, 140, b"X" * 20)  # overlaps the first block: held bytes win
    assert r.pop_ready(100) == b""
    assert r.pop_ready(140) == b"X" * 10 + b"b" * 50 + b"c" * 50
    assert r.sack_blocks(4) == ((300, 310),)


def test_reassembler_across_2_32() -> None:
    r = Reassembler()
    base = 0xFFFF_FFF0
    r.add(base, seq.add(base, 32), b"2" * 16)
    r.add(base, seq.add(base, 16), b"1" * 16)
    assert r.pop_ready(base) == b""
    assert r.pop_ready(seq.add(base, 16)) == b"1" * 16 + b"2" * 16


def test_retransmit_queue_tracks_pipe_through_sack_and_ack() -> None:
    q = RetransmitQueue()
    for i in range(4):
        q.add(1000 + 100 * i, 1100 + 100 * i, False, now=i * 0.001)
    assert q.pipe == 400
    delivered = q.sack(1000, [(1200, 1400)])
    assert [r.start for r in delivered] == [1200, 1300] and q.pipe == 200
    rack = Rack()
    rack.update(delivered, now=0.01, rtt_hint=None)
    lost, _ = rack.detect(q, now=0.02, srtt=0.01)
    assert [r.start for r in lost] == [1000, 1100] and q.pipe == 0
    q.retransmitted(lost[0], now=0.02)
    assert q.pipe == 100
    assert [r.start for r in q.acknowledge(1250)] == [1000, 1100]
    assert q.outstanding == 150 and q.head is not None and q.head.start == 1250


def test_rack_orders_what_one_batch_sent_by_transmission_not_sequence() -> None:
    # The engine reads its clock once per batch of input, so new data and then a
    # retransmission sent while handling that batch carry the same time. The
    # retransmission went last: a SACK of the new data must not call it lost
    # (a kernel test found every fast retransmission sent twice).
    q = RetransmitQueue()
    hole = q.add(1000, 1100, False, now=0.0)
    q.add(1100, 1200, False, now=0.0)
    q.mark_lost(hole)
    new_data = q.add(1200, 1300, False, now=0.01)
    q.retransmitted(hole, now=0.01)
    rack = Rack()
    rack.update(q.sack(1000, [(1100, 1300)]), now=0.02, rtt_hint=None)
    assert new_data.sacked
    lost, _ = rack.detect(q, now=0.05, srtt=0.01)
    assert lost == []


@pytest.mark.parametrize("opening", ["active", "passive"])
def test_the_first_flight_is_ten_segments_whichever_side_opened(opening: str) -> None:
    # RFC 6928's IW10 counts data: the ACK of a SYN must not grow cwnd (a passive
    # open once sent 11 segments before any data ACK; found by scenario W-04's author).
    d = established() if opening == "active" else established_passive()
    d.push(seg(".", d.r(1), d.l(1), win=65535))
    d.conn.send(b"f" * 30_000)
    sent = d.flush()
    assert len(sent) == 10 and all(len(s.payload) == 1460 for s in sent)


def _ack_each(d: Driver, sent: list[Segment]) -> None:
    """ACK every segment on its own, and whatever those ACKs release, until all is."""
    for _ in range(1000):
        if not sent:
            return
        s = sent.pop(0)
        sent += d.push(peer(".", R1, seq.add(s.seq, len(s.payload))), at=d.now + 0.001)
    raise AssertionError("the sender never ran dry")


@pytest.mark.parametrize("congestion_name", ["reno", "cubic"])
def test_after_idling_longer_than_the_rto_the_sender_restarts_from_iw(
    congestion_name: str,
) -> None:
    # RFC 5681 §4.1: cwnd grown in slow start is not trusted after an idle RTO.
    config = replace(FULL, sack=False, timestamps=False, congestion=congestion_name)
    d, _ = active(config, mss=MSS)
    d.conn.send(b"x" * (10 * MSS))
    _ack_each(d, d.flush())
    assert d.conn.cc.cwnd == 20 * MSS
    # Idle for less than the RTO: the grown window is used at once.
    d.now += d.conn.rtt.rto / 2
    d.conn.send(b"y" * (30 * MSS))
    burst = d.flush()
    assert len(burst) == 20
    _ack_each(d, burst)
    assert d.conn.cc.cwnd > 20 * MSS
    # Idle for longer than the RTO: back to the initial window.
    d.now += d.conn.rtt.rto * 1.5
    d.conn.send(b"z" * (30 * MSS))
    assert len(d.flush()) == 10


def test_a_dsack_is_counted_outside_recovery_too() -> None:
    # The kernel reports a needless retransmission (a tail loss probe whose original
    # had arrived) after everything is acknowledged: the count says so.
    d, _ = active(FULL, mss=MSS, sack_permitted=True)
    d.conn.send(b"x" * 100)
    (data,) = d.flush()
    end = seq.add(data.seq, 100)
    d.push(peer(".", REMOTE_ISS + 1, end))
    assert d.conn.recovery == "open"
    d.push(peer(".", REMOTE_ISS + 1, end, sack=((data.seq, end),)))
    assert d.conn.stats["dsacks_received"] == 1
