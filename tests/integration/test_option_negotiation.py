"""Option negotiation with the real kernel (O-06, W-08) and the MSS both ways (O-01,
O-02).

The kernel offers what its namespace's sysctls say; they are set in the lab's peer
namespace between connections and put back to the lab's pinned values after each
test. We offer what TcpConfig says. Each connection is looked at from both ends:
our Socket.info() and the SYNs in our trace, and the kernel's `ss -tio`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tcpstack import State, TcpConfig, netns, wire
from tcpstack.capture import Capture
from tcpstack.core import seq
from tcpstack.core.segment import Segment
from tcpstack.hooks import DROP, Hook, carries_data
from tcpstack.lab import Lab
from tcpstack.stack import Socket, Stack
from tcpstack.trace import Recorder, SegmentEvent
from tests.integration.kernel import (
    MSL,
    TIMEOUT,
    in_thread,
    kernel_socket,
    open_stack,
    recv_all,
    sha256,
)

pytestmark = pytest.mark.netns

# Every stack of a lab answers with this MAC, so a kernel that cached a previous
# stack's address still reaches the next one when it is the side that connects.
MAC = "02:54:43:50:00:02"
# A fresh port for every connection: a kernel socket left in TIME_WAIT by an earlier
# connection must never meet a later SYN on the same 4-tuple.
_ports = itertools.count(20000)
SMALL = 64 << 10
BULK = 256 << 10
LARGE = 4 << 20
MAX_FIELD = 0xFFFF
TS_BYTES = 12  # the timestamp option, padded


@dataclass(frozen=True)
class Offer:
    """Which of SACK, timestamps and window scaling one side offers."""

    sack: bool
    timestamps: bool
    window_scaling: bool

    def __and__(self, other: Offer) -> Offer:
        return Offer(
            self.sack and other.sack,
            self.timestamps and other.timestamps,
            self.window_scaling and other.window_scaling,
        )

    def __str__(self) -> str:
        names = [n for n, on in zip(("sack", "ts", "ws"), self.offered, strict=True) if on]
        return "+".join(names) or "none"

    @property
    def offered(self) -> tuple[bool, bool, bool]:
        return self.sack, self.timestamps, self.window_scaling

    @classmethod
    def of(cls, segment: Segment) -> Offer:
        options = segment.options
        return cls(
            options.sack_permitted, options.timestamps is not None, options.wscale is not None
        )

    def config(self) -> TcpConfig:
        # Without window scaling the window field caps what a buffer can offer.
        buffer = (1 << 20) if self.window_scaling else MAX_FIELD
        return TcpConfig(
            msl=MSL,
            sack=self.sack,
            timestamps=self.timestamps,
            window_scaling=self.window_scaling,
            receive_buffer=buffer,
        )


ALL_ON = Offer(True, True, True)
KERNEL_OFFERS = [Offer(*bits) for bits in itertools.product((True, False), repeat=3)]
# The conformance plan's five: all on, all off, and each one alone.
OUR_OFFERS = [
    ALL_ON,
    Offer(False, False, False),
    Offer(True, False, False),
    Offer(False, True, False),
    Offer(False, False, True),
]
SYSCTLS = {
    "sack": "net.ipv4.tcp_sack",
    "timestamps": "net.ipv4.tcp_timestamps",
    "window_scaling": "net.ipv4.tcp_window_scaling",
}


@pytest.fixture(scope="module")
def veth() -> Iterator[Lab]:
    """One lab for the module: the link kind plays no part in negotiation."""
    with Lab("veth") as made:
        yield made


def _write_sysctls(lab: Lab, values: dict[str, str]) -> None:
    with netns.enter(lab.peer_netns):
        for key, value in values.items():
            path = "/proc/sys/" + key.replace(".", "/")
            with open(path, "w") as f:
                f.write(value)
            with open(path) as f:
                assert f.read().strip() == value, key


@contextlib.contextmanager
def kernel_offers(lab: Lab, offer: Offer) -> Iterator[None]:
    """The kernel of LAB's peer namespace offers OFFER to connections opened meanwhile."""
    wanted = {key: str(int(getattr(offer, name))) for name, key in SYSCTLS.items()}
    try:
        _write_sysctls(lab, wanted)
        yield
    finally:
        _write_sysctls(lab, {key: lab.pinned[key] for key in wanted})


@dataclass(frozen=True)
class KernelView:
    """The kernel's side of one connection, as `ss -tio` prints it."""

    timestamps: bool
    sack: bool
    wscale: tuple[int, int] | None  # (its send shift, its receive shift)
    fields: dict[str, str]

    def number(self, name: str) -> int:
        return int(self.fields[name])


def kernel_view(lab: Lab, kernel_end: tuple[str, int], our_end: tuple[str, int]) -> KernelView:
    argv = ["ss", "-tinoH", "src", "{}:{}".format(*kernel_end), "dst", "{}:{}".format(*our_end)]
    done = lab.peer_run(argv, timeout=TIMEOUT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2, f"want one socket from {argv}:\n{done.stdout}"
    tokens = lines[1].split()
    fields = dict(t.split(":", 1) for t in tokens if ":" in t)
    wscale = fields.get("wscale")
    return KernelView(
        timestamps="ts" in tokens,
        sack="sack" in tokens,
        wscale=None if wscale is None else (int(wscale.split(",")[0]), int(wscale.split(",")[1])),
        fields=fields,
    )


def _run(namespace: str, argv: list[str]) -> None:
    tool = shutil.which(argv[0]) or shutil.which(argv[0], path="/usr/sbin:/sbin")
    assert tool is not None, f"{argv[0]} is not installed (scripts/setup installs it)"
    done = netns.run(namespace, [tool, *argv[1:]], TIMEOUT, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(argv)} in {namespace}: {done.stderr.strip()}"


def _recv_exactly(sock: Any, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


@dataclass(frozen=True)
class Connection:
    """One connection with the kernel: our socket, the kernel's, and both addresses."""

    ours: Socket
    peer: socket.socket
    kernel_end: tuple[str, int]
    our_end: tuple[str, int]

    def segments(self, recorder: Recorder) -> list[SegmentEvent]:
        return [
            e
            for e in recorder.segments
            if e.local == self.our_end and e.remote == self.kernel_end and not e.note
        ]

    def exchange_and_close(self, up: int, down: int) -> None:
        """DOWN bytes from the kernel, then UP bytes from us, sha256-checked; the kernel
        closes first, so TIME_WAIT is its and our socket ends CLOSED."""
        to_us, to_kernel = os.urandom(down), os.urandom(up)
        peer = self.peer

        def kernel_side() -> bytes:
            peer.sendall(to_us)
            peer.shutdown(socket.SHUT_WR)
            return recv_all(peer)

        kernel = in_thread(kernel_side)
        assert sha256(recv_all(self.ours)) == sha256(to_us)
        self.ours.sendall(to_kernel)
        self.ours.close()
        assert sha256(kernel.result(TIMEOUT)) == sha256(to_kernel)
        peer.close()
        self.ours.wait_for_state(State.CLOSED, timeout=TIMEOUT)


def our_stack(lab: Lab, config: TcpConfig) -> tuple[Stack, Recorder]:
    stack = open_stack(lab, config=config, mac=MAC)
    recorder = Recorder()
    stack.subscribe(recorder)
    return stack, recorder


def we_connect(stack: Stack, lab: Lab, maxseg: int | None = None) -> Connection:
    port = next(_ports)
    with lab.in_peer():
        server = socket.socket()
    with server:
        if maxseg is not None:
            # Before listen(): the SYN-ACK announces it and the kernel holds to it.
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, maxseg)
        server.bind((lab.peer_address, port))
        server.listen(1)
        server.settimeout(TIMEOUT)
        accepted = in_thread(server.accept)
        s = stack.socket()
        s.settimeout(TIMEOUT)
        s.connect((lab.peer_address, port))
        peer, _ = accepted.result(TIMEOUT)
    peer.settimeout(TIMEOUT)
    return Connection(s, peer, kernel_end=(lab.peer_address, port), our_end=s.getsockname())


def kernel_connects(stack: Stack, lab: Lab) -> Connection:
    port = next(_ports)
    listener = stack.socket()
    with listener:
        listener.bind(("", port))
        listener.listen(1)
        listener.settimeout(TIMEOUT)
        client = kernel_socket(lab)
        connecting = in_thread(client.connect, (lab.endpoint_address, port))
        s, _ = listener.accept()
        connecting.result(TIMEOUT)
    s.settimeout(TIMEOUT)
    return Connection(
        s, client, kernel_end=client.getsockname(), our_end=(lab.endpoint_address, port)
    )


def _send_each(sock: socket.socket, pieces: list[bytes]) -> None:
    for piece in pieces:
        sock.sendall(piece)


def handshake(events: list[SegmentEvent]) -> tuple[Segment, Segment]:
    """The first SYN and the first SYN-ACK among a connection's segments."""
    syns = [e.segment for e in events if e.segment.syn]
    return (
        next(s for s in syns if not s.has_ack),
        next(s for s in syns if s.has_ack),
    )


# ----------------------------------------------------------------------- O-06


@pytest.mark.parametrize("opener", ["we_connect", "kernel_connects"])
@pytest.mark.parametrize("ours", OUR_OFFERS, ids=lambda o: f"ours:{o}")
def test_an_option_is_used_exactly_when_both_sides_offered_it(
    veth: Lab, ours: Offer, opener: str
) -> None:
    # O-06 for one of our five offers against all eight of the kernel's, one
    # connection each: the initiator's SYN carries its offers, the SYN-ACK answers
    # with those both make, and both ends then use exactly those.
    stack, recorder = our_stack(veth, ours.config())
    wrong: list[str] = []
    with stack:
        for theirs in KERNEL_OFFERS:
            with kernel_offers(veth, theirs):
                conn = (we_connect if opener == "we_connect" else kernel_connects)(stack, veth)
            agreed = ours & theirs
            case = f"kernel offers {theirs}, we offer {ours}, agreed {agreed}"
            info = conn.ours.info()
            assert info is not None
            view = kernel_view(veth, conn.kernel_end, conn.our_end)
            syn, synack = handshake(conn.segments(recorder))
            initiator = ours if opener == "we_connect" else theirs
            shifts = (info.snd_wscale, info.rcv_wscale)
            checks = {
                "SYN offers the initiator's options": Offer.of(syn) == initiator,
                "SYN-ACK offers what both offered": Offer.of(synack) == agreed,
                "our SACK": info.sack == agreed.sack,
                "our timestamps": info.timestamps == agreed.timestamps,
                "our shifts": (
                    shifts[1] == 7 and shifts[0] > 0 if agreed.window_scaling else shifts == (0, 0)
                ),
                "kernel's SACK": view.sack == agreed.sack,
                "kernel's timestamps": view.timestamps == agreed.timestamps,
                "kernel's shifts mirror ours": view.wscale
                == ((shifts[1], shifts[0]) if agreed.window_scaling else None),
            }
            conn.exchange_and_close(SMALL, SMALL)
            data = [e for e in conn.segments(recorder) if e.segment.payload]
            for direction in ("in", "out"):
                stamped = {
                    e.segment.options.timestamps is not None
                    for e in data
                    if e.direction == direction
                }
                checks[f"timestamps on data {direction}"] = stamped == {agreed.timestamps}
            seen = (
                f"SYN {Offer.of(syn)}, SYN-ACK {Offer.of(synack)}; ours: sack {info.sack}, "
                f"ts {info.timestamps}, shifts {shifts}; kernel: sack {view.sack}, "
                f"ts {view.timestamps}, wscale {view.wscale}"
            )
            wrong += [f"{case}: {name} wrong ({seen})" for name, ok in checks.items() if not ok]
    assert not wrong, "\n".join(wrong)


# Our lost segment never reached the wire, so the checker sees the next one leave a
# gap in our sequence space (I-3) until the retransmission fills it.
@pytest.mark.trace_allows("I-3")
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(True, True), (True, False), (False, True)],
    ids=lambda on: "on" if on else "off",
)
def test_sack_blocks_flow_only_when_both_offered_sack(veth: Lab, ours: bool, theirs: bool) -> None:
    # O-06 on the wire: the first data segment each way is lost, so both ends hold
    # data out of order; SACK blocks report it only on a connection that agreed SACK.
    agreed = ours and theirs
    stack, recorder = our_stack(veth, Offer(ours, True, True).config())
    stack.add_hook(Hook("in", DROP, where=carries_data))
    stack.add_hook(Hook("out", DROP, where=carries_data))
    pieces = [os.urandom(1000) for _ in range(6)]
    whole = b"".join(pieces)
    with stack, kernel_offers(veth, Offer(theirs, True, True)):
        conn = we_connect(stack, veth)
        # Each write its own segment, so those after the lost one arrive beyond a hole.
        conn.ours.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        got = in_thread(_recv_exactly, conn.peer, len(whole))
        for piece in pieces:
            conn.ours.sendall(piece)
        assert sha256(got.result(TIMEOUT)) == sha256(whole)
        sending = in_thread(_send_each, conn.peer, pieces)
        assert sha256(_recv_exactly(conn.ours, len(whole))) == sha256(whole)
        sending.result(TIMEOUT)
        conn.exchange_and_close(0, 0)
    stats = stack.stats()
    assert (stats["hook_drop_in"], stats["hook_drop_out"]) == (1, 1)
    segments = conn.segments(recorder)
    for direction in ("out", "in"):
        blocks = [e for e in segments if e.direction == direction and e.segment.options.sack_blocks]
        assert bool(blocks) is agreed, (direction, [str(e) for e in blocks[:3]])


# ----------------------------------------------------------------------- W-08


@pytest.mark.parametrize("without", ["kernel", "ours"])
def test_without_window_scaling_windows_stay_unscaled_and_4_mib_each_way_arrive(
    veth: Lab, without: str
) -> None:
    # W-08: one side does not offer window scaling (the kernel's tcp_window_scaling=0,
    # or our TcpConfig); the other does. No shift applies in either direction.
    theirs = Offer(True, True, without != "kernel")
    ours = Offer(True, True, without != "ours")
    stack, recorder = our_stack(veth, ours.config())
    with stack, kernel_offers(veth, theirs):
        conn = we_connect(stack, veth)
        info = conn.ours.info()
        assert info is not None and (info.snd_wscale, info.rcv_wscale) == (0, 0)
        view = kernel_view(veth, conn.kernel_end, conn.our_end)
        assert view.wscale is None
        conn.exchange_and_close(LARGE, LARGE)
    segments = conn.segments(recorder)
    syn, synack = handshake(segments)
    assert (syn.options.wscale is not None, synack.options.wscale) == (ours.window_scaling, None)
    ours_out = [e.segment for e in segments if e.direction == "out" and not e.segment.syn]
    # With shift 0 the field is the window: it never exceeds 65535, and reaching it
    # shows our buffer (1 MiB, or 64 KiB with ours off) was not shifted down either.
    assert max(s.window for s in ours_out) == MAX_FIELD
    # Every byte we sent lay inside the last window the kernel offered, read unscaled.
    edge = None
    beyond = []
    for e in segments:
        s = e.segment
        if e.direction == "in" and s.has_ack:
            right = seq.add(s.ack, s.window)
            edge = right if edge is None or seq.gt(right, edge) else edge
        elif e.direction == "out" and s.payload:
            assert edge is not None
            end = seq.add(s.seq, len(s.payload))
            if seq.gt(end, edge):
                beyond.append(f"{e} beyond {seq.sub(edge, s.seq)} bytes of window")
    assert not beyond, "\n".join(beyond[:10])
    kernel_in = [e.segment for e in segments if e.direction == "in" and not e.segment.syn]
    assert max(s.window for s in kernel_in) <= MAX_FIELD


# ----------------------------------------------------------------------- O-02


@pytest.fixture(scope="module")
def cutting_veth() -> Iterator[Lab]:
    """A veth lab whose endpoint end has segmentation offload off: the kernel cuts
    each of our offload segments into wire frames as it leaves, so the kernel's side
    sees, and a capture there shows, every frame on its own."""
    with Lab("veth") as made:
        _run(
            made.endpoint_netns,
            ["ethtool", "-K", made.endpoint_interface, "tso", "off", "gso", "off"],
        )
        # GRO is off on veth by default; said here, since it would merge the frames
        # again before the capture and the kernel's TCP see them.
        _run(made.peer_netns, ["ethtool", "-K", made.peer_interface, "gro", "off"])
        yield made


@pytest.mark.parametrize(
    ("maxseg", "timestamps"), [(536, True), (536, False), (1000, True), (1100, False)]
)
def test_the_kernels_mss_caps_every_frame_we_send(
    cutting_veth: Lab, maxseg: int, timestamps: bool
) -> None:
    # O-02: a listener's TCP_MAXSEG is the MSS its SYN-ACK announces. Our payload per
    # frame is that less the options every data segment carries (timestamps).
    lab = cutting_veth
    limit = maxseg - (TS_BYTES if timestamps else 0)
    stack, recorder = our_stack(lab, TcpConfig(msl=MSL, timestamps=timestamps))
    with stack, Capture(lab.peer_interface, lab.peer_netns) as capture:
        conn = we_connect(stack, lab, maxseg=maxseg)
        info = conn.ours.info()
        assert info is not None and (info.send_mss, info.timestamps) == (maxseg, timestamps)
        data = os.urandom(BULK)
        got = in_thread(_recv_exactly, conn.peer, len(data))
        conn.ours.sendall(data)
        assert sha256(got.result(TIMEOUT)) == sha256(data)
        view = kernel_view(lab, conn.kernel_end, conn.our_end)
        conn.exchange_and_close(SMALL, SMALL)
        capture.sync()
    # Our core hands the link segments of many MSS (offload) ...
    sent = [e.segment for e in conn.segments(recorder) if e.direction == "out"]
    assert stack.stats()["gso_frames_out"] > 0
    assert max(len(s.payload) for s in sent) > limit
    # ... and what reached the kernel was cut to the MSS, full frames exactly at it.
    ours = [
        p.segment
        for p in (wire.decode_frame(c.frame, checksum_trusted=True) for c in capture.frames)
        if isinstance(p, wire.TcpPacket)
        and p.src_ip == lab.endpoint_address
        and (p.segment.src_port, p.segment.dst_port) == (conn.our_end[1], conn.kernel_end[1])
    ]
    payloads = [len(s.payload) for s in ours if s.payload]
    assert max(payloads) == limit
    assert sum(payloads) >= BULK + SMALL
    # The kernel counts a data segment per wire frame, as many as the MSS needs.
    assert view.number("data_segs_in") >= math.ceil(BULK / limit)
    assert view.timestamps is timestamps


# ----------------------------------------------------------------------- O-01


def _set_mtu(lab: Lab, mtu: int) -> None:
    """Both ends of the lab's own link (one interface, for a TAP lab)."""
    ends = {(lab.peer_netns, lab.peer_interface), (lab.endpoint_netns, lab.endpoint_interface)}
    for namespace, interface in ends:
        _run(namespace, ["ip", "link", "set", "dev", interface, "mtu", str(mtu)])


@pytest.mark.parametrize("mtu", [576, 1280, 9000])
def test_the_mss_we_announce_is_the_mtu_less_40(lab: Lab, mtu: int) -> None:
    # O-01: our SYN and our SYN-ACK announce MTU - 40. Set before the stack opens
    # its link, which reads the MTU then.
    _set_mtu(lab, mtu)
    stack, recorder = our_stack(lab, TcpConfig(msl=MSL))
    with stack:
        assert stack.config.announced_mss == mtu - 40
        active = we_connect(stack, lab)
        view = kernel_view(lab, active.kernel_end, active.our_end)
        active.exchange_and_close(4 * SMALL, 4 * SMALL)
        passive = kernel_connects(stack, lab)
        passive.exchange_and_close(SMALL, SMALL)
    # Ours (SYN, then SYN-ACK), and the kernel's, which sits on the same MTU.
    ours_syn, kernels_synack = handshake(active.segments(recorder))
    kernels_syn, ours_synack = handshake(passive.segments(recorder))
    announced = [s.options.mss for s in (ours_syn, ours_synack, kernels_synack, kernels_syn)]
    assert announced == [mtu - 40] * 4
    # The kernel sends us segments of that size, less its timestamps.
    assert view.number("mss") == mtu - 40 - TS_BYTES


def test_a_stack_opens_on_a_72_byte_mtu_and_announces_32() -> None:
    # O-01's tiny MTU (FreeBSD's snd-syn-mss-inherited-from-mtu-72), which IPv4
    # allows (68 and up). Only the handshake: the kernel's own segments there are
    # clamped to tcp_min_snd_mss and would arrive as IP fragments, which we drop.
    with Lab("veth") as lab:
        _set_mtu(lab, 72)
        stack, recorder = our_stack(lab, TcpConfig(msl=MSL))
        with stack:
            conn = we_connect(stack, lab)
            syn, _ = handshake(conn.segments(recorder))
            assert syn.options.mss == 72 - 40
            conn.exchange_and_close(0, 0)
