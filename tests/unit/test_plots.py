"""Pictures of a recorded conversation: each renders to a valid PNG and SVG that
shows what it should.

The conversation is real: our stack over a MemoryLink, the test scripting the
peer. It has a handshake, data both ways, a data segment a hook drops so that it
is sent again, and an active close through TIME_WAIT to CLOSED.
"""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread
from PIL import Image

from tcpstack import State, TcpConfig, plots, wire
from tcpstack.core import seq
from tcpstack.core.segment import Flags, Options, Segment
from tcpstack.hooks import Hook
from tcpstack.ladder import Ladder
from tcpstack.trace import Recorder, SegmentEvent, StateEvent, TraceEvent
from tests.unit.peer import PEER_IP, TIMEOUT, make_pair, pool

PEER_PORT = 80
PEER_ISS = 7000
MSS = 1000
SVG = "{http://www.w3.org/2000/svg}"


@dataclass
class Conversation:
    events: list[TraceEvent]
    ladder: Ladder


def _kernel_states(segments: list[SegmentEvent]) -> list[str]:
    """What the scripted peer's state was at each segment, as `ss` would report it."""
    state = "LISTEN"
    states = []
    for event in segments:
        s = event.segment
        if event.direction == "in":
            if s.syn:
                state = "SYN-RECV"
            elif s.fin:
                state = "LAST-ACK"
        elif state == "SYN-RECV" and not s.syn:
            state = "ESTAB"
        elif s.fin:
            state = "CLOSE-WAIT"
        elif state == "LAST-ACK":
            state = "CLOSED"
        states.append(state)
    return states


def pure_ack_of(n: int) -> Callable[[Segment], bool]:
    return lambda s: s.ack == n and not s.payload


def record_conversation() -> Conversation:
    config = TcpConfig(msl=0.02, rto_min=0.02, delayed_ack=0.0, timestamps=False)
    stack, peer = make_pair(config)
    recorder = Recorder()
    stack.subscribe(recorder)
    try:
        s = stack.socket()
        s.settimeout(TIMEOUT)
        connecting = pool.submit(s.connect, (PEER_IP, PEER_PORT))
        peer.answer_arp()
        syn = peer.tcp()
        port, iss = syn.src_port, syn.seq

        def send(flags: Flags, seq_no: int, ack: int, payload: bytes = b"", **opts: object) -> None:
            peer.send_tcp(
                Segment(
                    PEER_PORT,
                    port,
                    seq_no,
                    ack,
                    flags,
                    16000,
                    Options(**opts),  # type: ignore[arg-type]
                    payload,
                )
            )

        def expect(want: Callable[[Segment], bool], what: str) -> Segment:
            """Our next segment that `want` accepts: a stray probe or ACK in
            between, however the timers fall, does not upset the script."""
            packet = peer.receive(lambda p: isinstance(p, wire.TcpPacket) and want(p.segment), what)
            assert isinstance(packet, wire.TcpPacket)
            return packet.segment

        # Window scale 2: the 16000 in every window field means 64000 bytes.
        send(Flags.SYN | Flags.ACK, PEER_ISS, iss + 1, mss=MSS, wscale=2, sack_permitted=True)
        connecting.result(TIMEOUT)
        peer.tcp()  # our ACK of the SYN-ACK

        # Five segments out; the third never reaches the wire, so it goes again.
        lost = seq.add(iss, 1 + 2 * MSS)
        stack.add_hook(Hook("out", "drop", where=lambda ctx: ctx.segment.seq == lost))
        s.sendall(bytes(5 * MSS))
        highest = seq.add(iss, 1)
        while True:
            got = peer.tcp()
            if got.payload:
                highest = max(highest, got.end_seq, key=lambda n: seq.sub(n, iss))
                if got.seq == lost:
                    break
                # Cumulative ACK stops at the hole; SACK reports what is beyond it.
                hole = seq.gt(got.seq, lost)
                ack = lost if hole else got.end_seq
                sack = ((seq.add(lost, MSS), highest),) if hole else ()
                send(Flags.ACK, PEER_ISS + 1, ack, sack_blocks=sack)
        end = seq.add(iss, 1 + 5 * MSS)
        send(Flags.ACK, PEER_ISS + 1, end)

        # Three segments in, each ACKed at once (no delayed ACKs).
        for i in range(3):
            send(Flags.ACK | Flags.PSH, PEER_ISS + 1 + i * MSS, end, bytes(MSS))
            expect(pure_ack_of(PEER_ISS + 1 + (i + 1) * MSS), "our ACK of the data")
        received = b""
        while len(received) < 3 * MSS:
            received += s.recv(65536)

        # We close first: FIN_WAIT_1, FIN_WAIT_2, TIME_WAIT, then CLOSED after 2 MSL.
        s.close()
        fin = expect(lambda g: g.fin, "our FIN")
        their_end = PEER_ISS + 1 + 3 * MSS
        send(Flags.ACK, their_end, fin.end_seq)
        send(Flags.FIN | Flags.ACK, their_end, fin.end_seq)
        expect(lambda g: g.ack == their_end + 1, "our ACK of their FIN")
        s.wait_for_state(State.CLOSED, timeout=TIMEOUT)
    finally:
        stack.close()
        peer.link.close()
    events = list(recorder.events)
    segments = [e for e in events if isinstance(e, SegmentEvent)]
    ladder = Ladder(local_name="us", remote_name="kernel")
    for event, theirs in zip(segments, _kernel_states(segments), strict=True):
        ladder.add(event, theirs)
    first = next(e for e in events if isinstance(e, StateEvent))
    ladder.note(first.time, "us", "connect()")
    last = [e for e in events if isinstance(e, StateEvent)][-1]
    ladder.note(last.time, "us", "2 MSL later: CLOSED")
    return Conversation(events, ladder)


@pytest.fixture(scope="module")
def conversation() -> Conversation:
    return record_conversation()


# ------------------------------------------------------------------ file checks


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def check_png(path: Path, min_size: tuple[int, int] = (400, 300)) -> None:
    width, height = png_size(path)
    assert width >= min_size[0] and height >= min_size[1]
    pixels = imread(path)
    assert pixels.shape[:2] == (height, width)
    assert float(np.var(pixels[..., :3])) > 1e-3, "blank picture"


def svg_text(path: Path) -> tuple[ET.Element, str]:
    """The parsed SVG and its raw text (text is drawn as paths; each string is
    kept in a comment beside its glyphs, so labels are found in the raw text)."""
    raw = path.read_text()
    return ET.fromstring(raw), raw


def ids(root: ET.Element) -> set[str]:
    return {e.get("id", "") for e in root.iter()} - {""}


def gids(figure: Figure) -> set[str]:
    """The ids the figure's artists will carry in SVG, without drawing it."""
    return {a.get_gid() or "" for ax in figure.axes for a in ax.get_children()} - {""}


def render_both(tmp_path: Path, name: str, draw: Callable[[Path], Figure]) -> tuple[Figure, Path]:
    """Draw straight into a PNG, then save the same figure as SVG; check the PNG."""
    png, svg = tmp_path / f"{name}.png", tmp_path / f"{name}.svg"
    figure = draw(png)
    check_png(png)
    assert plots.save(figure, svg) == svg
    return figure, svg


# ---------------------------------------------------------------------- pictures


def test_conversation_has_what_the_pictures_show(conversation: Conversation) -> None:
    events = conversation.events
    states = [(e.old, e.new) for e in events if isinstance(e, StateEvent)]
    assert states == [
        (State.CLOSED, State.SYN_SENT),
        (State.SYN_SENT, State.ESTABLISHED),
        (State.ESTABLISHED, State.FIN_WAIT_1),
        (State.FIN_WAIT_1, State.FIN_WAIT_2),
        (State.FIN_WAIT_2, State.TIME_WAIT),
        (State.TIME_WAIT, State.CLOSED),
    ]
    dropped = [e for e in events if isinstance(e, SegmentEvent) and e.note]
    assert len(dropped) == 1
    again = [
        e
        for e in events
        if isinstance(e, SegmentEvent)
        and e.direction == "out"
        and e.segment.seq == dropped[0].segment.seq
        and not e.note
    ]
    assert again, "the dropped segment was never sent again"


def test_time_sequence(conversation: Conversation, tmp_path: Path) -> None:
    figure, svg = render_both(
        tmp_path, "tsg", lambda p: plots.time_sequence(conversation.events, p)
    )
    assert "198.18.0.2" in str(figure.get_label())
    with Image.open(tmp_path / "tsg.png") as png:
        assert "Time-sequence" in png.info["Title"]
    root, raw = svg_text(svg)
    assert root.tag == f"{SVG}svg"
    title = root.find(f"{SVG}title")
    assert title is not None and "Time-sequence" in (title.text or "")
    for label in (
        "relative sequence number (bytes)",
        "time since first segment (ms)",
        "retransmit",
        "ACK (cumulative)",
        "receive window edge",
        "SACK block",
        "SYN",
        "FIN",
        "dropped before the wire",
    ):
        assert label in raw, label


def test_time_sequence_of_received_data(conversation: Conversation, tmp_path: Path) -> None:
    path = tmp_path / "tsg-in.png"
    plots.time_sequence(conversation.events, path, direction="in")
    check_png(path)
    with pytest.raises(ValueError):
        plots.time_sequence(conversation.events, direction="sideways")


def test_time_sequence_window_is_scaled(conversation: Conversation) -> None:
    figure = plots.time_sequence(conversation.events)
    ax = figure.axes[0]
    window = [line for line in ax.get_lines() if line.get_color() == plots.WINDOW_COLOUR]
    assert len(window) == 1
    edges = np.asarray(window[0].get_ydata(), dtype=float)
    acks = [line for line in ax.get_lines() if line.get_color() == plots.ACK_COLOUR]
    ack_values = np.asarray(acks[0].get_ydata(), dtype=float)
    # A SYN's window is never scaled (RFC 7323 §2.2); after it, 16000 << 2.
    assert edges[0] - ack_values[0] == 16000
    assert edges[-1] - ack_values[-1] == 64000


def test_congestion(conversation: Conversation, tmp_path: Path) -> None:
    _, svg = render_both(tmp_path, "cwnd", lambda p: plots.congestion(conversation.events, p))
    _, raw = svg_text(svg)
    for label in ("cwnd", "SRTT", "RTO", "RTT sample", "retransmit (", "ESTABLISHED", "TIME_WAIT"):
        assert label in raw, label


def test_state_diagram_highlights_the_visited_states(
    conversation: Conversation, tmp_path: Path
) -> None:
    figure, svg = render_both(
        tmp_path, "states", lambda p: plots.state_diagram(conversation.events, p)
    )
    assert isinstance(figure, plots.StateDiagramFigure)
    visited = {s.name for s in figure.visited}
    assert visited == {
        "CLOSED",
        "SYN_SENT",
        "ESTABLISHED",
        "FIN_WAIT_1",
        "FIN_WAIT_2",
        "TIME_WAIT",
    }
    assert len(figure.transitions) == 6
    root, raw = svg_text(svg)
    found = ids(root)
    for state in State:
        mark = "visited" if state.name in visited else "unvisited"
        assert f"state-{state.name}-{mark}" in found, state
    # The connection ended in CLOSED from TIME_WAIT: the bottom box is lit too.
    assert "state-CLOSED-end-visited" in found
    taken = {i for i in found if i.startswith("transition-") and i.endswith("-taken")}
    assert taken == {
        "transition-CLOSED-SYN_SENT-taken",
        "transition-SYN_SENT-ESTABLISHED-taken",
        "transition-ESTABLISHED-FIN_WAIT_1-taken",
        "transition-FIN_WAIT_1-FIN_WAIT_2-taken",
        "transition-FIN_WAIT_2-TIME_WAIT-taken",
        "transition-TIME_WAIT-CLOSED-taken",
    }
    assert "transition-LISTEN-SYN_RECEIVED-untaken" in found
    for label in ("ESTABLISHED", "TIME_WAIT", "CLOSE_WAIT", "LAST_ACK", "2 MSL timeout"):
        assert label in raw, label


def test_state_diagram_draws_an_abort_only_when_taken() -> None:
    local, remote = ("10.0.0.2", 40000), ("10.0.0.1", 80)
    events: list[TraceEvent] = [
        StateEvent(1.0, local, remote, State.CLOSED, State.SYN_SENT, "connect()"),
        StateEvent(1.1, local, remote, State.SYN_SENT, State.ESTABLISHED, "S. 0:0(0) ack 1"),
        StateEvent(1.2, local, remote, State.ESTABLISHED, State.CLOSED, "R 1:1(0)"),
    ]
    assert "transition-ESTABLISHED-CLOSED-taken" in gids(plots.state_diagram(events))
    plain = gids(plots.state_diagram([]))
    assert not any(i.startswith("transition-ESTABLISHED-CLOSED") for i in plain)
    assert not any(i.endswith("-visited") for i in plain)
    assert "transition-LISTEN-SYN_RECEIVED-untaken" in plain


def test_ladder_picture_from_a_ladder(conversation: Conversation, tmp_path: Path) -> None:
    _, svg = render_both(tmp_path, "ladder", lambda p: plots.ladder_picture(conversation.ladder, p))
    _, raw = svg_text(svg)
    for label in (
        "S seq 0",
        "S. seq 0 ack 1",
        "F.",
        "(retransmit)",
        "(dropped)",
        "ESTABLISHED",
        "TIME_WAIT",
        "SYN-RECV",  # the kernel's states, from the ladder's rows
        "LAST-ACK",
        "connect()",
    ):
        assert label in raw, label


def test_ladder_picture_from_events(conversation: Conversation, tmp_path: Path) -> None:
    path = tmp_path / "ladder-events.svg"
    plots.ladder_picture(conversation.events, path)
    _, raw = svg_text(path)
    assert "S. seq 0 ack 1" in raw and "FIN_WAIT_2" in raw
    assert "timer fired" in raw


def test_ladder_picture_is_cut_at_max_rows(conversation: Conversation, tmp_path: Path) -> None:
    path = tmp_path / "short.svg"
    plots.ladder_picture(conversation.ladder, path, max_rows=5)
    _, raw = svg_text(path)
    assert "more rows not shown" in raw


def test_save_rejects_other_formats(conversation: Conversation, tmp_path: Path) -> None:
    figure = plots.congestion(conversation.events)
    with pytest.raises(ValueError, match="png or .svg"):
        plots.save(figure, tmp_path / "x.jpg")


def test_other_connections_are_left_out(conversation: Conversation) -> None:
    (only,) = plots.connections(conversation.events)
    figure = plots.time_sequence(conversation.events, connection=(only[0], ("1.2.3.4", 5)))
    assert "no segments" in [t.get_text() for t in figure.axes[0].texts]


def _bulk(n: int) -> list[TraceEvent]:
    """A synthetic transfer of n full segments, each ACKed 50 µs later."""
    local, remote = ("10.0.0.2", 40000), ("10.0.0.1", 80)
    iss, irs, mss = 0xFFFF_0000, 5, 1448  # our numbers wrap past 2**32 on the way
    snapshot = {"state": State.ESTABLISHED, "iss": iss, "irs": irs, "rto": 0.2}
    events: list[TraceEvent] = []
    for i in range(n):
        t = i * 1e-4
        start, end = seq.add(iss, 1 + i * mss), seq.add(iss, 1 + (i + 1) * mss)
        data = Segment(40000, 80, start, irs + 1, Flags.ACK, 512, payload=bytes(mss))
        ack = Segment(80, 40000, irs + 1, end, Flags.ACK, 512)
        events += [
            SegmentEvent(t, "out", local, remote, data, **snapshot, cwnd=10 * mss + i),  # type: ignore[arg-type]
            SegmentEvent(
                t + 5e-5,
                "in",
                local,
                remote,
                ack,
                **snapshot,  # type: ignore[arg-type]
                snd_una=end,
                snd_nxt=end,
                snd_wnd=65536,
                cwnd=10 * mss + i,
                srtt=5e-5,
            ),
        ]
    return events


def test_ten_thousand_segments_plot_quickly(tmp_path: Path) -> None:
    path = tmp_path / "bulk.png"
    figure = plots.time_sequence(_bulk(10_000), path)
    check_png(path)
    ax = figure.axes[0]
    # Unwrapped: the bars keep climbing past 2**32 instead of falling back to 0.
    assert ax.get_ylim()[1] > 10_000 * 1448
