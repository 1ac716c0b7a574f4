"""SHLD-14 (RFC 9293 §3.8.6): the right edge of the window we offer never moves left.

Whatever the peer sends (in order, ahead of a hole, more than the window) and however
the application reads, every segment we send offers a right edge, SEG.ACK plus the
window scaled by our shift, no less than a unit of the scale short of every edge
offered before (less is RFC 7323 §2.4's truncation, which a full buffer needs to
close its window), and the data held never outgrows the buffer by more than that.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from tcpstack.core import seq
from tcpstack.core.segment import Segment
from tests.unit.helpers import FULL, ISS, REMOTE_ISS, Driver, active, peer

# (what, size): the peer sends `size` bytes in order, or ahead of a hole of `size`
# bytes, or the application reads up to `size` bytes, or time passes `size` ms.
Step = tuple[str, int]
steps = st.lists(
    st.tuples(st.sampled_from(["data", "ahead", "read", "wait"]), st.integers(1, 9000)),
    max_size=60,
)


def _edges(sent: list[Segment], shift: int) -> list[int]:
    return [seq.add(s.ack, s.window << shift) for s in sent if not s.syn and s.has_ack]


def _run(d: Driver, plan: list[Step]) -> list[int]:
    conn = d.conn
    shift = conn.rcv_wscale
    edges: list[int] = []
    sent_to = seq.add(REMOTE_ISS, 1)  # the peer's next in-order byte
    for what, size in plan:
        if what == "data":
            out = d.push(peer(".", sent_to, ISS + 1, data=bytes(size)))
            sent_to = seq.add(sent_to, size)
        elif what == "ahead":
            out = d.push(peer(".", seq.add(sent_to, size), ISS + 1, data=bytes(size)))
        elif what == "read":
            conn.receive(size)
            out = d.flush()
        else:
            out = d.advance(d.now + size / 1000)
        edges += _edges(out, shift)
    return edges


@settings(max_examples=150, deadline=None)
@given(
    plan=steps,
    buffer=st.sampled_from([3000, 20_000, 65_535, 300_000]),
    scaled=st.booleans(),
    delayed=st.sampled_from([0.0, 0.04]),
)
def test_the_right_edge_we_offer_never_retreats(
    plan: list[Step], buffer: int, scaled: bool, delayed: float
) -> None:
    config = replace(
        FULL,
        receive_buffer=min(buffer, 65_535) if not scaled else buffer,
        window_scaling=scaled,
        delayed_ack=delayed,
        sack=False,
        timestamps=False,
    )
    d, _ = active(config, wscale=7) if scaled else active(config)
    edges = _run(d, plan)
    unit = 1 << d.conn.rcv_wscale
    for before, after in zip(edges, edges[1:], strict=False):
        assert seq.sub(before, after) < unit, (before, after, edges)
    assert d.conn.readable <= config.receive_buffer + unit - 1


def test_a_full_buffer_closes_its_window_to_segments_smaller_than_the_scale_unit() -> None:
    # With the buffer full but 8 bytes of the window left, rounding up on every ACK
    # would offer 128 again after each 1-byte segment, and the buffer would grow for
    # as long as the peer kept sending. Truncating closes it.
    config = replace(FULL, receive_buffer=4096, sack=False, timestamps=False)
    d, _ = active(config, wscale=7)
    sent_to = seq.add(REMOTE_ISS, 1)
    d.push(peer(".", sent_to, ISS + 1, data=bytes(4096 - 8)))
    sent_to = seq.add(sent_to, 4096 - 8)
    for _ in range(4 * 4096):  # a deadline in segments: the window must close first
        if d.conn.advertised_window == 0:
            break
        d.push(peer(".", sent_to, ISS + 1, data=b"x"))
        sent_to = seq.add(sent_to, 1)
    assert d.conn.advertised_window == 0
    assert d.conn.readable <= 4096 + 127
