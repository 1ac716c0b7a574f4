"""Initial sequence numbers per RFC 6528 (RFC 9293 §3.4.1), and timestamp offsets.

ISN = M + F(localip, localport, remoteip, remoteport, secretkey), where M is a
clock ticking every 4 microseconds and F a keyed hash, so ISNs for one 4-tuple
keep increasing while those of different 4-tuples are unrelated to an observer.

Timestamps (RFC 7323 §5.4) start from an offset keyed the same way, on the pair of
addresses, as Linux does: TSval leaks no clock to an observer, yet keeps rising
from one connection between two hosts to the next, which is what lets a SYN with
a newer timestamp reopen a 4-tuple still in TIME-WAIT (RFC 6191), at either end.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable

from tcpstack.core import seq

IsnFunction = Callable[[str, int, str, int], int]
"""(local_ip, local_port, remote_ip, remote_port) -> ISN."""


class Rfc6528Isn:
    """The default ISN generator: 4 µs clock plus a keyed BLAKE2s of the 4-tuple."""

    def __init__(
        self, *, secret: bytes | None = None, clock_ns: Callable[[], int] = time.monotonic_ns
    ) -> None:
        self._key = secret if secret is not None else os.urandom(32)
        self._clock_ns = clock_ns

    def __call__(self, local_ip: str, local_port: int, remote_ip: str, remote_port: int) -> int:
        m = self._clock_ns() // 4000
        tuple_id = f"{local_ip}:{local_port}>{remote_ip}:{remote_port}".encode()
        f = hashlib.blake2s(tuple_id, key=self._key, digest_size=4).digest()
        return (m + int.from_bytes(f, "big")) & seq.MASK


def fixed_isn(value: int) -> IsnFunction:
    """An ISN override for tests and what-if scripts: always `value`."""

    def isn(local_ip: str, local_port: int, remote_ip: str, remote_port: int) -> int:
        return value & seq.MASK

    return isn


class TimestampOffsets:
    """The 4-tuple -> the offset of TSval for connections on it, as Linux 6.18 keys
    it: one connection's timestamps say nothing of another's (RFC 7323 §5.4), and a
    new incarnation of the same 4-tuple goes on from the old one's (RFC 6191)."""

    def __init__(self, *, secret: bytes | None = None) -> None:
        self._key = secret if secret is not None else os.urandom(32)

    def __call__(self, local_ip: str, local_port: int, remote_ip: str, remote_port: int) -> int:
        tuple_id = f"{local_ip}:{local_port}>{remote_ip}:{remote_port}".encode()
        digest = hashlib.blake2s(tuple_id, key=self._key, digest_size=4).digest()
        return int.from_bytes(digest, "big")
