from hypothesis import given
from hypothesis import strategies as st

from tcpstack.core import seq

u32 = st.integers(0, seq.MASK)
small = st.integers(0, 0x7FFF_FFFF)


def test_wraps_past_2_32() -> None:
    assert seq.add(0xFFFF_FFFF, 1) == 0
    assert seq.add(0xFFFF_FFF0, 0x20) == 0x10
    assert seq.lt(0xFFFF_FFF0, 0x10)
    assert seq.gt(0x10, 0xFFFF_FFF0)
    assert seq.sub(0x10, 0xFFFF_FFF0) == 0x20
    assert seq.sub(0xFFFF_FFF0, 0x10) == -0x20


def test_window_across_the_wrap() -> None:
    assert seq.in_window(0x5, 0xFFFF_FFF0, 0x100)
    assert seq.in_window(0xFFFF_FFF0, 0xFFFF_FFF0, 1)
    assert not seq.in_window(0xFFFF_FFEF, 0xFFFF_FFF0, 0x100)
    assert not seq.in_window(0xF0, 0xFFFF_FFF0, 0x100)
    assert not seq.in_window(0, 0, 0)
    assert seq.between(0xFFFF_FFF0, 0x5, 0x10)
    assert not seq.between(0xFFFF_FFF0, 0x11, 0x10)


@given(u32, small)
def test_add_then_compare(a: int, n: int) -> None:
    b = seq.add(a, n)
    assert seq.sub(b, a) == n
    assert seq.le(a, b)
    assert seq.ge(b, a)
    if n:
        assert seq.lt(a, b) and seq.gt(b, a) and not seq.lt(b, a)


@given(u32, u32)
def test_trichotomy(a: int, b: int) -> None:
    assert sum([seq.lt(a, b), a == b, seq.gt(a, b)]) == 1 or seq.sub(a, b) == -0x8000_0000
