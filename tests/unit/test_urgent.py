"""Urgent data (RFC 9293 §3.8.5), with a fake clock: the pointer marks the octet after
the urgent data, both ways; urgent data stays in line; reads stop at the mark."""

from __future__ import annotations

from dataclasses import replace

from tcpstack.core.events import UrgentDataArrived
from tcpstack.core.segment import Flags
from tests.unit.helpers import CONFIG, established, seg


def test_the_pointer_received_marks_the_octet_after_the_urgent_data() -> None:
    d = established()
    d.push(seg("PU.", d.r(1), d.l(1), data=b"abcdefgh", urg=5))
    # MUST-62: octets 1..5 of the stream are urgent; MUST-32: the application hears
    # of it at once, with how much is left to read to the mark.
    assert UrgentDataArrived(5) in d.events
    c = d.conn
    assert c.urgent_pending == 5 and not c.at_urgent_mark
    # A read stops before the last urgent octet, so the application can find it.
    assert c.receive(100) == b"abcd"
    assert c.at_urgent_mark and c.urgent_pending == 1
    assert c.receive(100) == b"efgh"  # the urgent octet itself stays in line
    assert c.urgent_pending == 0 and not c.at_urgent_mark


def test_urgent_data_of_any_length_and_a_pointer_ahead_of_the_data() -> None:
    # MUST-31: the pointer may lie beyond this segment, even beyond the window.
    d = established()
    d.push(seg("PU.", d.r(1), d.l(1), data=b"x" * 100, urg=40_000))
    assert d.conn.urgent_pending == 40_000
    assert d.conn.receive(1000) == b"x" * 100
    # A later pointer moves the mark on; an earlier one is ignored (RCV.UP = max).
    d.push(seg("PU.", d.r(101), d.l(1), data=b"y", urg=1))
    assert d.conn.urgent_pending == 39_900


def test_urg_is_processed_with_a_zero_receive_window() -> None:
    # MUST-66: the text of a segment at RCV.NXT is trimmed away, its URG is not.
    d = established(config=replace(CONFIG, receive_buffer=1000))
    d.push(seg("P.", d.r(1), d.l(1), data=b"f" * 1000))
    assert d.conn.rcv_wnd == 0
    d.push(seg("PU.", d.r(1001), d.l(1), data=b"!", urg=1))
    assert d.conn.readable == 1000
    assert UrgentDataArrived(1001) in d.events
    assert d.conn.urgent_pending == 1001


def test_urgent_data_sent_carries_the_pointer_until_acknowledged() -> None:
    d = established()
    c = d.conn
    c.send(b"ordinary ")
    c.send(b"urgent!", urgent=True)
    (sent,) = d.flush()
    # MUST-62: the pointer is the offset of the octet after the last urgent one.
    assert sent.flags & Flags.URG and sent.urgent == len(b"ordinary urgent!")
    d.push(seg(".", d.r(1), d.l(1 + len(sent.payload))))
    c.send(b"after")
    (later,) = d.flush()
    assert not later.flags & Flags.URG and later.urgent == 0


def test_a_far_urgent_octet_is_announced_16_bits_ahead() -> None:
    d = established(config=replace(CONFIG, send_buffer=1 << 20))
    d.push(seg(".", d.r(1), d.l(1), win=65535))
    d.conn.send(b"u" * 200_000, urgent=True)
    first = d.flush()[0]
    assert first.flags & Flags.URG and first.urgent == 0xFFFF
