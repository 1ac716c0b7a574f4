"""Window scaling, timestamps and PAWS (RFC 7323), SACK negotiation and blocks (RFC 2018)."""

from dataclasses import replace

from tcpstack.core import seq
from tcpstack.core.connection import TcpConnection
from tcpstack.core.segment import Flags, Options
from tests.unit.helpers import (
    FULL,
    ISS,
    LOCAL_PORT,
    PEER_TS,
    REMOTE_ISS,
    REMOTE_PORT,
    Driver,
    active,
    peer,
)


def test_syn_offers_everything_linux_does() -> None:
    _, syn = active()
    o = syn.options
    assert (o.mss, o.sack_permitted, o.wscale) == (1460, True, 7)
    assert o.timestamps == (5000, 0)  # TSval from our offset, TSecr 0 (RFC 7323 §3.2)
    assert syn.window == 65535  # the SYN's window is never scaled


def test_options_need_both_sides() -> None:
    d, _ = active(mss=1460)  # the peer offers nothing but MSS
    c = d.conn
    assert (c.snd_wscale, c.rcv_wscale, c.sack_ok, c.ts_ok) == (0, 0, False, False)
    d.conn.send(b"x")
    (data,) = d.flush()
    assert data.options == Options()  # no timestamps on later segments


def test_window_scaling_applies_to_later_segments_both_ways() -> None:
    d, _ = active(wscale=3)
    c = d.conn
    assert (c.snd_wscale, c.rcv_wscale) == (3, 7)
    d.push(peer(".", REMOTE_ISS + 1, ISS + 1, win=1000))
    assert c.snd_wnd == 8000  # 1000 << 3
    c.send(b"a")
    (seg,) = d.flush()
    assert seg.window == FULL.receive_buffer >> 7  # our window, scaled by our shift


def test_peer_shift_above_14_is_taken_as_14() -> None:
    d, _ = active(wscale=15)
    assert d.conn.snd_wscale == 14


def test_passive_syn_ack_answers_only_what_was_offered() -> None:
    conn = TcpConnection(FULL, LOCAL_PORT, 0, iss=ISS, ts_offset=9, name="t")
    d = Driver(conn, local_iss=ISS)
    conn.open_passive()
    (syn_ack,) = d.push(peer("S", REMOTE_ISS, mss=1400, sack_permitted=True))
    assert syn_ack.options == Options(mss=1460, sack_permitted=True)
    assert conn.sack_ok and not conn.ts_ok and conn.rcv_wscale == 0


def test_timestamps_echo_and_measure_rtt() -> None:
    d, _ = active(ts=(PEER_TS, 5000 + 0))
    c = d.conn
    c.send(b"hello")
    (data,) = d.flush()
    tsval = data.options.timestamps
    assert tsval is not None and tsval[1] == PEER_TS  # we echo TS.Recent
    # The ACK echoes our TSval; 30 ms later that is the RTT sample.
    d.push(peer(".", REMOTE_ISS + 1, ISS + 6, ts=(PEER_TS + 1, tsval[0])), at=d.now + 0.03)
    assert c.rtt.srtt is not None and abs(c.rtt.srtt - (0.875 * 0.01 + 0.125 * 0.03)) < 0.002


def test_timestamps_measure_retransmitted_segments_too() -> None:
    d, _ = active(ts=(PEER_TS, 5000))
    c = d.conn
    c.send(b"x")
    d.flush()
    (rtx,) = d.fire_timer()
    assert rtx.payload == b"x"
    srtt = c.rtt.srtt
    # Karn's rule would forbid this sample; the echoed TSval makes it unambiguous.
    assert rtx.options.timestamps is not None
    d.push(peer(".", REMOTE_ISS + 1, ISS + 2, ts=(PEER_TS + 5, rtx.options.timestamps[0])))
    assert c.rtt.srtt != srtt


def test_paws_drops_an_old_duplicate_and_acks() -> None:
    d, _ = active(ts=(PEER_TS, 5000))
    c = d.conn
    d.push(peer("P.", REMOTE_ISS + 1, ISS + 1, data=b"new", ts=(PEER_TS + 10, 5000)))
    assert c.receive(10) == b"new"
    # An old segment with an older timestamp, even one in the window, is refused.
    sent = d.push(peer("P.", REMOTE_ISS + 4, ISS + 1, data=b"old", ts=(PEER_TS + 5, 5000)))
    assert [s.flags for s in sent] == [Flags.ACK]
    assert c.readable == 0 and c.stats["drop_paws"] == 1


def test_paws_spares_a_reordered_pure_duplicate_ack() -> None:
    d, _ = active(ts=(PEER_TS, 5000))
    c = d.conn
    d.push(peer(".", REMOTE_ISS + 1, ISS + 1, ts=(PEER_TS + 10, 5000)))
    # Linux's tcp_disordered_ack(): a pure duplicate ACK is not a replay threat.
    assert d.push(peer(".", REMOTE_ISS + 1, ISS + 1, ts=(PEER_TS + 9, 5000))) == []
    assert c.stats["drop_paws"] == 0


def test_ts_recent_follows_the_left_edge_only() -> None:
    d, _ = active(ts=(PEER_TS, 5000))
    c = d.conn
    # Out of order: its timestamp is not taken (RFC 7323 §4.3, R3).
    d.push(peer("P.", REMOTE_ISS + 101, ISS + 1, data=b"later", ts=(PEER_TS + 50, 5000)))
    assert c.ts_recent == PEER_TS
    d.push(peer("P.", REMOTE_ISS + 1, ISS + 1, data=b"x" * 100, ts=(PEER_TS + 40, 5000)))
    assert c.ts_recent == PEER_TS + 40


def test_sack_blocks_report_out_of_order_data_most_recent_first() -> None:
    d, _ = active(sack_permitted=True)
    c = d.conn
    base = REMOTE_ISS + 1
    (ack1,) = d.push(peer("P.", base + 100, ISS + 1, data=b"b" * 100))
    assert ack1.ack == base and ack1.options.sack_blocks == ((base + 100, base + 200),)
    (ack2,) = d.push(peer("P.", base + 300, ISS + 1, data=b"d" * 100))
    assert ack2.options.sack_blocks == ((base + 300, base + 400), (base + 100, base + 200))
    # Filling the first hole merges it away; the later block remains.
    (ack3,) = d.push(peer("P.", base, ISS + 1, data=b"a" * 100))
    assert ack3.ack == base + 200 and ack3.options.sack_blocks == ((base + 300, base + 400),)
    assert c.receive(1000) == b"a" * 100 + b"b" * 100


def test_sack_blocks_fit_beside_timestamps() -> None:
    d, _ = active(sack_permitted=True, ts=(PEER_TS, 5000))
    base = REMOTE_ISS + 1
    for i in range(5):
        sent = d.push(
            peer("P.", base + 100 + 200 * i, ISS + 1, data=b"z" * 100, ts=(PEER_TS, 5000))
        )
    (ack,) = sent
    # 40 option bytes: timestamps (12) leave room for three blocks (4 + 24).
    assert len(ack.options.sack_blocks) == 3
    assert ack.options.encoded_length() <= 40


def test_transfer_crossing_2_32_with_every_option() -> None:
    config = replace(FULL, receive_buffer=1 << 20)
    conn = TcpConnection(config, LOCAL_PORT, REMOTE_PORT, iss=0xFFFF_F000, name="wrap")
    d = Driver(conn, local_iss=0xFFFF_F000)
    conn.open_active(0.0)
    d.flush()
    d.push(
        peer(
            "S.",
            0xFFFF_FFF0,
            0xFFFF_F001,
            win=65535,
            mss=1460,
            wscale=7,
            sack_permitted=True,
            ts=(1, 0),
        )
    )
    payload = bytes(range(256)) * 40  # 10 KB: within IW10, and past 2**32 after 4 KB
    conn.send(payload)
    sent = d.flush()
    assert b"".join(s.payload for s in sent) == payload
    end = seq.add(0xFFFF_F001, len(payload))
    d.push(peer(".", 0xFFFF_FFF1, end, ts=(2, 0)))
    assert conn.snd_una == end and conn.in_flight == 0
    # The peer's data crosses 2**32 as well, out of order first.
    d.push(peer("P.", seq.add(0xFFFF_FFF1, 100), end, data=b"B" * 100, ts=(3, 0)))
    d.push(peer("P.", 0xFFFF_FFF1, end, data=b"A" * 100, ts=(4, 0)))
    assert conn.receive(1000) == b"A" * 100 + b"B" * 100
    assert conn.rcv_nxt == seq.add(0xFFFF_FFF1, 200)
