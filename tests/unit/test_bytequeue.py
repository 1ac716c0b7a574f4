"""The receive buffer's FIFO against a bytearray model."""

from hypothesis import given
from hypothesis import strategies as st

from tcpstack.core.bytequeue import ByteQueue

operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.binary(max_size=50)),
        st.tuples(st.just("take"), st.integers(0, 120)),
        st.tuples(st.just("into"), st.integers(0, 120)),
    ),
    max_size=40,
)


@given(operations)
def test_bytequeue_reads_what_a_bytearray_would(ops: list[tuple[str, object]]) -> None:
    queue, model = ByteQueue(), bytearray()
    for op, arg in ops:
        if op == "append":
            assert isinstance(arg, bytes)
            queue.append(arg)
            model += arg
        elif op == "take":
            assert isinstance(arg, int)
            assert queue.take(arg) == bytes(model[:arg])
            del model[:arg]
        else:
            assert isinstance(arg, int)
            buffer = bytearray(arg)
            n = queue.take_into(memoryview(buffer))
            assert bytes(buffer[:n]) == bytes(model[:n]) and n == min(arg, len(model))
            del model[:n]
        assert len(queue) == len(model)


def test_a_whole_payload_is_handed_back_without_a_copy() -> None:
    queue = ByteQueue()
    payload = b"x" * 1448
    queue.append(payload)
    queue.append(b"y")
    assert queue.take(1448) is payload
