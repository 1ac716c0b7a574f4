"""Pictures of a recorded TCP conversation, drawn from trace events with matplotlib.

Record a conversation with ``tcpstack.trace.Recorder`` (``stack.subscribe(rec)``),
then hand ``rec.events`` to one of the functions below. Each picks one connection
(``connection=(local, remote)``, or by default the first one that sent or received
a segment), draws it on a fresh ``matplotlib.figure.Figure`` and, given a path,
writes it there as PNG or SVG, chosen by the suffix. Each returns the Figure, so
it can be adjusted and saved again with `save`. Nothing here touches pyplot's
global state or needs a display, so pictures may be drawn from any thread.

time_sequence(events, path, direction="out")
    The time-sequence graph of tcptrace and Wireshark ("Stevens" style). Time runs
    to the right, relative sequence number upwards. Each segment is a vertical bar
    from its first to its last sequence number; retransmissions are red, segments
    a hook dropped before the wire are crossed out, SYN and FIN are triangles. The
    green step line is the peer's cumulative ACK, the gold one the right edge of
    the window it offered (ACK + window, already scaled to bytes), and purple bars
    are the ranges it reported in SACK blocks. A healthy transfer is a staircase of
    blue bars climbing just below the gold line; the gap between the blue bars and
    the green line is the data in flight, and a red bar sitting below the top of
    the climb is data sent again. ``direction="in"`` draws the data we received,
    against the ACKs and windows we sent.

congestion(events, path)
    Two panels over the same time axis. Top: the congestion window and the data
    in flight (SND.NXT - SND.UNA), in bytes. Bottom, on a log scale in ms: RTT
    samples (a segment sent once, timed to the first ACK that covers it, Karn's
    rule), the smoothed RTT and the retransmission timeout. Vertical lines mark
    retransmissions (coloured by what triggered them) and state changes (grey,
    named along the top).

state_diagram(events, path)
    The RFC 9293 state diagram (Figure 5), eleven boxes laid out as in the RFC
    (CLOSED, which is both start and end, is drawn at the top and at the bottom).
    Arrows are the standard transitions, labelled "event / action". The states
    this connection visited are green and the transitions it took are thick blue
    arrows with circled step numbers; the list on the right says when each step
    happened and what caused it. Aborts (RST, ABORT, giving up on retransmitting)
    are only drawn when the connection took one. The Figure returned is a
    `StateDiagramFigure`, which also says what was highlighted; in SVG the boxes
    and arrows carry ids such as ``state-ESTABLISHED-visited`` and
    ``transition-SYN_SENT-ESTABLISHED-taken``.

ladder_picture(ladder_or_events, path)
    The ladder (sequence) diagram of tcpstack.ladder, as a picture: our lifeline
    on the left, the peer's on the right, one row per segment or note, time
    downwards (rows are evenly spaced, in time order; the time of each row in ms
    is written in the left margin). Each segment is an arrow slanting from sender
    to receiver, labelled with its flags (tcpdump letters), relative sequence and
    acknowledgement numbers, length and window field (SYN options in <>).
    Retransmissions are red; a segment a hook dropped is a red half arrow ending
    in a cross. States are written beside the lifelines where they change: ours
    from the trace, the kernel's when given a Ladder whose rows carry them (from
    plain events, our timers that fired are noted instead). Long conversations
    are cut at ``max_rows`` rows (default 200).

save(figure, path)
    Writes a figure as PNG or SVG by the path's suffix, with its title in the
    file's metadata (the SVG ``<title>`` element, the PNG ``Title`` text chunk).
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
from matplotlib.path import Path as MplPath
from matplotlib.ticker import FuncFormatter, NullFormatter

from tcpstack.core import seq
from tcpstack.core.segment import Flags, Segment, flags_str
from tcpstack.core.state import State
from tcpstack.ladder import Ladder, Note
from tcpstack.trace import (
    Address,
    FrameEvent,
    RetransmitEvent,
    SegmentEvent,
    StateEvent,
    TimerEvent,
    TraceEvent,
)

__all__ = [
    "Connection",
    "StateDiagramFigure",
    "congestion",
    "connections",
    "ladder_picture",
    "save",
    "state_diagram",
    "time_sequence",
]

Connection = tuple[Address, Address]
"""(local, remote): our address and port, the peer's address and port."""

PathLike = str | os.PathLike[str]

Point = tuple[float, float]
FloatArray = npt.NDArray[np.float64]

_SYN, _FIN = int(Flags.SYN), int(Flags.FIN)

_FORMATS = {".png": "png", ".svg": "svg"}

DATA_COLOUR = "tab:blue"
RETRANSMIT_COLOUR = "tab:red"
ACK_COLOUR = "tab:green"
WINDOW_COLOUR = "goldenrod"
SACK_COLOUR = "tab:purple"
INCOMING_COLOUR = "tab:green"
_REASON_COLOURS = {
    "timeout": "tab:red",
    "fast": "tab:orange",
    "tail_probe": "tab:pink",
    "probe": "tab:brown",
    "syn": "darkred",
}


# ------------------------------------------------------------------ common parts


def save(figure: Figure, path: PathLike, *, title: str | None = None) -> Path:
    """Write `figure` to `path` as PNG or SVG (by suffix); return the path.

    The title (default: the figure's label, which every function here sets) goes
    into the file's metadata, so an SVG has a ``<title>`` to search for."""
    target = Path(path)
    fmt = _FORMATS.get(target.suffix.lower())
    if fmt is None:
        raise ValueError(f"{target.name}: suffix must be .png or .svg")
    metadata: dict[str, str | None] = {"Title": title or str(figure.get_label()) or "tcpstack"}
    if fmt == "svg":
        # No date, so that the same conversation always gives the same file.
        metadata["Date"] = None
    figure.savefig(target, format=fmt, metadata=metadata)
    return target


def connections(events: Iterable[TraceEvent]) -> list[Connection]:
    """Every connection that sent or received a segment, in order of appearance."""
    seen: dict[Connection, None] = {}
    for event in events:
        if isinstance(event, SegmentEvent):
            seen.setdefault((event.local, event.remote), None)
    return list(seen)


def _new_figure(width: float, height: float, label: str, *, layout: bool = True) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained" if layout else None)
    # An Agg canvas of its own: rendering never goes through pyplot or a GUI.
    FigureCanvasAgg(figure)
    figure.set_label(label)
    return figure


def _finish(figure: Figure, path: PathLike | None) -> None:
    if path is not None:
        save(figure, path)


def _endpoint(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


def _describe(connection: Connection) -> str:
    local, remote = connection
    return f"{_endpoint(local)} ⇄ {_endpoint(remote)}"


@dataclass
class _Conversation:
    """One connection's events, split by kind, and the time they start from."""

    connection: Connection | None
    segments: list[SegmentEvent] = field(default_factory=list)
    states: list[StateEvent] = field(default_factory=list)
    retransmits: list[RetransmitEvent] = field(default_factory=list)
    timers: list[TimerEvent] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0

    @property
    def title(self) -> str:
        return _describe(self.connection) if self.connection else "no connection"


def _conversation(events: Iterable[TraceEvent], connection: Connection | None) -> _Conversation:
    events = list(events)
    if connection is None:
        found = connections(events)
        # A connection that never sent or received (refused before its SYN, say)
        # still changed state: fall back to the first one that did anything.
        found += [(e.local, e.remote) for e in events if not isinstance(e, FrameEvent)]
        connection = found[0] if found else None
    conv = _Conversation(connection)
    times: list[float] = []
    for event in events:
        if isinstance(event, FrameEvent) or (event.local, event.remote) != connection:
            continue
        times.append(event.time)
        if isinstance(event, SegmentEvent):
            conv.segments.append(event)
        elif isinstance(event, StateEvent):
            conv.states.append(event)
        elif isinstance(event, RetransmitEvent):
            conv.retransmits.append(event)
        elif isinstance(event, TimerEvent):
            conv.timers.append(event)
    # Time counts from the first segment, as in tcptrace; the connect() or
    # listen() before it shows at a small negative time.
    first = conv.segments[0].time if conv.segments else min(times, default=0.0)
    conv.start = first
    conv.end = max(times, default=first)
    return conv


@dataclass(frozen=True)
class _TimeScale:
    factor: float
    unit: str

    @staticmethod
    def for_span(span: float) -> _TimeScale:
        # Milliseconds read better for the short exchanges a lab produces; past a
        # few seconds the numbers get long, so switch to seconds.
        return _TimeScale(1000.0, "ms") if span < 5.0 else _TimeScale(1.0, "s")

    @property
    def label(self) -> str:
        return f"time since first segment ({self.unit})"


class _Unwrap:
    """Sequence numbers relative to a base, unwrapped past 2**32 so that a long
    transfer keeps climbing instead of falling back to zero."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.last = 0

    def __call__(self, value: int) -> int:
        self.last += seq.sub(value, seq.add(self.base, self.last))
        return self.last


def _length(s: Segment) -> int:
    """SEG.LEN, by plain integer arithmetic: enum flag operations would be most of
    the time it takes to plot a long transfer."""
    flags = int(s.flags)
    return len(s.payload) + (1 if flags & _SYN else 0) + (flags & _FIN)


def _retransmitted(
    segments: Sequence[SegmentEvent], marks: Iterable[RetransmitEvent]
) -> list[bool]:
    """For each segment (all sent by one side), whether it repeats sequence space
    already sent, or the sender reported it as a retransmission."""
    reported = {(m.time, m.seq) for m in marks}
    flags: list[bool] = []
    high: int | None = None
    unwrap: _Unwrap | None = None
    for event in segments:
        s = event.segment
        if unwrap is None:
            unwrap = _Unwrap(event.seq_base)
        start = unwrap(s.seq)
        length = _length(s)
        again = (event.time, s.seq) in reported or (
            high is not None and length > 0 and start < high
        )
        flags.append(again)
        if length:
            high = start + length if high is None else max(high, start + length)
    return flags


def _xy(points: Sequence[Point]) -> tuple[FloatArray, FloatArray]:
    """Columns of x and y, as arrays: matplotlib converts lists item by item."""
    array = np.asarray(points, dtype=float).reshape(-1, 2)
    return array[:, 0], array[:, 1]


def _legend_proxy(colour: str, label: str, **style: object) -> Line2D:
    return Line2D([], [], color=colour, label=label, **style)  # type: ignore[arg-type]


# ------------------------------------------------------------ time-sequence graph


def time_sequence(
    events: Iterable[TraceEvent],
    path: PathLike | None = None,
    *,
    connection: Connection | None = None,
    direction: str = "out",
) -> Figure:
    """The time-sequence graph of one direction's data ("out": what we sent)."""
    if direction not in ("out", "in"):
        raise ValueError("direction must be 'out' or 'in'")
    conv = _conversation(events, connection)
    sent = [e for e in conv.segments if e.direction == direction]
    acks = [e for e in conv.segments if e.direction != direction and e.segment.has_ack]
    whose = "our data" if direction == "out" else "data we received"
    title = f"Time-sequence graph, {whose}: {conv.title}"
    figure = _new_figure(11, 6.5, title)
    ax = figure.add_subplot()
    last = max((e.time for e in conv.segments), default=conv.start)
    scale = _TimeScale.for_span(last - conv.start)

    def x(t: float) -> float:
        return (t - conv.start) * scale.factor

    handles: list[Line2D] = []
    base = sent[0].seq_base if sent else (acks[0].ack_base if acks else 0)
    tops: list[float] = [0.0]  # the highest byte of data, ACK or SACK, to size the y axis

    # Data segments: a vertical bar from first to last sequence number each.
    again = _retransmitted(sent, conv.retransmits if direction == "out" else [])
    unwrap = _Unwrap(base)
    bars: dict[str, list[list[tuple[float, float]]]] = {"new": [], "again": [], "dropped": []}
    ends: list[tuple[float, float]] = []
    syns: list[tuple[float, float]] = []
    fins: list[tuple[float, float]] = []
    for event, repeated in zip(sent, again, strict=True):
        s = event.segment
        start = unwrap(s.seq)
        length = _length(s)
        if not length:
            continue
        t, end = x(event.time), start + length
        kind = "dropped" if event.note.startswith("dropped") else "again" if repeated else "new"
        bars[kind].append([(t, start), (t, end)])
        ends += [(t, start), (t, end)]
        tops.append(end)
        if int(s.flags) & _SYN:
            syns.append((t, start))
        if int(s.flags) & _FIN:
            fins.append((t, end - 1))
    styles = {
        "new": (DATA_COLOUR, "data segment", "solid"),
        "again": (RETRANSMIT_COLOUR, "retransmit", "solid"),
        "dropped": (RETRANSMIT_COLOUR, "dropped before the wire", "dotted"),
    }
    for kind, lines in bars.items():
        if not lines:
            continue
        colour, label, style = styles[kind]
        # Above the ACK line, which often steps up at the very time a segment
        # arrives and would hide it.
        ax.add_collection(
            LineCollection(lines, colors=colour, linewidths=1.6, linestyles=style, zorder=3)
        )
        handles.append(_legend_proxy(colour, label, linestyle=style, linewidth=1.6))
        if kind == "dropped":
            middles = [(a[0], (a[1] + b[1]) / 2) for a, b in lines]
            ax.scatter(*_xy(middles), marker="x", color=colour, s=40, zorder=4)
    if ends:
        # Short ticks at both ends of every bar, as tcptrace draws them, so that
        # one-byte segments and back-to-back bars stay distinguishable.
        ax.scatter(*_xy(ends), marker="_", color="0.25", s=12, linewidths=0.8, zorder=3)

    # The other side's segments: its cumulative ACK, window edge and SACK blocks.
    ack_points: list[tuple[float, float]] = []
    window_points: list[tuple[float, float]] = []
    sack_lines: list[list[tuple[float, float]]] = []
    ack_unwrap, edge_unwrap = _Unwrap(base), _Unwrap(base)
    for event in acks:
        s = event.segment
        t, ack = x(event.time), ack_unwrap(s.ack)
        ack_points.append((t, ack))
        # The snapshot holds the window in bytes, already scaled: SND.UNA + SND.WND
        # for what the peer offered us, RCV.NXT + RCV.WND for what we offered.
        if direction == "out":
            edge = seq.add(event.snd_una, event.snd_wnd)
        else:
            edge = seq.add(event.rcv_nxt, event.rcv_wnd)
        window_points.append((t, edge_unwrap(edge)))
        for left, right in s.options.sack_blocks:
            low = ack + seq.sub(left, s.ack)
            sack_lines.append([(t, low), (t, low + seq.sub(right, left))])
            tops.append(low + seq.sub(right, left))
    tops += [a for _, a in ack_points]
    if ack_points:
        # Held to the end of the graph: the last ACK stands until something changes it.
        ack_points.append((x(last), ack_points[-1][1]))
        ax.plot(*_xy(ack_points), drawstyle="steps-post", color=ACK_COLOUR)
        handles.append(_legend_proxy(ACK_COLOUR, "ACK (cumulative)"))
    top = max(tops)
    if window_points:
        window_points.append((x(last), window_points[-1][1]))
        ax.plot(*_xy(window_points), drawstyle="steps-post", color=WINDOW_COLOUR)
        label = "receive window edge (ACK + window)"
        highest = max(w for _, w in window_points)
        if highest > 3 * top and top > 0:
            # A window far beyond the data would squash the data into a line
            # along the bottom; the data matters more, so the window leaves the top.
            label += f"; up to {highest}, above the top"
        else:
            top = max(top, highest)
        handles.append(_legend_proxy(WINDOW_COLOUR, label))
    if sack_lines:
        ax.add_collection(LineCollection(sack_lines, colors=SACK_COLOUR, linewidths=3, alpha=0.6))
        handles.append(_legend_proxy(SACK_COLOUR, "SACK block", linewidth=3))
    for points, marker, label, colour in (
        (syns, "^", "SYN", "black"),
        (fins, "v", "FIN", "tab:purple"),
    ):
        if points:
            ax.scatter(*_xy(points), marker=marker, s=60, color=colour, zorder=4)
            handles.append(
                _legend_proxy(colour, label, marker=marker, linestyle="none", markersize=7)
            )

    if not sent and not acks:
        ax.text(0.5, 0.5, "no segments", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(x(conv.start) - 0.02 * (x(last) or 1), x(last) * 1.02 or 1)
    ax.set_ylim(-0.04 * (top or 1), top * 1.08 or 1)
    ax.set_xlabel(scale.label)
    ax.set_ylabel("relative sequence number (bytes)")
    ax.set_title(title)
    ax.grid(True, color="0.9")
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    if handles:
        ax.legend(handles=handles, loc="upper left", fontsize=8)
    _finish(figure, path)
    return figure


# ---------------------------------------------------------- congestion and RTT


def _rtt_samples(conv: _Conversation) -> list[tuple[float, float]]:
    """(ack time, RTT) for each segment sent once, timed to the first ACK that
    covers it; retransmitted ones are left out, their ACK being ambiguous (Karn)."""
    out = [e for e in conv.segments if e.direction == "out"]
    again = dict(zip(map(id, out), _retransmitted(out, conv.retransmits), strict=True))
    pending: deque[tuple[int, float]] = deque()  # (end, send time), ends increasing
    spoiled: set[int] = set()
    unwrap: _Unwrap | None = None
    samples: list[tuple[float, float]] = []
    for event in conv.segments:
        s = event.segment
        if unwrap is None:
            unwrap = _Unwrap(event.iss)
        if event.direction == "out":
            if not _length(s) or event.note.startswith("dropped"):
                continue
            end = unwrap(s.end_seq)
            if again[id(event)]:
                start = unwrap(s.seq)
                spoiled.update(e for e, _ in pending if e > start)
            elif not pending or end > pending[-1][0]:
                pending.append((end, event.time))
        elif s.has_ack:
            ack = unwrap(s.ack)
            while pending and pending[0][0] <= ack:
                end, sent_at = pending.popleft()
                if end not in spoiled:
                    samples.append((event.time, event.time - sent_at))
    return samples


def _clusters(times: Sequence[float], gap: float) -> list[list[int]]:
    """Indexes of `times` (sorted) grouped where neighbours are closer than `gap`."""
    groups: list[list[int]] = []
    for i, t in enumerate(times):
        if groups and t - times[groups[-1][-1]] < gap:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _steps(
    ax: Axes, xs: Sequence[float], ys: Sequence[float], until: float, **style: object
) -> None:
    """A step line, held at its last value until `until` (a variable keeps its value
    until the next segment changes it)."""
    if xs:
        ax.plot([*xs, until], [*ys, ys[-1]], drawstyle="steps-post", **style)  # type: ignore[arg-type]


def _mark_events(ax: Axes, conv: _Conversation, x: Callable[[float], float], legend: bool) -> None:
    """Vertical lines: grey dashed at state changes, coloured at retransmissions."""
    axis = ax.get_xaxis_transform()
    if conv.states:
        ax.vlines(
            [x(e.time) for e in conv.states],
            0,
            1,
            transform=axis,
            colors="0.6",
            linestyles="dashed",
            linewidths=0.8,
        )
    by_reason: dict[str, list[float]] = {}
    for r in conv.retransmits:
        by_reason.setdefault(r.reason, []).append(x(r.time))
    for reason, when in sorted(by_reason.items()):
        ax.vlines(
            when,
            0,
            1,
            transform=axis,
            colors=_REASON_COLOURS.get(reason, RETRANSMIT_COLOUR),
            linewidths=1.0,
            alpha=0.7,
            label=f"retransmit ({reason})" if legend else "_nolegend_",
        )


def congestion(
    events: Iterable[TraceEvent],
    path: PathLike | None = None,
    *,
    connection: Connection | None = None,
) -> Figure:
    """cwnd and bytes in flight, and RTT, SRTT and RTO, over time."""
    conv = _conversation(events, connection)
    title = f"Congestion window and round-trip time: {conv.title}"
    figure = _new_figure(11, 7.5, title)
    top, bottom = figure.subplots(2, 1, sharex=True)
    scale = _TimeScale.for_span(conv.end - conv.start)

    def x(t: float) -> float:
        return (t - conv.start) * scale.factor

    until = x(conv.end)
    segs = conv.segments
    xs = [x(e.time) for e in segs]
    _steps(top, xs, [e.cwnd for e in segs], until, color="tab:blue", label="cwnd")
    flight = [max(seq.sub(e.snd_nxt, e.snd_una), 0) for e in segs]
    _steps(top, xs, flight, until, color="tab:orange", label="in flight (SND.NXT − SND.UNA)")
    top.set_ylabel("bytes")
    top.set_ylim(bottom=0)
    top.ticklabel_format(axis="y", style="plain", useOffset=False)

    ms = 1000.0
    samples = _rtt_samples(conv)
    if samples:
        bottom.scatter(
            [x(t) for t, _ in samples],
            [r * ms for _, r in samples],
            s=12,
            color="0.3",
            label="RTT sample",
            zorder=3,
        )
    measured = [e for e in segs if e.srtt is not None]
    _steps(
        bottom,
        [x(e.time) for e in measured],
        [(e.srtt or 0.0) * ms for e in measured],
        until,
        color="tab:green",
        label="SRTT",
    )
    # No RTO yet reads as a gap: a zero has no place on a log scale.
    rtos = [e.rto * ms if e.rto > 0 else math.nan for e in segs]
    _steps(bottom, xs, rtos, until, color="tab:red", label="RTO")
    if any(e.rto > 0 for e in segs) or samples:
        # RTTs on a link are micro- to milliseconds while the RTO is at least
        # 200 ms: only a log scale shows both.
        bottom.set_yscale("log")
        # Plain numbers ("0.1", "200") read better than powers of ten, and skip
        # the mathtext machinery, the slowest part of drawing this figure.
        bottom.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        bottom.yaxis.set_minor_formatter(NullFormatter())
    bottom.set_ylabel("ms (log scale)")
    bottom.set_xlabel(scale.label)

    for ax in (top, bottom):
        ax.grid(True, color="0.9")
        _mark_events(ax, conv, x, legend=ax is top)
    # Changes a fraction of a millisecond apart (the handshake) share one label.
    state_times = [x(e.time) for e in conv.states]
    gap = (until - x(conv.start)) * 0.03 or 1e-9
    for group in _clusters(state_times, gap):
        top.text(
            state_times[group[0]],
            0.98,
            " → ".join(conv.states[i].new.name for i in group),
            transform=top.get_xaxis_transform(),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
            color="0.3",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1},
        )
    for ax in (top, bottom):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    top.set_title(title)
    if not segs:
        top.text(0.5, 0.5, "no segments", ha="center", va="center", transform=top.transAxes)
    _finish(figure, path)
    return figure


# ----------------------------------------------------------------- state diagram

# Box centres, in the RFC 9293 Figure 5 arrangement (units are arbitrary; the
# axes keep them square). "CLOSED_END" is the second CLOSED box, at the bottom.
_BOXES: dict[str, Point] = {
    "CLOSED": (5.0, 9.8),
    "LISTEN": (5.0, 8.3),
    "SYN_RECEIVED": (1.5, 6.8),
    "SYN_SENT": (8.5, 6.8),
    "ESTABLISHED": (5.0, 5.3),
    "FIN_WAIT_1": (1.5, 3.8),
    "CLOSE_WAIT": (8.5, 3.8),
    "FIN_WAIT_2": (1.5, 2.3),
    "CLOSING": (5.0, 2.3),
    "LAST_ACK": (8.5, 2.3),
    "TIME_WAIT": (5.0, 0.8),
    "CLOSED_END": (8.5, 0.8),
}
_BOX_W, _BOX_H = 2.0, 0.56
_LIT_FACE, _LIT_EDGE, _TAKEN = "#cdeccd", "tab:green", "tab:blue"


@dataclass(frozen=True)
class _Edge:
    old: State
    new: State
    label: str  # "event\naction", in our words
    rad: float = 0.0  # curvature (matplotlib's arc3), to part opposite arrows
    target: str = ""  # the box it ends at, when not the new state's own box
    at: float = 0.5  # where along the visible arrow its label sits
    ha: str = "center"  # "right": the label stands left of that point
    shift: Point = (0.0, 0.0)  # moves the label off the arrow


_S = State
# The standard transitions, as in RFC 9293 Figure 5.
_EDGES: tuple[_Edge, ...] = (
    _Edge(_S.CLOSED, _S.LISTEN, "passive OPEN\ncreate TCB", rad=0.4, ha="right", shift=(-0.1, 0)),
    _Edge(_S.LISTEN, _S.CLOSED, "CLOSE\ndelete TCB", rad=0.4),
    _Edge(_S.CLOSED, _S.SYN_SENT, "active OPEN\nsend SYN", rad=-0.2, at=0.45),
    _Edge(_S.LISTEN, _S.SYN_RECEIVED, "rcv SYN\nsend SYN,ACK", rad=0.15),
    _Edge(_S.LISTEN, _S.SYN_SENT, "SEND\nsend SYN", at=0.55),
    _Edge(_S.SYN_RECEIVED, _S.LISTEN, "rcv RST\n(passive open)", rad=0.15),
    _Edge(_S.SYN_SENT, _S.SYN_RECEIVED, "rcv SYN (simultaneous open)\nsend SYN,ACK"),
    _Edge(_S.SYN_SENT, _S.CLOSED, "CLOSE, RST or timeout\ndelete TCB", rad=0.5),
    _Edge(_S.SYN_RECEIVED, _S.ESTABLISHED, "rcv ACK of SYN"),
    _Edge(_S.SYN_SENT, _S.ESTABLISHED, "rcv SYN,ACK\nsend ACK"),
    _Edge(_S.SYN_RECEIVED, _S.FIN_WAIT_1, "CLOSE\nsend FIN"),
    _Edge(_S.ESTABLISHED, _S.FIN_WAIT_1, "CLOSE\nsend FIN"),
    _Edge(_S.ESTABLISHED, _S.CLOSE_WAIT, "rcv FIN\nsend ACK"),
    _Edge(_S.FIN_WAIT_1, _S.FIN_WAIT_2, "rcv ACK of FIN"),
    _Edge(_S.FIN_WAIT_1, _S.CLOSING, "rcv FIN\nsend ACK"),
    _Edge(_S.CLOSE_WAIT, _S.LAST_ACK, "CLOSE\nsend FIN"),
    _Edge(_S.FIN_WAIT_2, _S.TIME_WAIT, "rcv FIN\nsend ACK"),
    _Edge(_S.CLOSING, _S.TIME_WAIT, "rcv ACK of FIN"),
    _Edge(_S.LAST_ACK, _S.CLOSED, "rcv ACK of FIN\ndelete TCB", target="CLOSED_END"),
    _Edge(
        _S.TIME_WAIT, _S.CLOSED, "2 MSL timeout\ndelete TCB", target="CLOSED_END", shift=(0, 0.3)
    ),
)
_ABORT_LABEL = "RST or ABORT"
_AREA = (0.0, 10.2, 0.3, 10.3)  # x and y limits of the drawing


class StateDiagramFigure(Figure):
    """The Figure state_diagram returns: what it highlighted, for callers and tests."""

    visited: frozenset[State] = frozenset()
    """Every state the connection was in (from its state changes and segments)."""

    transitions: tuple[StateEvent, ...] = ()
    """Its state changes in order; step n in the picture is transitions[n - 1]."""


class _Curve:
    """An arrow's course: matplotlib's arc3 curve (a quadratic Bézier) between two
    box centres, and the part of it outside both boxes, where it is drawn."""

    def __init__(self, a: str, b: str, rad: float) -> None:
        self.p0, self.p2 = _BOXES[a], _BOXES[b]
        dx, dy = self.p2[0] - self.p0[0], self.p2[1] - self.p0[1]
        mid = ((self.p0[0] + self.p2[0]) / 2, (self.p0[1] + self.p2[1]) / 2)
        self.c = (mid[0] + rad * dy, mid[1] - rad * dx)
        outside = [
            t
            for t in (i / 200 for i in range(201))
            if not (_inside(self.at(t), a) or _inside(self.at(t), b))
        ]
        self.low, self.high = (min(outside), max(outside)) if outside else (0.4, 0.6)

    def at(self, t: float) -> Point:
        u = 1 - t
        return (
            u * u * self.p0[0] + 2 * u * t * self.c[0] + t * t * self.p2[0],
            u * u * self.p0[1] + 2 * u * t * self.c[1] + t * t * self.p2[1],
        )

    def along(self, fraction: float) -> Point:
        """The point `fraction` of the way along the visible part."""
        return self.at(self.low + (self.high - self.low) * fraction)

    def visible(self) -> MplPath:
        # The sub-curve over [low, high] has its control point at the blossom
        # B(low, high); drawing it ourselves spares matplotlib clipping the arrow
        # against the boxes, which is slow.
        t0, t1 = self.low, self.high
        w0, w1, w2 = (1 - t0) * (1 - t1), (1 - t0) * t1 + t0 * (1 - t1), t0 * t1
        control = (
            w0 * self.p0[0] + w1 * self.c[0] + w2 * self.p2[0],
            w0 * self.p0[1] + w1 * self.c[1] + w2 * self.p2[1],
        )
        codes = [MplPath.MOVETO, MplPath.CURVE3, MplPath.CURVE3]
        return MplPath([self.at(t0), control, self.at(t1)], codes)


def _detour(a: str, b: str) -> float:
    """A curvature for an extra arrow from box a to b that passes no other box and
    stays in the drawing, as far as one exists; the least bent of the best."""

    def collisions(rad: float) -> int:
        curve = _Curve(a, b, rad)
        points = [curve.at(i / 50) for i in range(51)]
        return sum(
            any(_inside(p, box) for box in _BOXES if box not in (a, b))
            or not (_AREA[0] < p[0] < _AREA[1] and _AREA[2] < p[1] < _AREA[3])
            for p in points
        )

    candidates = [r * sign for r in (0.25, 0.45, 0.65, 0.85) for sign in (1, -1)]
    return min(candidates, key=lambda rad: (collisions(rad), abs(rad)))


def _inside(point: Point, box: str, margin: float = 0.05) -> bool:
    cx, cy = _BOXES[box]
    return abs(point[0] - cx) <= _BOX_W / 2 + margin and abs(point[1] - cy) <= _BOX_H / 2 + margin


def state_diagram(
    events: Iterable[TraceEvent] = (),
    path: PathLike | None = None,
    *,
    connection: Connection | None = None,
) -> StateDiagramFigure:
    """The RFC 9293 state diagram with this connection's states and steps marked."""
    conv = _conversation(events, connection)
    title = f"RFC 9293 state diagram: {conv.title}"
    # Fixed margins: everything drawn is ours and known to fit, and a layout
    # engine would measure every label before drawing it.
    figure = StateDiagramFigure(figsize=(15, 10), dpi=100)
    FigureCanvasAgg(figure)
    figure.set_label(title)
    figure.transitions = tuple(conv.states)
    visited = {s for e in conv.states for s in (e.old, e.new)}
    visited |= {e.state for e in conv.segments}
    figure.visited = frozenset(visited)

    ax = figure.add_axes((0.01, 0.03, 0.66, 0.92))
    side = figure.add_axes((0.69, 0.03, 0.30, 0.92))
    ax.set_xlim(_AREA[0], _AREA[1])
    ax.set_ylim(_AREA[2], _AREA[3])
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title)

    edges = list(_EDGES)
    known = {(e.old, e.new) for e in edges}
    for event in conv.states:
        if (event.old, event.new) not in known:
            # Aborts and other edges the figure leaves out: drawn only when taken.
            target = "CLOSED_END" if event.new is State.CLOSED else ""
            rad = _detour(event.old.name, target or event.new.name)
            edges.append(_Edge(event.old, event.new, _ABORT_LABEL, rad=rad, target=target))
            known.add((event.old, event.new))
    box_of = {(e.old, e.new): e.target or e.new.name for e in edges}

    # Which CLOSED box is lit follows the edges: the top one where the connection
    # started, the bottom one where it ended (after TIME_WAIT, LAST_ACK, an abort).
    lit = {s.name for s in visited if s is not State.CLOSED}
    for number, event in enumerate(conv.states):
        lit.add(box_of[(event.old, event.new)])
        if number == 0:
            lit.add(event.old.name)
    if not conv.states and State.CLOSED in visited:
        lit.add("CLOSED")
    _draw_boxes(ax, lit)

    steps: dict[tuple[State, State], list[int]] = {}
    for number, event in enumerate(conv.states, start=1):
        steps.setdefault((event.old, event.new), []).append(number)
    for edge in edges:
        _draw_edge(ax, edge, box_of[(edge.old, edge.new)], steps.get((edge.old, edge.new), []))

    ax.legend(
        handles=[
            Patch(facecolor=_LIT_FACE, edgecolor=_LIT_EDGE, linewidth=2, label="visited state"),
            _legend_proxy(_TAKEN, "transition taken (step number)", linewidth=2.8),
            _legend_proxy("0.55", "not taken", linewidth=1),
        ],
        loc="lower left",
        fontsize=8,
        frameon=False,
    )
    ax.text(
        0.0,
        -0.01,
        "Not drawn unless taken: RST, ABORT or too many retransmissions take any state to CLOSED.",
        transform=ax.transAxes,
        fontsize=7,
        color="0.35",
        va="top",
    )
    _step_list(side, conv)
    _finish(figure, path)
    return figure


def _draw_boxes(ax: Axes, lit: set[str]) -> None:
    for name, (cx, cy) in _BOXES.items():
        on = name in lit
        state_name = "CLOSED" if name == "CLOSED_END" else name
        where = "end-" if name == "CLOSED_END" else ""
        ax.add_patch(
            FancyBboxPatch(
                (cx - _BOX_W / 2, cy - _BOX_H / 2),
                _BOX_W,
                _BOX_H,
                boxstyle="round,pad=0.02,rounding_size=0.12",
                facecolor=_LIT_FACE if on else "white",
                edgecolor=_LIT_EDGE if on else "0.45",
                linewidth=2.6 if on else 1.0,
                zorder=2,
                gid=f"state-{state_name}-{where}{'visited' if on else 'unvisited'}",
            )
        )
        ax.text(
            cx,
            cy,
            state_name,
            ha="center",
            va="center",
            fontsize=10,
            fontweight="bold" if on else "normal",
            zorder=3,
        )


def _draw_edge(ax: Axes, edge: _Edge, target: str, numbers: list[int]) -> None:
    taken = bool(numbers)
    curve = _Curve(edge.old.name, target, edge.rad)
    ax.add_patch(
        FancyArrowPatch(
            path=curve.visible(),
            arrowstyle="-|>",
            mutation_scale=14 if taken else 10,
            color=_TAKEN if taken else "0.55",
            linewidth=2.8 if taken else 1.0,
            linestyle="dashed" if edge.label == _ABORT_LABEL else "solid",
            zorder=1.5 if taken else 1,
            gid=f"transition-{edge.old.name}-{edge.new.name}-{'taken' if taken else 'untaken'}",
        )
    )
    lx, ly = curve.along(edge.at)
    ax.text(
        lx + edge.shift[0],
        ly + edge.shift[1],
        edge.label,
        ha=edge.ha,
        va="center",
        multialignment="center",
        fontsize=7,
        color="navy" if taken else "0.3",
        linespacing=1.1,
        zorder=4,
        bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none"},
    )
    if taken:
        bx, by = curve.along(0.12)
        ax.text(
            bx,
            by,
            ",".join(map(str, numbers)),
            ha="center",
            va="center",
            fontsize=8,
            fontweight="bold",
            color="white",
            zorder=5,
            bbox={"boxstyle": "circle,pad=0.25", "facecolor": _TAKEN, "edgecolor": "none"},
            gid=f"step-{edge.old.name}-{edge.new.name}",
        )


def _step_list(ax: Axes, conv: _Conversation) -> None:
    """The numbered steps with their times and causes, beside the diagram."""
    ax.axis("off")
    ax.set_title("steps (ms from the first segment)", loc="left", fontsize=10)
    if not conv.states:
        ax.text(0, 1, "no state changes recorded", va="top", fontsize=9, transform=ax.transAxes)
        return
    lines = []
    for number, event in enumerate(conv.states, start=1):
        cause = event.cause if len(event.cause) <= 44 else event.cause[:43] + "…"
        lines.append(
            f"{number:>2}. {(event.time - conv.start) * 1000:9.3f} ms\n"
            f"    {event.old.name} → {event.new.name}\n"
            f"    {cause}"
        )
    ax.text(
        0,
        1,
        "\n".join(lines),
        va="top",
        ha="left",
        fontsize=8,
        family="monospace",
        linespacing=1.3,
        transform=ax.transAxes,
    )


# ---------------------------------------------------------------- ladder picture


@dataclass
class _Rung:
    """One row of the ladder picture: a segment (with both sides' states) or a note."""

    time: float
    record: SegmentEvent | None = None
    ours: str = ""
    theirs: str = ""
    note: Note | None = None


@dataclass
class _LadderData:
    rungs: list[_Rung]
    connection: Connection | None
    us: str
    them: str
    retransmits: list[RetransmitEvent]


def _segment_label(event: SegmentEvent, retransmit: bool) -> str:
    s = event.segment
    ack = event.relative_ack
    text = f"{flags_str(s.flags)} seq {event.relative_seq}"
    if ack is not None:
        text += f" ack {ack}"
    text += f" len {len(s.payload)} win {s.window}"
    if s.syn:
        opts = s.options
        extra = [f"mss {opts.mss}"] if opts.mss is not None else []
        extra += [f"wscale {opts.wscale}"] if opts.wscale is not None else []
        extra += ["sackOK"] if opts.sack_permitted else []
        extra += ["TS"] if opts.timestamps is not None else []
        if extra:
            text += f" <{','.join(extra)}>"
    if s.options.sack_blocks:
        text += " <SACK>"
    if event.note.startswith("dropped"):
        text += " (dropped)"
    elif retransmit:
        text += " (retransmit)"
    return text


def _ladder_data(
    source: Ladder | Iterable[TraceEvent], connection: Connection | None
) -> _LadderData:
    if isinstance(source, Ladder):
        if connection is None and source.rows:
            connection = (source.rows[0].record.local, source.rows[0].record.remote)
        rungs = [
            _Rung(row.record.time, row.record, row.ours, row.theirs)
            for row in source.rows
            if (row.record.local, row.record.remote) == connection
        ]
        rungs += [_Rung(n.time, note=n) for n in source.notes]
        data = _LadderData(rungs, connection, source.local_name, source.remote_name, [])
    else:
        conv = _conversation(source, connection)
        rungs = [_Rung(e.time, e, e.state.name) for e in conv.segments]
        # Plain events carry no notes; the timers that fired say why something
        # was sent unprompted.
        rungs += [
            _Rung(t.time, note=Note(t.time, "us", f"{t.timer} timer fired"))
            for t in conv.timers
            if t.action == "fired"
        ]
        data = _LadderData(rungs, conv.connection, "us", "peer", conv.retransmits)
    data.rungs.sort(key=lambda r: r.time)  # stable: same-time rows keep their order
    return data


def ladder_picture(
    ladder_or_events: Ladder | Iterable[TraceEvent],
    path: PathLike | None = None,
    *,
    connection: Connection | None = None,
    max_rows: int = 200,
) -> Figure:
    """The ladder diagram: our lifeline and the peer's, an arrow per segment."""
    data = _ladder_data(ladder_or_events, connection)
    start = min((r.time for r in data.rungs), default=0.0)
    hidden = max(len(data.rungs) - max_rows, 0)
    rungs = data.rungs[:max_rows]
    where = _describe(data.connection) if data.connection else "no connection"
    title = f"Ladder diagram: {where}"
    rows = len(rungs)
    row_height, head = 0.34, 2.2  # inches a row; rows above the first for the headings
    height = 0.6 + row_height * (max(rows, 3) + head)
    # Fixed margins instead of a layout engine: every label lies inside the axes,
    # and measuring hundreds of them for the layout would double the drawing time.
    figure = _new_figure(12, height, title, layout=False)
    ax = figure.add_axes((0.01, 0.1 / height, 0.98, 1 - 0.5 / height))
    ax.set_xlim(-0.5, 1.5)
    ax.set_ylim(max(rows, 3) + 0.3, 0.3 - head)  # time runs downwards
    ax.axis("off")
    ax.set_title(title)

    ends = data.connection or (("", 0), ("", 0))
    for x, name, address in ((0.0, data.us, ends[0]), (1.0, data.them, ends[1])):
        ax.vlines(x, -0.7, rows, colors="0.3", linewidth=1.5)
        heading = f"{name}\n{_endpoint(address)}" if address[0] else name
        ax.text(x, -0.8, heading, ha="center", va="bottom", fontsize=10, fontweight="bold")
    ax.text(-0.49, -0.8, "time ms", ha="left", va="bottom", fontsize=8, color="0.3")

    segments = [r.record for r in rungs if r.record is not None]
    again: dict[int, bool] = {}
    for direction in ("out", "in"):
        mine = [e for e in segments if e.direction == direction]
        marks = data.retransmits if direction == "out" else []
        again.update(zip(map(id, mine), _retransmitted(mine, marks), strict=True))

    arrows = _Arrows()
    last_ours = last_theirs = ""
    for y, rung in enumerate(rungs):
        ax.text(
            -0.49,
            y,
            f"{(rung.time - start) * 1000:.3f}",
            ha="left",
            va="center",
            fontsize=7,
            color="0.4",
            family="monospace",
        )
        if rung.note is not None:
            nx, ha = {"us": (0.03, "left"), "kernel": (0.97, "right")}.get(
                rung.note.side, (0.5, "center")
            )
            ax.text(
                nx, y, rung.note.text, ha=ha, va="center", fontsize=8, style="italic", color="0.3"
            )
            continue
        assert rung.record is not None
        arrows.add(ax, y, rung.record, again[id(rung.record)])
        if rung.ours and rung.ours != last_ours:
            ax.text(-0.03, y, rung.ours, ha="right", va="center", fontsize=8, color=DATA_COLOUR)
            last_ours = rung.ours
        if rung.theirs and rung.theirs != last_theirs:
            ax.text(1.03, y, rung.theirs, ha="left", va="center", fontsize=8, color=INCOMING_COLOUR)
            last_theirs = rung.theirs
    arrows.draw(ax)
    if hidden:
        ax.text(0.5, rows, f"… {hidden} more rows not shown", ha="center", va="top", fontsize=9)
    if not rungs:
        ax.text(0.5, 0.5, "no segments", ha="center", va="center", fontsize=10)
    _finish(figure, path)
    return figure


class _Arrows:
    """The ladder's arrows, gathered so that one quiver draws them all."""

    # An arrow drops this many rows between its ends: a segment takes time to
    # cross. Under half a row, so arrows of neighbouring rows never cross.
    SLANT = 0.45
    # Labels sit near the sender's end, so that an arrow out and the answer
    # coming back, which cross in the middle, keep their labels apart.
    LABEL_AT = 0.3

    def __init__(self) -> None:
        self.tails: list[Point] = []
        self.vectors: list[Point] = []
        self.colours: list[str] = []
        self.lost: list[Point] = []

    def add(self, ax: Axes, y: int, event: SegmentEvent, retransmit: bool) -> None:
        out = event.direction == "out"
        x0, y0 = (0.0, float(y)) if out else (1.0, y - self.SLANT)
        x1, y1 = (1.0, y + self.SLANT) if out else (0.0, float(y))
        dropped = event.note.startswith("dropped")
        if dropped:
            x1, y1 = (x0 + x1) / 2, (y0 + y1) / 2
            self.lost.append((x1, y1))
        if retransmit or dropped:
            colour = RETRANSMIT_COLOUR
        else:
            colour = DATA_COLOUR if out else INCOMING_COLOUR
        self.tails.append((x0, y0))
        self.vectors.append((x1 - x0, y1 - y0))
        self.colours.append(colour)
        # Along the whole arrow, even a dropped one's missing half; the rotation is
        # in data space (where y grows downwards) so it follows the arrow's slope.
        lx = self.LABEL_AT if out else 1 - self.LABEL_AT
        slope = self.SLANT if out else -self.SLANT
        ly = y + slope * lx
        ax.text(
            lx,
            ly,
            _segment_label(event, retransmit),
            ha="center",
            va="bottom",
            fontsize=7.5,
            color=colour,
            rotation=math.degrees(math.atan2(slope, 1.0)),
            rotation_mode="anchor",
            transform_rotates_text=True,
        )

    def draw(self, ax: Axes) -> None:
        if self.tails:
            ax.quiver(
                *_xy(self.tails),
                *_xy(self.vectors),
                color=self.colours,
                angles="xy",
                scale_units="xy",
                scale=1,
                width=0.0015,
                headwidth=6,
                headlength=9,
                headaxislength=8,
            )
        if self.lost:
            ax.scatter(*_xy(self.lost), marker="x", s=50, color=RETRANSMIT_COLOUR, zorder=3)
