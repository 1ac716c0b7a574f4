from tcpstack.core import seq
from tcpstack.isn import Rfc6528Isn, TimestampOffsets, fixed_isn


class Clock:
    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


def test_same_tuple_advances_with_the_4_microsecond_clock() -> None:
    clock = Clock()
    isn = Rfc6528Isn(secret=b"k" * 32, clock_ns=clock)
    first = isn("198.18.0.2", 40000, "198.18.0.1", 80)
    clock.ns += 1_000_000  # 1 ms = 250 ticks of 4 µs
    second = isn("198.18.0.2", 40000, "198.18.0.1", 80)
    assert seq.sub(second, first) == 250


def test_different_tuples_are_unrelated() -> None:
    isn = Rfc6528Isn(secret=b"k" * 32, clock_ns=Clock())
    values = {isn("198.18.0.2", port, "198.18.0.1", 80) for port in range(40000, 40100)}
    assert len(values) == 100
    # Neighbouring ports do not give neighbouring ISNs.
    a, b = isn("198.18.0.2", 40000, "198.18.0.1", 80), isn("198.18.0.2", 40001, "198.18.0.1", 80)
    assert abs(seq.sub(a, b)) > 1000


def test_secret_changes_everything() -> None:
    one = Rfc6528Isn(secret=b"a" * 32, clock_ns=Clock())
    two = Rfc6528Isn(secret=b"b" * 32, clock_ns=Clock())
    assert one("198.18.0.2", 1, "198.18.0.1", 2) != two("198.18.0.2", 1, "198.18.0.1", 2)


def test_values_fit_32_bits_and_override_is_fixed() -> None:
    clock = Clock()
    clock.ns = 2**40
    assert 0 <= Rfc6528Isn(clock_ns=clock)("a", 1, "b", 2) <= seq.MASK
    assert fixed_isn(2**32 + 5)("a", 1, "b", 2) == 5


def test_timestamp_offsets_are_keyed_on_the_four_tuple() -> None:
    # RFC 7323 §5.4: no clock to read from TSval, and nothing to learn of another
    # connection's; the same 4-tuple keeps its offset, so TSval keeps rising from one
    # incarnation to the next (RFC 6191). Linux 6.18 does the same.
    offsets = TimestampOffsets(secret=b"k" * 32)
    a = offsets("198.18.0.2", 40000, "198.18.0.1", 80)
    assert offsets("198.18.0.2", 40000, "198.18.0.1", 80) == a
    assert offsets("198.18.0.2", 40001, "198.18.0.1", 80) != a
    assert offsets("198.18.0.2", 40000, "198.18.0.1", 81) != a
    assert offsets("198.18.0.2", 40000, "198.18.0.3", 80) != a
    assert TimestampOffsets(secret=b"j" * 32)("198.18.0.2", 40000, "198.18.0.1", 80) != a
    assert 0 <= a < 1 << 32
