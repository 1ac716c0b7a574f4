"""Segmentation offload (TSO) in the core, the retransmit queue's splitting of
offload segments, the partial checksum a GSO frame carries and its virtio-net header."""

import itertools
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpstack import wire
from tcpstack.core import seq
from tcpstack.core.rtxqueue import RetransmitQueue
from tcpstack.core.segment import Flags, Options, Segment
from tcpstack.link import GSO_MAX, VNET_GSO_NONE, VNET_GSO_TCPV4, VNET_HDR, _vnet_header
from tests.unit.helpers import FULL, PEER_TS, REMOTE_ISS, active, peer

MSS = 1460
R1 = REMOTE_ISS + 1
TSO = replace(FULL, tso_max=GSO_MAX)


def flight(config: object, total: int, *, win: int = 65535) -> list[Segment]:
    d, _ = active(config, mss=MSS)  # type: ignore[arg-type]
    d.push(peer(".", R1, seq.add(d.local_iss, 1), win=win))
    d.conn.send(b"x" * total)
    return d.flush()


# ------------------------------------------------------------------ the sender


@pytest.mark.parametrize(
    ("total", "win"),
    [(10 * MSS, 65535), (3 * MSS + 100, 65535), (40 * MSS, 65535), (10 * MSS, 5000)],
)
def test_tso_sends_the_same_bytes_in_fewer_segments(total: int, win: int) -> None:
    # TSO changes how the flight is cut, never how much of it goes: the window,
    # cwnd and sender SWS avoidance allow exactly what they allow one MSS at a time.
    plain = flight(replace(FULL, tso_max=0), total, win=win)
    tso = flight(TSO, total, win=win)
    assert b"".join(s.payload for s in tso) == b"".join(s.payload for s in plain)
    assert len(tso) < len(plain) or len(plain) == 1
    # Only the end of the data may leave a partial MSS.
    for s in tso[:-1]:
        assert len(s.payload) % MSS == 0


def test_tso_segment_never_exceeds_the_configured_limit() -> None:
    sent = flight(replace(FULL, tso_max=4 * MSS + 7), 10 * MSS)
    assert [len(s.payload) for s in sent] == [4 * MSS, 4 * MSS, 2 * MSS]


def test_rto_resends_one_mss_of_a_lost_offload_segment() -> None:
    d, _ = active(replace(TSO, sack=False, timestamps=False), mss=MSS)
    d.conn.send(b"x" * (10 * MSS))
    # IW10 in two offload segments: never more than half of cwnd in one (as Linux),
    # so that a flight draws more than one ACK.
    big, other = d.flush()
    assert len(big.payload) == len(other.payload) == 5 * MSS
    # Nothing comes back: after the timeout cwnd is one segment, and so is the resend.
    resent = d.fire_timer()
    assert [(s.seq, len(s.payload)) for s in resent] == [(big.seq, MSS)]
    # Each ACK then lets slow start resend the next pieces, never past cwnd.
    sent = d.push(peer(".", R1, seq.add(big.seq, MSS)))
    assert [len(s.payload) for s in sent] == [2 * MSS]


def test_slow_start_grows_by_an_acknowledged_offload_segment_whole() -> None:
    # The peer answers one offload segment with one ACK, as the one segment it
    # received: slow start doubles cwnd per round trip, as with one ACK per MSS.
    d, _ = active(replace(TSO, sack=False, timestamps=False), mss=MSS)
    d.conn.send(b"x" * (40 * MSS))
    big, other = d.flush()
    assert len(big.payload) == 5 * MSS and d.conn.cc.cwnd == 10 * MSS
    d.push(peer(".", R1, seq.add(big.seq, len(big.payload))))
    assert d.conn.cc.cwnd == 15 * MSS


@pytest.mark.parametrize(("tso_max", "size"), [(0, MSS), (2 * MSS, 2 * MSS)])
def test_a_stretch_ack_grows_cwnd_by_two_segments_as_sent(tso_max: int, size: int) -> None:
    # RFC 3465, L = 2: an ACK over more than two segments (the ACKs between were
    # lost) grows cwnd by two of them only, however many it covers.
    d, _ = active(replace(FULL, tso_max=tso_max, sack=False, timestamps=False), mss=MSS)
    d.conn.send(b"x" * (40 * MSS))
    flight = d.flush()
    assert all(len(s.payload) == size for s in flight)
    d.push(peer(".", R1, seq.add(flight[0].seq, 3 * size)))
    assert d.conn.cc.cwnd == 10 * MSS + 2 * size


def test_tail_loss_probe_resends_only_the_last_mss() -> None:
    d, _ = active(TSO, mss=MSS, sack_permitted=True, ts=(PEER_TS, 5000))
    d.conn.send(b"warm")
    (s,) = d.flush()
    assert s.options.timestamps is not None
    ts = (PEER_TS, s.options.timestamps[0])
    d.push(peer(".", R1, seq.add(s.seq, 4), ts=ts), at=d.now + 0.001)
    mss = MSS - 12
    d.conn.send(b"y" * (3 * mss))
    (big,) = d.flush()
    probe_at = d.conn.get_timer()
    assert probe_at is not None
    probe = d.advance(probe_at)
    assert [(s.seq, len(s.payload)) for s in probe] == [(seq.add(big.seq, 2 * mss), mss)]
    assert d.conn.stats["tail_loss_probes"] == 1


def test_partial_sack_of_an_offload_segment_retransmits_only_the_hole() -> None:
    d, _ = active(TSO, mss=MSS, sack_permitted=True, ts=(PEER_TS, 5000))
    d.conn.send(b"warm")
    (s,) = d.flush()
    assert s.options.timestamps is not None
    d.push(peer(".", R1, seq.add(s.seq, 4), ts=(PEER_TS, s.options.timestamps[0])), at=0.02)
    mss = MSS - 12
    d.conn.send(b"z" * (6 * mss))
    big = d.flush()[0]  # five MSS, half of cwnd; the sixth follows on its own
    start = big.seq
    # The second MSS of the offload segment was lost on the wire; the rest arrived.
    d.now += 0.0001
    ts = (PEER_TS + 1, (int(d.now * 1000) + 5000) & 0xFFFF_FFFF)
    hole = (seq.add(start, mss), seq.add(start, 2 * mss))
    d.push(peer(".", R1, hole[0], ts=ts, sack=((hole[1], seq.add(start, 6 * mss)),)))
    timer = d.conn.get_timer()
    assert timer is not None
    resent = d.advance(timer)
    assert [(s.seq, len(s.payload)) for s in resent] == [(hole[0], mss)]


# ------------------------------------------------------- the retransmit queue


def test_split_keeps_order_marks_and_pipe() -> None:
    q = RetransmitQueue()
    q.add(1000, 4000, True, now=0.5)
    record = q.head
    assert record is not None
    second = q.split(record, 2500)
    assert (record.start, record.end, record.fin) == (1000, 2500, False)
    assert (second.start, second.end, second.fin, second.xmit_time) == (2500, 4000, True, 0.5)
    assert q.pipe == 3000 and q.tail is second
    with pytest.raises(ValueError):
        q.split(second, 2500)  # at its edge: nothing to cut


def test_sack_splits_a_record_it_covers_in_part() -> None:
    q = RetransmitQueue()
    q.add(1000, 1600, False, now=0.0)
    q.add(1600, 1900, False, now=0.0)
    delivered = q.sack(1000, [(1200, 1400), (1500, 1700)])
    assert [(r.start, r.end) for r in delivered] == [(1200, 1400), (1500, 1600), (1600, 1700)]
    assert q.pipe == 900 - 400
    # A block reaching below SND.UNA counts only above it; nothing is SACKed twice.
    assert q.sack(1000, [(900, 1300)]) == [q.head]
    assert q.pipe == 300


@given(
    cuts=st.lists(st.integers(1, 2999), max_size=5, unique=True),
    blocks=st.lists(st.tuples(st.integers(0, 3000), st.integers(1, 400)), max_size=4),
    base=st.sampled_from([1000, 0xFFFF_FF00]),
)
def test_sack_and_split_account_every_byte_once(
    cuts: list[int], blocks: list[tuple[int, int]], base: int
) -> None:
    q = RetransmitQueue()
    q.add(base, seq.add(base, 3000), False, now=0.0)
    for cut in sorted(cuts):
        tail = q.tail
        assert tail is not None
        if seq.lt(tail.start, seq.add(base, cut)):
            q.split(tail, seq.add(base, cut))
    sacked = set()
    for left, size in blocks:
        q.sack(base, [(seq.add(base, left), seq.add(base, left + size))])
        sacked |= set(range(left, min(left + size, 3000)))
    assert q.pipe == 3000 - len(sacked)
    records = list(q)
    assert records[0].start == base and records[-1].end == seq.add(base, 3000)
    assert all(a.end == b.start for a, b in itertools.pairwise(records))


# --------------------------------------------------------------- the wire


def _segment(payload: bytes) -> Segment:
    options = Options(timestamps=(1, 2))
    return Segment(40000, 8080, 0xFFFF_0000, 77, Flags.ACK | Flags.PSH, 512, options, payload)


@given(payload=st.binary(min_size=1, max_size=3000))
def test_partial_checksum_completes_to_the_full_one(payload: bytes) -> None:
    args = (b"\x02" * 6, b"\x04" * 6, "198.18.0.1", "198.18.0.2", _segment(payload))
    full = wire.encode_tcp(*args)
    partial = wire.encode_tcp(*args, partial_checksum=True)
    assert partial[:50] + partial[52:] == full[:50] + full[52:]
    # What the device does: sum from csum_start with the field as given, complement.
    done = wire.internet_checksum(partial[34:])
    assert done.to_bytes(2, "big") == full[50:52]


def test_vnet_header_asks_for_segmentation_only_beyond_one_segment() -> None:
    frame = wire.encode_tcp(
        b"\x02" * 6, b"\x04" * 6, "198.18.0.1", "198.18.0.2", _segment(b"x" * 5000),
        partial_checksum=True,
    )  # fmt: skip
    flags, gso_type, hdr_len, gso_size, start, offset = VNET_HDR.unpack(_vnet_header(frame, 1448))
    assert (flags, gso_type, hdr_len, gso_size) == (1, VNET_GSO_TCPV4, 14 + 20 + 32, 1448)
    assert (start, offset) == (34, 16)
    assert VNET_HDR.unpack(_vnet_header(frame, 5000))[1] == VNET_GSO_NONE
    assert _vnet_header(frame, 0) == bytes(VNET_HDR.size)
