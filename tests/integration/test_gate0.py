"""Gate 0 harness and close checks against the kernel peer (plan §6: E-01, E-03, E-04,
E-06, C-02, C-06), for the parts the older tests left out.

- E-01: a capture on the kernel's side of the link is held against our own transmit
  log: every frame from our address must be one the endpoint says it sent.
- E-03: with segmentation, receive and checksum offloads off on both veth ends
  (`ethtool -k` kept in the test's output), no frame we receive exceeds the MTU and no
  kernel segment exceeds the MSS we announced.
- E-04: 1-byte writes both ways in frames padded to the 60-byte Ethernet minimum, at
  MTU 576, 1500 and 9000: payload lengths come from the IP header, ACKs are exact,
  and every frame on the wire fits the MTU.
- E-06: each lab is fresh with the kernel settings of the plan's §4.5 pinned, and the
  evidence the suite keeps of a failing test (pcaps of both sides, `ss`, nstat, our
  trace and TCB dumps; tcpstack.testing.evidence) names the connection, and is kept
  for the failing test only.
- C-02: after a passive close, a late copy of the kernel's segment meets a RST.
- C-06: a kernel close() with unread data (no SO_LINGER) resets us; our close with
  10 KiB unread sends RST and no FIN; after the kernel retransmitted data+FIN that we
  had read, our close sends FIN, not RST.

veth and TAP do not pad short frames as an Ethernet NIC does, so E-04 puts a thin
link wrapper between the endpoint and its interface that pads them (with non-zero
filler, so filler mistaken for payload would show in the data and in the ACKs).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import termios
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tcpstack import State, TcpConfig, netns, wire
from tcpstack.capture import Capture
from tcpstack.core.segment import Flags, Segment
from tcpstack.lab import PINNED_SYSCTLS, Lab, add_teardown_observer
from tcpstack.link import Link, PacketLink
from tcpstack.stack import Socket, Stack
from tcpstack.testing.evidence import Evidence
from tcpstack.trace import FrameEvent, Recorder, SegmentEvent, TraceEvent
from tests.integration.kernel import (
    MSL,
    PORT,
    TIMEOUT,
    connect,
    in_thread,
    kernel_state,
    open_stack,
    recv_all,
    wait_until,
)

pytestmark = pytest.mark.netns

ETH_HEADER = 14
MIN_FRAME = 60  # the Ethernet minimum, without the FCS
FILLER = 0xA5  # what the padding wrapper pads with: never zero, never plausible data
_ETHERTYPE_IPV4 = b"\x08\x00"
_ETHERTYPE_ARP = b"\x08\x06"
_MOVABLE = int(Flags.FIN | Flags.PSH | Flags.CWR)  # flags a segmenting kernel moves
_RST = int(Flags.RST)


# ------------------------------------------------------------------ helpers


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail(f"{name} is not installed (scripts/setup installs it)")
    return found


def _run(namespace: str, argv: Sequence[str]) -> str:
    done = netns.run(namespace, list(argv), 10.0, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(argv)} in {namespace}: {done.stderr.strip()}"
    return str(done.stdout)


def _veth_ends(lab: Lab) -> list[tuple[str, str, str]]:
    """(side, namespace, interface) of both ends of a veth lab's link."""
    return [
        ("peer", lab.peer_netns, lab.peer_interface),
        ("endpoint", lab.endpoint_netns, lab.endpoint_interface),
    ]


def _set_mtu(lab: Lab, mtu: int) -> None:
    for _, namespace, interface in _veth_ends(lab):
        _run(namespace, [_tool("ip"), "link", "set", "dev", interface, "mtu", str(mtu)])


OFFLOADS = ("tso", "gso", "gro", "tx")
# How `ethtool -k` names the features OFFLOADS turns off.
OFFLOAD_FEATURES = (
    "tcp-segmentation-offload",
    "generic-segmentation-offload",
    "generic-receive-offload",
    "tx-checksumming",
)


def _offloads_off(lab: Lab) -> dict[str, str]:
    """The conformance profile: offloads off on both veth ends. Returns each side's
    `ethtool -k`, after checking that it shows them off."""
    shown = {}
    for side, namespace, interface in _veth_ends(lab):
        switches = [word for name in OFFLOADS for word in (name, "off")]
        _run(namespace, [_tool("ethtool"), "-K", interface, *switches])
        text = _run(namespace, [_tool("ethtool"), "-k", interface])
        features = {}
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep and not line.startswith(("\t", " ")) and value.split():
                features[name.strip()] = value.split()[0]
        for name in OFFLOAD_FEATURES:
            assert features.get(name) == "off", f"{side}: {name} is {features.get(name)}"
        shown[side] = text
    return shown


def _sysctl(namespace: str, key: str, value: str | None = None) -> str:
    """Read (or set, then read) a sysctl of NAMESPACE."""
    path = "/proc/sys/" + key.replace(".", "/")
    with netns.enter(namespace):
        if value is not None:
            with open(path, "w") as f:
                f.write(value)
        with open(path) as f:
            return f.read().strip()


@contextlib.contextmanager
def _endpoint(lab: Lab, link: Link | None = None, **kw: Any) -> Iterator[Stack]:
    """Our endpoint in LAB (on LINK if given); fails if the engine hit an internal error."""
    if link is None:
        stack = open_stack(lab, **kw)
    else:
        stack = Stack(link, lab.endpoint_cidr, config=kw.pop("config", TcpConfig(msl=MSL)), **kw)
    try:
        yield stack
    finally:
        stats = stack.stats()
        stack.close()
    assert stats.get("internal_errors", 0) == 0


def _recv_exactly(sock: Any, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _kernel_unread(sock: socket.socket) -> int:
    """Bytes in a kernel socket's receive queue (FIONREAD)."""
    reply = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", reply)[0])


def _close_both(s: Socket, peer: socket.socket, lab: Lab) -> None:
    """We close first, then the kernel; return once the kernel's socket is gone, so
    closing the stack afterwards resets nothing."""
    ours = s.getsockname()
    s.close()
    assert peer.recv(10) == b""
    peer.close()
    kernel_end = (lab.peer_address, PORT)
    wait_until(lambda: kernel_state(lab, kernel_end, ours) is None, "the kernel's socket gone")


def _tcp(frame: bytes) -> wire.TcpPacket | None:
    try:
        packet = wire.decode_frame(frame, checksum_trusted=True)
    except wire.DecodeError:
        return None
    return packet if isinstance(packet, wire.TcpPacket) else None


def _sent(events: Iterable[TraceEvent], port: int) -> list[Segment]:
    """Segments we put on the wire from local PORT, in order: a connection's own and
    those sent for no connection (a RST to a stray segment)."""
    found = []
    for event in events:
        if isinstance(event, SegmentEvent) and event.direction == "out":
            if event.local[1] == port and not event.note.startswith("dropped"):
                found.append(event.segment)
        elif isinstance(event, FrameEvent) and event.direction == "out":
            packet = _tcp(event.frame)
            if packet is not None and packet.segment.src_port == port:
                found.append(packet.segment)
    return found


def _more_than(count: Callable[[], Sequence[object]], n: int) -> bool:
    return len(count()) > n


def _with_tcp_checksum(frame: bytes) -> bytes:
    """FRAME (Ethernet/IPv4/TCP) with its TCP checksum computed in full, as a NIC
    completes a checksum the kernel left partial."""
    ihl = (frame[ETH_HEADER] & 0x0F) * 4
    total = struct.unpack_from("!H", frame, ETH_HEADER + 2)[0]
    start, end = ETH_HEADER + ihl, ETH_HEADER + total
    segment = bytearray(frame[start:end])
    segment[16:18] = b"\0\0"
    pseudo = frame[ETH_HEADER + 12 : ETH_HEADER + 20] + struct.pack("!BBH", 0, 6, len(segment))
    struct.pack_into("!H", segment, 16, wire.internet_checksum(pseudo + bytes(segment)))
    return frame[:start] + bytes(segment) + frame[end:]


def _inject(lab: Lab, frame: bytes) -> None:
    """Put FRAME on the link from the kernel's side, as if the network delivered it."""
    with netns.enter(lab.peer_netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    with sock:
        sock.bind((lab.peer_interface, 0))
        sock.send(frame)


class _PaddingLink:
    """A Link that pads frames shorter than 60 bytes, both ways, as an Ethernet NIC
    does (veth and TAP do not). Padding is FILLER, so taking it for payload would
    change both the data and the ACK numbers. An outgoing frame left for the kernel
    to checksum gets its checksum here first, as a NIC fills it in before padding."""

    def __init__(self, inner: Link) -> None:
        self.inner = inner
        self.name = inner.name
        self.mtu = inner.mtu
        self.kind = inner.kind
        self.gso_max = inner.gso_max
        self.padded_in = 0
        self.padded_out = 0

    def fileno(self) -> int:
        return self.inner.fileno()

    def recv_batch(self, max_frames: int = 64) -> list[tuple[bytes, bool]]:
        frames = []
        for frame, trusted in self.inner.recv_batch(max_frames):
            if len(frame) < MIN_FRAME:
                self.padded_in += 1
                frame += bytes([FILLER]) * (MIN_FRAME - len(frame))
            frames.append((frame, trusted))
        return frames

    def send(self, frame: bytes, gso_size: int = 0) -> None:
        if len(frame) >= MIN_FRAME:
            self.inner.send(frame, gso_size)
            return
        if gso_size:
            frame = _with_tcp_checksum(frame)
        self.padded_out += 1
        self.inner.send(frame + bytes([FILLER]) * (MIN_FRAME - len(frame)))

    def close(self) -> None:
        self.inner.close()


# ----------------------------------------------------------------------- E-01


def _from_address(frame: bytes, address: bytes) -> bool:
    """Whether FRAME is an IPv4 packet from ADDRESS, or ARP spoken for it."""
    kind = frame[12:14]
    if kind == _ETHERTYPE_IPV4:
        return frame[26:30] == address
    if kind == _ETHERTYPE_ARP:
        return frame[28:32] == address
    return False


def _piece_of(seen: Segment, sent: Segment) -> bool:
    """Whether SEEN is SENT, or one of the segments the kernel cut it into (TSO):
    same header fields and a slice of its payload at the right offset."""
    if (seen.src_port, seen.dst_port, seen.ack, seen.window, seen.urgent) != (
        sent.src_port,
        sent.dst_port,
        sent.ack,
        sent.window,
        sent.urgent,
    ):
        return False
    if seen.options != sent.options or bool(seen.payload) != bool(sent.payload):
        return False
    offset = (seen.seq - sent.seq) & 0xFFFF_FFFF
    if sent.payload[offset : offset + len(seen.payload)] != seen.payload:
        return False
    if offset + len(seen.payload) > len(sent.payload):
        return False
    # Cutting moves FIN and PSH to the last piece and CWR to the first; nothing else.
    return (int(seen.flags) & ~_MOVABLE) == (int(sent.flags) & ~_MOVABLE) and not (
        int(seen.flags) & ~int(sent.flags)
    )


def _unlogged(frames: Iterable[bytes], events: Sequence[TraceEvent], address: str) -> list[bytes]:
    """The frames from ADDRESS (captured on the kernel's side) that are not in our
    transmit log EVENTS: neither a frame we logged nor a piece of a segment we did."""
    ours = socket.inet_aton(address)
    logged: set[bytes] = set()
    by_ports: dict[tuple[int, int], list[Segment]] = {}
    for event in events:
        if not isinstance(event, SegmentEvent | FrameEvent) or event.direction != "out":
            continue
        if not event.frame or event.note.startswith("dropped"):
            continue
        logged.add(event.frame)
        if isinstance(event, SegmentEvent):
            s = event.segment
            by_ports.setdefault((s.src_port, s.dst_port), []).append(s)
    # A short frame may reach the wire padded to the minimum (by a NIC, or E-04's wrapper).
    short = {len(f) for f in logged if len(f) < MIN_FRAME}
    strangers = []
    for frame in frames:
        if not _from_address(frame, ours) or frame in logged:
            continue
        if len(frame) == MIN_FRAME and any(frame[:n] in logged for n in short):
            continue
        packet = _tcp(frame)
        if packet is None:
            strangers.append(frame)
            continue
        seen = packet.segment
        candidates = by_ports.get((seen.src_port, seen.dst_port), [])
        if not any(_piece_of(seen, sent) for sent in candidates):
            strangers.append(frame)
    return strangers


def _arrived(capture: Capture) -> list[bytes]:
    """Frames the kernel's interface received (what the endpoint's side sent)."""
    return [c.frame for c in capture.frames if not c.outgoing]


def _exchange(s: Socket, peer: socket.socket, size: int) -> None:
    """``size`` random bytes each way, one direction after the other, checked."""
    up, down = os.urandom(size), os.urandom(size)
    got = in_thread(_recv_exactly, peer, len(up))
    s.sendall(up)
    assert _digest(got.result(TIMEOUT)) == _digest(up)
    sending = in_thread(peer.sendall, down)
    assert _digest(_recv_exactly(s, len(down))) == _digest(down)
    sending.result(TIMEOUT)


def test_every_frame_from_our_address_on_the_wire_is_in_our_transmit_log(lab: Lab) -> None:
    up, down = os.urandom(1 << 20), os.urandom(1 << 20)
    before = lab.peer_nstat()
    recorder = Recorder()
    with Capture(lab.peer_interface, lab.peer_netns) as capture, _endpoint(lab) as stack:
        stack.subscribe(recorder)
        s, peer = connect(stack, lab)
        got = in_thread(recv_all, peer)
        s.sendall(up)
        s.shutdown(socket.SHUT_WR)
        assert _digest(got.result(TIMEOUT)) == _digest(up)
        sending = in_thread(peer.sendall, down)
        assert _digest(_recv_exactly(s, len(down))) == _digest(down)
        sending.result(TIMEOUT)
        ours = s.getsockname()
        peer.close()
        s.wait_for_state(State.TIME_WAIT, timeout=TIMEOUT)
        kernel_end = (lab.peer_address, PORT)
        wait_until(lambda: kernel_state(lab, kernel_end, ours) is None, "the kernel's socket gone")
        stack.sync()
        capture.sync()
        events = list(recorder.events)
        frames = _arrived(capture)
        s.close()
    assert not capture.errors
    address = socket.inet_aton(lab.endpoint_address)
    from_us = [f for f in frames if _from_address(f, address)]
    carried = sum(len(p.segment.payload) for f in from_us if (p := _tcp(f)) is not None)
    assert carried >= len(up), "the capture missed most of the transfer"
    strangers = _unlogged(frames, events, lab.endpoint_address)
    assert not strangers, f"{len(strangers)} frames from our address we never sent"
    resets = [f for f in from_us if (p := _tcp(f)) is not None and p.segment.flags & Flags.RST]
    assert not resets, "a RST from our address reached the kernel"
    after = lab.peer_nstat()
    for counter in ("TcpEstabResets", "TcpExtTCPAbortOnData"):
        assert after.get(counter, 0) == before.get(counter, 0), counter
    # The comparison has teeth: one of our own ACKs turned into a RST is a stranger.
    ack = next(f for f in from_us if (p := _tcp(f)) is not None and not p.segment.payload)
    forged = bytearray(ack)
    forged[ETH_HEADER + 20 + 13] |= _RST
    assert _unlogged([bytes(forged)], events, lab.endpoint_address) == [bytes(forged)]


# ----------------------------------------------------------------------- E-03

ADVERTISED_MSS = 1200  # below MTU 1500 - 40, so the MSS, not the MTU, bounds the kernel


def test_with_offloads_off_frames_fit_the_mtu_and_kernel_segments_our_mss(
    record_property: Callable[[str, object], None],
) -> None:
    with Lab("veth") as lab:
        shown = _offloads_off(lab)
        for side, text in shown.items():
            # Kept with the test's output and in the JUnit report.
            print(f"--- ethtool -k, {side} end\n{text}")
            record_property(f"ethtool_k_{side}", text)
        mtu = _interface_mtu(lab)
        recorder = Recorder()
        config = TcpConfig(msl=MSL, mss=ADVERTISED_MSS)
        with _endpoint(lab, config=config) as stack:
            stack.subscribe(recorder)
            s, peer = connect(stack, lab)
            _exchange(s, peer, 1 << 20)
            _close_both(s, peer, lab)
            stack.sync()
            stats = stack.stats()
    assert mtu == 1500
    syn = next(e.segment for e in recorder.segments if e.direction == "out" and e.segment.syn)
    assert syn.options.mss == ADVERTISED_MSS
    received = [
        e.frame
        for e in recorder.events
        if isinstance(e, SegmentEvent | FrameEvent) and e.direction == "in" and e.frame
    ]
    assert max(len(f) for f in received) <= ETH_HEADER + mtu
    assert stats.get("gso_frames_in", 0) == 0
    kernel_data = [
        len(e.segment.payload)
        for e in recorder.segments
        if e.direction == "in" and e.segment.payload
    ]
    assert sum(kernel_data) >= 1 << 20
    assert max(kernel_data) <= ADVERTISED_MSS


def _interface_mtu(lab: Lab) -> int:
    text = _run(lab.endpoint_netns, [_tool("ip"), "-o", "link", "show", lab.endpoint_interface])
    words = text.split()
    return int(words[words.index("mtu") + 1])


# ----------------------------------------------------------------------- E-04

ROUNDS = 16  # 1-byte writes each way
BULK = 200_000  # then enough data each way to fill MTU-sized frames


@pytest.mark.parametrize("mtu", [576, 1500, 9000])
def test_one_byte_writes_in_padded_frames_get_exact_acks_and_frames_fit_the_mtu(
    mtu: int,
) -> None:
    with Lab("veth") as lab:
        _set_mtu(lab, mtu)  # before the endpoint opens its link, which reads the MTU
        _offloads_off(lab)
        # Without timestamps a 1-byte segment is a 55-byte frame, short of the minimum.
        assert _sysctl(lab.peer_netns, "net.ipv4.tcp_timestamps", "0") == "0"
        before = lab.peer_nstat()
        link = _PaddingLink(PacketLink(lab.endpoint_interface, lab.endpoint_netns))
        assert link.mtu == mtu
        recorder = Recorder()
        mine = bytes(range(1, ROUNDS + 1))
        theirs = bytes(range(101, 101 + ROUNDS))
        with (
            Capture(lab.peer_interface, lab.peer_netns) as capture,
            # The MSS spelled out: by default it stops at 1460 (see the jumbo test below).
            _endpoint(lab, link=link, config=TcpConfig(msl=MSL, mss=mtu - 40)) as stack,
        ):
            stack.subscribe(recorder)
            s, peer = connect(stack, lab)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(ROUNDS):
                s.sendall(mine[i : i + 1])
                assert peer.recv(64) == mine[i : i + 1]  # the kernel reads the byte alone
                peer.sendall(theirs[i : i + 1])
                assert s.recv(64) == theirs[i : i + 1]  # and so do we: no filler
            padded = (link.padded_in, link.padded_out)
            _exchange(s, peer, BULK)
            _close_both(s, peer, lab)
            stack.sync()
            capture.sync()
        after = lab.peer_nstat()
    assert not capture.errors
    # Every 1-byte segment and every pure ACK went in a padded frame, both ways.
    assert padded[0] >= ROUNDS and padded[1] >= ROUNDS
    segments = recorder.segments
    syns = [e.segment for e in segments if e.segment.syn]
    assert [s.options.mss for s in syns] == [mtu - 40, mtu - 40]  # ours, then the kernel's
    # Exact ACKs both ways: the segment that follows a 1-byte segment acknowledges
    # exactly that byte, never the filler after it.
    ping_pong = [e for e in segments if not e.segment.syn][: 4 * ROUNDS]
    expected: dict[str, int] = {}
    checked = 0
    for event in ping_pong:
        if event.direction in expected and event.relative_ack is not None:
            assert event.relative_ack == expected.pop(event.direction), str(event)
            checked += 1
        if len(event.segment.payload) == 1:
            other = "out" if event.direction == "in" else "in"
            expected[other] = event.relative_seq + 1
    assert checked >= 2 * ROUNDS - 1
    small = [e.segment.payload for e in segments if e.direction == "in" and e.segment.payload]
    assert b"".join(small[:ROUNDS]) == theirs
    # Frames fit the MTU on the wire, both ways, and the bulk data filled them.
    for outgoing in (False, True):
        sizes = [len(c.frame) for c in capture.frames if c.outgoing is outgoing]
        assert max(sizes) == ETH_HEADER + mtu, ("kernel" if outgoing else "endpoint", max(sizes))
    seen = [
        len(e.frame)
        for e in recorder.events
        if isinstance(e, SegmentEvent | FrameEvent) and e.direction == "in" and e.frame
    ]
    assert max(seen) <= ETH_HEADER + mtu
    assert after.get("TcpExtBeyondWindow", 0) == before.get("TcpExtBeyondWindow", 0)
    # E-01's comparison where frames are not byte for byte what we logged: padded,
    # checksummed by the wrapper, or cut by the kernel since TSO is off.
    assert not _unlogged(_arrived(capture), recorder.events, lab.endpoint_address)


def test_at_a_jumbo_mtu_our_mss_is_the_mtu_minus_40_unless_capped() -> None:
    # RFC 9293 §3.7.1 (and Linux): the MSS announced is the MTU less 40 bytes of
    # headers, on a jumbo link as on Ethernet; a configured MSS is a cap.
    with Lab("veth") as lab:
        _set_mtu(lab, 9000)
        for config, announced in ((TcpConfig(msl=MSL), 9000 - 40), (TcpConfig(mss=1200), 1200)):
            with _endpoint(lab, config=config) as stack:
                assert stack.config.announced_mss == announced
                recorder = stack.subscribe(Recorder())
                s, peer = connect(stack, lab)
                (syn,) = [e.segment for e in recorder.segments if e.segment.flags == Flags.SYN]
                assert syn.options.mss == announced
                # The kernel sends segments of that size, less its timestamp option.
                assert peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG) == announced - 12
                _close_both(s, peer, lab)


# ----------------------------------------------------------------------- E-06

FRESH_COUNTERS = ("TcpInSegs", "TcpOutSegs", "TcpActiveOpens", "TcpPassiveOpens", "TcpOutRsts")


def _pcap_frames(path: Path) -> list[bytes]:
    """The packet data of each record of a pcap file (tcpdump's), or of each
    enhanced packet block of a pcapng file (ours)."""
    data = path.read_bytes()
    if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4"):
        order = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
        frames, at = [], 24
        while at + 16 <= len(data):
            captured = struct.unpack_from(order + "I", data, at + 8)[0]
            frames.append(data[at + 16 : at + 16 + captured])
            at += 16 + captured
        assert at == len(data), "truncated record"
        return frames
    assert data[:4] == b"\x0a\x0d\x0d\x0a", "neither pcap nor pcapng"
    order = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
    frames, at = [], 0
    while at + 12 <= len(data):
        kind, length = struct.unpack_from(order + "II", data, at)
        assert length >= 12 and at + length <= len(data), "truncated block"
        if kind == 6:
            captured = struct.unpack_from(order + "I", data, at + 20)[0]
            frames.append(data[at + 28 : at + 28 + captured])
        at += length
    assert at == len(data)
    return frames


def _connection_in(path: Path, ours: tuple[str, int]) -> list[Segment]:
    packets = [p for f in _pcap_frames(path) if (p := _tcp(f)) is not None]
    return [
        p.segment for p in packets if {p.segment.src_port, p.segment.dst_port} == {ours[1], PORT}
    ]


def test_each_lab_is_fresh_with_its_kernel_settings_pinned(lab: Lab) -> None:
    # Fresh: the namespaces are new, so the kernel's counters start at zero.
    counters = lab.peer_nstat()
    assert [counters.get(n, 0) for n in FRESH_COUNTERS] == [0] * len(FRESH_COUNTERS)
    # Pinned: every setting of the plan's §4.5 this kernel has, in every TCP kernel.
    assert "net.ipv4.tcp_no_metrics_save" in lab.pinned and "net.ipv4.tcp_sack" in lab.pinned
    assert set(lab.pinned) <= set(PINNED_SYSCTLS)
    for key, value in lab.pinned.items():
        assert _sysctl(lab.peer_netns, key) == value, key
    assert _sysctl(lab.peer_netns, "net.ipv6.conf.all.disable_ipv6") == "1"
    with _endpoint(lab) as stack:
        s, peer = connect(stack, lab)
        _close_both(s, peer, lab)
    assert lab.peer_nstat()["TcpPassiveOpens"] > 0
    # A second lab is fresh again, whatever this one went through.
    with Lab(lab.kind) as other:
        assert not set(other.namespaces) & set(lab.namespaces)
        again = other.peer_nstat()
        assert [again.get(n, 0) for n in FRESH_COUNTERS] == [0] * len(FRESH_COUNTERS)


@pytest.mark.parametrize("kind", ["veth", "tap"])
def test_the_evidence_of_a_failure_names_the_connection_on_both_sides(
    kind: str, tmp_path: Path
) -> None:
    # The kit the suite runs for every test (conftest.py), run here by hand: a failure
    # at the established moment keeps our trace and TCB, and the kernel's ss and pcap.
    evidence = Evidence(tmp_path / "scratch")
    stop_observing = add_teardown_observer(evidence.lab_down)
    try:
        lab = Lab(kind).up()
        try:
            evidence.watch_lab(lab)
            stack = open_stack(lab)
            evidence.watch_stack(stack)
            try:
                s, peer = connect(stack, lab)
                ours = s.getsockname()
                s.sendall(b"question")
                assert _recv_exactly(peer, 8) == b"question"
                peer.sendall(b"answer")
                assert _recv_exactly(s, 6) == b"answer"
                evidence.failed_now()
                _close_both(s, peer, lab)
            finally:
                evidence.stack_closing(stack)
                stack.close()
        finally:
            lab.down()
        kept = evidence.end(tmp_path / "kept")
    finally:
        stop_observing()
        evidence.close()
    assert kept is not None
    names = sorted(p.name for p in kept.iterdir())
    # The kernel's view at the failure names the connection, with its TCP variables.
    shown = (kept / f"{lab.name}-peer-ss-at-failure.txt").read_text()
    rows = [r for r in shown.splitlines() if r.startswith("ESTAB")]
    assert rows and f"{ours[0]}:{ours[1]}" in rows[0] and f":{PORT}" in rows[0], shown
    assert " mss:" in shown and " rtt:" in shown, shown
    assert f"{lab.name}-peer-ss-at-removal.txt" in names, names
    counters = json.loads((kept / f"{lab.name}-peer-nstat-at-removal.json").read_text())
    assert counters["TcpPassiveOpens"] == 1
    # Our TCB dump at the failure has the connection with its variables; the one
    # taken before the stack closed has it ended.
    (stack_label,) = {n.split("-tcb-")[0] for n in names if "-tcb-" in n}
    dump = json.loads((kept / f"{stack_label}-tcb-at-failure.json").read_text())
    (row,) = [c for c in dump["connections"] if tuple(c["local"]) == ours]
    assert row["state"] == "ESTABLISHED" and row["info"]["snd_nxt"]
    assert (kept / f"{stack_label}-tcb-at-close.json").exists()
    trace = (kept / f"{stack_label}-trace.txt").read_text()
    assert "ESTABLISHED" in trace, trace[:2000]
    # Both pcaps hold the connection's segments, its data among them.
    for path in (kept / f"{lab.name}-peer.pcap", kept / f"{stack_label}.pcapng"):
        mine = _connection_in(path, ours)
        assert any(seg.syn for seg in mine) and any(seg.fin for seg in mine), path
        payload = b"".join(seg.payload for seg in mine)
        assert b"question" in payload and b"answer" in payload, path
    # Nothing is left in the scratch directory.
    assert not (tmp_path / "scratch").exists()


@pytest.mark.skipif(
    os.environ.get("TCPSTACK_FAIL_ON_PURPOSE") != "1", reason="run by the test below only"
)
def test_that_fails_on_purpose() -> None:
    with Lab("veth") as lab, _endpoint(lab) as stack:
        s, peer = connect(stack, lab)
        s.sendall(b"evidence")
        assert _recv_exactly(peer, 8) == b"evidence"
        raise AssertionError("failed on purpose")


def test_the_suite_keeps_the_evidence_of_a_failing_test_and_only_of_it(tmp_path: Path) -> None:
    # The whole wiring, in a pytest of its own: one test fails, the other passes.
    here = Path(__file__)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{here}::test_that_fails_on_purpose",
            f"{here}::test_each_lab_is_fresh_with_its_kernel_settings_pinned[veth]",
        ],
        cwd=here.parents[2],
        env={**os.environ, "TCPSTACK_FAIL_ON_PURPOSE": "1", "TCPSTACK_EVIDENCE_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 1 passed" in result.stdout, result.stdout
    (kept,) = tmp_path.iterdir()
    assert kept.name.endswith("test_that_fails_on_purpose"), kept
    assert str(kept) in result.stdout
    names = {p.name for p in kept.iterdir()}
    assert any(n.endswith("-peer.pcap") for n in names), names
    assert any(n.endswith("-peer-ss-at-removal.txt") for n in names), names
    assert any(n.endswith("-peer-nstat-at-removal.json") for n in names), names
    assert any(n.endswith("-tcb-at-close.json") for n in names), names
    (ours,) = [n for n in names if n.startswith("stack") and n.endswith(".pcapng")]
    peer_pcap = next(kept / n for n in names if n.endswith("-peer.pcap"))
    for path in (kept / ours, peer_pcap):
        payload = b"".join(p.segment.payload for f in _pcap_frames(path) if (p := _tcp(f)))
        assert b"evidence" in payload, path


# ----------------------------------------------------------------------- C-02


def test_after_a_passive_close_a_late_segment_for_the_connection_gets_a_reset(lab: Lab) -> None:
    recorder = Recorder()
    kernel_end = (lab.peer_address, PORT)
    with Capture(lab.peer_interface, lab.peer_netns) as capture, _endpoint(lab) as stack:
        stack.subscribe(recorder)
        s, peer = connect(stack, lab)
        ours = s.getsockname()
        # The kernel closes first; shutdown rather than close() so it can still read.
        peer.shutdown(socket.SHUT_WR)
        assert s.recv(10) == b""
        assert s.state is State.CLOSE_WAIT
        # FIN_WAIT_2: the kernel has our ACK of its FIN.
        wait_until(lambda: kernel_state(lab, kernel_end, ours) == "FIN_WAIT_2", "FIN_WAIT_2")
        data = os.urandom(1 << 20)
        got = in_thread(recv_all, peer)
        s.sendall(data)  # CLOSE_WAIT still sends
        s.close()
        assert _digest(got.result(TIMEOUT)) == _digest(data)
        s.wait_for_state(State.CLOSED, timeout=TIMEOUT)
        wait_until(lambda: kernel_state(lab, kernel_end, ours) == "TIME_WAIT", "TIME_WAIT")
        assert not [c for c in stack.connections() if c.local == ours]
        states = [(e.old, e.new) for e in recorder.states if e.local == ours]
        assert states[-3:] == [
            (State.ESTABLISHED, State.CLOSE_WAIT),
            (State.CLOSE_WAIT, State.LAST_ACK),
            (State.LAST_ACK, State.CLOSED),
        ]
        capture.sync()
        kernel_sent = [
            (c.frame, p.segment)
            for c in capture.frames
            if c.outgoing and (p := _tcp(c.frame)) is not None and p.segment.dst_port == ours[1]
        ]
        our_fin = next(
            e.segment for e in reversed(recorder.segments) if e.segment.fin and e.direction == "out"
        )
        last_frame, last = kernel_sent[-1]
        assert last.flags == Flags.ACK and not last.payload
        assert last.ack == (our_fin.seq + len(our_fin.payload) + 1) & 0xFFFF_FFFF
        fin_frame, fin = next((f, g) for f, g in kernel_sent if g.fin)

        # Late copies, as a network may deliver them: the kernel's last ACK, then its
        # FIN. Each meets a connection that is gone and must get a RST.
        def resets() -> list[Segment]:
            return [g for g in _sent(recorder.events, ours[1]) if g.rst]

        for frame, segment in ((last_frame, last), (fin_frame, fin)):
            wanted = len(resets()) + 1
            _inject(lab, _with_tcp_checksum(frame))
            wait_until(functools.partial(_more_than, resets, wanted - 1), "our RST")
            reset = resets()[-1]
            # RFC 9293 §3.10.7.1: to a segment with ACK, <SEQ=SEG.ACK><CTL=RST>.
            assert (reset.dst_port, reset.seq, reset.flags) == (PORT, segment.ack, Flags.RST)
            if segment is last:
                # The RST is in the window of the kernel's TIME-WAIT, which Linux
                # ends on it (tcp_rfc1337 = 0): it reached the kernel and was taken.
                wait_until(lambda: kernel_state(lab, kernel_end, ours) is None, "TIME-WAIT ended")
        peer.close()


# ----------------------------------------------------------------------- C-06

UNREAD = 10 * 1024


# Our RST ends the kernel's established connection: EstabResets.
@pytest.mark.nstat_allows("TcpEstabResets")
def test_our_close_with_ten_kilobytes_unread_sends_rst_and_no_fin(lab: Lab) -> None:
    recorder = Recorder()
    with _endpoint(lab) as stack:
        stack.subscribe(recorder)
        s, peer = connect(stack, lab)
        port = s.getsockname()[1]
        with peer:
            peer.sendall(os.urandom(UNREAD))
            conn = s.connection
            assert conn is not None
            wait_until(lambda: conn.readable == UNREAD, "the data buffered, unread")
            snd_nxt = conn.snd_nxt
            s.close()
            assert s.state is State.CLOSED
            with pytest.raises(ConnectionResetError):
                peer.recv(10)  # the kernel's next I/O
    sent = _sent(recorder.events, port)
    assert not [g for g in sent if g.fin]
    (reset,) = [g for g in sent if g.rst]
    assert reset.seq == snd_nxt


# Linux's close() with unread data resets the connection and counts it as
# TCPAbortOnClose; ending an established connection by reset is EstabResets.
@pytest.mark.nstat_allows("TcpExtTCPAbortOnClose", "TcpEstabResets")
def test_kernel_close_with_unread_data_resets_and_our_next_read_fails(lab: Lab) -> None:
    recorder = Recorder()
    with _endpoint(lab) as stack:
        stack.subscribe(recorder)
        s, peer = connect(stack, lab)
        port = s.getsockname()[1]
        s.sendall(os.urandom(UNREAD))
        wait_until(lambda: _kernel_unread(peer) == UNREAD, "the data queued, unread")
        # A plain close(): no SO_LINGER.
        assert peer.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8) == bytes(8)
        peer.close()
        with pytest.raises(ConnectionResetError):
            s.recv(10)
        assert s.state is State.CLOSED
        with pytest.raises(BrokenPipeError):
            s.send(b"x")
        s.close()
    came = [e.segment for e in recorder.segments if e.direction == "in" and e.local[1] == port]
    assert any(g.rst for g in came) and not any(g.fin for g in came)


def test_close_after_the_kernel_retransmitted_data_and_fin_we_had_read_sends_fin(
    lab: Lab,
) -> None:
    recorder = Recorder()
    kernel_end = (lab.peer_address, PORT)
    with _endpoint(lab) as stack:
        stack.subscribe(recorder)
        s, peer = connect(stack, lab)
        ours = s.getsockname()
        # Our pure ACKs stop reaching the kernel, so it sends its data+FIN again.
        lab.peer_loss(direction="in", tcp_flags="ack")
        data = os.urandom(1000)
        peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        peer.sendall(data)
        peer.shutdown(socket.SHUT_WR)  # corked: the FIN joins the data in one segment
        assert _recv_exactly(s, len(data)) == data
        assert s.recv(10) == b""  # everything read, EOF too

        def data_fins() -> list[Segment]:
            return [
                e.segment
                for e in recorder.segments
                if e.direction == "in" and e.segment.fin and e.segment.payload
            ]

        wait_until(lambda: len(data_fins()) >= 2, "the kernel's data+FIN sent again")
        assert lab.peer_loss_dropped() >= 2
        lab.peer_loss_clear()
        first, again = data_fins()[:2]
        assert (again.seq, again.payload) == (first.seq, data)
        s.close()  # nothing unread: FIN, not RST
        s.wait_for_state(State.CLOSED, timeout=TIMEOUT)
        wait_until(lambda: kernel_state(lab, kernel_end, ours) == "TIME_WAIT", "TIME_WAIT")
        assert peer.recv(10) == b""  # EOF, not ECONNRESET
        peer.close()
    sent = _sent(recorder.events, ours[1])
    assert [g for g in sent if g.fin] and not [g for g in sent if g.rst]
