"""Frame codec: Ethernet II carrying ARP, IPv4/TCP and IPv4/ICMP, to and from bytes.

Decoding turns one received frame into a ``TcpPacket``, ``ArpPacket``, ``IcmpEcho`` or
``IcmpError`` (an error quoting a TCP segment we sent), or raises ``DecodeError``
whose ``reason`` names the drop counter to bump. Encoding builds complete frames,
checksums included, from the same values.

This runs once per segment in both directions, so it is written with precompiled
``struct.Struct`` objects and whole-buffer integer arithmetic for checksums. Scapy is
only the reference the tests compare against and a pretty-printer for traces
(``to_scapy``); nothing here calls it on the hot path.

Limits, all deliberate: no VLAN tags, no IPv6, no IP options (skipped unread), no
IP fragments (dropped; the peer is a local kernel that does path-MTU discovery), no
ICMP but echo request/reply and the errors that quote a TCP segment (destination
unreachable, source quench, time exceeded, parameter problem). Frames may be longer
than the IP total length (Ethernet minimum-size padding) and longer than the MTU
(GSO super-frames a raw socket sees on a veth end); both are accepted. Encoders do
not pad frames to the 60-byte Ethernet minimum; veth and TAP do not need it.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any

from tcpstack.core.segment import NO_OPTIONS, Flags, Options, Segment

__all__ = [
    "BROADCAST_MAC",
    "DROP_REASONS",
    "ArpPacket",
    "DecodeError",
    "Decoded",
    "IcmpEcho",
    "IcmpError",
    "TcpPacket",
    "decode_frame",
    "encode_arp",
    "encode_icmp_echo",
    "encode_tcp",
    "internet_checksum",
    "mac_str",
    "parse_mac",
    "to_scapy",
]

BROADCAST_MAC = b"\xff" * 6

# What decode_frame and internet_checksum read from: received bytes, a reused receive
# buffer, or a view into a packet ring.
Buffer = bytes | bytearray | memoryview

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
PROTO_ICMP = 1
PROTO_TCP = 6
ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMP_DEST_UNREACHABLE = 3
ICMP_SOURCE_QUENCH = 4
ICMP_TIME_EXCEEDED = 11
ICMP_PARAMETER_PROBLEM = 12
# The ICMP errors RFC 9293 §3.9.2.2 has TCP act on (or, for source quench, ignore).
_ICMP_ERRORS = frozenset(
    (ICMP_DEST_UNREACHABLE, ICMP_SOURCE_QUENCH, ICMP_TIME_EXCEEDED, ICMP_PARAMETER_PROBLEM)
)
ARP_REQUEST = 1
ARP_REPLY = 2

# Every reason decode_frame can give, so the link can create its drop counters up front.
DROP_REASONS: tuple[str, ...] = (
    "eth_truncated",
    "not_ipv4",
    "arp_truncated",
    "arp_unsupported",
    "ip_truncated",
    "ip_bad_version",
    "ip_bad_ihl",
    "ip_bad_length",
    "ip_bad_checksum",
    "ip_fragment",
    "ip_ttl_zero",
    "ip_bad_source",
    "ip_unsupported_protocol",
    "icmp_truncated",
    "icmp_bad_checksum",
    "icmp_unsupported",
    "icmp_quote_truncated",
    "icmp_quote_not_tcp",
    "tcp_truncated",
    "tcp_bad_offset",
    "tcp_bad_checksum",
    "tcp_bad_options",
)

_ETH_LEN = 14
_IP_LEN = 20
_TCP_LEN = 20
_ARP_LEN = 28
_ICMP_LEN = 8
_MAX_TCP_OPTIONS = 40
_MASK32 = 0xFFFF_FFFF
_IP_DF = 0x4000
# MF flag plus the 13-bit fragment offset; the reserved bit (0x8000) is ignored.
_IP_FRAG_MASK = 0x3FFF

_ETH = struct.Struct("!6s6sH")
_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_ICMP = struct.Struct("!BBHHH")
_QUOTED_TCP = struct.Struct("!HHI")
# Headers of a whole frame in one struct, so an encoder packs once and concatenates once.
_ETH_IP_TCP = struct.Struct("!6s6sHBBHHHBBH4s4sHHIIBBHHH")
_ETH_IP_ICMP = struct.Struct("!6s6sHBBHHHBBH4s4sBBHHH")
_ETH_ARP = struct.Struct("!6s6sHHHBBH6s4s6s4s")
_OPT_MSS = struct.Struct("!BBH")
_OPT_TS = struct.Struct("!BBBBII")  # with two leading bytes: NOP,NOP or SACK-permitted
_TS_VALUES = struct.Struct("!II")
# A SACK option holds at most 4 blocks in 40 bytes of options.
_SACK_VALUES = tuple(struct.Struct(f"!{2 * n}I") for n in range(5))

# IntFlag construction goes through the enum machinery (about a microsecond); a table
# lookup keeps decode cheap.
_FLAGS = tuple(Flags(i) for i in range(256))


class DecodeError(Exception):
    """A frame we drop. ``reason`` is a short snake_case key used as a drop counter name."""

    reason: str
    detail: str

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class TcpPacket:
    """An IPv4/TCP frame."""

    src_mac: bytes
    dst_mac: bytes
    src_ip: str
    dst_ip: str
    ttl: int
    segment: Segment


@dataclass(frozen=True, slots=True)
class ArpPacket:
    """An Ethernet/IPv4 ARP frame; ``src_mac``/``dst_mac`` are the Ethernet header's."""

    src_mac: bytes
    dst_mac: bytes
    op: int
    sender_mac: bytes
    sender_ip: str
    target_mac: bytes
    target_ip: str


@dataclass(frozen=True, slots=True)
class IcmpEcho:
    """An ICMP echo request (type 8) or reply (type 0), code 0."""

    src_mac: bytes
    dst_mac: bytes
    src_ip: str
    dst_ip: str
    ttl: int
    type: int
    ident: int
    sequence: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class IcmpError:
    """An ICMP error (destination unreachable, source quench, time exceeded, parameter
    problem) about a TCP segment, with what it quotes of that segment: the addresses,
    ports and sequence number that name the connection and show the message is about
    data actually sent (RFC 5927 §4)."""

    src_mac: bytes
    dst_mac: bytes
    src_ip: str
    dst_ip: str
    ttl: int
    type: int
    code: int
    next_hop_mtu: int  # destination unreachable code 4 (RFC 1191), else 0
    quoted_src_ip: str
    quoted_dst_ip: str
    quoted_src_port: int
    quoted_dst_port: int
    quoted_seq: int


Decoded = TcpPacket | ArpPacket | IcmpEcho | IcmpError


# --- checksums -------------------------------------------------------------------------


def internet_checksum(data: Buffer, initial: int = 0) -> int:
    """RFC 1071 checksum of ``data``: the value to store in a checksum field.

    ``initial`` is added to the sum before folding; pass any non-negative integer
    congruent to the one's-complement sum of extra 16-bit words (a pseudo-header).
    Over a region whose checksum field is already filled in, a result of 0 means the
    checksum is correct.

    Since 2**16 == 1 (mod 0xFFFF), a big-endian integer of the whole buffer is
    congruent to the sum of its 16-bit words modulo 0xFFFF, and both the conversion and
    the remainder run in C: several times faster than summing an ``array('H')``.
    """
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8  # an odd trailing byte is the high half of a zero-padded word
    n += initial
    return _fold_complement(n)


def _fold_complement(n: int) -> int:
    """One's complement of the end-around-carry sum congruent to ``n``."""
    s = n % 0xFFFF
    if s == 0 and n:
        # A non-zero sum that is a multiple of 0xFFFF folds to 0xFFFF ("negative
        # zero"), whose complement is 0. Only an all-zero input sums to true zero.
        return 0
    return 0xFFFF - s


# --- decoding --------------------------------------------------------------------------


def decode_frame(frame: Buffer, *, checksum_trusted: bool = False) -> Decoded:
    """Decode one Ethernet frame, or raise ``DecodeError`` naming why it is dropped.

    ``checksum_trusted`` skips the TCP and ICMP checksum checks, for frames the kernel
    marks as checksum-partial (locally generated, not yet filled in) or already
    verified. The IPv4 header checksum is always checked: the kernel always fills it.
    Never raises anything but ``DecodeError``, whatever the input.
    """
    flen = len(frame)
    if flen < _ETH_LEN:
        raise DecodeError("eth_truncated", f"{flen} bytes")
    dst_mac, src_mac, ethertype = _ETH.unpack_from(frame, 0)
    if ethertype == ETHERTYPE_ARP:
        return _decode_arp(frame, flen, src_mac, dst_mac)
    if ethertype != ETHERTYPE_IPV4:
        raise DecodeError("not_ipv4", f"ethertype 0x{ethertype:04x}")

    # IPv4. Checks run in a fixed order so each malformed frame has one reason.
    if flen < _ETH_LEN + _IP_LEN:
        _raise_short_ip(frame, flen)
    vihl, tos, total, _ident, frag, ttl, proto, _csum, src, dst = _IP.unpack_from(frame, _ETH_LEN)
    hlen = _IP_LEN
    if vihl != 0x45:
        if vihl >> 4 != 4:
            raise DecodeError("ip_bad_version", f"version {vihl >> 4}")
        hlen = (vihl & 0x0F) * 4
        if hlen < _IP_LEN:
            raise DecodeError("ip_bad_ihl", f"ihl {vihl & 0x0F}")
        if _ETH_LEN + hlen > flen:
            raise DecodeError("ip_truncated", f"header {hlen} bytes, frame {flen}")
    # Trailing bytes past total length are Ethernet padding, never payload.
    end = _ETH_LEN + total
    if total < hlen or end > flen:
        raise DecodeError("ip_bad_length", f"total length {total}, frame {flen}")
    # The header contains a non-zero version, so a plain remainder test is exact here.
    if int.from_bytes(frame[_ETH_LEN : _ETH_LEN + hlen], "big") % 0xFFFF:
        raise DecodeError("ip_bad_checksum")
    if frag & _IP_FRAG_MASK:
        raise DecodeError("ip_fragment", f"flags/offset 0x{frag:04x}")
    # IP options are skipped, not refused: RFC 9293 MUST-50 has TCP ignore the ones
    # it does not know, and it knows none.
    if ttl == 0:
        raise DecodeError("ip_ttl_zero")
    if src[0] >= 0xE0 and (src[0] < 0xF0 or src == b"\xff\xff\xff\xff"):
        raise DecodeError("ip_bad_source", socket.inet_ntoa(src))

    off = _ETH_LEN + hlen
    if proto == PROTO_TCP:
        seg_len = total - hlen
        if seg_len < _TCP_LEN:
            raise DecodeError("tcp_truncated", f"{seg_len} bytes")
        sport, dport, seq, ack, doff, flags, window, _tsum, urgent = _TCP.unpack_from(frame, off)
        thl = (doff >> 4) * 4
        if thl < _TCP_LEN or thl > seg_len:
            raise DecodeError("tcp_bad_offset", f"data offset {doff >> 4}, segment {seg_len}")
        if not checksum_trusted:
            n = int.from_bytes(frame[off:end], "big")
            if seg_len & 1:
                n <<= 8
            # Pseudo-header: addresses (as one 64-bit integer, congruent to the sum of
            # their words), zero byte + protocol, TCP length. Never all zero (protocol 6).
            n += int.from_bytes(src + dst, "big") + PROTO_TCP + seg_len
            if n % 0xFFFF:
                raise DecodeError("tcp_bad_checksum")
        options = (
            NO_OPTIONS if thl == _TCP_LEN else _parse_options(frame[off + _TCP_LEN : off + thl])
        )
        segment = Segment(
            sport,
            dport,
            seq,
            ack,
            _FLAGS[flags],
            window,
            options,
            bytes(frame[off + thl : end]),  # copies only when frame is a view or bytearray
            urgent,
            tos & 3,
        )
        return TcpPacket(
            src_mac, dst_mac, socket.inet_ntoa(src), socket.inet_ntoa(dst), ttl, segment
        )
    if proto == PROTO_ICMP:
        return _decode_icmp(frame, off, end, src_mac, dst_mac, src, dst, ttl, checksum_trusted)
    raise DecodeError("ip_unsupported_protocol", f"protocol {proto}")


def _raise_short_ip(frame: Buffer, flen: int) -> None:
    """Pick the reason for a frame too short for a 20-byte IPv4 header."""
    if flen > _ETH_LEN:
        vihl = frame[_ETH_LEN]
        if vihl >> 4 != 4:
            raise DecodeError("ip_bad_version", f"version {vihl >> 4}")
        if vihl & 0x0F < 5:
            raise DecodeError("ip_bad_ihl", f"ihl {vihl & 0x0F}")
    raise DecodeError("ip_truncated", f"{flen - _ETH_LEN} bytes of IP header")


def _parse_options(data: Buffer) -> Options:
    """Parse the TCP option bytes after the fixed header (at most 40 bytes).

    A repeated option overwrites the earlier one, as Linux's parser does.
    """
    n = len(data)
    # Linux sends NOP,NOP,TS on every segment of a connection that uses timestamps;
    # skipping the general loop for it saves about 0.4 us per segment.
    if n == 12 and data[0] == 1 and data[1] == 1 and data[2] == 8 and data[3] == 10:
        return Options(None, None, False, _TS_VALUES.unpack_from(data, 4))
    mss: int | None = None
    wscale: int | None = None
    sack_permitted = False
    timestamps: tuple[int, int] | None = None
    sack_blocks: tuple[tuple[int, int], ...] = ()
    unknown: list[tuple[int, bytes]] = []
    i = 0
    while i < n:
        kind = data[i]
        if kind == 0:  # EOL: everything after it is padding
            break
        if kind == 1:  # NOP
            i += 1
            continue
        if i + 1 >= n:
            raise DecodeError("tcp_bad_options", f"option {kind} has no length byte")
        length = data[i + 1]
        if length < 2:
            raise DecodeError("tcp_bad_options", f"option {kind} length {length}")
        if i + length > n:
            raise DecodeError("tcp_bad_options", f"option {kind} runs past the header")
        if kind == 2:
            if length != 4:
                raise DecodeError("tcp_bad_options", f"mss length {length}")
            mss = (data[i + 2] << 8) | data[i + 3]
        elif kind == 3:
            if length != 3:
                raise DecodeError("tcp_bad_options", f"wscale length {length}")
            wscale = data[i + 2]  # raw: clamping to 14 is the receiver's policy
        elif kind == 4:
            if length != 2:
                raise DecodeError("tcp_bad_options", f"sackOK length {length}")
            sack_permitted = True
        elif kind == 8:
            if length != 10:
                raise DecodeError("tcp_bad_options", f"timestamps length {length}")
            timestamps = _TS_VALUES.unpack_from(data, i + 2)
        elif kind == 5:
            if (length - 2) % 8 or length == 2:
                raise DecodeError("tcp_bad_options", f"sack length {length}")
            edges = _SACK_VALUES[(length - 2) // 8].unpack_from(data, i + 2)
            sack_blocks = tuple(zip(edges[0::2], edges[1::2], strict=True))
        else:
            unknown.append((kind, bytes(data[i + 2 : i + length])))
        i += length
    if (
        mss is None
        and wscale is None
        and not sack_permitted
        and timestamps is None
        and not sack_blocks
        and not unknown
    ):
        return NO_OPTIONS
    return Options(mss, wscale, sack_permitted, timestamps, sack_blocks, tuple(unknown))


def _decode_arp(frame: Buffer, flen: int, src_mac: bytes, dst_mac: bytes) -> ArpPacket:
    if flen < _ETH_LEN + _ARP_LEN:
        raise DecodeError("arp_truncated", f"{flen - _ETH_LEN} bytes")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(frame, _ETH_LEN)
    if htype != 1 or ptype != ETHERTYPE_IPV4 or hlen != 6 or plen != 4:
        raise DecodeError(
            "arp_unsupported", f"htype {htype} ptype 0x{ptype:04x} hlen {hlen} plen {plen}"
        )
    if op != ARP_REQUEST and op != ARP_REPLY:
        raise DecodeError("arp_unsupported", f"op {op}")
    return ArpPacket(src_mac, dst_mac, op, sha, socket.inet_ntoa(spa), tha, socket.inet_ntoa(tpa))


def _decode_icmp(
    frame: Buffer,
    off: int,
    end: int,
    src_mac: bytes,
    dst_mac: bytes,
    src: bytes,
    dst: bytes,
    ttl: int,
    checksum_trusted: bool,
) -> IcmpEcho | IcmpError:
    if end - off < _ICMP_LEN:
        raise DecodeError("icmp_truncated", f"{end - off} bytes")
    # internet_checksum, not a bare remainder: an all-zero message sums to true zero
    # and must fail.
    if not checksum_trusted and internet_checksum(frame[off:end]):
        raise DecodeError("icmp_bad_checksum")
    icmp_type, code, _csum, ident, sequence = _ICMP.unpack_from(frame, off)
    if icmp_type in _ICMP_ERRORS:
        return _decode_icmp_error(frame, off, end, src_mac, dst_mac, src, dst, ttl, sequence)
    if (icmp_type != ICMP_ECHO_REPLY and icmp_type != ICMP_ECHO_REQUEST) or code != 0:
        raise DecodeError("icmp_unsupported", f"type {icmp_type} code {code}")
    return IcmpEcho(
        src_mac,
        dst_mac,
        socket.inet_ntoa(src),
        socket.inet_ntoa(dst),
        ttl,
        icmp_type,
        ident,
        sequence,
        bytes(frame[off + _ICMP_LEN : end]),
    )


def _decode_icmp_error(
    frame: Buffer,
    off: int,
    end: int,
    src_mac: bytes,
    dst_mac: bytes,
    src: bytes,
    dst: bytes,
    ttl: int,
    last_word: int,
) -> IcmpError:
    """The quoted datagram: its IP header and at least the first 8 octets of TCP,
    which hold the ports and the sequence number (RFC 792)."""
    quote = off + _ICMP_LEN
    if end - quote < _IP_LEN:
        raise DecodeError("icmp_quote_truncated", f"{end - quote} bytes")
    vihl = frame[quote]
    qhlen = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or qhlen < _IP_LEN or end - quote < qhlen + 8:
        raise DecodeError("icmp_quote_truncated", f"{end - quote} bytes, ihl {vihl & 0x0F}")
    _v, _tos, _total, _ident, _frag, _ttl, proto, _csum, qsrc, qdst = _IP.unpack_from(frame, quote)
    if proto != PROTO_TCP:
        raise DecodeError("icmp_quote_not_tcp", f"protocol {proto}")
    sport, dport, seq = _QUOTED_TCP.unpack_from(frame, quote + qhlen)
    return IcmpError(
        src_mac,
        dst_mac,
        socket.inet_ntoa(src),
        socket.inet_ntoa(dst),
        ttl,
        frame[off],
        frame[off + 1],
        last_word if frame[off] == ICMP_DEST_UNREACHABLE and frame[off + 1] == 4 else 0,
        socket.inet_ntoa(qsrc),
        socket.inet_ntoa(qdst),
        sport,
        dport,
        seq,
    )


# --- encoding --------------------------------------------------------------------------


def encode_tcp(
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: str,
    dst_ip: str,
    segment: Segment,
    *,
    ttl: int = 64,
    tos: int = 0,
    ip_id: int = 0,
    partial_checksum: bool = False,
) -> bytes:
    """A complete Ethernet/IPv4/TCP frame for ``segment``, DF set as Linux sets it.
    ``tos`` is the second octet of the IP header, to which the segment's own ECN
    field (``segment.ecn``) is added.

    partial_checksum=True leaves the TCP checksum to the device, as checksum offload
    does: the field holds only the folded pseudo-header sum, uncomplemented, and the
    payload is never summed (see link.PacketLink's GSO send).

    Raises ValueError for MACs that are not 6 bytes, options that need more than 40
    bytes or a frame longer than the IPv4 total length allows.
    """
    if len(src_mac) != 6 or len(dst_mac) != 6:
        raise ValueError("MAC addresses must be 6 bytes")
    options = segment.options
    payload = segment.payload
    if options is NO_OPTIONS:
        body = payload
        doff = 0x50
    else:
        opts = _encode_options(options)
        body = opts + payload if payload else opts
        doff = (5 + len(opts) // 4) << 4
    tcp_len = _TCP_LEN + len(body)
    total = _IP_LEN + tcp_len
    if total > 0xFFFF:
        raise ValueError(f"IPv4 total length {total} exceeds 65535")
    src = socket.inet_aton(src_ip)
    dst = socket.inet_aton(dst_ip)
    addr_sum = int.from_bytes(src, "big") + int.from_bytes(dst, "big")
    ip_id &= 0xFFFF
    tos = (tos | segment.ecn) & 0xFF
    ip_csum = _fold_complement(
        0x4500 + tos + total + ip_id + _IP_DF + (ttl << 8) + PROTO_TCP + addr_sum
    )
    seq = segment.seq & _MASK32
    ack = segment.ack & _MASK32
    flags = int(segment.flags)
    sport = segment.src_port
    dport = segment.dst_port
    window = segment.window
    urgent = segment.urgent
    if partial_checksum:
        tcp_csum = 0xFFFF - _fold_complement(addr_sum + PROTO_TCP + tcp_len)
    else:
        # Header words summed arithmetically: a 32-bit field is congruent to the sum
        # of its two halves modulo 0xFFFF, so seq and ack go in whole.
        n = int.from_bytes(body, "big")
        if len(body) & 1:
            n <<= 8
        n += sport + dport + seq + ack + (doff << 8) + flags + window + urgent  # header
        n += addr_sum + PROTO_TCP + tcp_len  # pseudo-header
        tcp_csum = _fold_complement(n)
    header = _ETH_IP_TCP.pack(
        dst_mac,
        src_mac,
        ETHERTYPE_IPV4,
        0x45,
        tos,
        total,
        ip_id,
        _IP_DF,
        ttl,
        PROTO_TCP,
        ip_csum,
        src,
        dst,
        sport,
        dport,
        seq,
        ack,
        doff,
        flags,
        window,
        tcp_csum,
        urgent,
    )
    return header + body if body else header


def _encode_options(options: Options) -> bytes:
    """Options in Linux's layout: MSS, sackOK+TS (or NOP,NOP,TS / NOP,NOP,sackOK),
    NOP+wscale, NOP,NOP+SACK, then unknown options, EOL-padded to 4 bytes."""
    parts: list[bytes] = []
    if options.mss is not None:
        parts.append(_OPT_MSS.pack(2, 4, options.mss))
    ts = options.timestamps
    if ts is not None:
        # Linux puts sackOK in front of the timestamps so both stay word-aligned.
        lead = (4, 2) if options.sack_permitted else (1, 1)
        parts.append(_OPT_TS.pack(*lead, 8, 10, ts[0] & _MASK32, ts[1] & _MASK32))
    elif options.sack_permitted:
        parts.append(b"\x01\x01\x04\x02")
    if options.wscale is not None:
        parts.append(bytes((1, 3, 3, options.wscale)))
    blocks = options.sack_blocks
    if blocks:
        if len(blocks) > 4:
            raise ValueError(f"{len(blocks)} SACK blocks do not fit in TCP options")
        edges = [edge & _MASK32 for block in blocks for edge in block]
        parts.append(bytes((1, 1, 5, 2 + 8 * len(blocks))))
        parts.append(_SACK_VALUES[len(blocks)].pack(*edges))
    for kind, data in options.unknown:
        parts.append(bytes((kind, 2 + len(data))))
        parts.append(data)
    out = b"".join(parts)
    if len(out) & 3:
        out += b"\x00" * (4 - (len(out) & 3))
    if len(out) > _MAX_TCP_OPTIONS:
        raise ValueError(f"TCP options need {len(out)} bytes, at most 40 fit")
    return out


def encode_arp(
    src_mac: bytes,
    dst_mac: bytes,
    op: int,
    sender_mac: bytes,
    sender_ip: str,
    target_mac: bytes,
    target_ip: str,
) -> bytes:
    """A 42-byte Ethernet/ARP frame (not padded to 60)."""
    if any(len(mac) != 6 for mac in (src_mac, dst_mac, sender_mac, target_mac)):
        raise ValueError("MAC addresses must be 6 bytes")
    return _ETH_ARP.pack(
        dst_mac,
        src_mac,
        ETHERTYPE_ARP,
        1,
        ETHERTYPE_IPV4,
        6,
        4,
        op,
        sender_mac,
        socket.inet_aton(sender_ip),
        target_mac,
        socket.inet_aton(target_ip),
    )


def encode_icmp_echo(
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: str,
    dst_ip: str,
    *,
    type: int,
    ident: int,
    sequence: int,
    payload: bytes,
    ttl: int = 64,
    ip_id: int = 0,
) -> bytes:
    """An Ethernet/IPv4/ICMP echo frame, DF clear (Linux sends echo replies without DF)."""
    if len(src_mac) != 6 or len(dst_mac) != 6:
        raise ValueError("MAC addresses must be 6 bytes")
    total = _IP_LEN + _ICMP_LEN + len(payload)
    if total > 0xFFFF:
        raise ValueError(f"IPv4 total length {total} exceeds 65535")
    src = socket.inet_aton(src_ip)
    dst = socket.inet_aton(dst_ip)
    ip_id &= 0xFFFF
    ip_csum = _fold_complement(
        0x4500
        + total
        + ip_id
        + (ttl << 8)
        + PROTO_ICMP
        + int.from_bytes(src, "big")
        + int.from_bytes(dst, "big")
    )
    n = int.from_bytes(payload, "big")
    if len(payload) & 1:
        n <<= 8
    icmp_csum = _fold_complement(n + (type << 8) + ident + sequence)
    header = _ETH_IP_ICMP.pack(
        dst_mac,
        src_mac,
        ETHERTYPE_IPV4,
        0x45,
        0,
        total,
        ip_id,
        0,
        ttl,
        PROTO_ICMP,
        ip_csum,
        src,
        dst,
        type,
        0,
        icmp_csum,
        ident,
        sequence,
    )
    return header + payload


# --- addresses and traces --------------------------------------------------------------


def mac_str(mac: bytes) -> str:
    """``b"\\x02\\0\\0\\0\\0\\x01"`` -> ``"02:00:00:00:00:01"``."""
    return mac.hex(":")


def parse_mac(text: str) -> bytes:
    """``"02:00:00:00:00:01"`` -> 6 bytes; also accepts ``-`` separators and 1-digit parts."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(
        1 <= len(p) <= 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts
    ):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def to_scapy(frame: Buffer) -> Any:
    """Scapy's dissection of ``frame``, for traces and debugging only (slow: ~0.5 ms)."""
    from scapy.layers.l2 import Ether

    return Ether(bytes(frame))
