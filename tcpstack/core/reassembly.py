"""Out-of-order data above RCV.NXT, held until the hole before it fills (RFC 9293 §3.10.7.4).

Pure byte-range bookkeeping. Blocks are kept by their distance from an anchor (a
sequence number at or below every block), so ordinary integer order is sequence
order across 2**32 too, and a segment finds its place by bisection: a peer that
floods us with thousands of disjoint one-byte segments costs a logarithmic search
and one pointer move each, not a walk over everything held (scenario L-05). The
owner bounds what it adds by the advertised window, so the bytes held are at most
one receive window. The same ranges give the SACK blocks the receiver reports (RFC
2018 §4): the block holding the most recently received segment first, then the
others, most recently changed first.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict

from tcpstack.core import seq

# Keys are re-based before the anchor falls this far behind RCV.NXT, far inside the
# 2**31 in which sequence arithmetic orders numbers.
_REBASE_AFTER = 1 << 30


class Reassembler:
    __slots__ = ("_anchor", "_keys", "_data", "_recent", "_held", "_fin")

    def __init__(self) -> None:
        self._anchor = 0
        # Block starts as distances from the anchor, sorted; and each block's bytes.
        # Blocks are disjoint and never adjacent.
        self._keys: list[int] = []
        self._data: dict[int, bytes] = {}
        # The same keys, most recently touched last (for SACK ordering).
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._held = 0
        self._fin: int | None = None  # sequence number of an out-of-order FIN

    def __len__(self) -> int:
        """Number of separate out-of-order blocks held."""
        return len(self._keys)

    @property
    def held_bytes(self) -> int:
        return self._held

    @property
    def fin(self) -> int | None:
        """Where an out-of-order FIN sits, if one arrived."""
        return self._fin

    def add(self, rcv_nxt: int, start: int, data: bytes, *, fin: bool = False) -> None:
        """Hold data that starts at `start`, above rcv_nxt; overlaps are merged."""
        if fin:
            self._fin = seq.add(start, len(data))
        skip = seq.sub(rcv_nxt, start)
        if skip > 0:
            data = data[skip:]
            start = rcv_nxt
        if not data:
            return
        if not self._keys:
            self._anchor = rcv_nxt
        elif seq.sub(rcv_nxt, self._anchor) > _REBASE_AFTER:
            self._rebase(rcv_nxt)
        keys, blocks = self._keys, self._data
        key = seq.sub(start, self._anchor)
        end = key + len(data)
        # The first block that could touch [key, end]: the one before it may reach it.
        first = bisect.bisect_left(keys, key)
        if first > 0 and keys[first - 1] + len(blocks[keys[first - 1]]) >= key:
            first -= 1
        last = bisect.bisect_right(keys, end, lo=first)
        if first == last:
            keys.insert(first, key)
            blocks[key] = data
            self._held += len(data)
            self._recent[key] = None
            return
        # Overlapping or adjacent blocks fold into one. The copy already held wins
        # where they overlap, as in Linux: a peer that sends different bytes for the
        # same sequence numbers does not get to rewrite what we acknowledged in a
        # SACK block.
        merged_start = min(key, keys[first])
        merged_end = max(end, keys[last - 1] + len(blocks[keys[last - 1]]))
        merged = bytearray(merged_end - merged_start)
        merged[key - merged_start : end - merged_start] = data
        for old in keys[first:last]:
            block = blocks.pop(old)
            self._held -= len(block)
            merged[old - merged_start : old - merged_start + len(block)] = block
            del self._recent[old]
        keys[first:last] = [merged_start]
        blocks[merged_start] = bytes(merged)
        self._held += len(merged)
        self._recent[merged_start] = None

    def pop_ready(self, rcv_nxt: int) -> bytes:
        """Remove and return the bytes that now continue the stream at rcv_nxt."""
        keys, blocks = self._keys, self._data
        if not keys:
            return b""
        at = seq.sub(rcv_nxt, self._anchor)
        taken = 0
        out = []
        while taken < len(keys) and keys[taken] <= at:
            key = keys[taken]
            data = blocks.pop(key)
            del self._recent[key]
            self._held -= len(data)
            skip = at - key
            if skip < len(data):
                out.append(data[skip:])
                at = key + len(data)
            taken += 1
        del keys[:taken]
        return b"".join(out)

    def sack_blocks(self, limit: int) -> tuple[tuple[int, int], ...]:
        """Up to `limit` (left, right) edges, most recently received first (RFC 2018 §4)."""
        out: list[tuple[int, int]] = []
        for key in reversed(self._recent):
            if len(out) == limit:
                break
            start = seq.add(self._anchor, key)
            out.append((start, seq.add(start, len(self._data[key]))))
        return tuple(out)

    def clear(self) -> None:
        self._keys.clear()
        self._data.clear()
        self._recent.clear()
        self._held = 0
        self._fin = None

    def _rebase(self, anchor: int) -> None:
        shift = seq.sub(anchor, self._anchor)
        self._anchor = anchor
        self._keys = [k - shift for k in self._keys]
        self._data = {k - shift: v for k, v in self._data.items()}
        self._recent = OrderedDict((k - shift, None) for k in self._recent)
