"""Trace events: what the endpoint saw, sent and decided, as Python objects.

The engine hands one of these to every subscriber (`Stack.subscribe`), for each
frame in or out, state transition, timer armed, fired or cancelled, and
retransmission. They cost nothing when nobody subscribes. Helpers here turn them
into log lines (`log_to`) and JSON lines (`JsonLines`); tcpstack.pcap writes them
as pcapng, tcpstack.ladder and tcpstack.plots draw them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from tcpstack.core import seq
from tcpstack.core.segment import Segment, flags_str
from tcpstack.core.state import State

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class SegmentEvent:
    """A TCP segment we received ("in", after processing) or sent ("out").

    The snapshot fields are the connection's variables at that moment (for a
    received segment, after it was processed).
    """

    time: float
    direction: str  # "in" or "out"
    local: Address
    remote: Address
    segment: Segment
    state: State
    iss: int
    irs: int
    snd_una: int = 0
    snd_nxt: int = 0
    rcv_nxt: int = 0
    snd_wnd: int = 0
    rcv_wnd: int = 0
    cwnd: int = 0
    srtt: float | None = None
    rto: float = 0.0
    frame: bytes = field(default=b"", repr=False)
    note: str = ""  # e.g. "dropped by hook": it never reached the wire

    @property
    def seq_base(self) -> int:
        """The ISN that sequence numbers in this direction count from."""
        return self.iss if self.direction == "out" else self.irs

    @property
    def ack_base(self) -> int:
        return self.irs if self.direction == "out" else self.iss

    @property
    def relative_seq(self) -> int:
        return seq.sub(self.segment.seq, self.seq_base)

    @property
    def relative_ack(self) -> int | None:
        return seq.sub(self.segment.ack, self.ack_base) if self.segment.has_ack else None

    def to_dict(self) -> dict[str, Any]:
        s = self.segment
        return {
            "event": "segment",
            "time": self.time,
            "direction": self.direction,
            "local": list(self.local),
            "remote": list(self.remote),
            "flags": flags_str(s.flags),
            "seq": s.seq,
            "ack": s.ack if s.has_ack else None,
            "relative_seq": self.relative_seq,
            "relative_ack": self.relative_ack,
            "len": len(s.payload),
            "window": s.window,
            "options": str(s.options),
            "state": self.state.name,
            "snd_una": self.snd_una,
            "snd_nxt": self.snd_nxt,
            "rcv_nxt": self.rcv_nxt,
            "snd_wnd": self.snd_wnd,
            "rcv_wnd": self.rcv_wnd,
            "cwnd": self.cwnd,
            "srtt": self.srtt,
            "rto": self.rto,
            "note": self.note,
        }

    def __str__(self) -> str:
        arrow = "<" if self.direction == "in" else ">"
        ack = f" ack {self.relative_ack}" if self.relative_ack is not None else ""
        return (
            f"{arrow} {flags_str(self.segment.flags)} seq {self.relative_seq}{ack}"
            f" len {len(self.segment.payload)} win {self.segment.window} [{self.state.name}]"
        )


@dataclass(frozen=True, slots=True)
class StateEvent:
    """A connection moved between RFC 9293 states; `cause` is the segment (in
    packetdrill form), timer or call that did it."""

    time: float
    local: Address
    remote: Address
    old: State
    new: State
    cause: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": "state",
            "time": self.time,
            "local": list(self.local),
            "remote": list(self.remote),
            "old": self.old.name,
            "new": self.new.name,
            "cause": self.cause,
        }

    def __str__(self) -> str:
        return f"{self.old.name} -> {self.new.name} ({self.cause})"


@dataclass(frozen=True, slots=True)
class TimerEvent:
    """A connection's timer was armed (or moved), fired, or cancelled."""

    time: float
    local: Address
    remote: Address
    timer: str  # "retransmit", "persist", "delayed_ack", "time_wait", ...
    action: str  # "armed", "fired" or "cancelled"
    deadline: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": "timer",
            "time": self.time,
            "local": list(self.local),
            "remote": list(self.remote),
            "timer": self.timer,
            "action": self.action,
            "deadline": self.deadline,
        }

    def __str__(self) -> str:
        when = f" for +{(self.deadline - self.time) * 1000:.1f} ms" if self.deadline else ""
        return f"timer {self.timer} {self.action}{when if self.action == 'armed' else ''}"


@dataclass(frozen=True, slots=True)
class RetransmitEvent:
    """A segment was sent again; `reason` says what found it lost."""

    time: float
    local: Address
    remote: Address
    seq: int
    length: int
    reason: str  # "timeout", "fast", "tail_probe", "probe", "syn"

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": "retransmit",
            "time": self.time,
            "local": list(self.local),
            "remote": list(self.remote),
            "seq": self.seq,
            "len": self.length,
            "reason": self.reason,
        }

    def __str__(self) -> str:
        return f"retransmit {self.seq} len {self.length} ({self.reason})"


@dataclass(frozen=True, slots=True)
class UrgentEvent:
    """The peer announced urgent data: `pending` bytes remain to be read up to and
    including its last urgent octet (the asynchronous notice of RFC 9293 MUST-32)."""

    time: float
    local: Address
    remote: Address
    pending: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": "urgent",
            "time": self.time,
            "local": list(self.local),
            "remote": list(self.remote),
            "pending": self.pending,
        }

    def __str__(self) -> str:
        return f"urgent data: {self.pending} bytes to the mark"


@dataclass(frozen=True, slots=True)
class TroubleEvent:
    """The connection reached R1 (RFC 9293 §3.8.3): `retransmissions` of the same
    data went unacknowledged. It goes on until R2; the peer's link address is asked
    for again."""

    time: float
    local: Address
    remote: Address
    retransmissions: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": "trouble",
            "time": self.time,
            "local": list(self.local),
            "remote": list(self.remote),
            "retransmissions": self.retransmissions,
        }

    def __str__(self) -> str:
        return f"delivery trouble: {self.retransmissions} retransmissions unanswered (R1)"


@dataclass(frozen=True, slots=True)
class FrameEvent:
    """A frame that is not one of a connection's segments: ARP, ICMP, a segment to
    no connection (and our RST to it), or a frame we dropped (`note` says why)."""

    time: float
    direction: str
    frame: bytes = field(repr=False)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": "frame",
            "time": self.time,
            "direction": self.direction,
            "len": len(self.frame),
            "note": self.note,
        }

    def __str__(self) -> str:
        return f"frame {self.direction} {len(self.frame)} bytes {self.note}".rstrip()


TraceEvent = (
    SegmentEvent
    | StateEvent
    | TimerEvent
    | RetransmitEvent
    | UrgentEvent
    | TroubleEvent
    | FrameEvent
)
Subscriber = Callable[[TraceEvent], None]

# The old name of SegmentEvent, kept for the ladder and scripts written against it.
TraceRecord = SegmentEvent


def log_to(logger: logging.Logger | None = None, level: int = logging.DEBUG) -> Subscriber:
    """A subscriber that writes each event to `logger` (default: tcpstack.trace)."""
    target = logger or logging.getLogger("tcpstack.trace")

    def emit(event: TraceEvent) -> None:
        if target.isEnabledFor(level):
            where = ""
            if not isinstance(event, FrameEvent):
                where = f"{event.local[1]}<>{event.remote[0]}:{event.remote[1]} "
            target.log(level, "%s%s", where, event)

    return emit


class JsonLines:
    """A subscriber that writes one JSON object per event to a file."""

    def __init__(self, target: str | IO[str]) -> None:
        self._own = isinstance(target, str)
        self._file: IO[str] = open(target, "w") if isinstance(target, str) else target  # noqa: SIM115

    def __call__(self, event: TraceEvent) -> None:
        self._file.write(json.dumps(event.to_dict()) + "\n")

    def close(self) -> None:
        if self._own:
            self._file.close()
        else:
            self._file.flush()


class Recorder:
    """A subscriber that keeps every event, for ladders, plots and pcap files."""

    def __init__(self) -> None:
        self.events: list[TraceEvent] = []

    def __call__(self, event: TraceEvent) -> None:
        self.events.append(event)

    @property
    def segments(self) -> list[SegmentEvent]:
        return [e for e in self.events if isinstance(e, SegmentEvent)]

    @property
    def states(self) -> list[StateEvent]:
        return [e for e in self.events if isinstance(e, StateEvent)]
