"""32-bit modular sequence-number arithmetic (RFC 9293 §3.4).

Python integers never wrap, so every sequence number that leaves these helpers is
masked to 32 bits, and every comparison is made on the signed distance between two
numbers. Nothing else in the package compares sequence numbers with ``<``.
"""

from __future__ import annotations

MASK = 0xFFFF_FFFF
_HALF = 0x8000_0000


def add(a: int, n: int) -> int:
    """a + n in sequence space."""
    return (a + n) & MASK


def sub(a: int, b: int) -> int:
    """Signed distance from b to a: positive when a is after b."""
    d = (a - b) & MASK
    return d - 0x1_0000_0000 if d & _HALF else d


def lt(a: int, b: int) -> bool:
    """True if a is before b in sequence space."""
    return ((a - b) & MASK) >= _HALF


def le(a: int, b: int) -> bool:
    return a == b or lt(a, b)


def gt(a: int, b: int) -> bool:
    return lt(b, a)


def ge(a: int, b: int) -> bool:
    return a == b or lt(b, a)


def in_window(x: int, start: int, size: int) -> bool:
    """True if start <= x < start + size (modulo 2**32)."""
    return ((x - start) & MASK) < size


def between(lo: int, x: int, hi: int) -> bool:
    """True if lo <= x <= hi (modulo 2**32), with hi not before lo."""
    return ((x - lo) & MASK) <= ((hi - lo) & MASK)
