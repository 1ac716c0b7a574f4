"""The retransmission queue: one record per segment in flight, and RACK loss detection.

Pure bookkeeping. Each record covers [start, end) in sequence space (a FIN counts
one), remembers when it was last transmitted, and whether the peer SACKed it or we
deem it lost. From these the sender gets:

- the pipe (RFC 6675 §4, in Linux's form: outstanding - SACKed - lost), kept as
  running sums so no ACK walks the whole queue;
- time-based loss detection per RACK (RFC 8985 §6.2): a segment sent before the
  most recently delivered one is lost once it has been outstanding for an RTT plus
  a reordering window. This catches lost retransmissions, which duplicate-ACK
  counting never does, and tolerates reordering, which it handles badly.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

from tcpstack.core import seq


class Sent:
    """One transmitted segment still in flight."""

    __slots__ = ("start", "end", "fin", "xmit_time", "order", "retransmitted", "sacked", "lost")

    def __init__(self, start: int, end: int, fin: bool, xmit_time: float, order: int) -> None:
        self.start = start
        self.end = end
        self.fin = fin
        self.xmit_time = xmit_time
        # The count of transmissions before this one: which of two segments went
        # last when the engine's clock gave both the same time (one batch of input).
        self.order = order
        self.retransmitted = False
        self.sacked = False
        self.lost = False

    @property
    def length(self) -> int:
        return seq.sub(self.end, self.start)

    def __repr__(self) -> str:
        marks = "".join(
            m for m, on in (("S", self.sacked), ("L", self.lost), ("R", self.retransmitted)) if on
        )
        return f"<Sent {self.start}:{self.end} t={self.xmit_time:.6f} {marks}>"


class RetransmitQueue:
    """Records in sequence order. Besides the full list (for ACKs and SACK marking,
    found by binary search), the records not yet SACKed are kept in an
    insertion-ordered dict, so loss detection during recovery visits only the
    handful that matter instead of every segment of a large window."""

    __slots__ = (
        "_records", "_head", "_unsacked", "sacked_bytes", "lost_bytes", "outstanding",
        "_transmissions",
    )  # fmt: skip

    def __init__(self) -> None:
        self._records: list[Sent] = []
        self._head = 0  # records before this index are acknowledged and dropped
        self._unsacked: dict[int, Sent] = {}  # id(record) -> record, in sequence order
        self.sacked_bytes = 0
        self.lost_bytes = 0  # deemed lost and not yet sent again
        self.outstanding = 0
        self._transmissions = 0

    def __len__(self) -> int:
        return len(self._records) - self._head

    def __iter__(self) -> Iterator[Sent]:
        return iter(self._records[self._head :])

    def unsacked(self) -> Iterator[Sent]:
        """Records not SACKed, in sequence order."""
        return iter(self._unsacked.values())

    @property
    def pipe(self) -> int:
        return self.outstanding - self.sacked_bytes - self.lost_bytes

    @property
    def head(self) -> Sent | None:
        return self._records[self._head] if self._head < len(self._records) else None

    @property
    def tail(self) -> Sent | None:
        return self._records[-1] if self._head < len(self._records) else None

    def add(self, start: int, end: int, fin: bool, now: float) -> Sent:
        record = Sent(start, end, fin, now, self._transmissions)
        self._transmissions += 1
        self._records.append(record)
        self._unsacked[id(record)] = record
        self.outstanding += record.length
        return record

    def acknowledge(self, una: int) -> list[Sent]:
        """SND.UNA moved to `una`: drop covered records; return those newly delivered."""
        delivered: list[Sent] = []
        records = self._records
        i = self._head
        while i < len(records):
            record = records[i]
            if seq.le(record.end, una):
                i += 1
                self._forget(record)
                if not record.sacked:
                    delivered.append(record)
                continue
            if seq.lt(record.start, una):
                # Partly acknowledged (the peer took part of a segment): trim it.
                self._adjust(record, -seq.sub(una, record.start))
                record.start = una
            break
        self._head = i
        if i > 1024 and i * 2 > len(records):
            del records[:i]
            self._head = 0
        return delivered

    def split(self, record: Sent, at: int) -> Sent:
        """Cut a record in two at sequence `at` (inside it); return the second part.

        An offload (TSO) segment covers many MSS, and the peer may SACK, or we may
        resend, only part of it: as Linux's tcp_fragment does, the record becomes
        two, each with the first's marks and transmission time."""
        if not (seq.lt(record.start, at) and seq.lt(at, record.end)):
            raise ValueError(f"cannot split {record!r} at {at}")
        second = Sent(at, record.end, record.fin, record.xmit_time, record.order)
        second.retransmitted = record.retransmitted
        second.sacked = record.sacked
        second.lost = record.lost
        record.end = at
        record.fin = False
        index = self._records.index(record, self._head)
        self._records.insert(index + 1, second)
        if not record.sacked:
            # Rare (a partial SACK or resend); the order of the dict is the sequence.
            self._unsacked = {id(r): r for r in self._records[self._head :] if not r.sacked}
        return second

    def sack(self, una: int, blocks: Iterable[tuple[int, int]]) -> list[Sent]:
        """Mark records inside a SACK block, splitting those it covers only in part;
        return those newly delivered."""
        delivered: list[Sent] = []
        records = self._records
        for left, right in blocks:
            if not seq.lt(left, right) or seq.le(right, una):
                continue
            if seq.lt(left, una):
                left = una  # the part below SND.UNA is acknowledged already
            key = seq.sub(left, una)
            i = bisect.bisect_left(records, key, lo=self._head, key=lambda r: seq.sub(r.start, una))
            before = records[i - 1] if i > self._head else None
            if before is not None and not before.sacked and seq.lt(left, before.end):
                self.split(before, left)  # the block starts inside it: its tail is at i
            while i < len(records):
                record = records[i]
                i += 1
                if seq.ge(record.start, right):
                    break
                if seq.gt(record.end, right):
                    if record.sacked:
                        break
                    self.split(record, right)
                if record.sacked:
                    continue
                if record.lost:
                    record.lost = False
                    self.lost_bytes -= record.length
                record.sacked = True
                self.sacked_bytes += record.length
                del self._unsacked[id(record)]
                delivered.append(record)
        return delivered

    def mark_lost(self, record: Sent) -> None:
        if not record.lost and not record.sacked:
            record.lost = True
            self.lost_bytes += record.length

    def mark_all_lost(self) -> None:
        """RTO: every record not SACKed must be sent again (RFC 5681 §3.1, RFC 8985 §6.3)."""
        for record in self._unsacked.values():
            self.mark_lost(record)

    def clear_sacked(self) -> None:
        """Forget SACK marks, after the receiver showed it reneged (RFC 2018 §8)."""
        for record in self._records[self._head :]:
            record.sacked = False
        self._unsacked = {id(r): r for r in self._records[self._head :]}
        self.sacked_bytes = 0

    def first_lost(self) -> Sent | None:
        if not self.lost_bytes:
            return None
        for record in self._unsacked.values():
            if record.lost:
                return record
        return None

    def retransmitted(self, record: Sent, now: float) -> None:
        if record.lost:
            record.lost = False
            self.lost_bytes -= record.length
        record.retransmitted = True
        record.xmit_time = now
        record.order = self._transmissions
        self._transmissions += 1

    def forgive(self, record: Sent) -> None:
        """A loss that was no loss (an undone recovery): the record stays as sent."""
        if record.lost:
            record.lost = False
            self.lost_bytes -= record.length
        record.retransmitted = True

    def _forget(self, record: Sent) -> None:
        self.outstanding -= record.length
        if record.sacked:
            self.sacked_bytes -= record.length
        else:
            del self._unsacked[id(record)]
        if record.lost:
            self.lost_bytes -= record.length

    def _adjust(self, record: Sent, delta: int) -> None:
        self.outstanding += delta
        if record.sacked:
            self.sacked_bytes += delta
        if record.lost:
            self.lost_bytes += delta

    def clear(self) -> None:
        self._records.clear()
        self._head = 0
        self._unsacked.clear()
        self.sacked_bytes = self.lost_bytes = self.outstanding = 0


class Rack:
    """RACK (RFC 8985 §6): the most recently sent segment known delivered, the RTT
    seen on it, and the reordering window."""

    __slots__ = (
        "xmit_time", "order", "end", "rtt", "min_rtt", "reo_wnd_mult", "reordering_seen", "fack"
    )  # fmt: skip

    def __init__(self) -> None:
        self.xmit_time = -1.0
        self.order = -1
        self.end = 0
        self.rtt = 0.0
        self.min_rtt: float | None = None
        self.reo_wnd_mult = 1
        self.reordering_seen = False
        self.fack: int | None = None  # the highest sequence delivered (RACK.fack)

    def update(self, delivered: Iterable[Sent], now: float, rtt_hint: float | None) -> None:
        """§6.2 steps 2 and 3: advance with every newly delivered segment, and note
        reordering: a segment never sent again delivered below one delivered before."""
        for record in delivered:
            if self.fack is None or seq.gt(record.end, self.fack):
                self.fack = record.end
            elif not record.retransmitted and seq.lt(record.end, self.fack):
                self.reordering_seen = True
            rtt = now - record.xmit_time
            if record.retransmitted and rtt_hint is not None and rtt < rtt_hint:
                # The ACK may be for the original transmission, not this one; the
                # timestamp-measured RTT rules the sample out (§6.2, step 2).
                continue
            if self.min_rtt is None or rtt < self.min_rtt:
                self.min_rtt = rtt
            if self._sent_after(record, strictly=True):
                self.xmit_time = record.xmit_time
                self.order = record.order
                self.end = record.end
                self.rtt = rtt

    def _sent_after(self, record: Sent, *, strictly: bool) -> bool:
        """RACK_sent_after (§6.2): was `record` sent after the newest delivered one?
        Equal times are ordered by transmission, not by sequence as the RFC's tie
        break has it: one batch of input gives all it sends the same time, and a
        retransmission sent last would otherwise count as older than new data
        sent before it, and be deemed lost at the first SACK of that data."""
        if record.xmit_time != self.xmit_time:
            return record.xmit_time > self.xmit_time
        if record.order != self.order:
            return record.order > self.order
        # The two halves of a split offload segment: in sequence order.
        return seq.gt(record.end, self.end) if strictly else not seq.lt(record.end, self.end)

    def reorder_window(self, srtt: float | None, hurry: bool = False) -> float:
        """§6.2 step 4: none while no reordering has been seen and the sender is in
        recovery or DupThresh segments are SACKed (`hurry`); else a quarter of the
        minimum RTT, scaled up after spurious retransmissions, never more than SRTT."""
        if self.min_rtt is None or (hurry and not self.reordering_seen):
            return 0.0
        window = self.min_rtt / 4 * self.reo_wnd_mult
        if srtt is not None:
            window = min(window, srtt)
        return window

    def detect(
        self, queue: RetransmitQueue, now: float, srtt: float | None, hurry: bool = False
    ) -> tuple[list[Sent], float | None]:
        """§6.2 step 5: mark what is lost; return it and when to look again."""
        if self.xmit_time < 0:
            return [], None
        reo_wnd = self.reorder_window(srtt, hurry)
        lost: list[Sent] = []
        timeout: float | None = None
        for record in queue.unsacked():
            if record.lost:
                continue
            if self._sent_after(record, strictly=False):
                # Sent after the newest delivered segment: not known lost. Records
                # further on in sequence may still be older retransmissions.
                if not record.retransmitted:
                    break
                continue
            remaining = record.xmit_time + self.rtt + reo_wnd - now
            if remaining <= 0:
                lost.append(record)
            else:
                deadline = now + remaining
                timeout = deadline if timeout is None else min(timeout, deadline)
        for record in lost:
            queue.mark_lost(record)
        return lost, timeout
