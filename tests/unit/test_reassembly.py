"""The reassembly queue against a model that keeps every byte by its offset."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tcpstack.core import seq
from tcpstack.core.reassembly import Reassembler

# (offset above RCV.NXT, length, fill byte) for a segment; or None: read what is ready.
Step = tuple[int, int, int] | None
steps = st.lists(
    st.one_of(st.tuples(st.integers(0, 300), st.integers(0, 40), st.integers(1, 255)), st.none()),
    max_size=80,
)


class Model:
    """Bytes held by absolute offset from where the stream started; first copy wins."""

    def __init__(self) -> None:
        self.bytes: dict[int, int] = {}
        self.next = 0  # RCV.NXT as an offset

    def add(self, offset: int, data: bytes) -> None:
        for i, b in enumerate(data):
            if offset + i >= self.next:
                self.bytes.setdefault(offset + i, b)

    def pop_ready(self) -> bytes:
        out = bytearray()
        while self.next in self.bytes:
            out.append(self.bytes.pop(self.next))
            self.next += 1
        return bytes(out)

    def blocks(self) -> set[tuple[int, int]]:
        found, start = set(), None
        for at in range(self.next, max(self.bytes, default=self.next) + 2):
            if at in self.bytes and start is None:
                start = at
            elif at not in self.bytes and start is not None:
                found.add((start, at))
                start = None
        return found


@settings(max_examples=300, deadline=None)
@given(plan=steps, origin=st.sampled_from([0, 1000, 0xFFFF_FF00, 0x7FFF_FFF0]))
def test_the_queue_holds_and_releases_what_the_model_does(plan: list[Step], origin: int) -> None:
    # origin near 2**32 and 2**31 makes the sequence numbers wrap mid-stream.
    queue, model = Reassembler(), Model()
    for step in plan:
        if step is None:
            ready = model.pop_ready()
            rcv_nxt = seq.add(origin, model.next - len(ready))
            assert queue.pop_ready(rcv_nxt) == ready
            continue
        above, length, fill = step
        offset = model.next + above
        # The real owner hands over in-order data itself; only what lies above a hole
        # reaches the queue.
        if above == 0:
            continue
        data = bytes([fill]) * length
        queue.add(seq.add(origin, model.next), seq.add(origin, offset), data)
        model.add(offset, data)
        held = model.blocks()
        assert len(queue) == len(held)
        assert queue.held_bytes == len(model.bytes)
        sacked = {(seq.sub(a, origin), seq.sub(b, origin)) for a, b in queue.sack_blocks(99)}
        assert sacked == held
        if length:
            # The block that holds the newest segment is reported first (RFC 2018 §4).
            first = queue.sack_blocks(1)[0]
            assert seq.le(first[0], seq.add(origin, offset))
            assert seq.ge(first[1], seq.add(origin, offset + length))


def test_a_flood_of_disjoint_bytes_is_held_and_released_in_order() -> None:
    # Scenario L-05: one byte in every two, then the holes fill one by one. (Each
    # segment once cost a walk over every block held: this took minutes.)
    queue = Reassembler()
    n = 20_000
    for i in range(n):
        queue.add(0, 2 * i + 1, b"x")
    assert len(queue) == n and queue.held_bytes == n
    assert queue.sack_blocks(3) == (
        (2 * n - 1, 2 * n),
        (2 * n - 3, 2 * n - 2),
        (2 * n - 5, 2 * n - 4),
    )
    stream = bytearray()
    for i in range(n):
        queue.add(2 * i, 2 * i, b"y")  # the hole at RCV.NXT
        stream += queue.pop_ready(2 * i)
    assert bytes(stream) == b"yx" * n and len(queue) == 0 and queue.held_bytes == 0
