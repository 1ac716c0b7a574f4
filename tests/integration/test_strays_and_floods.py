"""Segments that belong to no connection of ours, and forged ones aimed at a live one:
strays for other 4-tuples beside a live transfer (D-13), floods of them (A-10), ACK
acceptability in every state the kernel lets us reach (A-04), and the rate limits on
challenge ACKs (A-05).

An injector in the kernel's namespace (attacker.py's Attacker, used in-process) forges
the frames, and a packet socket beside it reads everything our stack puts on the link.
The engine handles frames in the order they arrive and sends its answers in order, so
a stray for a fresh 4-tuple sent last (the sentinel) is answered last: once its RST is
on the wire, so is every answer to what was injected before it. That is how each test
knows it has seen all there is to see, without waiting for time to pass.

Where Linux is the reference (its RSTs for unknown 4-tuples, its challenge-ACK
limits), like frames go to the lab's kernel from our side of the veth, and its
counters say what it did. The link makes no difference to any of this: veth only.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tcpstack import StackConfig, State, TcpConfig, netns, wire
from tcpstack.core import seq
from tcpstack.core.connection import TcpInfo
from tcpstack.core.segment import Flags, Options, Segment
from tcpstack.hooks import DROP, Hook, HookContext
from tcpstack.lab import Lab
from tcpstack.stack import Socket, Stack, recv_exactly
from tests.integration.attacker import Attacker
from tests.integration.kernel import (
    MSL,
    PORT,
    TIMEOUT,
    connect,
    in_thread,
    kernel_server,
    kernel_socket,
    kernel_state,
    open_stack,
    recv_all,
    sha256,
    wait_until,
)

pytestmark = pytest.mark.netns

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_RCVBUFFORCE = 33

ACK, FIN, PSH, RST, SYN = Flags.ACK, Flags.FIN, Flags.PSH, Flags.RST, Flags.SYN
LISTEN_PORT = 8080
SPARE_PORT = 1999  # a port of ours that nothing uses
SENTINEL_PORT = 7
# On-link addresses nobody owns. Each claims a made-up MAC with an ARP request to us
# first, so our RSTs to it go straight out instead of waiting for an ARP reply that
# never comes; the kernel's side drops frames for those MACs unread.
HOSTS = (
    ("198.18.0.77", bytes.fromhex("020000000077")),
    ("198.18.0.78", bytes.fromhex("020000000078")),
)
SIZE = 4 << 20
HALF = SIZE // 2
# What a live connection's counters show if a stray reached it (and see
# _assert_untouched for drop_unacceptable and oow_acks_suppressed).
DISTURBED = (
    "challenge_acks",
    "challenge_acks_suppressed",
    "drop_ack_unsent",
    "drop_ack_too_old",
    "drop_no_ack",
    "drop_paws",
    "resets_sent",
    "retransmissions",
    "duplicate_acks",
)


@contextlib.contextmanager
def _stack(lab: Lab, **kw: Any) -> Iterator[Stack]:
    """Our endpoint on LAB; fails if the engine hit an internal error."""
    s = open_stack(lab, **kw)
    try:
        yield s
    finally:
        stats = s.stats()
        s.close()
    assert stats.get("internal_errors", 0) == 0


# -- seeing and forging frames ----------------------------------------------------------


class Wire:
    """What our stack puts on the link, as the kernel's end of the veth receives it:
    (destination address, segment) in wire order, read by a thread."""

    def __init__(self, lab: Lab, mac: bytes) -> None:
        with lab.in_peer():
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            # Room for a whole flood should this thread fall behind: a frame lost
            # here would look like an answer our stack never sent.
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
            self._sock.bind((lab.peer_interface, 0))
            self._sock.settimeout(0.05)
        except BaseException:
            self._sock.close()
            raise
        self._mac = mac
        self._lost = 0
        self.segments: list[tuple[str, Segment]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wire", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, address = self._sock.recvfrom(1 << 17)
            except TimeoutError:
                continue
            except OSError:
                return
            if address[2] == PACKET_OUTGOING or frame[6:12] != self._mac:
                continue
            try:
                packet = wire.decode_frame(frame, checksum_trusted=True)
            except wire.DecodeError:
                continue
            if isinstance(packet, wire.TcpPacket):
                self.segments.append((packet.dst_ip, packet.segment))

    def lost(self) -> int:
        """Frames the capture dropped (its buffer full): then what it shows is partial."""
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        self._lost += struct.unpack("=II", raw)[1]
        return self._lost

    def wait_for(self, match: Callable[[str, Segment], bool], what: str, start: int = 0) -> int:
        """The index of the first segment from START on that MATCH accepts."""
        position, found = start, -1

        def seen() -> bool:
            nonlocal position, found
            end = len(self.segments)
            for i in range(position, end):
                if match(*self.segments[i]):
                    found = i
                    return True
            position = end
            return False

        wait_until(seen, what)
        return found

    def close(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        self._sock.close()


class Bench:
    """The injector and the capture in the kernel's namespace, aimed at one stack."""

    def __init__(self, lab: Lab, stack: Stack) -> None:
        self.stack = stack
        with lab.in_peer():
            self.attacker = Attacker(lab.peer_interface, lab.peer_address, stack.mac, stack.address)
        # It only sends: the smallest buffer keeps it from queueing what it overhears.
        self.attacker.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)
        self.wire = Wire(lab, stack.mac)
        self._tokens = itertools.count(0x5E000001)
        self.sentinels = 0

    def frame(self, seg: Segment, src_ip: str | None = None, src_mac: bytes | None = None) -> bytes:
        a = self.attacker
        return wire.encode_tcp(src_mac or a.peer_mac, a.our_mac, src_ip or a.peer_ip, a.our_ip, seg)

    def inject(self, seg: Segment, src_ip: str | None = None, src_mac: bytes | None = None) -> None:
        self.attacker.sock.send(self.frame(seg, src_ip, src_mac))

    def claim(self, ip: str, mac: bytes) -> None:
        """Have IP (at MAC) ask us for our address, so our stack learns it (RFC 826)."""
        request = wire.encode_arp(
            mac, wire.BROADCAST_MAC, wire.ARP_REQUEST, mac, ip, b"\0" * 6, self.stack.address
        )
        self.attacker.sock.send(request)
        wait_until(lambda: self.stack.arp_table().get(ip) == wire.mac_str(mac), f"{ip} learnt")

    def sync(self) -> int:
        """Send the sentinel and return the index of our RST for it."""
        token = next(self._tokens)
        self.sentinels += 1
        self.inject(Segment(SENTINEL_PORT, SENTINEL_PORT, 1, token, ACK, 1024))
        return self.wire.wait_for(
            lambda ip, s: s.rst and s.src_port == SENTINEL_PORT and s.seq == token,
            "our RST for the sentinel",
        )

    def close(self) -> None:
        self.wire.close()
        self.attacker.sock.close()


class KernelInjector:
    """Frames into the lab's kernel from our side of the veth, from our stack's address:
    a packet socket in the eut namespace, bound to receive nothing. Their source MAC is
    another, so the capture does not take them for our stack's; the kernel answers by
    its neighbour table, to our stack."""

    MAC = bytes.fromhex("020000000002")

    def __init__(self, lab: Lab, stack: Stack, peer_mac: bytes) -> None:
        with netns.enter(lab.endpoint_netns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.sock.bind((lab.endpoint_interface, 0))
        self._head = (self.MAC, peer_mac, stack.address, lab.peer_address)

    def inject(self, seg: Segment) -> None:
        self.sock.send(wire.encode_tcp(*self._head, seg))

    def close(self) -> None:
        self.sock.close()


def _connect_two(stack: Stack, lab: Lab) -> list[tuple[Socket, socket.socket]]:
    """Two connections of ours to the same kernel port."""
    server = kernel_server(lab, PORT)
    pairs = []
    try:
        for _ in range(2):
            accepted = in_thread(server.accept)
            s = stack.socket()
            s.settimeout(TIMEOUT)
            s.connect((lab.peer_address, PORT))
            peer, _ = accepted.result(TIMEOUT)
            peer.settimeout(TIMEOUT)
            pairs.append((s, peer))
    finally:
        server.close()
    return pairs


def _hello(s: Socket, peer: socket.socket) -> None:
    """A word each way, then quiet: RTT measured, nothing in flight either way (so
    no delayed ACK of ours is still to come)."""
    s.sendall(b"hello")
    assert recv_exactly(peer, 5) == b"hello"
    peer.sendall(b"hello")
    assert recv_exactly(s, 5) == b"hello"
    wait_until(lambda: _info(s).in_flight == 0, "our hello acknowledged")
    wait_until(lambda: _kernel_unacked(peer) == 0, "the kernel's hello acknowledged")


def _kernel_unacked(sock: socket.socket) -> int:
    """tcpi_unacked of a kernel socket (struct tcp_info, offset 24)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    return int(struct.unpack_from("I", info, 24)[0])


def _info(s: Socket) -> TcpInfo:
    info = s.info()
    assert info is not None
    return info


def _port(s: Socket) -> int:
    return int(s.getsockname()[1])


def _timers(s: Socket) -> dict[str, float]:
    """Every timer armed on S's connection, with its deadline."""
    connection = s.connection
    assert connection is not None
    return connection.timers()


def _moved(before: TcpInfo, after: TcpInfo, names: tuple[str, ...]) -> dict[str, int]:
    return {k: after.counters.get(k, 0) - before.counters.get(k, 0) for k in names}


def _delta(before: dict[str, int], after: dict[str, int], name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


def _assert_untouched(before: TcpInfo, after: TcpInfo, lab: Lab, nstat: dict[str, int]) -> None:
    """Nothing but the kernel's own segments reached a connection of ours that only
    receives. Those include the kernel's retransmissions (a tail-loss probe when our
    ACK was late, the engine busy with strays), each an old duplicate that is dropped
    as unacceptable and answered with an ACK, or not, by the rate limit."""
    assert _moved(before, after, DISTURBED) == dict.fromkeys(DISTURBED, 0)
    moved = _moved(before, after, ("drop_unacceptable", "oow_acks_suppressed"))
    retransmitted = _delta(nstat, lab.peer_nstat(), "TcpRetransSegs")
    assert moved["drop_unacceptable"] <= retransmitted, moved
    assert moved["oow_acks_suppressed"] <= moved["drop_unacceptable"], moved


class Download:
    """SIZE bytes from the kernel to our socket, held at half way until resume():
    strays sent before then meet a connection whose numbers stand still."""

    def __init__(self, sock: Socket, peer: socket.socket) -> None:
        self.sock = sock
        self.data = os.urandom(SIZE)
        self._moving = threading.Event()
        self._served = in_thread(self._serve, peer)
        self._received = in_thread(recv_all, sock)
        wait_until(lambda: self.received() >= HALF, "the first half of the download")

    def _serve(self, peer: socket.socket) -> None:
        peer.sendall(self.data[:HALF])
        if not self._moving.wait(TIMEOUT):
            raise TimeoutError("the download was never resumed")
        peer.sendall(self.data[HALF:])
        peer.shutdown(socket.SHUT_WR)

    def received(self) -> int:
        return _info(self.sock).counters.get("bytes_received", 0)

    def resume(self, wait: bool = True) -> None:
        self._moving.set()
        if wait:
            wait_until(lambda: self.received() > HALF, "the second half of the download")

    def finish(self) -> None:
        got = self._received.result(TIMEOUT)
        self._served.result(TIMEOUT)
        assert len(got) == SIZE
        assert sha256(got) == sha256(self.data)


# -- D-13: strays for other 4-tuples -----------------------------------------------------

# (name, flags, payload, window). A window of 0 would close a live connection's send
# window if a stray were taken for one of its segments.
STRAYS = (
    ("bare ACK", ACK, b"", 502),
    ("data", ACK | PSH, b"stray data" * 10, 502),
    ("ACK closing the window", ACK, b"", 0),
    ("FIN-ACK", FIN | ACK, b"", 502),
    ("FIN without ACK", FIN, b"", 502),
    ("RST", RST, b"", 0),
    ("RST-ACK", RST | ACK, b"", 0),
    ("SYN-ACK", SYN | ACK, b"", 502),
    ("SYN", SYN, b"", 502),
)

Reply = tuple[str, int, int, Flags, int, int]


def _owed(seg: Segment, src_ip: str, listening: bool) -> Reply | None:
    """The one reply RFC 9293 owes SEG, which matches no connection: §3.10.7.2 on a
    listener's port, §3.10.7.1 elsewhere. Never any to a RST."""
    if seg.rst:
        return None
    if seg.has_ack:
        return (src_ip, seg.dst_port, seg.src_port, RST, seg.ack, 0)
    if listening:
        return None  # LISTEN drops what has neither SYN nor ACK
    return (src_ip, seg.dst_port, seg.src_port, RST | ACK, 0, seg.end_seq)


def _as_reply(ip: str, s: Segment) -> Reply:
    return (ip, s.src_port, s.dst_port, s.flags, s.seq, s.ack if s.has_ack else 0)


def _fire_strays(
    bench: Bench, targets: list[tuple[str, bytes | None, int, int, bool, Socket]]
) -> tuple[Counter[Reply], int]:
    """Every stray at every target, numbered as the target's connection's next segment
    would be (so a stray wrongly taken for it would pass its checks, an RST at
    RCV.NXT included). Returns the replies owed, and how many strays reached no
    listener."""
    owed: Counter[Reply] = Counter()
    unknown = 0
    for src_ip, src_mac, src_port, dst_port, listening, numbers in targets:
        info = _info(numbers)
        for _, flags, payload, window in STRAYS:
            if listening and flags & SYN and not flags & ACK:
                continue  # a SYN would rightly open a connection
            ack = info.snd_nxt if flags & ACK else 0
            seg = Segment(src_port, dst_port, info.rcv_nxt, ack, flags, window, payload=payload)
            bench.inject(seg, src_ip, src_mac)
            unknown += not listening
            reply = _owed(seg, src_ip, listening)
            if reply is not None:
                owed[reply] += 1
    return owed, unknown


def test_d13_strays_for_other_4_tuples_are_reset_and_leave_live_connections_alone(
    veth: Lab,
) -> None:
    with _stack(veth) as stack:
        # Two connections of ours to the kernel's one port (one moving 4 MiB, one
        # quiet), and one the kernel made to our listener.
        (live, live_peer), (idle, idle_peer) = _connect_two(stack, veth)
        listener = stack.socket()
        listener.bind(("", LISTEN_PORT))
        listener.listen(4)
        listener.settimeout(TIMEOUT)
        client = kernel_socket(veth)
        connected = in_thread(client.connect, (stack.address, LISTEN_PORT))
        accepted, _ = listener.accept()
        connected.result(TIMEOUT)
        bench = Bench(veth, stack)
        try:
            for ip, mac in HOSTS:
                bench.claim(ip, mac)
            quiet = {idle: idle_peer, accepted: client}
            for ours, theirs in quiet.items():
                _hello(ours, theirs)
            live_port, idle_port = _port(live), _port(idle)
            client_port = client.getsockname()[1]
            peer_ip = veth.peer_address
            # Each connection's 4-tuple with one thing wrong: the kernel's port, our
            # port, or the address. The accepted connection's strays reach the listener.
            targets: list[tuple[str, bytes | None, int, int, bool, Socket]] = [
                (peer_ip, None, PORT + 1, live_port, False, live),
                (peer_ip, None, PORT, SPARE_PORT, False, live),
                (HOSTS[0][0], HOSTS[0][1], PORT, live_port, False, live),
                (peer_ip, None, PORT + 1, idle_port, False, idle),
                (HOSTS[1][0], HOSTS[1][1], PORT, idle_port, False, idle),
                (peer_ip, None, client_port + 1, LISTEN_PORT, True, accepted),
                (HOSTS[1][0], HOSTS[1][1], client_port, LISTEN_PORT, True, accepted),
            ]
            download = Download(live, live_peer)
            nstat = veth.peer_nstat()
            start = bench.sync() + 1
            live_before = _info(live)
            quiet_before = {ours: (_info(ours), _timers(ours)) for ours in quiet}
            stats_before, sentinels = stack.stats(), bench.sentinels
            rows_before = len(stack.connections())
            # Once with the transfer held at half way (exact numbers), once in full flow.
            owed, unknown = _fire_strays(bench, targets)
            download.resume()
            more, more_unknown = _fire_strays(bench, targets)
            owed += more
            unknown += more_unknown
            end = bench.sync()
            download.finish()
            stats, sentinels = stack.stats(), bench.sentinels - sentinels
            assert bench.wire.lost() == 0, "the capture lost frames"
            sent = bench.wire.segments[start:end]
            names = {
                (peer_ip, live_port, PORT): "live",
                (peer_ip, idle_port, PORT): "idle",
                (peer_ip, LISTEN_PORT, client_port): "accepted",
            }
            on: dict[str, list[Segment]] = {name: [] for name in names.values()}
            replies: Counter[Reply] = Counter()
            for ip, seg in sent:
                name = names.get((ip, seg.src_port, seg.dst_port))
                if name is None:
                    replies[_as_reply(ip, seg)] += 1
                else:
                    on[name].append(seg)
            # Exactly one RST for each stray that deserves one, none for a RST.
            assert replies == owed
            # The live connection only acknowledged its data; the quiet ones said nothing.
            assert {(seg.flags, len(seg.payload)) for seg in on["live"]} == {(ACK, 0)}
            assert on["idle"] == on["accepted"] == []
            assert _delta(stats_before, stats, "tcp_no_connection") == unknown + sentinels
            assert _delta(stats_before, stats, "resets_sent") == sum(owed.values()) + sentinels
            assert _delta(stats_before, stats, "drop_listen_rst") == 8
            # Nothing reached any connection's TCB, and no stray made one.
            _assert_untouched(live_before, _info(live), veth, nstat)
            assert live.state is State.CLOSE_WAIT  # the kernel's FIN, after the data
            for ours, (info, timers) in quiet_before.items():
                assert (_info(ours), _timers(ours)) == (info, timers)
            assert len(stack.connections()) == rows_before
            for ours, theirs in quiet.items():
                ours.sendall(b"still here")
                assert recv_exactly(theirs, 10) == b"still here"
                theirs.sendall(b"and here")
                assert recv_exactly(ours, 8) == b"and here"
        finally:
            bench.close()
            for sock in (live, idle, accepted, listener, live_peer, idle_peer, client):
                sock.close()


# -- floods for unknown 4-tuples -----------------------------------------------------

FLOOD = 1500  # of each kind, RSTs and ACKs
FLOOD_PORTS = range(2000, 3000)  # ours, none in use
ACK_BASE = 0x40000000


# Linux's answers to the same flood, sent to it from our side, come back to our stack
# as RSTs for 4-tuples it does not know; the kernel counts what it sent (TcpOutRsts).
def test_a10_flood_for_unknown_4_tuples_is_answered_one_rst_per_ack_as_linux_does(
    veth: Lab,
) -> None:
    with _stack(veth) as stack:
        live, live_peer = connect(stack, veth)
        bench = Bench(veth, stack)
        kernel = KernelInjector(veth, stack, bench.attacker.peer_mac)
        try:
            hosts = [(veth.peer_address, bench.attacker.peer_mac), *HOSTS]
            for ip, mac in HOSTS:
                bench.claim(ip, mac)
            rng = random.Random(1010)
            frames, owed = [], Counter[Reply]()
            for i in range(FLOOD):
                ip, mac = hosts[i % len(hosts)]
                rst = Segment(
                    rng.randrange(1024, 65536), rng.choice(FLOOD_PORTS), rng.randrange(1 << 32),
                    rng.randrange(1 << 32), RST | ACK if i % 2 else RST,
                )  # fmt: skip
                ack = Segment(
                    rng.randrange(1024, 65536), rng.choice(FLOOD_PORTS), rng.randrange(1 << 32),
                    ACK_BASE + i, ACK, 1024,
                )  # fmt: skip
                frames += [bench.frame(rst, ip, mac), bench.frame(ack, ip, mac)]
                owed[(ip, ack.dst_port, ack.src_port, RST, ack.ack, 0)] += 1
            download = Download(live, live_peer)
            nstat = veth.peer_nstat()
            start = bench.sync() + 1
            live_before = _info(live)
            stats_before, sentinels = stack.stats(), bench.sentinels
            rows_before, arp_before = len(stack.connections()), stack.arp_table()
            # The flood starts with the download held at half way and goes on as it
            # resumes: the engine meets the kernel's data among the strays.
            for i, frame in enumerate(frames):
                if i == len(frames) // 3:
                    download.resume(wait=False)
                bench.attacker.sock.send(frame)
            end = bench.sync()
            download.finish()
            stats, sentinels = stack.stats(), bench.sentinels - sentinels
            assert bench.wire.lost() == 0, "the capture lost frames"
            # Every frame reached the engine: a count short of the flood is not a limit.
            assert _delta(stats_before, stats, "link_rx_dropped") == 0
            replies = Counter(
                _as_reply(ip, s) for ip, s in bench.wire.segments[start:end]
                if s.src_port in FLOOD_PORTS
            )  # fmt: skip
            # Nothing for a RST; for every ACK exactly its RST, <SEQ=SEG.ACK>: no rate limit.
            assert replies == owed
            assert _delta(stats_before, stats, "tcp_no_connection") == 2 * FLOOD + sentinels
            assert _delta(stats_before, stats, "resets_sent") == FLOOD + sentinels
            # No state per frame: no connection, half-open or neighbour entry appeared.
            assert len(stack.connections()) == rows_before
            assert stack.arp_table().keys() == arp_before.keys()
            _assert_untouched(live_before, _info(live), veth, nstat)

            # Linux, the same way: a RST for every ACK, none for a RST, no limit (its
            # RSTs are not rate-limited; only ICMP errors are, icmp_ratelimit). Its
            # RSTs come to us, for 4-tuples we do not know: we must stay silent.
            nstat = veth.peer_nstat()
            start = bench.sync() + 1
            ours = stack.stats()
            for i in range(FLOOD):
                sport, dport = 1000 + i % 1000, 3000 + i % 1000
                where = rng.randrange(1 << 32)
                kernel.inject(Segment(sport, dport, where, 0, RST))
                kernel.inject(Segment(sport, dport, where, ACK_BASE + i, ACK, 1024))

            def kernel_count(name: str) -> int:
                return _delta(nstat, veth.peer_nstat(), name)

            wait_until(lambda: kernel_count("TcpInSegs") >= 2 * FLOOD, "the kernel's input")
            wait_until(
                lambda: _delta(ours, stack.stats(), "tcp_no_connection") >= FLOOD,
                "the kernel's RSTs to reach us",
            )
            end = bench.sync()
            assert kernel_count("TcpOutRsts") == FLOOD
            answered = [s for _, s in bench.wire.segments[start:end] if 1000 <= s.src_port < 2000]
            assert not answered
        finally:
            kernel.close()
            bench.close()
            live.close()
            live_peer.close()


# -- ACK acceptability ---------------------------------------------------------------

PART = 200  # octets of the kernel's data that each forged segment carries
RECEIVING = (State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2)
FIN_ACKED = {State.FIN_WAIT_1: State.FIN_WAIT_2, State.CLOSING: State.TIME_WAIT}


@dataclass(frozen=True)
class Shot:
    """A forged segment of the kernel's, at RCV.NXT, whose ACK field is `ack(info,
    MAX.SND.WND)`; `challenged` when RFC 5961 §5.2 puts it outside
    [SND.UNA - MAX.SND.WND, SND.NXT]. It applies with at least `in_flight` octets of
    ours unacknowledged."""

    name: str
    challenged: bool
    ack: Callable[[TcpInfo, int], int]
    in_flight: int = 0


SHOTS = (
    Shot("SND.UNA - MAX.SND.WND - 1", True, lambda i, w: seq.add(i.snd_una, -w - 1)),
    Shot("SND.NXT + 1", True, lambda i, w: seq.add(i.snd_nxt, 1)),
    # The edge itself is in. Linux is stricter when it has sent less than its peer's
    # largest window: it bounds by min(MAX.SND.WND, bytes acked) (tcp_ack(), "do not
    # accept ACK for bytes we never sent"), and would challenge this one.
    Shot("SND.UNA - MAX.SND.WND", False, lambda i, w: seq.add(i.snd_una, -w)),
    Shot("SND.UNA - 1", False, lambda i, w: seq.add(i.snd_una, -1)),
    Shot("SND.UNA", False, lambda i, w: i.snd_una),
    Shot("SND.UNA + 1000", False, lambda i, w: seq.add(i.snd_una, 1000), in_flight=1001),
    Shot("SND.NXT", False, lambda i, w: i.snd_nxt, in_flight=1),
)


class Hold:
    """While on, every segment the kernel sends on one connection is lost before our
    core sees it: our data and FIN stay unacknowledged though the kernel has them,
    and the kernel's data waits. So a forged ACK or forged data can be true, and taking
    it leaves the connection whole. The forgeries carry no timestamp option, which is
    how this tells them apart; we, like Linux, do not insist on one (RFC 7323 §3.2's
    SHOULD), and without one PAWS does not judge them."""

    def __init__(self, stack: Stack, port: int) -> None:
        self.on = False
        self.port = port
        self.data_end: int | None = None  # where the kernel's data we lost ends
        self.hook = stack.add_hook(Hook("in", DROP, where=self._match, times=None, name="hold"))

    def _match(self, ctx: HookContext) -> bool:
        s = ctx.segment
        if not (self.on and s.dst_port == self.port and s.options.timestamps is not None):
            return False
        if s.payload:
            self.data_end = seq.add(s.seq, len(s.payload))
        return True


def _unacked(s: Socket, peer: socket.socket) -> None:
    """3000 octets of ours that the kernel reads but whose ACKs never reach us."""
    data = os.urandom(3000)
    s.sendall(data)
    assert recv_exactly(peer, len(data)) == data


def _outcome(
    bench: Bench, s: Socket, shot: Shot, payload: bytes
) -> tuple[dict[str, object], dict[str, object]]:
    """Fire SHOT; what happened, and what RFC 9293 §3.10.7.4 with RFC 5961 §5 says."""
    port = _port(s)
    connection = s.connection
    assert connection is not None
    before = _info(s)
    ack = shot.ack(before, connection.max_snd_wnd)
    window = before.snd_wnd >> before.snd_wscale  # as it is: no window update to judge
    forged = Segment(PORT, port, before.rcv_nxt, ack, ACK | PSH, window, payload=payload)
    start = bench.sync() + 1
    bench.inject(forged)
    end = bench.sync()
    after = _info(s)
    acks = [
        (x.seq, x.ack)
        for _, x in bench.wire.segments[start:end]
        if x.src_port == port and x.flags == ACK and not x.payload
    ]
    challenge = (before.snd_nxt, before.rcv_nxt)
    taken = seq.sub(after.rcv_nxt, before.rcv_nxt)
    if taken and challenge not in acks:
        # Its ACK may wait for the delayed-ACK timer, after the sentinel's RST.
        bench.wire.wait_for(
            lambda _, x: x.src_port == port and x.has_ack and x.ack == after.rcv_nxt,
            f"our ACK of the data forged with ACK {shot.name}",
            start,
        )
        answer = "ACK of the data"
    elif acks == [challenge]:
        answer = "challenge ACK"
    else:
        answer = f"ACKs {acks}" if acks else "nothing"
    una = "unchanged" if after.snd_una == before.snd_una else "SEG.ACK"
    if after.snd_una not in (before.snd_una, ack):
        una = f"moved by {seq.sub(after.snd_una, before.snd_una)}"
    happened = {
        "text": {0: "dropped", len(payload): "taken"}.get(taken, f"{taken} octets"),
        "SND.UNA": una,
        "answer": answer,
        "challenge_acks": _moved(before, after, ("challenge_acks",))["challenge_acks"],
        "state": after.state.name,
    }
    advances = not shot.challenged and seq.gt(ack, before.snd_una)
    takes = not shot.challenged and before.state in RECEIVING
    state = before.state
    if advances and ack == before.snd_nxt:
        # It acknowledges our FIN, which the kernel did receive.
        state = FIN_ACKED.get(state, state)
    owed = {
        # CLOSE-WAIT and CLOSING ignore the text: the kernel's FIN came before it.
        "text": "taken" if takes else "dropped",
        "SND.UNA": "SEG.ACK" if advances else "unchanged",
        "answer": "challenge ACK" if shot.challenged else "ACK of the data" if takes else "nothing",
        "challenge_acks": int(shot.challenged),
        "state": state.name,
    }
    return happened, owed


# The FIN our hook loses to reach CLOSING never reaches the wire, so the trace checker
# sees the ACKs after it start one beyond the highest sequence number sent.
@pytest.mark.trace_allows("I-3", state=State.CLOSING)
@pytest.mark.parametrize(
    "state",
    [State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSE_WAIT, State.CLOSING],
    ids=lambda s: s.name,
)
def test_a04_ack_acceptability_in_each_state(veth: Lab, state: State) -> None:
    # Every challenge ACK must be seen here; their rate limit is A-05's.
    with _stack(veth, config=TcpConfig(msl=MSL, invalid_ack_interval=0.0)) as stack:
        s, peer = connect(stack, veth)
        bench = Bench(veth, stack)
        hold = Hold(stack, _port(s))
        try:
            _hello(s, peer)
            if state is State.ESTABLISHED:
                hold.on = True
                _unacked(s, peer)
            elif state is State.FIN_WAIT_1:
                hold.on = True
                _unacked(s, peer)
                s.shutdown(socket.SHUT_WR)
                assert peer.recv(1) == b""
            elif state is State.FIN_WAIT_2:
                s.shutdown(socket.SHUT_WR)
                wait_until(lambda: s.state is State.FIN_WAIT_2, "FIN_WAIT_2")
                hold.on = True
            elif state is State.CLOSE_WAIT:
                peer.shutdown(socket.SHUT_WR)
                wait_until(lambda: s.state is State.CLOSE_WAIT, "CLOSE_WAIT")
                hold.on = True
                _unacked(s, peer)
            else:
                # Our FIN is lost until the kernel's has crossed it; then the hold
                # starts, and our FIN, sent again, is the kernel's last word from us.
                fin_lost = True
                lose = Hook("out", DROP, where=lambda c: fin_lost and c.segment.fin, times=None)
                stack.add_hook(lose)
                s.shutdown(socket.SHUT_WR)
                peer.shutdown(socket.SHUT_WR)
                wait_until(lambda: s.state is State.CLOSING, "CLOSING")
                hold.on = True
                fin_lost = False
                kernel = (veth.peer_address, PORT), (stack.address, _port(s))
                wait_until(
                    lambda: kernel_state(veth, *kernel) in ("TIME_WAIT", "CLOSING"),
                    "our FIN, sent again, at the kernel",
                )
            assert s.state is state
            start = _info(s)
            plan = [shot for shot in SHOTS if start.in_flight >= shot.in_flight]
            chunk = b""
            if state in RECEIVING:
                # The kernel's next data, sent and held: each forgery carries the next
                # part of it, so what we take is what the kernel sent.
                chunk = os.urandom(PART * sum(not shot.challenged for shot in plan))
                peer.sendall(chunk)
                wait_until(
                    lambda: hold.data_end == seq.add(start.rcv_nxt, len(chunk)),
                    "the kernel's data, held",
                )
            happened, owed = [], []
            for shot in plan:
                at = seq.sub(_info(s).rcv_nxt, start.rcv_nxt)
                payload = chunk[at : at + PART] if chunk else os.urandom(PART)
                outcome, rule = _outcome(bench, s, shot, payload)
                happened.append((shot.name, outcome))
                owed.append((shot.name, rule))
            assert happened == owed
            hold.on = False
            # The connection lives on, its byte streams intact.
            if state is State.ESTABLISHED:
                peer.sendall(b"after")
                assert recv_exactly(s, len(chunk) + 5) == chunk + b"after"
                s.sendall(b"ours after")
                assert recv_exactly(peer, 10) == b"ours after"
            elif state in (State.FIN_WAIT_1, State.FIN_WAIT_2):
                peer.sendall(b"after")
                peer.shutdown(socket.SHUT_WR)
                assert recv_all(s) == chunk + b"after"
                wait_until(lambda: s.state is State.TIME_WAIT, "TIME_WAIT")
            elif state is State.CLOSE_WAIT:
                s.sendall(b"after")
                assert recv_exactly(peer, 5) == b"after"
                assert recv_all(s) == b""
                s.close()
                assert peer.recv(1) == b""
                wait_until(lambda: s.state is State.CLOSED, "CLOSED")
            else:
                assert s.state is State.TIME_WAIT
        finally:
            bench.close()
            s.close()
            peer.close()


# -- rate limits on challenge and duplicate ACKs -----------------------------------
#
# Ours (README "Hostile input"): each connection sends at most one challenge ACK, or
# ACK for an out-of-window segment without data, per invalid_ack_interval (0.5 s,
# Linux's tcp_invalid_ratelimit); then the challenge ACKs that pass it draw on a
# budget for the whole stack of StackConfig.challenge_acks_per_second (1000), a
# fixed count per second of the monotonic clock.
#
# Linux: the same per-socket interval first (commit 083ae308280d); then, since 6.0 (commit
# 79e3602caa6f), a budget per network namespace, net.ipv4.tcp_challenge_ack_limit,
# whose default of INT_MAX turns it off. Set, its count for each second is drawn at
# random from [limit/2, 3*limit/2) (commit 75ff39ccc1bd, after CVE-2016-5696). Where
# ours differs: our budget is on by default and its count is fixed, as Linux's was
# before 4.7 (host-wide then, 100 a second). A shared, predictable count is the
# CVE-2016-5696 side channel: whoever can spend the budget (with the 0.5 s interval,
# about 500 connections of their own) learns from the challenge ACKs they get whether
# a spoofed segment of theirs fell in another connection's window. The plan's A-05
# asks for no such global counter.

ROUNDS = 25


def _challenge_burst(
    bench: Bench, socks: list[Socket], kinds: tuple[str, ...]
) -> tuple[dict[int, list[tuple[int, int]]], float, float]:
    """ROUNDS of blind segments at each connection: an RST and a SYN in the window
    but not at RCV.NXT (each owed a challenge ACK) and an ACK far outside it (owed a
    duplicate ACK). Returns each connection's pure ACKs, and when it began and ended."""
    infos = {_port(s): _info(s) for s in socks}
    segs = []
    for _ in range(ROUNDS):
        for port, info in infos.items():
            if "rst" in kinds:
                segs.append(Segment(PORT, port, seq.add(info.rcv_nxt, 14487), 0, RST))
            if "syn" in kinds:
                where = seq.add(info.rcv_nxt, 28963)
                segs.append(Segment(PORT, port, where, 0, SYN, 64240, Options(mss=1460)))
            if "oow" in kinds:
                where = seq.add(info.rcv_nxt, 1 << 30)
                segs.append(Segment(PORT, port, where, info.snd_nxt, ACK, 502))
    frames = [bench.frame(seg) for seg in segs]
    start = bench.sync() + 1
    began = time.monotonic()
    for frame in frames:
        bench.attacker.sock.send(frame)
    end = bench.sync()
    ended = time.monotonic()
    acks: dict[int, list[tuple[int, int]]] = {port: [] for port in infos}
    for _, x in bench.wire.segments[start:end]:
        if x.src_port in acks:
            assert x.flags == ACK and not x.payload, f"not a challenge or duplicate ACK: {x}"
            acks[x.src_port].append((x.seq, x.ack))
    for port, info in infos.items():
        assert set(acks[port]) <= {(info.snd_nxt, info.rcv_nxt)}
    return acks, began, ended


def _kernel_rsts(
    lab: Lab, kernel: KernelInjector, socks: list[Socket]
) -> tuple[dict[str, int], float]:
    """The same blind RSTs, ROUNDS at each of the kernel's sockets of SOCKS (whose
    RCV.NXT is our SND.NXT); the kernel's counters after, and the seconds it took."""
    nstat = lab.peer_nstat()
    began = time.monotonic()
    for _ in range(ROUNDS):
        for s in socks:
            info = _info(s)
            kernel.inject(Segment(_port(s), PORT, seq.add(info.snd_nxt, 14487), 0, RST))
    # An ACK to a closed port after them: its RST comes once they are all handled.
    kernel.inject(Segment(SPARE_PORT, SPARE_PORT, 1, 1, ACK, 1024))

    def handled() -> bool:
        now = lab.peer_nstat()
        return _delta(nstat, now, "TcpInSegs") > ROUNDS * len(socks) and bool(
            _delta(nstat, now, "TcpOutRsts")
        )

    wait_until(handled, "the kernel's RST for the marker")
    elapsed = time.monotonic() - began
    after = lab.peer_nstat()
    return {k: _delta(nstat, after, k) for k in after}, elapsed


def _peer_sysctl(lab: Lab, name: str, value: str) -> None:
    with lab.in_peer(), open("/proc/sys/net/ipv4/" + name, "w") as f:
        f.write(value)  # /proc/sys/net follows the calling thread's namespace


# The kernel's challenge ACKs to the blind RSTs of the Linux half are provoked on purpose.
@pytest.mark.nstat_allows("TcpExtTCPChallengeACK")
def test_a05_challenge_and_duplicate_acks_are_limited_per_connection_as_on_linux(
    veth: Lab,
) -> None:
    with _stack(veth) as stack:
        pairs = _connect_two(stack, veth)
        socks = [s for s, _ in pairs]
        bench = Bench(veth, stack)
        kernel = KernelInjector(veth, stack, bench.attacker.peer_mac)
        try:
            for s, peer in pairs:
                _hello(s, peer)
            before = {_port(s): _info(s) for s in socks}
            acks, began, ended = _challenge_burst(bench, socks, ("rst", "syn", "oow"))
            # One ACK per interval per connection, whatever the mix; both connections get
            # theirs, the one's flood taking nothing from the other's (1000 per second
            # stack-wide is far off).
            allowed = 1 + int((ended - began) / TcpConfig().invalid_ack_interval)
            for s in socks:
                n = len(acks[_port(s)])
                assert 1 <= n <= allowed, f"{n} ACKs on one connection in {ended - began:.3f} s"
                moved = _moved(
                    before[_port(s)], _info(s),
                    ("challenge_acks", "challenge_acks_suppressed", "oow_acks_suppressed",
                     "drop_unacceptable"),
                )  # fmt: skip
                assert moved["challenge_acks"] + moved["challenge_acks_suppressed"] == 2 * ROUNDS
                assert moved["drop_unacceptable"] == ROUNDS
                sent_oow = moved["drop_unacceptable"] - moved["oow_acks_suppressed"]
                assert moved["challenge_acks"] + sent_oow == n
                assert s.state is State.ESTABLISHED
            for s, peer in pairs:
                _hello(s, peer)

            # Linux (tcp_invalid_ratelimit pinned at 500 ms): one per socket as well.
            counts, elapsed = _kernel_rsts(veth, kernel, socks)
            challenged = counts.get("TcpExtTCPChallengeACK", 0)
            skipped = counts.get("TcpExtTCPACKSkippedChallenge", 0)
            assert 2 <= challenged <= 2 * (1 + int(elapsed / 0.5))
            assert challenged + skipped == 2 * ROUNDS
            for s, peer in pairs:
                _hello(s, peer)
        finally:
            kernel.close()
            bench.close()
            for s, peer in pairs:
                s.close()
                peer.close()


# As above; and with Linux's global limit set to 1 and its per-socket one off, the
# kernel's challenge ACKs are what this provokes.
@pytest.mark.nstat_allows("TcpExtTCPChallengeACK")
def test_a05_the_stack_wide_challenge_budget_couples_connections_as_linuxs_limit_does(
    veth: Lab,
) -> None:
    # The per-connection interval off, the budget at 1 a second: what one connection's
    # challenge ACK spends, the other's goes without.
    with _stack(
        veth,
        config=TcpConfig(msl=MSL, invalid_ack_interval=0.0),
        limits=StackConfig(challenge_acks_per_second=1),
    ) as stack:
        pairs = _connect_two(stack, veth)
        socks = [s for s, _ in pairs]
        bench = Bench(veth, stack)
        kernel = KernelInjector(veth, stack, bench.attacker.peer_mac)
        try:
            for s, peer in pairs:
                _hello(s, peer)
            before = {_port(s): _info(s) for s in socks}
            acks, began, ended = _challenge_burst(bench, socks, ("rst",))
            # The budget renews with each second of the monotonic clock, the engine's.
            seconds = int(ended) - int(began) + 1
            total = sum(len(a) for a in acks.values())
            assert 1 <= total <= seconds, f"{total} challenge ACKs in {seconds} second(s)"
            moved = [
                _moved(before[_port(s)], _info(s), ("challenge_acks", "challenge_acks_suppressed"))
                for s in socks
            ]
            assert sum(m["challenge_acks"] for m in moved) == total
            assert sum(m["challenge_acks_suppressed"] for m in moved) == 2 * ROUNDS - total
            for s, peer in pairs:
                _hello(s, peer)

            # Linux with tcp_challenge_ack_limit = 1 (its random count is then exactly
            # 1) and tcp_invalid_ratelimit = 0. Its seconds are jiffies / HZ, not ours,
            # so a burst shorter than one spans at most two.
            _peer_sysctl(veth, "tcp_challenge_ack_limit", "1")
            _peer_sysctl(veth, "tcp_invalid_ratelimit", "0")
            counts, elapsed = _kernel_rsts(veth, kernel, socks)
            challenged = counts.get("TcpExtTCPChallengeACK", 0)
            assert counts.get("TcpExtTCPACKSkippedChallenge", 0) == 0
            assert 1 <= challenged <= int(elapsed) + 2
            for s, peer in pairs:
                _hello(s, peer)
        finally:
            kernel.close()
            bench.close()
            for s, peer in pairs:
                s.close()
                peer.close()
