"""A scripted peer at the far end of a MemoryLink, for engine tests without root."""

from __future__ import annotations

import concurrent.futures
import select
import time
from collections.abc import Callable
from typing import Protocol

from tcpstack import TcpConfig, wire
from tcpstack.config import StackConfig
from tcpstack.core.segment import Flags, Options, Segment
from tcpstack.isn import fixed_isn
from tcpstack.link import MemoryLink
from tcpstack.stack import Socket, Stack
from tcpstack.trace import Recorder

PEER_MAC = bytes.fromhex("02aa00000001")
OUR_MAC = "02:bb:00:00:00:02"
PEER_IP = "198.18.0.1"
OUR_IP = "198.18.0.2"
TIMEOUT = 5.0
# make_pair's, unless told: TIME-WAIT of 400 ms; RTOs of a second (SYN) and 200 ms,
# long enough that a busy machine does not see retransmissions a test did not ask for.
DEFAULT_CONFIG = TcpConfig(msl=0.2)
OUR_ISN = 1000  # every connection's, from make_pair's fixed_isn
PEER_ISN = 7000  # the SYN-ACK's in open_to_peer
PEER_PORT = 80
PEER_OPTIONS = Options(mss=1400)  # the SYN-ACK's in open_to_peer, unless told

pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)


class Peer:
    """The far end of the link: sends frames and waits for the endpoint's replies."""

    def __init__(self, link: MemoryLink) -> None:
        self.link = link
        self.our_mac = wire.parse_mac(OUR_MAC)
        self._backlog: list[wire.Decoded] = []

    def send(self, frame: bytes) -> None:
        self.link.send(frame)

    def send_tcp(self, seg: Segment, *, src_ip: str = PEER_IP) -> None:
        self.send(wire.encode_tcp(PEER_MAC, self.our_mac, src_ip, OUR_IP, seg))

    def receive(self, want: Callable[[wire.Decoded], bool], what: str) -> wire.Decoded:
        """The next frame the endpoint sent that `want` accepts; those before it that
        it does not want are passed over, those after it are kept for later."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            while self._backlog:
                packet = self._backlog.pop(0)
                if want(packet):
                    return packet
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {TIMEOUT}s")
            select.select([self.link], [], [], remaining)
            self._backlog += [wire.decode_frame(f) for f, _ in self.link.recv_batch()]

    def tcp(self) -> Segment:
        packet = self.receive(lambda p: isinstance(p, wire.TcpPacket), "TCP segment")
        assert isinstance(packet, wire.TcpPacket)
        assert (packet.src_mac, packet.dst_mac) == (self.our_mac, PEER_MAC)
        return packet.segment

    def answer_arp(self) -> None:
        request = self.receive(lambda p: isinstance(p, wire.ArpPacket), "ARP request")
        assert isinstance(request, wire.ArpPacket) and request.op == 1
        assert request.target_ip == PEER_IP and request.sender_ip == OUR_IP
        self.send(
            wire.encode_arp(PEER_MAC, self.our_mac, 2, PEER_MAC, PEER_IP, self.our_mac, OUR_IP)
        )

    def ping(self, sequence: int) -> wire.IcmpEcho:
        self.send(
            wire.encode_icmp_echo(
                PEER_MAC,
                self.our_mac,
                PEER_IP,
                OUR_IP,
                type=8,
                ident=77,
                sequence=sequence,
                payload=b"are you there",
            )
        )
        reply = self.receive(lambda p: isinstance(p, wire.IcmpEcho), "echo reply")
        assert isinstance(reply, wire.IcmpEcho)
        return reply


def make_pair(
    config: TcpConfig | None = None, limits: StackConfig | None = None
) -> tuple[Stack, Peer]:
    ours, theirs = MemoryLink.pair()
    stack = Stack(
        ours,
        f"{OUR_IP}/24",
        mac=OUR_MAC,
        config=config or DEFAULT_CONFIG,
        limits=limits,
        isn=fixed_isn(OUR_ISN),
    )
    return stack, Peer(theirs)


class MakeRecordedPair(Protocol):
    """The make_recorded_pair fixture: (stack, peer, recorder subscribed from the start)."""

    def __call__(self, config: TcpConfig | None = None) -> tuple[Stack, Peer, Recorder]: ...


def start_open_to_peer(
    stack: Stack, peer: Peer, *, sock: Socket | None = None, port: int = PEER_PORT
) -> tuple[Socket, concurrent.futures.Future[None], Segment]:
    """Our socket (a new one unless given) connecting to the peer's `port` on `pool`:
    (socket, the connect() under way, our SYN). The peer has answered our ARP request;
    the SYN waits for the caller's answer."""
    if sock is None:
        sock = stack.socket()
    sock.settimeout(TIMEOUT)
    connecting = pool.submit(sock.connect, (PEER_IP, port))
    peer.answer_arp()
    return sock, connecting, peer.tcp()


def open_to_peer(
    stack: Stack,
    peer: Peer,
    *,
    sock: Socket | None = None,
    port: int = PEER_PORT,
    options: Options = PEER_OPTIONS,
    window: int = 65535,
) -> tuple[Socket, Segment, Segment]:
    """Our socket connected to the peer's `port`: (socket, our SYN, the peer's SYN-ACK,
    with PEER_ISN, `window` and `options`). Our handshake ACK is left for the caller to
    read or pass over."""
    sock, connecting, syn = start_open_to_peer(stack, peer, sock=sock, port=port)
    syn_ack = Segment(
        port, syn.src_port, PEER_ISN, syn.seq + 1, Flags.SYN | Flags.ACK, window, options
    )
    peer.send_tcp(syn_ack)
    connecting.result(TIMEOUT)
    return sock, syn, syn_ack
