"""The wire-trace invariant checker (tcpstack.testing.invariants).

Each invariant gets a hand-built trace that keeps it and one that breaks it, with
the violation's id pinned. Then the checker runs over real traffic, where it must
find nothing: two cores under random loss, duplication and reordering with
sequence numbers that wrap (a hypothesis property), and two whole stacks on an
in-memory wire moving 200 kB each way and closing, clean and impaired.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tcpstack import TcpConfig, wire
from tcpstack.core import seq
from tcpstack.core.segment import Options, Segment, parse_flags
from tcpstack.core.state import State
from tcpstack.link import MemoryLink
from tcpstack.stack import Stack
from tcpstack.testing.invariants import (
    MAX_VIOLATIONS,
    TraceChecker,
    Violation,
    check_events,
)
from tcpstack.trace import Address, Recorder, SegmentEvent, StateEvent, TraceEvent
from tests.unit.helpers import FULL, Pair

OUR: Address = ("198.18.0.2", 40000)
PEER: Address = ("198.18.0.1", 80)
OUR_MAC = bytes.fromhex("02bb00000002")
PEER_MAC = bytes.fromhex("02aa00000001")
ISS = 1000
IRS = 7000
NEAR_WRAP = 0xFFFF_FFFD  # the SYN takes ...FD, data starts at ...FE and wraps at once


@dataclass
class Talk:
    """One connection's trace, written with numbers relative to each side's ISN."""

    iss: int = ISS
    irs: int = IRS
    frames: bool = False  # attach the encoded frame to our segments
    ts: bool = False  # put timestamps on every segment but RSTs, rising
    events: list[TraceEvent] = field(default_factory=list)
    now: float = 0.0
    our_ts: int = 100
    peer_ts: int = 5000

    def _options(self, flags: str, kw: dict[str, object], ours: bool) -> Options:
        tsval = kw.pop("tsval", None)
        if tsval is None and self.ts and "R" not in flags and not kw.pop("no_ts", False):
            if ours:
                self.our_ts += 1
                tsval = self.our_ts
            else:
                self.peer_ts += 1
                tsval = self.peer_ts
        kw.pop("no_ts", None)
        return Options(
            mss=kw.pop("mss", None),  # type: ignore[arg-type]
            wscale=kw.pop("wscale", None),  # type: ignore[arg-type]
            sack_permitted=bool(kw.pop("sack", False)),
            timestamps=(tsval, 0) if isinstance(tsval, int) else None,
        )

    def _event(
        self,
        direction: str,
        flags: str,
        seq_no: int,
        ack: int,
        data: bytes,
        win: int,
        options: Options,
        state: State,
        note: str,
        irs: int | None,
    ) -> SegmentEvent:
        local, remote = (OUR, PEER) if direction == "out" else (PEER, OUR)
        segment = Segment(
            local[1], remote[1], seq_no & seq.MASK, ack & seq.MASK, parse_flags(flags), win,
            options, data,
        )  # fmt: skip
        frame = b""
        if self.frames and direction == "out":
            frame = wire.encode_tcp(OUR_MAC, PEER_MAC, OUR[0], PEER[0], segment)
        event = SegmentEvent(
            self.now, direction, OUR, PEER, segment, state, self.iss,
            self.irs if irs is None else irs, frame=frame, note=note,
        )  # fmt: skip
        self.now += 0.001
        self.events.append(event)
        return event

    def out(
        self,
        flags: str,
        rel_seq: int,
        rel_ack: int = 0,
        *,
        data: bytes = b"",
        win: int = 1000,
        state: State = State.ESTABLISHED,
        note: str = "",
        **kw: object,
    ) -> SegmentEvent:
        """A segment we sent."""
        options = self._options(flags, kw, True)
        return self._event(
            "out", flags, self.iss + rel_seq, self.irs + rel_ack, data, win, options, state, note,
            None,
        )  # fmt: skip

    def inp(
        self,
        flags: str,
        rel_seq: int,
        rel_ack: int = 0,
        *,
        data: bytes = b"",
        win: int = 65535,
        state: State = State.ESTABLISHED,
        note: str = "",
        irs: int | None = None,
        **kw: object,
    ) -> SegmentEvent:
        """A segment the peer sent, as we received it."""
        options = self._options(flags, kw, False)
        return self._event(
            "in", flags, self.irs + rel_seq, self.iss + rel_ack, data, win, options, state, note,
            irs,
        )  # fmt: skip

    def check(self, **kw: bool) -> list[Violation]:
        return check_events(self.events, **kw)

    def ids(self, **kw: bool) -> list[str]:
        return [v.invariant for v in self.check(**kw)]


def opened(*, peer_win: int = 65535, **talk: object) -> Talk:
    """An active open with every option on both SYNs: our window scale 7, the peer's 2."""
    t = Talk(**talk)  # type: ignore[arg-type]
    t.out("S", 0, win=65535, mss=1460, wscale=7, sack=True, state=State.SYN_SENT)
    t.inp("S.", 0, 1, win=peer_win, mss=1400, wscale=2, sack=True)
    t.out(".", 1, 1)
    return t


def assert_clean(found: list[Violation]) -> None:
    assert not found, "\n".join(map(str, found))


# ---------------------------------------------------------- a clean whole trace


def whole_conversation(t: Talk) -> None:
    """Handshake, data up to a scaled window's edge, a zero window and its probes, a
    shrunk window, a retransmission, SACK-free close: everything allowed."""
    t.out("S", 0, win=65535, mss=1460, wscale=7, sack=True, state=State.SYN_SENT)
    t.inp("S.", 0, 1, win=1000, mss=1400, wscale=2, sack=True)  # edge 1001, unscaled
    t.out(".", 1, 1)
    t.out("P.", 1, 1, data=b"a" * 1000)
    t.inp(".", 1, 1001, win=1000)  # scaled by 4: the edge is 1001 + 4000
    t.out(".", 1001, 1, data=b"b" * 4000)  # right up to it
    t.inp("P.", 1, 5001, data=b"hello", win=0)  # and now the window is shut
    t.out(".", 5001, 6, data=b"c")  # a one-byte probe just past the edge
    t.out(".", 5001, 6, data=b"c")  # probed again
    t.inp(".", 6, 5001, win=500)  # edge 7001
    t.out(".", 5001, 6, data=b"c" * 2000)  # the probe byte again, and more
    t.inp(".", 6, 7001, win=10)  # the window shrinks (edge 7041): what was sent stays fine
    t.out(".", 5001, 6, data=b"c" * 2000)  # a retransmission of it all
    t.inp(".", 6, 7001, win=100)  # edge 7401
    t.out("F.", 7001, 6)  # the FIN takes no window
    t.out("F.", 7001, 6)  # and may be sent again at the same place
    t.inp("F.", 6, 7002)
    t.out(".", 7002, 7)


def test_a_whole_conversation_breaks_nothing() -> None:
    t = Talk(frames=True, ts=True)
    whole_conversation(t)
    assert_clean(t.check())


def test_a_whole_conversation_wrapping_around_2_to_the_32_breaks_nothing() -> None:
    t = Talk(iss=NEAR_WRAP, irs=0xFFFF_FFFF, frames=True, ts=True)
    t.our_ts = 0xFFFF_FFF0  # TSval wraps too
    whole_conversation(t)
    assert seq.add(t.iss, 7002) < t.iss  # it did wrap
    assert_clean(t.check())


# ------------------------------------------------------------------------- I-1


def test_i1_a_wrong_tcp_checksum_is_found() -> None:
    t = opened(frames=True)
    event = t.out("P.", 1, 1, data=b"payload")
    frame = bytearray(event.frame)
    frame[-1] ^= 0x01  # one payload bit flipped after the checksum was computed
    t.events[-1] = replace(event, frame=bytes(frame))
    found = t.check()
    assert [v.invariant for v in found] == ["I-1"]
    assert "TCP checksum" in found[0].text
    assert t.ids(check_checksums=False) == []


def test_i1_a_wrong_ip_header_checksum_is_found() -> None:
    t = opened(frames=True)
    event = t.out(".", 1, 1)
    frame = bytearray(event.frame)
    frame[14 + 8] -= 1  # the TTL, covered by the IP header checksum only
    t.events[-1] = replace(event, frame=bytes(frame))
    found = t.check()
    assert [v.invariant for v in found] == ["I-1"]
    assert "IPv4 header" in found[0].text


def test_i1_offloaded_checksums_and_missing_frames_pass() -> None:
    t = opened(frames=True)
    event = t.out("P.", 1, 1, data=b"x" * 3000)
    partial = wire.encode_tcp(
        OUR_MAC, PEER_MAC, OUR[0], PEER[0], event.segment, partial_checksum=True
    )
    t.events[-1] = replace(event, frame=partial)
    bare = t.out("P.", 3001, 1, data=b"y")
    t.events[-1] = replace(bare, frame=b"")  # no frame at all: nothing to check
    assert_clean(t.check())


# ------------------------------------------------------------------------- I-2


def test_i2_syn_options_on_a_later_segment_are_found() -> None:
    t = opened()
    t.out("P.", 1, 1, data=b"x", mss=1460)
    t.out(".", 2, 1, sack=True)
    assert t.ids() == ["I-2", "I-2"]
    assert "MSS" in t.check()[0].text


def test_i2_a_syn_ack_mirrors_only_what_the_peers_syn_offered() -> None:
    t = Talk()
    t.inp("S", 0, win=65535, mss=1400, sack=True, state=State.SYN_RECEIVED)
    t.out("S.", 0, 1, win=65535, mss=1460, sack=True, state=State.SYN_RECEIVED)
    assert t.ids() == []
    t.out("S.", 0, 1, win=65535, mss=1460, sack=True, wscale=7, tsval=1)
    found = t.check()
    assert [v.invariant for v in found] == ["I-2"]
    assert "window scale, timestamps" in found[0].text


# ------------------------------------------------------------------------- I-3


def test_i3_retransmissions_below_the_highest_sent_are_fine() -> None:
    t = opened()
    t.out(".", 1, 1, data=b"abcd")
    t.out(".", 5, 1, data=b"efgh")
    t.out(".", 1, 1, data=b"abcdefgh")  # repacketised
    t.out(".", 3, 1, data=b"cdefgh")
    t.out(".", 9, 1, data=b"ij")
    assert t.ids() == []


def test_i3_new_data_that_leaves_a_gap_is_found() -> None:
    t = opened()
    t.out(".", 1, 1, data=b"abcd")
    t.out(".", 6, 1, data=b"fghi")  # byte 5 was never sent
    found = t.check()
    assert [v.invariant for v in found] == ["I-3"]
    assert found[0].text == "seq 6 leaves a gap of 1: the highest sent so far ends at 5"


def test_i3_a_segment_before_the_iss_is_found() -> None:
    t = opened()
    t.out(".", -10, 1)
    assert t.ids() == ["I-3"]


def test_i3_a_retransmission_with_other_bytes_is_found() -> None:
    t = opened()
    t.out(".", 1, 1, data=b"abcd")
    t.out(".", 5, 1, data=b"efgh")
    t.out(".", 1, 1, data=b"abcdXfgh")  # byte 5 was "e"
    found = t.check()
    assert [v.invariant for v in found] == ["I-3"]
    assert "byte at 5 is 0x58, first sent as 0x65" in found[0].text


def test_i3_bytes_the_peer_acknowledged_are_forgotten() -> None:
    # Keep-alives may carry a garbage byte below SND.UNA; once acknowledged, a
    # byte is no longer compared (and its sample is dropped).
    t = opened()
    t.out(".", 1, 1, data=b"abcd")
    t.inp(".", 1, 5)
    t.out(".", 4, 1, data=b"\0")
    assert t.ids() == []


def test_i3_wraps_around_2_to_the_32() -> None:
    t = opened(iss=NEAR_WRAP)
    t.out(".", 1, 1, data=b"abcd")  # from ...FE across 0
    t.out(".", 5, 1, data=b"efgh")
    t.out(".", 1, 1, data=b"abcd")
    assert t.ids() == []
    t.out(".", 10, 1, data=b"j")  # skips byte 9, which sits past the wrap
    found = t.check()
    assert [v.invariant for v in found] == ["I-3"]
    assert found[0].text == "seq 10 leaves a gap of 1: the highest sent so far ends at 9"


# ------------------------------------------------------------------------- I-4


def test_i4_data_beyond_the_scaled_right_edge_is_found() -> None:
    t = opened(peer_win=0)
    t.inp(".", 1, 1, win=100)  # scaled by 4: edge 401
    t.out(".", 1, 1, data=bytes(400))
    assert t.ids() == []
    t.out(".", 401, 1, data=bytes(2))
    found = t.check()
    assert [v.invariant for v in found] == ["I-4"]
    assert found[0].text == "data up to 403 is 2 bytes beyond the peer's right edge 401"


def test_i4_a_one_byte_probe_may_go_one_past_the_edge() -> None:
    t = opened(peer_win=0)
    t.inp(".", 1, 1, win=0)
    t.out(".", 1, 1, data=b"p")
    assert t.ids() == []
    t.out(".", 2, 1, data=b"q")  # a second byte beyond a shut window is no probe
    assert t.ids() == ["I-4"]


def test_i4_without_window_scale_on_both_syns_nothing_is_scaled() -> None:
    t = Talk()
    t.out("S", 0, win=65535, mss=1460, state=State.SYN_SENT)  # no window scale offered
    t.inp("S.", 0, 1, win=0, mss=1400, wscale=2)
    t.inp(".", 1, 1, win=100)  # edge 101, not 401
    t.out(".", 1, 1, data=bytes(100))
    assert t.ids() == []
    t.out(".", 101, 1, data=bytes(200))
    assert t.ids() == ["I-4"]


def test_i4_the_syn_acks_window_is_not_scaled_and_fin_takes_no_window() -> None:
    t = Talk()
    t.out("S", 0, win=65535, mss=1460, wscale=7, state=State.SYN_SENT)
    t.inp("S.", 0, 1, win=1000, mss=1400, wscale=2)  # edge 1001, not 4001
    t.out(".", 1, 1, data=bytes(1000))
    t.out("F.", 1001, 1)  # the FIN at the edge itself
    assert t.ids() == []
    t = Talk()
    t.out("S", 0, win=65535, mss=1460, wscale=7, state=State.SYN_SENT)
    t.inp("S.", 0, 1, win=1000, mss=1400, wscale=2)
    t.out("P.", 1, 1, data=bytes(1002))
    assert t.ids() == ["I-4"]


def test_i4_a_blind_ack_half_the_space_behind_moves_no_edge() -> None:
    # ACK = SND.UNA - 2**31 + 1 is "behind" what we sent, but its edge (ACK plus a
    # window smaller than the real one) lands just under 2**31 ahead of the real
    # edge: taken, every later segment would look beyond the peer's window. It is
    # older than SND.UNA - MAX.SND.WND, which the endpoint drops (RFC 5961 §5.2).
    t = Talk()
    t.out("S", 0, win=65535, mss=1460, state=State.SYN_SENT)
    t.inp("S.", 0, 1, win=1000)
    t.out(".", 1, 1)
    t.out(".", 1, 1, data=bytes(500))
    t.inp(".", 1, 501, win=1000)  # edge 1501
    t.inp(".", 1, 501 - (1 << 31) + 1, win=500)  # forged
    t.out(".", 501, 1, data=bytes(1000))
    assert t.ids() == []
    t.out(".", 1501, 1, data=bytes(2))  # more than a probe's byte
    assert t.ids() == ["I-4"]


# ------------------------------------------------------------------------- I-7


def test_i7_our_right_edge_moving_left_is_found() -> None:
    t = opened()  # our shift is 7: windows count in 128 bytes
    t.inp("P.", 1, 1, data=bytes(1000))
    t.out(".", 1, 1001, win=1000)  # edge 1001 + 128000
    t.out(".", 1, 1001, win=990)  # 1001 + 126720: pulled back
    found = t.check()
    assert [v.invariant for v in found] == ["I-7"]
    assert found[0].text == "our right edge moved left: 127721 after 129001"


def test_i7_a_window_closing_as_data_arrives_keeps_the_edge() -> None:
    t = opened()  # edge 1 + 128000
    t.inp("P.", 1, 1, data=bytes(1280))
    t.out(".", 1, 1281, win=990)  # 1281 + 126720: the same edge
    t.out(".", 1, 1281, win=991)
    assert t.ids() == []


# ------------------------------------------------------------------------- I-6


def test_i6_an_ack_that_goes_backwards_is_found() -> None:
    t = opened()
    t.inp("P.", 1, 1, data=bytes(2000))
    t.out(".", 1, 2001)
    t.out(".", 1, 1001)
    found = t.check()
    assert [v.invariant for v in found] == ["I-6"]
    assert found[0].text == "ACK went backwards: 1001 after 2001"


def test_i6_an_ack_beyond_what_the_peer_sent_is_found() -> None:
    t = opened()
    t.inp("P.", 1, 1, data=bytes(10))
    t.out(".", 1, 11)
    assert t.ids() == []
    t.out(".", 1, 12)
    found = t.check()
    assert [v.invariant for v in found] == ["I-6"]
    assert found[0].text == "ACK 12 is beyond what the peer sent, which ends at 11"


def test_i6_forged_segments_far_outside_our_window_extend_nothing() -> None:
    # A blind attacker's data, ACKs and FINs, 64 MiB and more away from the live
    # numbers (as tests/integration/attacker.py sends them): the endpoint drops them.
    # Counted as sent, one more than 2**31 ahead would make every later ACK look
    # beyond what the peer sent.
    t = opened()
    t.inp("P.", 1, 1, data=bytes(10))
    for far in (64 << 20, (64 << 20) + (1 << 30), (64 << 20) + (1 << 31) - 1):
        t.inp("P.", far, 1, data=b"forged")
        t.inp(".", far + 7, 1)
        t.inp("F.", far + 9, 1)
    t.out(".", 1, 11)
    t.inp("P.", 11, 1, data=bytes(5))
    t.out(".", 1, 16)
    assert t.ids() == []


def test_i6_what_the_peer_sends_past_our_window_cannot_be_acknowledged() -> None:
    t = Talk()  # no window scale: our window of 1000 is taken as it is
    t.out("S", 0, win=1000, state=State.SYN_SENT)
    t.inp("S.", 0, 1, win=1000)
    t.out(".", 1, 1, win=1000)  # we offer up to 1001
    t.inp("P.", 1001, 1, data=bytes(10))  # a probe at the edge is acceptable
    t.out(".", 1, 1011, win=0)  # and now our window is shut at 1011
    assert t.ids() == []
    t.inp("P.", 1100, 1, data=bytes(10))  # past it is not
    t.out(".", 1, 1110)
    found = t.check()
    assert [v.invariant for v in found] == ["I-6"]
    assert found[0].text == "ACK 1110 is beyond what the peer sent, which ends at 1011"


def test_i6_a_segment_held_back_by_a_hook_may_carry_an_older_ack() -> None:
    t = opened()
    t.inp("P.", 1, 1, data=bytes(2000))
    t.out(".", 1, 2001)
    t.out(".", 1, 1001, note="held 5 ms by hook")
    t.out(".", 1, 2001)
    assert t.ids() == []


def test_i6_the_peers_fin_may_be_acknowledged() -> None:
    t = opened()
    t.inp("F.", 1, 1, state=State.CLOSE_WAIT)
    t.out(".", 1, 2, state=State.CLOSE_WAIT)
    assert t.ids() == []


# ------------------------------------------------------------------------- I-8


def test_i8_timestamps_once_negotiated_are_on_every_segment_but_rsts() -> None:
    t = opened(ts=True)
    t.out(".", 1, 1, data=b"x")
    t.out("R", 2, 0)  # a RST needs none
    assert t.ids() == []
    t = opened(ts=True)
    t.out(".", 1, 1, data=b"x", no_ts=True)
    found = t.check()
    assert [v.invariant for v in found] == ["I-8"]
    assert "no timestamps" in found[0].text


def test_i8_tsval_never_decreases() -> None:
    t = opened(ts=True)
    t.out(".", 1, 1, tsval=500)
    t.out(".", 1, 1, tsval=500)  # equal is fine
    t.out(".", 1, 1, tsval=499)
    found = t.check()
    assert [v.invariant for v in found] == ["I-8"]
    assert found[0].text == "TSval 499 is below the 500 sent before"


def test_i8_tsval_wraps_around_2_to_the_32() -> None:
    t = opened(ts=True, our_ts=0xFFFF_FFF0)
    t.out(".", 1, 1, tsval=0xFFFF_FFFF)
    t.out(".", 1, 1, tsval=3)
    assert t.ids() == []


def test_i8_no_timestamps_unless_both_syns_carried_them() -> None:
    t = Talk()
    t.out("S", 0, win=65535, mss=1460, tsval=10, state=State.SYN_SENT)
    t.inp("S.", 0, 1, win=65535, mss=1400)  # the peer declines timestamps
    t.out(".", 1, 1)
    assert t.ids() == []
    t.out(".", 1, 1, tsval=11)
    assert t.ids() == ["I-8"]


# ------------------------------------------------------------------------ I-10


def test_i10_data_after_our_fin_is_found() -> None:
    t = opened()
    t.out("P.", 1, 1, data=b"abc")
    t.out("F.", 4, 1, state=State.FIN_WAIT_1)
    t.out(".", 1, 1, data=b"abc", state=State.FIN_WAIT_1)  # an earlier byte again: fine
    t.out("F.", 1, 1, data=b"abc", state=State.FIN_WAIT_1)  # repacketised with the FIN
    assert t.ids() == []
    t.out(".", 4, 1, data=b"d", state=State.FIN_WAIT_1)
    found = t.check()
    assert [v.invariant for v in found] == ["I-10"]
    assert found[0].text == "data up to 5 after our FIN at 4"


def test_i10_a_fin_that_moves_is_found() -> None:
    t = opened()
    t.out("F.", 1, 1, state=State.FIN_WAIT_1)
    t.out("F.", 0, 1, state=State.FIN_WAIT_1)
    found = t.check()
    assert [v.invariant for v in found] == ["I-10"]
    assert found[0].text == "FIN at 0, but our FIN was at 1"


# ------------------------------------------------------------------------ I-15


def test_i15_reserved_bits_are_read_from_the_frame() -> None:
    t = opened(frames=True)
    event = t.out(".", 1, 1)
    frame = bytearray(event.frame)
    frame[14 + 20 + 12] |= 0x02  # the data offset byte's low nibble is reserved
    t.events[-1] = replace(event, frame=bytes(frame))
    assert sorted(t.ids()) == ["I-1", "I-15"]  # the checksum no longer fits either
    found = t.check(check_checksums=False)
    assert [v.invariant for v in found] == ["I-15"]
    assert found[0].text == "reserved header bits set: 0x2"


# -------------------------------------------------- what is skipped, what is new


def test_segments_dropped_before_the_wire_are_not_checked() -> None:
    t = opened(frames=True)
    t.out(".", 50, 1, data=b"x", mss=1, note="dropped by hook")
    t.inp(".", 1, 1, win=0, note="dropped by hook")  # the peer's window never shut
    t.out(".", 1, 1, data=bytes(100))
    assert t.ids() == []


def test_a_new_syn_after_a_reset_starts_afresh() -> None:
    # The same ISS again (tests fix it), on the same addresses: nothing carries over.
    t = opened()
    t.inp("P.", 1, 1, data=bytes(100))
    t.out(".", 1, 101, data=bytes(50))
    t.out("R.", 51, 101, state=State.CLOSED)
    t.irs = 9000
    t.out("S", 0, win=65535, mss=1460, state=State.SYN_SENT)
    t.inp("S.", 0, 1, win=65535, mss=1400)
    t.out(".", 1, 1)
    assert t.ids() == []


def test_a_new_syn_after_both_fins_were_acknowledged_starts_afresh() -> None:
    t = opened()
    t.out("F.", 1, 1, state=State.FIN_WAIT_1)
    t.inp("F.", 1, 2, state=State.TIME_WAIT)
    t.out(".", 2, 2, state=State.TIME_WAIT)
    t.irs = 100
    t.out("S", 0, win=65535, mss=1460, state=State.SYN_SENT)
    t.inp("S.", 0, 1, win=65535, mss=1400)
    t.out(".", 1, 1)
    assert t.ids() == []


def test_a_syn_that_time_wait_does_not_take_starts_nothing() -> None:
    # A forged SYN reaches us in TIME-WAIT; we keep the old connection (the event's
    # irs is still the old one) and answer with its ACK, which is not "beyond" the
    # forged SYN's sequence number.
    t = opened()
    t.out("F.", 1, 1, state=State.FIN_WAIT_1)
    t.inp("F.", 1, 2, state=State.TIME_WAIT)
    t.out(".", 2, 2, state=State.TIME_WAIT)
    t.inp("S", -100_000, win=65535, state=State.TIME_WAIT)
    t.out(".", 2, 2, state=State.TIME_WAIT)
    assert t.ids() == []


def test_a_closed_state_event_ends_the_connection() -> None:
    t = opened()
    t.out(".", 1, 1, data=bytes(10))
    t.events.append(StateEvent(t.now, OUR, PEER, State.ESTABLISHED, State.CLOSED, "abort"))
    t.irs = 100
    t.inp("S", 0, win=65535, mss=1400, state=State.SYN_RECEIVED)
    t.out("S.", 0, 1, win=65535, mss=1460, state=State.SYN_RECEIVED)
    assert t.ids() == []


def test_a_challenged_syn_does_not_start_a_new_connection() -> None:
    # RFC 5961 §4: a SYN on an established connection gets a challenge ACK, and the
    # connection goes on; the event's irs shows the endpoint kept the old one.
    t = opened()
    t.inp("P.", 1, 1, data=bytes(10))
    t.inp("S", 12345, win=65535, irs=IRS)
    t.out(".", 1, 11)
    assert t.ids() == []


def test_mid_connection_it_checks_what_it_can() -> None:
    t = Talk()
    t.inp(".", 1, 1)  # no handshake seen: no ISS, window scale or peer's extent
    t.out(".", 5000, 2001, data=bytes(100000))
    t.out(".", 1, 1001)
    assert t.ids() == ["I-6"]


# ------------------------------------------------------------------ the API


def test_violations_are_capped_and_counted() -> None:
    checker = TraceChecker()
    t = opened()
    for _ in range(MAX_VIOLATIONS + 20):
        t.out(".", 1, 1, mss=1)
    for event in t.events:
        checker(event)
    assert len(checker.violations) == MAX_VIOLATIONS
    assert checker.dropped == 20
    assert checker.counts == {"I-2": MAX_VIOLATIONS + 20}  # kept or not
    lines = checker.report()
    assert len(lines) == MAX_VIOLATIONS + 1
    assert lines[-1] == "... and 20 more violations not kept"


def test_a_violation_prints_as_one_line() -> None:
    v = Violation("I-6", (OUR, PEER), 1.5, "ACK went backwards: 1 after 2")
    assert str(v) == "I-6 198.18.0.2:40000>198.18.0.1:80 at 1.500000: ACK went backwards: 1 after 2"


# ------------------------------------------------------------- real traffic


class TracedPair(Pair):
    """helpers.Pair, with what each core sent and received as trace events."""

    ADDRESSES = {"a": ("10.0.0.1", 40000), "b": ("10.0.0.2", 8080)}

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.trace: list[TraceEvent] = []
        for name in ("a", "b"):
            self._watch_input(name)

    def _addresses(self, name: str) -> tuple[Address, Address]:
        other = "b" if name == "a" else "a"
        return self.ADDRESSES[name], self.ADDRESSES[other]

    def _snapshot(self, direction: str, name: str, segment: Segment) -> SegmentEvent:
        conn = self.conn(name)
        local, remote = self._addresses(name)
        return SegmentEvent(
            self.now, direction, local, remote, segment, conn.state, conn.iss, conn.irs
        )

    def _watch_input(self, name: str) -> None:
        conn = self.conn(name)
        handle = conn.handle_segment

        def traced(segment: Segment, now: float) -> None:
            handle(segment, now)
            self.trace.append(self._snapshot("in", name, segment))

        conn.handle_segment = traced  # type: ignore[method-assign, assignment]

    def _collect(self, name: str) -> None:
        before = len(self.log)
        super()._collect(name)
        for _, segment in self.log[before:]:
            # Lost on the wire, not before it: the checker must still see it.
            self.trace.append(self._snapshot("out", name, segment))


def run_pair(p: TracedPair, size: int) -> bool:
    """Data both ways and a close; False if losses made the handshake itself fail."""
    if not p.connect():
        return False
    p.exchange(size)
    return True


@settings(max_examples=40, deadline=None)
@given(
    drops=st.sets(st.integers(0, 120), max_size=12),
    dups=st.sets(st.integers(0, 120), max_size=8),
    delays=st.dictionaries(st.integers(0, 120), st.floats(0.0005, 0.01), max_size=12),
    size=st.integers(0, 40_000),
    a_iss=st.sampled_from([0, 0xFFFF_FF00, 0xFFFF_FFFF]),
    b_iss=st.sampled_from([7, 0x7FFF_FFF0, 0xFFFF_FFF0]),
    options=st.booleans(),
)
def test_two_cores_through_a_bad_wire_break_nothing(
    drops: set[int],
    dups: set[int],
    delays: dict[int, float],
    size: int,
    a_iss: int,
    b_iss: int,
    options: bool,
) -> None:
    plain = replace(FULL, window_scaling=False, sack=False, timestamps=False, receive_buffer=65535)
    p = TracedPair(config=FULL if options else plain, a_iss=a_iss, b_iss=b_iss)
    p.drop, p.duplicate, p.delay = drops, dups, delays
    assume(run_pair(p, size))
    assert_clean(check_events(p.trace))


def test_two_cores_trace_is_checked_not_waved_through() -> None:
    # The same kind of trace with one of our ACKs made to go backwards: found.
    p = TracedPair(config=FULL, a_iss=0xFFFF_FF00, b_iss=7)
    assert run_pair(p, 20_000)
    last = max(
        i
        for i, e in enumerate(p.trace)
        if isinstance(e, SegmentEvent) and e.direction == "out" and e.segment.payload
    )
    event = p.trace[last]
    assert isinstance(event, SegmentEvent)
    p.trace[last] = replace(
        event, segment=replace(event.segment, ack=seq.add(event.segment.ack, -1))
    )
    assert [v.invariant for v in check_events(p.trace)] == ["I-6"]


A_IP, B_IP = "198.18.0.1", "198.18.0.2"
TIMEOUT = 10.0


@pytest.fixture
def twin_factory() -> Iterator[list[Stack]]:
    made: list[Stack] = []
    yield made
    for stack in made:
        stack.close()


def exchange(made: list[Stack], impairment: str | None) -> tuple[TraceChecker, TraceChecker, int]:
    """200 kB from A to B and 30 kB back, then both close: (A's checker, B's checker,
    segments A sent). B's receive buffer is small so its window matters."""
    a_link, b_link = MemoryLink.pair()
    config = TcpConfig(msl=0.1, rto_min=0.05, rto_initial=0.2)
    a = Stack(a_link, f"{A_IP}/24", config=config, impairment=impairment)
    made.append(a)
    b = Stack(b_link, f"{B_IP}/24", config=replace(config, receive_buffer=8192))
    made.append(b)
    checkers = TraceChecker(), TraceChecker()
    recorder = Recorder()
    a.subscribe(checkers[0])
    a.subscribe(recorder)
    b.subscribe(checkers[1])
    data = bytes(i * 7 % 251 for i in range(200_000))
    got = bytearray()
    listener = b.create_server(("", 8080))

    def serve() -> None:
        s, _ = listener.accept()
        s.settimeout(TIMEOUT)
        while chunk := s.recv(3000):
            got.extend(chunk)
        s.sendall(b"thanks" * 5000)
        s.close()

    server = threading.Thread(target=serve)
    server.start()
    client = a.create_connection((B_IP, 8080), timeout=TIMEOUT)
    client.sendall(data)
    client.shutdown(1)
    back = bytearray()
    while chunk := client.recv(65536):
        back.extend(chunk)
    client.close()
    server.join(TIMEOUT)
    assert bytes(got) == data
    assert bytes(back) == b"thanks" * 5000
    for stack in (a, b):  # both sides past TIME-WAIT (0.2 s), so every segment is in
        stack.close()
    sent = [e for e in recorder.events if isinstance(e, SegmentEvent) and e.direction == "out"]
    assert all(e.frame for e in sent)  # so I-1 and I-15 ran on every one
    return checkers[0], checkers[1], len(sent)


@pytest.mark.parametrize("impairment", [None, "loss=3%,dup=1%,reorder=5%,seed=5"])
def test_two_stacks_transfer_and_close_break_nothing(
    twin_factory: list[Stack], impairment: str | None
) -> None:
    a, b, sent = exchange(twin_factory, impairment)
    assert sent > 100
    assert a.report() == []
    assert b.report() == []
