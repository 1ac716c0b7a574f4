"""Differential mode: one scenario with a kernel DUT and with ours, side by side.

The same script runs twice on identical veth labs: once with a Linux socket at
198.18.0.2 (the reference) and once with this endpoint there. Each DUT's segments
are reduced to what should agree between two correct TCPs: direction, flags,
relative seq/ack, payload length and which options are present (window sizes,
timestamps and window scale factors differ legitimately, and are shown but not
compared). The two lists are aligned with difflib, so an extra or a missing segment
(a delayed ACK the kernel folded into a later one, say) shows as one row, not as a
cascade of differences.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from tcpstack.core.segment import flags_str
from tcpstack.scenarios.harness import Outcome
from tcpstack.trace import SegmentEvent

_OPTION_NAME = re.compile(r"^[A-Za-z]+")


@dataclass(frozen=True)
class Seen:
    """A segment as the comparison sees it."""

    connection: int  # the DUT's n-th connection in the scenario
    direction: str
    flags: str
    rel_seq: int
    rel_ack: int | None
    length: int
    options: tuple[str, ...]

    @property
    def key(self) -> tuple[object, ...]:
        return (
            self.connection,
            self.direction,
            self.flags,
            self.rel_seq,
            self.rel_ack,
            self.length,
            self.options,
        )

    def text(self) -> str:
        arrow = ">" if self.direction == "out" else "<"
        ack = "-" if self.rel_ack is None else str(self.rel_ack)
        opts = f" <{','.join(self.options)}>" if self.options else ""
        numbers = f"{self.rel_seq}:{ack} len {self.length}"
        return f"#{self.connection} {arrow} {self.flags:<3} {numbers}{opts}"


def _option_kinds(event: SegmentEvent) -> tuple[str, ...]:
    kinds = []
    for part in str(event.segment.options).split(","):
        match = _OPTION_NAME.match(part.strip())
        if match:
            kinds.append(match.group(0))
    return tuple(kinds)


def reduce(outcome: Outcome) -> list[Seen]:
    """The DUT's segments, numbered by connection in order of first appearance."""
    connections: dict[tuple[object, ...], int] = {}
    seen = []
    for e in outcome.segments:
        if e.note.startswith("dropped"):
            continue  # a hook kept it off the wire
        key = (e.local, e.remote)
        index = connections.setdefault(key, len(connections) + 1)
        seen.append(
            Seen(
                index,
                e.direction,
                flags_str(e.segment.flags),
                e.relative_seq,
                e.relative_ack,
                len(e.segment.payload),
                _option_kinds(e),
            )
        )
    return seen


@dataclass
class Comparison:
    lines: list[str]
    differences: int


def compare(kernel: Outcome, ours: Outcome) -> Comparison:
    left, right = reduce(kernel), reduce(ours)
    matcher = difflib.SequenceMatcher(
        a=[s.key for s in left], b=[s.key for s in right], autojunk=False
    )
    width = max([len(s.text()) for s in left + right] + [30])
    lines = [f"  {'Linux as the DUT':<{width}}   {'tcpstack as the DUT':<{width}}"]
    differences = 0
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        rows = max(a1 - a0, b1 - b0)
        for i in range(rows):
            a = left[a0 + i].text() if a0 + i < a1 else ""
            b = right[b0 + i].text() if b0 + i < b1 else ""
            mark = " " if op == "equal" else "≠" if a and b else "+"
            if op != "equal":
                differences += 1
            lines.append(f"{mark} {a:<{width}} │ {b:<{width}}")
    k_states, o_states = sorted(kernel.dut_states), sorted(ours.dut_states)
    lines.append("")
    lines.append(f"  states seen, Linux (sampled): {' '.join(k_states)}")
    lines.append(f"  states visited, tcpstack:     {' '.join(o_states)}")
    # A kernel's state is polled, so a state it passes through in microseconds may be
    # missed: only a state it was seen in that we never visited counts as different.
    only_kernel = set(k_states) - set(o_states)
    if only_kernel:
        differences += 1
        lines.append(f"≠ Linux was seen in {', '.join(sorted(only_kernel))}; we never were")
    lines.append(
        f"{differences} difference(s) in flags, relative seq/ack, length, options or states"
    )
    return Comparison(lines, differences)
