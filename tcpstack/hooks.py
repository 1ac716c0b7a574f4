"""Segment hooks: scripted what-ifs that no ordinary socket allows.

A hook picks segments by a predicate, in one direction, and drops, delays,
duplicates or rewrites the first `times` of them (every one with times=None):

    stack.add_hook(Hook("out", DROP, where=all_of(is_flags("."), fin_received)))

drops the first ACK we send after the peer's FIN arrived: the peer in LAST_ACK
then retransmits its FIN and we ACK it again from TIME_WAIT.

Outgoing hooks act on what our core sent, before it reaches the link; incoming
ones on what arrived, before our core sees it. The engine counts what each did
(`hook_drop_out`, `hook_delay_in`, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tcpstack.core.connection import TcpConnection
from tcpstack.core.segment import Segment, parse_flags
from tcpstack.core.state import State


@dataclass(frozen=True)
class HookContext:
    """What a predicate sees: the segment, its direction, and our connection (None
    for a segment that belongs to no connection)."""

    segment: Segment
    direction: str  # "in" or "out"
    remote_ip: str
    connection: TcpConnection | None

    @property
    def state(self) -> State | None:
        return self.connection.state if self.connection is not None else None


Predicate = Callable[[HookContext], bool]

DROP, DELAY, DUPLICATE, REWRITE = "drop", "delay", "duplicate", "rewrite"


@dataclass(eq=False)
class Hook:
    direction: str  # "in" or "out"
    action: str  # drop, delay, duplicate or rewrite
    where: Predicate = field(default=lambda ctx: True)
    times: int | None = 1  # act on this many matching segments; None: on all of them
    delay: float = 0.0  # seconds, for "delay"
    rewrite: Callable[[Segment], Segment] | None = None  # for "rewrite"
    name: str = ""
    fired: int = 0  # how many segments it has acted on

    def __post_init__(self) -> None:
        if self.direction not in ("in", "out"):
            raise ValueError("direction must be 'in' or 'out'")
        if self.action not in (DROP, DELAY, DUPLICATE, REWRITE):
            raise ValueError(f"unknown hook action {self.action!r}")
        if self.action == REWRITE and self.rewrite is None:
            raise ValueError("a rewrite hook needs rewrite=")
        if self.delay < 0:
            raise ValueError("delay must not be negative")

    @property
    def spent(self) -> bool:
        return self.times is not None and self.fired >= self.times

    def matches(self, ctx: HookContext) -> bool:
        return ctx.direction == self.direction and not self.spent and self.where(ctx)


# ----------------------------------------------------------------- predicates


def is_flags(text: str) -> Predicate:
    """Exactly these flags, tcpdump-style: "S", "S.", ".", "F.", "R", "P." ..."""
    wanted = parse_flags(text)
    return lambda ctx: ctx.segment.flags == wanted


def has_flags(text: str) -> Predicate:
    """At least these flags."""
    wanted = parse_flags(text)
    return lambda ctx: ctx.segment.flags & wanted == wanted


def in_state(*states: State) -> Predicate:
    return lambda ctx: ctx.state in states


def fin_received(ctx: HookContext) -> bool:
    """The peer's FIN has arrived on this connection."""
    return ctx.connection is not None and ctx.connection.eof


def carries_data(ctx: HookContext) -> bool:
    return bool(ctx.segment.payload)


def all_of(*predicates: Predicate) -> Predicate:
    return lambda ctx: all(p(ctx) for p in predicates)


def any_of(*predicates: Predicate) -> Predicate:
    return lambda ctx: any(p(ctx) for p in predicates)


def local_port(port: int) -> Predicate:
    """Segments of our connections on this local port."""

    def match(ctx: HookContext) -> bool:
        seg = ctx.segment
        return (seg.src_port if ctx.direction == "out" else seg.dst_port) == port

    return match


def from_first(predicate: Predicate) -> Predicate:
    """The first segment `predicate` accepts and every segment after it: e.g. hold the
    peer's FIN and whatever follows it, so that they arrive late but in order."""
    started = False

    def match(ctx: HookContext) -> bool:
        nonlocal started
        started = started or predicate(ctx)
        return started

    return match
