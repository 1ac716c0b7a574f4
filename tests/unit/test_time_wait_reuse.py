"""A new SYN for a 4-tuple in TIME-WAIT: RFC 9293 §3.6.1 (MAY-2) and RFC 6191.

The core decides whether the SYN may end TIME-WAIT at once (`reopens_time_wait`);
the engine then starts the new incarnation with `next_incarnation_iss`.
"""

from __future__ import annotations

from tcpstack import State
from tcpstack.core import seq
from tcpstack.core.segment import Segment, flags_str
from tests.unit.helpers import (
    ISS,
    PEER_TS,
    REMOTE_ISS,
    Driver,
    active,
    established,
    peer,
    seg,
    time_wait,
)


def _timed_time_wait() -> tuple[Driver, int, int]:
    """TIME-WAIT after a connection with timestamps; (driver, RCV.NXT, TS.Recent)."""
    d, _ = active(ts=(PEER_TS, 0))
    conn = d.conn
    conn.shutdown(d.now)
    d.flush()
    d.push(peer(".", REMOTE_ISS + 1, ISS + 2, ts=(PEER_TS + 10, 0)), at=0.02)
    d.push(peer("F.", REMOTE_ISS + 1, ISS + 2, ts=(PEER_TS + 20, 0)), at=0.03)
    assert conn.state is State.TIME_WAIT and conn.ts_ok
    assert conn.ts_recent == PEER_TS + 20
    return d, conn.rcv_nxt, conn.ts_recent


def _syn(seq_no: int, tsval: int | None) -> Segment:
    return peer("S", seq_no, ts=None if tsval is None else (tsval, 0))


def test_without_timestamps_a_higher_sequence_number_reopens() -> None:
    d = time_wait()
    rcv_nxt = d.conn.rcv_nxt
    assert d.conn.reopens_time_wait(seg("S", rcv_nxt + 1))
    assert d.conn.reopens_time_wait(seg("S", rcv_nxt + 100_000))
    assert not d.conn.reopens_time_wait(seg("S", rcv_nxt))
    assert not d.conn.reopens_time_wait(seg("S", rcv_nxt - 1))
    # Only a bare SYN, and only in TIME-WAIT.
    assert not d.conn.reopens_time_wait(seg("S.", rcv_nxt + 1, d.l(2)))
    assert not d.conn.reopens_time_wait(seg("R", rcv_nxt + 1))
    assert not established().conn.reopens_time_wait(seg("S", rcv_nxt + 1))


def test_with_timestamps_a_newer_tsval_reopens_whatever_the_sequence_number() -> None:
    d, rcv_nxt, recent = _timed_time_wait()
    conn = d.conn
    # RFC 6191: the timestamp decides, so a client whose ISN went backwards (a
    # fresh random ISN, not the same clock) still gets in.
    assert conn.reopens_time_wait(_syn(rcv_nxt - 5000, recent + 1))
    assert conn.reopens_time_wait(_syn(rcv_nxt + 5000, recent + 1))
    # An older one is an old duplicate, even with a higher sequence number (PAWS).
    assert not conn.reopens_time_wait(_syn(rcv_nxt + 5000, recent - 1))
    # An equal one falls back on the sequence number.
    assert conn.reopens_time_wait(_syn(rcv_nxt + 1, recent))
    assert not conn.reopens_time_wait(_syn(rcv_nxt, recent))
    # A new incarnation without timestamps: the sequence number alone.
    assert conn.reopens_time_wait(_syn(rcv_nxt + 1, None))
    assert not conn.reopens_time_wait(_syn(rcv_nxt - 1, None))
    # Timestamps compare in their own modular space.
    assert conn.reopens_time_wait(_syn(rcv_nxt - 1, seq.add(recent, 0x7FFF_FFFF)))
    assert not conn.reopens_time_wait(_syn(rcv_nxt - 1, seq.add(recent, 0x8000_0001)))


def test_a_syn_that_does_not_reopen_meets_the_time_wait_ack() -> None:
    d, rcv_nxt, recent = _timed_time_wait()
    conn = d.conn
    sent = d.push(_syn(rcv_nxt + 5000, recent - 1), at=0.05)
    assert [flags_str(s.flags) for s in sent] == ["."]
    assert sent[0].ack == rcv_nxt and conn.state is State.TIME_WAIT


def test_the_next_incarnation_starts_beyond_every_sequence_number_used() -> None:
    d = time_wait()
    snd_nxt = d.conn.snd_nxt
    assert seq.sub(d.conn.next_incarnation_iss, snd_nxt) == 0xFFFF + 2
