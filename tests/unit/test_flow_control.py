"""Delayed ACKs, Nagle, zero windows, keep-alive and orphans, with a fake clock."""

from dataclasses import replace

from tcpstack.config import TcpConfig
from tcpstack.core import seq
from tcpstack.core.events import ConnectionClosed, ConnectionReset, ConnectionTimedOut
from tcpstack.core.segment import Flags
from tcpstack.core.state import State
from tests.unit.helpers import CONFIG, ISS, REMOTE_ISS, Driver, active, established, peer, seg

R1 = REMOTE_ISS + 1


def test_delayed_ack_every_second_full_segment_or_after_40ms() -> None:
    d, _ = active(replace(CONFIG, delayed_ack=0.04, quick_acks=2), mss=1460)
    full = b"x" * 1460
    # Quick-ACK mode at the start: the first two segments are ACKed at once.
    assert len(d.push(peer("P.", R1, ISS + 1, data=full))) == 1
    assert len(d.push(peer("P.", R1 + 1460, ISS + 1, data=full))) == 1
    # Then one ACK for every second full segment...
    assert d.push(peer("P.", R1 + 2920, ISS + 1, data=full)) == []
    (ack,) = d.push(peer("P.", R1 + 4380, ISS + 1, data=full))
    assert ack.ack == R1 + 5840
    # ...and a lone segment waits 40 ms, no more.
    assert d.push(peer("P.", R1 + 5840, ISS + 1, data=b"y")) == []
    timer = d.conn.get_timer()
    assert timer is not None and abs(timer - (d.now + 0.04)) < 1e-9
    (ack,) = d.advance(timer)
    assert ack.ack == R1 + 5841


def test_out_of_order_and_fin_are_acked_at_once_even_when_delaying() -> None:
    d, _ = active(replace(CONFIG, delayed_ack=0.04, quick_acks=0), mss=1460)
    assert len(d.push(peer("P.", R1 + 100, ISS + 1, data=b"later"))) == 1
    assert len(d.push(peer("F.", R1 + 105, ISS + 1))) == 1


def test_data_we_send_carries_the_pending_ack() -> None:
    d, _ = active(replace(CONFIG, delayed_ack=0.04, quick_acks=0), mss=1460)
    assert d.push(peer("P.", R1, ISS + 1, data=b"question")) == []
    d.conn.send(b"answer")
    (reply,) = d.flush()
    assert reply.payload == b"answer" and reply.ack == R1 + 8
    assert d.advance(d.now + 0.1) == []  # the delayed-ACK timer was cancelled


def test_nagle_holds_a_small_segment_while_data_is_unacknowledged() -> None:
    d, _ = active(replace(CONFIG, nagle=True), mss=1460)
    d.conn.send(b"a")
    assert [s.payload for s in d.flush()] == [b"a"]  # nothing in flight: goes at once
    d.conn.send(b"b")
    d.conn.send(b"c")
    assert d.flush() == []  # small, and "a" is unacknowledged
    (s,) = d.push(peer(".", R1, ISS + 2))
    assert s.payload == b"bc"  # coalesced, sent when the ACK came


def test_tcp_nodelay_sends_small_segments_at_once() -> None:
    d, _ = active(replace(CONFIG, nagle=True), mss=1460)
    d.conn.nodelay = True
    d.conn.send(b"a")
    d.flush()
    d.conn.send(b"b")
    assert [s.payload for s in d.flush()] == [b"b"]


def test_probe_bytes_are_resent_at_once_when_the_window_opens() -> None:
    # A Linux receiver drops the byte of a zero-window probe. When its window opens,
    # that byte must go again immediately, not after a backed-off RTO.
    d = established()
    d.push(seg(".", d.r(1), d.l(1), win=0))
    d.conn.send(b"abcdef")
    assert d.flush() == []  # nothing fits a zero window; the persist timer starts
    for _ in range(6):  # probes with growing backoff, each answered with win 0
        probe = d.fire_timer()
        assert [s.payload for s in probe] == [b"a"]
        d.push(seg(".", d.r(1), d.l(1), win=0))
    sent = d.push(seg(".", d.r(1), d.l(1), win=1000))
    assert sent[0].seq == d.l(1) and b"".join(s.payload for s in sent) == b"abcdef"


def test_keepalive_probes_then_times_out() -> None:
    d = established()
    d.conn.keepalive_idle = 10.0
    d.conn.keepalive_interval = 2.0
    d.conn.keepalive_probes = 3
    d.conn.set_keepalive(True, d.now)
    start = d.now
    (probe,) = d.advance(start + 10.0)
    # Linux's form: one byte before SND.NXT, no data, which the peer must ACK.
    assert probe.seq == seq.add(d.conn.snd_una, -1) and probe.payload == b""
    # An answer resets the count; silence after three probes drops the connection.
    d.push(seg(".", d.r(1), d.l(1)))
    for _ in range(3):
        assert len(d.fire_timer()) == 1
    d.fire_timer()
    assert d.conn.state is State.CLOSED
    assert d.event_types()[-1] is ConnectionTimedOut


def test_keepalive_off_sends_nothing_when_idle() -> None:
    d = established()
    assert d.conn.get_timer() is None
    assert d.advance(d.now + 10_000) == []


def test_orphan_in_fin_wait_2_times_out_quietly() -> None:
    d = established(config=replace(CONFIG, fin_timeout=5.0))
    d.conn.orphan(d.now)
    d.flush()
    d.push(seg(".", d.r(1), d.l(2)))
    assert d.conn.state is State.FIN_WAIT_2
    assert d.advance(d.now + 5.0) == []  # no RST, as Linux
    assert d.conn.state is State.CLOSED
    assert d.event_types()[-1] is ConnectionClosed


def test_data_for_an_orphan_is_answered_with_rst() -> None:
    d = established()
    d.conn.orphan(d.now)
    d.flush()
    sent = d.push(seg("P.", d.r(1), d.l(2), data=b"nobody reads this"))
    assert [s.flags for s in sent] == [Flags.RST]
    assert d.conn.state is State.CLOSED


def test_shut_rd_takes_data_until_our_fin_is_out_then_resets_it() -> None:
    # Linux: SHUT_RD alone changes nothing on the wire; with our FIN sent as well,
    # new data is answered with RST and the application hears of the reset.
    d = established()
    d.conn.shutdown_read()
    sent = d.push(seg("P.", d.r(1), d.l(1), data=b"still taken"))
    assert [s.flags for s in sent] == [Flags.ACK] and d.conn.readable == 11
    d.conn.shutdown(d.now)
    d.flush()
    d.push(seg(".", d.r(12), d.l(2)))
    assert d.conn.state is State.FIN_WAIT_2
    sent = d.push(seg("P.", d.r(12), d.l(2), data=b"nobody reads this"))
    assert [s.flags for s in sent] == [Flags.RST]
    assert d.conn.state is State.CLOSED
    assert ConnectionReset in d.event_types()


def test_persist_timer_survives_a_probe_acked_with_the_window_shut() -> None:
    # A probe fills a small window and is ACKed with window 0: nothing is in flight,
    # data still waits, and the persist timer must still be running to ask again.
    d = established()
    c = d.conn
    d.push(seg(".", d.r(1), d.l(1), win=500), at=0.02)
    c.send(b"a" * 5000)
    d.flush()
    d.fire_timer()
    d.push(seg(".", d.r(1), d.l(501), win=0), at=d.now + 0.001)
    assert c.unsent == 4500
    assert "persist" in c.timers()
    probe = d.fire_timer()
    assert probe and len(probe[0].payload) == 1


def _shrunk_to_zero_with_data_in_flight() -> Driver:
    """The peer offered 10000 bytes, took the first 1000 of 4000 in flight and then
    shrank its window to zero (RFC 9293 §3.8.6 lets a receiver do that)."""
    d = established()
    d.push(seg(".", d.r(1), d.l(1), win=10000), at=0.02)
    d.conn.send(b"s" * 4000)
    assert sum(len(s.payload) for s in d.flush()) == 4000
    assert d.push(seg(".", d.r(1), d.l(1001), win=0), at=0.03) == []
    return d


def test_a_window_shrunk_to_zero_is_probed_for_as_long_as_the_peer_answers() -> None:
    d = _shrunk_to_zero_with_data_in_flight()
    c = d.conn
    for _ in range(3 * c.config.max_retries):
        probe = d.fire_timer()
        # One retransmission from SND.UNA per timeout, never data past it (SHLD-15/16).
        assert [(s.seq, len(s.payload) > 0) for s in probe] == [(d.l(1001), True)]
        d.push(seg(".", d.r(1), d.l(1001), win=0), at=d.now + 0.001)
    assert c.state is State.ESTABLISHED  # SHLD-17, MUST-37
    # The window opens: what the peer dropped goes again at once, not after the
    # backed-off retransmission timeout.
    sent = d.push(seg(".", d.r(1), d.l(1001), win=10000), at=d.now + 0.001)
    assert sent and sent[0].seq == d.l(1001)


def test_a_window_shrunk_to_zero_still_times_out_when_the_peer_goes_quiet() -> None:
    d = _shrunk_to_zero_with_data_in_flight()
    for _ in range(d.conn.config.max_retries + 1):
        d.fire_timer()
    assert d.conn.state is State.CLOSED
    assert ConnectionTimedOut() in d.events


def test_zero_window_probes_start_after_an_rto_and_back_off() -> None:
    d = established()
    d.push(seg(".", d.r(1), d.l(1), win=0), at=0.02)
    d.conn.send(b"waiting")
    assert d.flush() == []
    rto = d.conn.rtt.rto
    sent_at = []
    for _ in range(4):
        assert d.fire_timer()
        sent_at.append(d.now)
        d.push(seg(".", d.r(1), d.l(1), win=0), at=d.now + 0.001)
    # SHLD-29: the first probe one RTO after the window closed; SHLD-30: each wait
    # twice the one before.
    assert abs(sent_at[0] - (0.02 + rto)) < 1e-6
    gaps = [b - a for a, b in zip(sent_at, sent_at[1:], strict=False)]
    for shorter, longer in zip(gaps, gaps[1:], strict=False):
        assert abs(longer - 2 * shorter) < 0.01


def test_keepalive_waits_while_data_is_in_flight_and_restarts_on_every_ack() -> None:
    # MUST-26: a probe only after the idle time passes with nothing outstanding.
    d = established()
    d.conn.keepalive_idle = 10.0
    d.conn.set_keepalive(True, d.now)
    d.advance(d.now + 8.0)
    d.push(seg("P.", d.r(1), d.l(1), data=b"q"))  # traffic: the idle time starts again
    d.advance(d.now + 9.0)
    assert d.conn.stats["keepalive_probes"] == 0
    d.conn.send(b"reply")
    d.flush()
    # Data in flight when the idle time ends: the retransmission timer watches the
    # peer, and no keep-alive goes.
    sent = d.advance(d.now + 10.5)
    assert all(s.seq == d.l(1) and s.payload == b"reply" for s in sent)
    assert d.conn.stats["keepalive_probes"] == 0
    d.push(seg(".", d.r(2), d.l(6)))
    at = d.now
    (probe,) = d.advance(at + 10.0)
    assert probe.payload == b"" and probe.seq == seq.add(d.l(6), -1)


def test_defaults_keepalive_after_two_hours_and_r2_after_over_100_seconds() -> None:
    # MUST-28: keep-alives, when on, wait two hours by default. SHLD-11: the default
    # give-up point R2 is more than 100 s: sum the backed-off timeouts up to it.
    assert TcpConfig().keepalive_idle >= 7200
    config = TcpConfig()
    rto, total = config.rto_min, 0.0
    for _ in range(config.max_retries + 1):
        total += rto
        rto = min(2 * rto, config.rto_max)
    assert total >= 100


def test_a_buffer_made_smaller_keeps_the_window_offered_and_takes_what_fits() -> None:
    # Scenario W-10: SO_RCVBUF lowered under an open window. The window offered does
    # not shrink (SHLD-14), but in-window data beyond the smaller buffer is trimmed,
    # and the ACK says what was taken.
    d = established()
    (ack,) = d.push(seg("P.", d.r(1), d.l(1), data=b"a" * 1000))
    offered = ack.ack + ack.window
    d.conn.set_receive_buffer(2048)
    (ack,) = d.push(seg("P.", d.r(1001), d.l(1), data=b"b" * 4000))
    assert ack.ack == d.r(2049)  # 1,048 bytes more fit in 2,048
    assert ack.ack + ack.window >= offered  # the right edge held
    assert d.conn.readable == 2048 and d.conn.stats["trimmed_to_window"] == 1
    # Reading frees the buffer; the peer's resend of the rest is taken as it fits.
    assert d.conn.receive(4096) == b"a" * 1000 + b"b" * 1048
    d.flush()
    (ack,) = d.push(seg("P.", d.r(2049), d.l(1), data=b"b" * 2952))
    assert ack.ack == d.r(4097) and d.conn.readable == 2048


def test_two_full_segments_carrying_timestamps_are_acked_at_once() -> None:
    # With timestamps a full-sized segment carries MSS - 12 bytes: two of those are
    # "every second full-sized segment" (RFC 5681 §4.2), though short of 2 * MSS.
    config = TcpConfig(msl=1.0, delayed_ack=0.04, quick_acks=0, nagle=False)
    d, syn = active(config, mss=1460, ts=(777_000, 5000))
    assert d.conn.ts_ok and syn.options.mss == 1460
    r1, ours = REMOTE_ISS + 1, ISS + 1
    full = 1460 - 12
    assert d.push(peer(".", r1, ours, data=b"a" * full, ts=(777_001, 5000))) == []
    (ack,) = d.push(peer(".", r1 + full, ours, data=b"b" * full, ts=(777_002, 5000)))
    assert ack.ack == r1 + 2 * full
