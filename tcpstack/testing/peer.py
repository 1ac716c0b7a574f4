"""The scripted peer: a raw socket in a lab's peer namespace that speaks for 198.18.0.1.

The peer namespace's kernel keeps its address, so it still answers ARP, but an
nftables rule drops every TCP segment from the device under test before the kernel's
TCP sees it: otherwise it would answer the script's connections, which it knows
nothing of, with RSTs. An AF_PACKET socket taps the link before that rule (packet
taps run ahead of the netfilter hooks), so the script sees everything the device
under test sends, stamped with the kernel's receive time, and injects whole
Ethernet frames, which lets a script break any field of any layer.
"""

from __future__ import annotations

import queue
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

from tcpstack import netns, wire
from tcpstack.capture import Capture, CapturedFrame
from tcpstack.lab import Lab

SCRIPT_TABLE = "tcpstack_script"
ETH_P_ALL = 0x0003
_ETH = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")


@dataclass(frozen=True, slots=True)
class Craft:
    """Ways to break an injected frame on purpose; the defaults build a correct one."""

    tcp_checksum: int | None = None  # put this value in the checksum field
    bad_tcp_checksum: bool = False  # the right checksum plus one
    reserved: int = 0  # the four bits between data offset and flags
    data_offset: int | None = None  # in 32-bit words, instead of the true one
    ip_version: int = 4
    ihl: int | None = None  # in 32-bit words, instead of the true one
    ip_options: bytes = b""
    ip_total_length: int | None = None
    bad_ip_checksum: bool = False
    ip_flags_fragment: int = 0x4000  # DF, as Linux sends
    ttl: int = 64
    trailing: bytes = b""  # bytes after the IP packet, inside the frame
    # Addresses other than the peer's and the device's own (a broadcast or multicast
    # destination, a forged source); the TCP checksum is computed for them.
    ip_source: str | None = None
    ip_destination: str | None = None
    mac_destination: bytes | None = None


def craft_text(craft: Craft) -> str:
    """What `craft` changes from a correct frame, for a transcript."""
    default = Craft()
    return ", ".join(
        f"{name}={getattr(craft, name)!r}"
        for name in craft.__dataclass_fields__
        if getattr(craft, name) != getattr(default, name)
    )


@dataclass(frozen=True, slots=True)
class Received:
    """A frame the device under test sent, decoded."""

    time: float  # the kernel's receive time, on time.monotonic()'s clock
    packet: wire.TcpPacket
    frame: bytes
    checksum_ok: bool  # complete and right, or left to offload (TP_STATUS_CSUMNOTREADY)


def build_frame(
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: str,
    dst_ip: str,
    *,
    src_port: int,
    dst_port: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    urgent: int = 0,
    options: bytes = b"",
    payload: bytes = b"",
    craft: Craft = Craft(),
) -> bytes:
    """An Ethernet/IPv4/TCP frame, correct unless `craft` says otherwise."""
    src_ip = craft.ip_source or src_ip
    dst_ip = craft.ip_destination or dst_ip
    dst_mac = craft.mac_destination or dst_mac
    offset = 5 + len(options) // 4 if craft.data_offset is None else craft.data_offset
    src, dst = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
    tcp_len = _TCP.size + len(options) + len(payload)
    header = _TCP.pack(
        src_port,
        dst_port,
        seq & 0xFFFFFFFF,
        ack & 0xFFFFFFFF,
        (offset << 4) | (craft.reserved & 0xF),
        flags & 0xFF,
        window & 0xFFFF,
        0,
        urgent & 0xFFFF,
    )
    segment = header + options + payload
    pseudo = src + dst + struct.pack("!BBH", 0, wire.PROTO_TCP, tcp_len)
    checksum = wire.internet_checksum(pseudo + segment)
    if craft.tcp_checksum is not None:
        checksum = craft.tcp_checksum
    elif craft.bad_tcp_checksum:
        checksum = (checksum + 1) & 0xFFFF
    segment = segment[:16] + struct.pack("!H", checksum) + segment[18:]
    ip_opts = craft.ip_options + bytes(-len(craft.ip_options) % 4)
    ihl = 5 + len(ip_opts) // 4 if craft.ihl is None else craft.ihl
    total = 20 + len(ip_opts) + tcp_len if craft.ip_total_length is None else craft.ip_total_length
    ip = _IPV4.pack(
        (craft.ip_version << 4) | (ihl & 0xF),
        0,
        total & 0xFFFF,
        0,
        craft.ip_flags_fragment,
        craft.ttl,
        wire.PROTO_TCP,
        0,
        src,
        dst,
    )
    ip_checksum = wire.internet_checksum(ip + ip_opts)
    if craft.bad_ip_checksum:
        ip_checksum = (ip_checksum + 1) & 0xFFFF
    ip = ip[:10] + struct.pack("!H", ip_checksum) + ip[12:]
    return _ETH.pack(dst_mac, src_mac, 0x0800) + ip + ip_opts + segment + craft.trailing


def build_icmp_error(
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: str,
    dst_ip: str,
    *,
    icmp_type: int,
    code: int,
    quote: bytes,
    rest: int = 0,
    ttl: int = 64,
) -> bytes:
    """An Ethernet/IPv4/ICMP error frame carrying `quote` (the offending packet's IP
    header and the start of its payload); `rest` is the header's second word (the
    next-hop MTU of a "fragmentation needed", the pointer of a parameter problem)."""
    icmp = struct.pack("!BBHI", icmp_type & 0xFF, code & 0xFF, 0, rest & 0xFFFFFFFF) + quote
    icmp = icmp[:2] + struct.pack("!H", wire.internet_checksum(icmp)) + icmp[4:]
    ip = _IPV4.pack(
        0x45,
        0,
        20 + len(icmp),
        0,
        0,
        ttl,
        wire.PROTO_ICMP,
        0,
        socket.inet_aton(src_ip),
        socket.inet_aton(dst_ip),
    )
    ip = ip[:10] + struct.pack("!H", wire.internet_checksum(ip)) + ip[12:]
    return _ETH.pack(dst_mac, src_mac, 0x0800) + ip + icmp


def quote_of(frame: bytes, octets: int = 8) -> bytes:
    """What an ICMP error quotes of an Ethernet/IPv4 frame: its IP header (options
    included) and the first `octets` of its payload (RFC 792 asks for 8)."""
    ihl = (frame[_ETH.size] & 0x0F) * 4
    return frame[_ETH.size : _ETH.size + ihl + octets]


class ScriptedPeer:
    """Stands in for the kernel peer of `lab`: see the module docstring."""

    def __init__(self, lab: Lab, *, arp_timeout: float = 5.0) -> None:
        self.lab = lab
        self.address = lab.peer_address
        self.dut_address = lab.endpoint_address
        self._frames: queue.Queue[CapturedFrame] = queue.Queue()
        lab.nft(
            f"table inet {SCRIPT_TABLE} {{\n"
            "  chain input {\n"
            "    type filter hook input priority -300; policy accept;\n"
            f"    ip saddr {self.dut_address} meta l4proto tcp drop\n"
            "  }\n"
            "}\n"
        )
        with netns.enter(lab.peer_netns):
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            with IPRoute() as ipr:
                (link,) = ipr.link("get", ifname=lab.peer_interface)
        try:
            self._sock.bind((lab.peer_interface, 0))
            self.mac = wire.parse_mac(str(link.get("IFLA_ADDRESS")))
            self._capture = Capture(lab.peer_interface, lab.peer_netns, self._tap)
            self._capture.start()
            self.dut_mac = self._resolve(arp_timeout)
        except BaseException:
            self.close()
            raise

    def _tap(self, captured: CapturedFrame) -> None:
        if not captured.outgoing:
            self._frames.put(captured)

    def _resolve(self, timeout: float) -> bytes:
        """The device under test's MAC, asked for as the kernel would ask."""
        request = wire.encode_arp(
            self.mac, wire.BROADCAST_MAC, 1, self.mac, self.address, bytes(6), self.dut_address
        )
        deadline = _now() + timeout
        while _now() < deadline:
            self._sock.send(request)
            resend = min(deadline, _now() + 0.5)
            while (left := resend - _now()) > 0:
                try:
                    captured = self._frames.get(timeout=left)
                except queue.Empty:
                    break
                try:
                    packet = wire.decode_frame(captured.frame, checksum_trusted=True)
                except wire.DecodeError:
                    continue
                if isinstance(packet, wire.ArpPacket) and packet.sender_ip == self.dut_address:
                    return packet.sender_mac
        raise TimeoutError(f"{self.dut_address} did not answer ARP within {timeout:g} s")

    def send(self, frame: bytes) -> None:
        self._sock.send(frame)

    def frame(self, **fields: Any) -> bytes:
        """build_frame() from this peer to the device under test."""
        return build_frame(self.mac, self.dut_mac, self.address, self.dut_address, **fields)

    def icmp_error(self, icmp_type: int, code: int, quote: bytes, *, rest: int = 0) -> bytes:
        """build_icmp_error() from this peer to the device under test."""
        return build_icmp_error(
            self.mac,
            self.dut_mac,
            self.address,
            self.dut_address,
            icmp_type=icmp_type,
            code=code,
            quote=quote,
            rest=rest,
        )

    def receive(self, timeout: float) -> Received | None:
        """The next TCP segment the device under test sent, or None after `timeout`."""
        deadline = _now() + timeout
        while (left := deadline - _now()) > 0:
            try:
                captured = self._frames.get(timeout=left)
            except queue.Empty:
                return None
            try:
                packet = wire.decode_frame(captured.frame, checksum_trusted=True)
            except wire.DecodeError:
                continue
            if not isinstance(packet, wire.TcpPacket):
                continue
            # A segment to the peer from another address than the device's (an
            # answer from a broadcast one, say) is still one for the script to see.
            if packet.src_ip != self.dut_address and packet.dst_ip != self.address:
                continue
            ok = True
            if not captured.checksum_partial:
                try:
                    wire.decode_frame(captured.frame)
                except wire.DecodeError:
                    ok = False
            return Received(captured.time, packet, captured.frame, ok)
        return None

    def close(self) -> None:
        if hasattr(self, "_capture"):
            self._capture.stop()
        self._sock.close()


_now = time.monotonic
