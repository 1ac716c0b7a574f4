"""Out-of-order data above RCV.NXT, held until the hole before it fills (RFC 9293 §3.10.7.4).

Pure byte-range bookkeeping. Ranges are kept as absolute sequence numbers; every
comparison goes through tcpstack.core.seq, so the queue works across 2**32. The
owner bounds what it adds by the advertised window, so the memory held is at most
one receive window. The same ranges give the SACK blocks the receiver reports
(RFC 2018 §4): the block holding the most recently received segment first, then
the others, most recently changed first.
"""

from __future__ import annotations

from tcpstack.core import seq


class Reassembler:
    __slots__ = ("_blocks", "_recent", "_fin")

    def __init__(self) -> None:
        # Disjoint, non-adjacent blocks [start, start + len(data)), sorted by sequence.
        self._blocks: list[tuple[int, bytes]] = []
        # Block starts, most recently touched last (for SACK ordering).
        self._recent: list[int] = []
        self._fin: int | None = None  # sequence number of an out-of-order FIN

    def __len__(self) -> int:
        """Number of separate out-of-order blocks held."""
        return len(self._blocks)

    @property
    def held_bytes(self) -> int:
        return sum(len(data) for _, data in self._blocks)

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
        end = seq.add(start, len(data))
        merged_start, merged = start, bytearray(data)
        keep: list[tuple[int, bytes]] = []
        for block_start, block in self._blocks:
            block_end = seq.add(block_start, len(block))
            if seq.lt(block_end, merged_start) or seq.gt(block_start, end):
                keep.append((block_start, block))
                continue
            # Overlapping or adjacent: fold into one block.
            if seq.lt(block_start, merged_start):
                merged[:0] = bytes(seq.sub(merged_start, block_start))
                merged_start = block_start
            if seq.gt(block_end, end):
                merged += bytes(seq.sub(block_end, end))
                end = block_end
            # The copy already held wins where they overlap, as in Linux: a peer
            # that sends different bytes for the same sequence numbers does not get
            # to rewrite what we acknowledged in a SACK block.
            offset = seq.sub(block_start, merged_start)
            merged[offset : offset + len(block)] = block
            self._forget_recent(block_start)
        keep.append((merged_start, bytes(merged)))
        keep.sort(key=lambda b: seq.sub(b[0], rcv_nxt))
        self._blocks = keep
        self._recent.append(merged_start)

    def pop_ready(self, rcv_nxt: int) -> bytes:
        """Remove and return the bytes that now continue the stream at rcv_nxt."""
        out = b""
        while self._blocks:
            start, data = self._blocks[0]
            skip = seq.sub(rcv_nxt, start)
            if skip < 0:
                break
            self._blocks.pop(0)
            self._forget_recent(start)
            if skip < len(data):
                out += data[skip:]
                rcv_nxt = seq.add(rcv_nxt, len(data) - skip)
        return out

    def sack_blocks(self, limit: int) -> tuple[tuple[int, int], ...]:
        """Up to `limit` (left, right) edges, most recently received first (RFC 2018 §4)."""
        by_start = {start: seq.add(start, len(data)) for start, data in self._blocks}
        out: list[tuple[int, int]] = []
        for start in reversed(self._recent):
            if start in by_start:
                out.append((start, by_start[start]))
                if len(out) == limit:
                    break
        return tuple(out)

    def clear(self) -> None:
        self._blocks.clear()
        self._recent.clear()
        self._fin = None

    def _forget_recent(self, start: int) -> None:
        try:
            self._recent.remove(start)
        except ValueError:
            pass
