"""pcapng capture of trace events, read back with tshark and with scapy.

A conversation over the in-memory link (ARP, handshake, data both ways, a ping,
close) is captured live and from a Recorder; each file must hold exactly the
frame-carrying events, in order, with their direction flags and comments.
"""

from __future__ import annotations

import errno
import io
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from scapy.utils import rdpcap

from tcpstack import State, wire
from tcpstack.core.segment import Flags, Segment
from tcpstack.hooks import Hook, carries_data, is_flags
from tcpstack.pcap import PcapWriter, comment_for, parse_comment, write_pcapng
from tcpstack.stack import Stack
from tcpstack.trace import FrameEvent, Recorder, SegmentEvent, TraceEvent
from tests.unit.peer import OUR_IP, PEER_IP, PEER_MAC, Peer, make_pair, open_to_peer

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(
    TSHARK is None, reason="tshark not installed (apt install tshark)"
)

FIXED_OFFSET = 1_700_000_000.0
SEGMENT_KEYS = [
    "dir",
    "state",
    "snd_una",
    "snd_nxt",
    "rcv_nxt",
    "snd_wnd",
    "rcv_wnd",
    "cwnd",
    "srtt",
    "rto",
    "rel_seq",
    "rel_ack",
]
FIELDS = [
    "frame.number",
    "frame.len",
    "frame.time_epoch",
    "frame.comment",
    "frame.packet_flags_direction",
    "frame.interface_name",
    "arp.opcode",
    "icmp.type",
    "tcp.flags",
    "tcp.seq_raw",
    "tcp.ack_raw",
]

FramedEvent = SegmentEvent | FrameEvent


def tshark(path: Path) -> list[dict[str, list[str]]]:
    assert TSHARK is not None
    command = [TSHARK, "-r", str(path), "-T", "json"]
    for name in FIELDS:
        command += ["-e", name]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    packets: list[dict[str, Any]] = json.loads(done.stdout)
    return [packet["_source"]["layers"] for packet in packets]


def framed(events: list[TraceEvent], also: TraceEvent | None = None) -> list[FramedEvent]:
    """The events a default writer turns into packets, in order (and `also`)."""
    return [
        e for e in events if isinstance(e, SegmentEvent | FrameEvent) and (e.frame or e is also)
    ]


def signed(distance: int) -> int:
    """A distance in sequence space, negative when it points backwards."""
    distance %= 2**32
    return distance - 2**32 if distance >= 2**31 else distance


def expected_comment(event: FramedEvent) -> dict[str, str]:
    """What the comment must say, worked out here rather than by comment_for."""
    if isinstance(event, FrameEvent):
        return {"dir": event.direction, "note": event.note}
    seg = event.segment
    out = event.direction == "out"
    seq_base, ack_base = (event.iss, event.irs) if out else (event.irs, event.iss)
    fields = {
        "dir": event.direction,
        "state": event.state.name,
        "snd_una": str(event.snd_una),
        "snd_nxt": str(event.snd_nxt),
        "rcv_nxt": str(event.rcv_nxt),
        "snd_wnd": str(event.snd_wnd),
        "rcv_wnd": str(event.rcv_wnd),
        "cwnd": str(event.cwnd),
        "srtt": "-" if event.srtt is None else f"{event.srtt * 1000:.3f}ms",
        "rto": f"{event.rto * 1000:.3f}ms",
        "rel_seq": str(signed(seg.seq - seq_base)),
        "rel_ack": str(signed(seg.ack - ack_base)) if seg.flags & Flags.ACK else "-",
    }
    if event.note:
        fields["note"] = event.note
    return fields


def tcp_segment(peer: Peer, want: Callable[[Segment], object], what: str) -> Segment:
    packet = peer.receive(lambda p: isinstance(p, wire.TcpPacket) and bool(want(p.segment)), what)
    assert isinstance(packet, wire.TcpPacket)
    return packet.segment


@dataclass
class Capture:
    live: Path  # written live with the default (measured) epoch offset
    fixed: Path  # written live with FIXED_OFFSET
    events: list[TraceEvent]
    offset_estimate: float  # time.time() - time.monotonic() as the test saw it
    writer: PcapWriter


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capture]:
    directory = tmp_path_factory.mktemp("pcap")
    stack, peer = make_pair()
    recorder = Recorder()
    live = PcapWriter(directory / "live.pcapng")
    fixed = PcapWriter(directory / "fixed.pcapng", epoch_offset=FIXED_OFFSET)
    for subscriber in (live, fixed, recorder):
        stack.subscribe(subscriber)
    try:
        s, syn, _ = open_to_peer(stack, peer)
        port = syn.src_port
        s.sendall(b"hello")
        tcp_segment(peer, lambda seg: seg.payload == b"hello", "our data")
        peer.send_tcp(Segment(80, port, 7001, 1006, Flags.ACK | Flags.PSH, 65535, payload=b"hi"))
        assert s.recv(10) == b"hi"
        tcp_segment(peer, lambda seg: seg.ack == 7003, "our ACK of the peer's data")
        peer.ping(1)
        s.close()
        fin = tcp_segment(peer, lambda seg: seg.flags & Flags.FIN, "our FIN")
        peer.send_tcp(Segment(80, port, 7003, fin.seq + 1, Flags.FIN | Flags.ACK, 65535))
        tcp_segment(peer, lambda seg: seg.ack == 7004, "our ACK of the peer's FIN")
        assert s.state is State.TIME_WAIT
    finally:
        # Stopping the engine first means no event can reach one subscriber and
        # not the others.
        stack.close()
        peer.link.close()
        live.close()
        fixed.close()
    offset_estimate = time.time() - time.monotonic()
    yield Capture(
        directory / "live.pcapng",
        directory / "fixed.pcapng",
        recorder.events,
        offset_estimate,
        live,
    )


@needs_tshark
def test_tshark_reads_every_frame_with_its_state(capture: Capture) -> None:
    events = framed(capture.events)
    packets = tshark(capture.live)
    assert len(packets) == len(events) == capture.writer.packets
    assert capture.writer.skipped == 0
    for number, (packet, event) in enumerate(zip(packets, events, strict=True), 1):
        where = f"packet {number}: {event}"
        assert packet["frame.number"] == [str(number)]
        assert packet["frame.interface_name"] == ["tcpstack"], where
        assert int(packet["frame.len"][0]) == len(event.frame), where
        direction = int(packet["frame.packet_flags_direction"][0], 16)
        assert direction == (1 if event.direction == "in" else 2), where
        [comment] = packet["frame.comment"]
        assert parse_comment(comment) == expected_comment(event), where
        if isinstance(event, SegmentEvent):
            assert list(parse_comment(comment))[: len(SEGMENT_KEYS)] == SEGMENT_KEYS
            seg = event.segment
            assert int(packet["tcp.flags"][0], 16) == int(seg.flags), where
            assert int(packet["tcp.seq_raw"][0]) == seg.seq, where
            assert int(packet["tcp.ack_raw"][0]) == seg.ack, where
        else:
            assert "tcp.flags" not in packet or event.note == "to no connection", where

    # The conversation as a whole: ARP both ways, the handshake, data, ping, close.
    summary = []
    for packet, event in zip(packets, events, strict=True):
        if "arp.opcode" in packet:
            summary.append(f"{event.direction} arp {packet['arp.opcode'][0]}")
        elif "icmp.type" in packet:
            summary.append(f"{event.direction} icmp {packet['icmp.type'][0]}")
        else:
            assert isinstance(event, SegmentEvent)
            summary.append(f"{event.direction} {event.segment.describe().split()[0]}")
    assert summary[:7] == [
        "out arp 1",
        "in arp 2",
        "out S",
        "in S.",
        "out .",
        "out P.",
        "in P.",
    ]
    assert "in icmp 8" in summary and "out icmp 0" in summary
    assert summary[-3:] == ["out F.", "in F.", "out ."]
    states = [e.state for e in events if isinstance(e, SegmentEvent)]
    assert states[0] is State.SYN_SENT and states[-1] is State.TIME_WAIT


def test_scapy_reads_the_same_frames_comments_and_directions(capture: Capture) -> None:
    events = framed(capture.events)
    packets = rdpcap(str(capture.live))
    assert len(packets) == len(events)
    for packet, event in zip(packets, events, strict=True):
        assert bytes(packet) == event.frame
        assert packet.comments == [comment_for(event).encode()]
        assert packet.direction == (1 if event.direction == "in" else 2)
        assert packet.sniffed_on == "tcpstack"


def test_timestamps_follow_the_events_and_the_wall_clock(capture: Capture) -> None:
    events = framed(capture.events)
    times = [Decimal(str(p.time)) for p in rdpcap(str(capture.live))]
    assert times == sorted(times)
    offset = Decimal(capture.writer.epoch_offset)
    for stamp, event in zip(times, events, strict=True):
        # The spacing is the monotonic clock's, to the nanosecond written.
        assert abs(stamp - (Decimal(event.time) + offset)) < Decimal("0.000001")
    # And the absolute time is the wall clock's, as well as two readings can agree.
    assert abs(capture.writer.epoch_offset - capture.offset_estimate) < 0.05
    assert abs(float(times[-1]) - time.time()) < 60


def test_fixed_epoch_offset_gives_exact_timestamps(capture: Capture) -> None:
    events = framed(capture.events)
    base_ns = round(FIXED_OFFSET * 1e9)
    for packet, event in zip(rdpcap(str(capture.fixed)), events, strict=True):
        assert packet.time == Decimal(round(event.time * 1e9) + base_ns) / 10**9


def test_write_pcapng_of_recorded_events_matches_the_live_file(
    capture: Capture, tmp_path: Path
) -> None:
    target = tmp_path / "recorded.pcapng"
    written = write_pcapng(target, capture.events, epoch_offset=FIXED_OFFSET)
    assert written == len(framed(capture.events))
    assert target.read_bytes() == capture.fixed.read_bytes()
    # To a file object too, with the offset measured now: the same packets.
    buffer = io.BytesIO()
    write_pcapng(buffer, capture.events)
    buffer.seek(0)
    recorded = rdpcap(buffer)
    live = rdpcap(str(capture.live))
    assert [(bytes(p), p.comments, p.direction) for p in recorded] == [
        (bytes(p), p.comments, p.direction) for p in live
    ]


# ------------------------------------------------------------ dropped frames


@needs_tshark
def test_hook_dropped_segment_is_not_in_the_file(pair: tuple[Stack, Peer], tmp_path: Path) -> None:
    stack, peer = pair
    recorder = Recorder()
    plain = PcapWriter(tmp_path / "plain.pcapng")
    synthesized = PcapWriter(tmp_path / "synthesized.pcapng", include_dropped=True)
    for subscriber in (plain, synthesized, recorder):
        stack.subscribe(subscriber)
    # The handshake's final ACK is lost; the data that follows completes it for
    # the peer. The peer's first data is lost on its way in.
    stack.add_hook(Hook("out", "drop", where=is_flags("."), name="lose-ack"))
    stack.add_hook(Hook("in", "drop", where=carries_data, name="lose-data"))
    s, syn, _ = open_to_peer(stack, peer)
    s.sendall(b"hello")
    tcp_segment(peer, lambda seg: seg.payload == b"hello", "our data")
    peer.send_tcp(
        Segment(80, syn.src_port, 7001, 1006, Flags.ACK | Flags.PSH, 65535, payload=b"hi")
    )
    peer.ping(1)  # answered after the engine has dealt with the data
    stack.close()
    plain.close()
    synthesized.close()

    [dropped] = [e for e in recorder.segments if e.note == "dropped by hook lose-ack"]
    assert not dropped.frame
    [arrived] = [e for e in framed(recorder.events) if e.note == "dropped by hook lose-data"]
    packets = tshark(tmp_path / "plain.pcapng")
    assert len(packets) == len(framed(recorder.events)) == plain.packets
    assert plain.skipped == 1
    flags = [int(p["tcp.flags"][0], 16) for p in packets if "tcp.flags" in p]
    # SYN, SYN-ACK, then our data where the ACK was, then the peer's data.
    assert flags[:4] == [
        Flags.SYN,
        Flags.SYN | Flags.ACK,
        Flags.PSH | Flags.ACK,
        Flags.PSH | Flags.ACK,
    ]
    comments = [p["frame.comment"][0] for p in packets]
    assert not any("lose-ack" in comment for comment in comments)
    # What an incoming hook dropped did arrive: it is there, saying so.
    [lost_in] = [parse_comment(c) for c in comments if "lose-data" in c]
    assert lost_in == expected_comment(arrived)

    # Asked for, it is rebuilt in its place, marked and with no MAC addresses.
    rebuilt = rdpcap(str(tmp_path / "synthesized.pcapng"))
    assert len(rebuilt) == len(packets) + 1 and synthesized.skipped == 0
    index = next(i for i, e in enumerate(framed(recorder.events, dropped)) if e is dropped)
    packet = rebuilt[index]
    assert parse_comment(packet.comments[0].decode()) == expected_comment(dropped)
    decoded = wire.decode_frame(bytes(packet))
    assert isinstance(decoded, wire.TcpPacket)
    assert decoded.segment == dropped.segment
    assert decoded.src_mac == decoded.dst_mac == b"\0" * 6
    assert (decoded.src_ip, decoded.dst_ip) == (OUR_IP, PEER_IP)
    assert packet.direction == 2


@needs_tshark
def test_malformed_frames_are_written_with_the_reason(
    pair: tuple[Stack, Peer], tmp_path: Path
) -> None:
    stack, peer = pair
    recorder = Recorder()
    path = tmp_path / "malformed.pcapng"
    with open(path, "wb") as file:
        writer = PcapWriter(file)
        stack.subscribe(writer)
        stack.subscribe(recorder)
        good = wire.encode_tcp(
            PEER_MAC, peer.our_mac, PEER_IP, OUR_IP, Segment(1, 80, 1, 0, Flags.SYN)
        )
        bad = bytearray(good)
        bad[-1] ^= 0xFF  # breaks the TCP checksum
        peer.send(bytes(bad))
        peer.send(b"\x00" * 5)
        peer.ping(1)  # the engine answers in order, so it has seen both
        stack.close()
        writer.close()
        assert not file.closed  # it is the caller's to close

    events = framed(recorder.events)
    assert [(e.direction, e.note) for e in events] == [
        ("in", "dropped: tcp_bad_checksum"),
        ("in", "dropped: eth_truncated"),
        ("in", "icmp"),
        ("out", "icmp echo reply"),
    ]
    packets = tshark(path)
    assert [parse_comment(p["frame.comment"][0]) for p in packets] == [
        expected_comment(e) for e in events
    ]
    assert packets[0]["frame.comment"] == ['dir=in note="dropped: tcp_bad_checksum"']
    assert [int(p["frame.len"][0]) for p in packets[:2]] == [len(bad), 5]
    assert [bytes(p) for p in rdpcap(str(path))[:2]] == [bytes(bad), b"\x00" * 5]


# ------------------------------------------------------------ the writer alone


def arp_event(at: float, note: str = "arp") -> FrameEvent:
    frame = wire.encode_arp(PEER_MAC, wire.BROADCAST_MAC, 1, PEER_MAC, PEER_IP, b"\0" * 6, OUR_IP)
    return FrameEvent(at, "in", frame, note)


def test_comment_format_and_parse() -> None:
    segment = Segment(5000, 80, 1001, 7001, Flags.ACK | Flags.PSH, 65535, payload=b"hello")
    event = SegmentEvent(
        time=1.0,
        direction="out",
        local=(OUR_IP, 5000),
        remote=(PEER_IP, 80),
        segment=segment,
        state=State.ESTABLISHED,
        iss=1000,
        irs=7000,
        snd_una=1001,
        snd_nxt=1006,
        rcv_nxt=7001,
        snd_wnd=65535,
        rcv_wnd=64240,
        cwnd=14600,
        srtt=0.001234,
        rto=0.201234,
    )
    assert comment_for(event) == (
        "dir=out state=ESTABLISHED snd_una=1001 snd_nxt=1006 rcv_nxt=7001 snd_wnd=65535"
        " rcv_wnd=64240 cwnd=14600 srtt=1.234ms rto=201.234ms rel_seq=1 rel_ack=1"
    )
    syn = replace(
        event,
        segment=Segment(5000, 80, 1000, 0, Flags.SYN),
        state=State.SYN_SENT,
        irs=0,
        srtt=None,
        rto=1.0,
        note='say "hi" \\ bye',
    )
    text = comment_for(syn)
    assert "srtt=- rto=1000.000ms rel_seq=0 rel_ack=-" in text
    assert text.endswith(r'note="say \"hi\" \\ bye"')
    assert parse_comment(text)["note"] == 'say "hi" \\ bye'
    stale = replace(event, segment=Segment(5000, 80, 999, 6999, Flags.ACK))
    assert "rel_seq=-1 rel_ack=-1" in comment_for(stale)
    assert comment_for(arp_event(0.0, "dropped: bad_source")) == (
        'dir=in note="dropped: bad_source"'
    )


def test_non_frame_events_and_events_after_close_are_ignored() -> None:
    buffer = io.BytesIO()
    writer = PcapWriter(buffer, interface_name="veth-test", epoch_offset=0.0)
    header = buffer.getvalue()
    assert len(header) % 4 == 0
    writer(arp_event(1.5))
    writer.close()
    writer(arp_event(2.0))
    writer.close()  # idempotent
    assert writer.packets == 1 and not buffer.closed
    buffer.seek(0)
    [packet] = rdpcap(buffer)
    assert packet.time == Decimal("1.5") and packet.sniffed_on == "veth-test"

    empty = io.BytesIO()
    PcapWriter(empty).close()
    empty.seek(0)
    assert len(rdpcap(empty)) == 0  # a valid file with no packets


class FullDisk(io.RawIOBase):
    """Takes the header, then fails every write as a full disk would."""

    def __init__(self) -> None:
        self.writes = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.writes += 1
        if self.writes > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(data)


def test_write_errors_never_reach_the_engine_and_surface_on_close() -> None:
    disk = FullDisk()
    writer = PcapWriter(disk)
    writer(arp_event(1.0))  # must not raise: it runs on the engine's thread
    writer(arp_event(2.0))
    assert disk.writes == 2  # after the first failure it stops trying
    with pytest.raises(OSError) as raised:
        writer.close()
    assert raised.value.errno == errno.ENOSPC
    writer.close()  # reported once
