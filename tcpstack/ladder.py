"""Ladder (sequence) diagrams of a conversation, as text for the terminal.

Each segment is one line: time, our state, the segment with relative and absolute
sequence and acknowledgement numbers, and the peer's state beside it. Notes (socket
calls returning, timers firing) go between the segments at their time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from tcpstack.core import seq
from tcpstack.core.segment import Segment, flags_str
from tcpstack.trace import TraceRecord


@dataclass(frozen=True, slots=True)
class Note:
    """A line of commentary in the ladder, e.g. "connect() returned"."""

    time: float
    side: str  # "us", "kernel" or "" for both
    text: str


@dataclass(frozen=True, slots=True)
class Row:
    record: TraceRecord
    ours: str
    theirs: str


def _numbers(
    seg: Segment, *, seq_base: int | None, ack_base: int | None, absolute: bool
) -> tuple[str, str]:
    def rel(value: int, base: int | None, show: bool) -> str:
        if base is None:
            return f"{value}"
        return f"{seq.sub(value, base)} ({value})" if show else f"{seq.sub(value, base)}"

    # The ISN is worth seeing once, on the SYN; after it relative numbers say it all.
    seq_text = rel(seg.seq, seq_base, absolute or seg.syn)
    ack_text = rel(seg.ack, ack_base, absolute) if seg.has_ack else "-"
    return seq_text, ack_text


_TIMESTAMPS = re.compile(r"TS val \d+ ecr \d+")


class Ladder:
    """Collects trace records and notes, then renders them in time order."""

    def __init__(
        self, *, local_name: str = "us", remote_name: str = "kernel", absolute: bool = False
    ) -> None:
        """absolute=True prints every absolute seq/ack and timestamp value too."""
        self.local_name = local_name
        self.absolute = absolute
        self.remote_name = remote_name
        self.rows: list[Row] = []
        self.notes: list[Note] = []
        self._our_isn: dict[tuple[int, int], int] = {}
        self._their_isn: dict[tuple[int, int], int] = {}

    def add(self, record: TraceRecord, theirs: str = "") -> None:
        self.rows.append(Row(record, record.state.name, theirs))

    def note(self, time: float, side: str, text: str) -> None:
        self.notes.append(Note(time, side, text))

    def _bases(self, record: TraceRecord) -> tuple[int | None, int | None]:
        """ISNs for relative numbering, learnt from the SYNs as they pass."""
        key = (record.local[1], record.remote[1])
        seg = record.segment
        if seg.syn:
            if record.direction == "out":
                self._our_isn.setdefault(key, seg.seq)
            else:
                self._their_isn.setdefault(key, seg.seq)
        ours = self._our_isn.get(key)
        theirs = self._their_isn.get(key)
        if record.direction == "out":
            return ours, theirs
        return theirs, ours

    def _body(self, rec: TraceRecord) -> str:
        seg = rec.segment
        seq_base, ack_base = self._bases(rec)
        seq_text, ack_text = _numbers(
            seg, seq_base=seq_base, ack_base=ack_base, absolute=self.absolute
        )
        body = (
            f" {flags_str(seg.flags):<3} seq {seq_text} ack {ack_text}"
            f" win {seg.window} len {len(seg.payload)}"
        )
        opts = str(seg.options)
        if not self.absolute:
            opts = _TIMESTAMPS.sub("TS", opts)
        if opts:
            body += f" <{opts}>"
        if rec.note:
            body += f" [{rec.note}]"
        return body + " "

    def render(self) -> list[str]:
        times = [r.record.time for r in self.rows] + [n.time for n in self.notes]
        start = min(times, default=0.0)
        items: list[tuple[float, int, object]] = [
            (r.record.time, i, r) for i, r in enumerate(self.rows)
        ] + [(n.time, len(self.rows) + i, n) for i, n in enumerate(self.notes)]
        items.sort(key=lambda item: (item[0], item[1]))
        bodies = {id(r): self._body(r.record) for r in self.rows}
        width = max((len(b) for b in bodies.values()), default=40) + 4
        lines = [
            f"{'time ms':>9}  {self.local_name:<13}{'':^{width}}  {self.remote_name}",
        ]
        for when, _, item in items:
            ms = (when - start) * 1000
            if isinstance(item, Note):
                if item.side == "us":
                    lines.append(f"{ms:9.3f}  {'· ' + item.text}")
                elif item.side == "kernel":
                    lines.append(f"{ms:9.3f}  {'':13}{'':{width}}  · {item.text}")
                else:
                    lines.append(f"{ms:9.3f}  {'':13}{'· ' + item.text:^{width}}")
                continue
            assert isinstance(item, Row)
            rec = item.record
            body = bodies[id(item)]
            # A segment a hook dropped never arrives: its arrow ends in a cross.
            lost = rec.note.startswith("dropped")
            if rec.direction == "out":
                arrow = "─" + body.ljust(width - 3, "─") + ("─✗" if lost else "─▶")
            else:
                arrow = ("✗─" if lost else "◀─") + body.ljust(width - 3, "─") + "─"
            lines.append(f"{ms:9.3f}  {item.ours:<13}{arrow}  {item.theirs}")
        return lines


def render_records(records: Iterable[TraceRecord]) -> list[str]:
    """A ladder of our side only, for records collected without a peer state source."""
    ladder = Ladder()
    for record in records:
        ladder.add(record)
    return ladder.render()
