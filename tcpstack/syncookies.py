"""SYN cookies (RFC 4987 §3.6): a listener under a SYN flood keeps no state per SYN.

When the half-open queue is full, the SYN-ACK's ISN itself carries what the
listener needs, authenticated with a secret: a hash of the 4-tuple, a 64-second
counter and the index of the client's MSS in a small table. The ACK that completes
the handshake acknowledges ISN+1, so the listener recovers the MSS from it and
opens the connection then. As in Linux without timestamps, the other options of
the SYN (window scaling, SACK, timestamps) cannot be remembered and are not used.
"""

from __future__ import annotations

import hashlib
import os

from tcpstack.core import seq

# Linux's msstab: the MSS values a cookie can carry (the largest not above the client's).
MSS_TABLE = (536, 1300, 1440, 1460)
_COUNT_SHIFT = 24
_LOW_MASK = (1 << _COUNT_SHIFT) - 1
# A cookie is good for the current 64-second period and the two before it.
_PERIOD = 64.0
_MAX_AGE = 2

FourTuple = tuple[str, int, str, int]


class SynCookies:
    def __init__(self, *, secret: bytes | None = None) -> None:
        key = secret if secret is not None else os.urandom(32)
        self._key1 = hashlib.blake2s(key + b"1").digest()
        self._key2 = hashlib.blake2s(key + b"2").digest()

    def _hash(self, key: bytes, four: FourTuple, count: int = 0) -> int:
        data = f"{four[0]}:{four[1]}>{four[2]}:{four[3]}/{count}".encode()
        return int.from_bytes(hashlib.blake2s(data, key=key, digest_size=4).digest(), "big")

    def make(self, four: FourTuple, client_isn: int, peer_mss: int, now: float) -> int:
        """The ISN of a stateless SYN-ACK to a SYN with sequence `client_isn`."""
        index = max((i for i, mss in enumerate(MSS_TABLE) if mss <= peer_mss), default=0)
        count = int(now // _PERIOD) & 0xFF
        low = (self._hash(self._key2, four, count) + index) & _LOW_MASK
        return seq.add(self._hash(self._key1, four) + client_isn, (count << _COUNT_SHIFT) + low)

    def check(self, four: FourTuple, client_isn: int, cookie: int, now: float) -> int | None:
        """The MSS a valid cookie carries, or None (forged, or too old)."""
        value = seq.add(cookie, -(self._hash(self._key1, four) + client_isn))
        count = value >> _COUNT_SHIFT
        age = (int(now // _PERIOD) - count) & 0xFF
        if age > _MAX_AGE:
            return None
        index = ((value & _LOW_MASK) - self._hash(self._key2, four, count)) & _LOW_MASK
        if index >= len(MSS_TABLE):
            return None
        return MSS_TABLE[index]
