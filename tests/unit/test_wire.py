"""tcpstack.wire against scapy, byte for byte, plus every drop reason and fuzzing."""

from __future__ import annotations

import dataclasses
import socket
import struct
import subprocess
import sys
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Padding, Raw
from scapy.utils import checksum as scapy_checksum

from tcpstack import wire
from tcpstack.core.segment import NO_OPTIONS, Flags, Options, Segment
from tcpstack.wire import (
    BROADCAST_MAC,
    DROP_REASONS,
    ArpPacket,
    DecodeError,
    IcmpEcho,
    TcpPacket,
    decode_frame,
    encode_arp,
    encode_icmp_echo,
    encode_tcp,
    internet_checksum,
    mac_str,
    parse_mac,
    to_scapy,
)

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
IP_A = "198.18.0.1"
IP_B = "198.18.0.2"

# Scapy is slow (about a millisecond per packet) and its first call imports a lot.
SCAPY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=600, deadline=None)
# For fuzz tests whose inputs are costly to generate (composite strategies, long lists).
FUZZ_SLOW = settings(max_examples=300, deadline=None)


# --- strategies ------------------------------------------------------------------------

u16 = st.integers(0, 0xFFFF)
u32 = st.one_of(
    st.integers(0, 0xFFFF_FFFF),
    st.sampled_from([0, 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF]),
    st.integers(0xFFFF_FFFF - 70_000, 0xFFFF_FFFF),  # just below the wrap
)
macs = st.binary(min_size=6, max_size=6)
any_ips = st.integers(0, 0xFFFF_FFFF).map(lambda n: socket.inet_ntoa(n.to_bytes(4, "big")))
# Sources decode_frame accepts: not multicast (224/4) and not limited broadcast.
unicast_ips = st.one_of(st.integers(0, 0xDFFF_FFFF), st.integers(0xF000_0000, 0xFFFF_FFFE)).map(
    lambda n: socket.inet_ntoa(n.to_bytes(4, "big"))
)
ttls = st.integers(1, 255)
unknown_kinds = st.integers(6, 255).filter(lambda k: k != 8)


def options_len(o: Options) -> int:
    """Encoded size of o in the Linux layout, written independently of wire."""
    n = 0
    if o.mss is not None:
        n += 4
    if o.timestamps is not None or o.sack_permitted:
        n += 12 if o.timestamps is not None else 4
    if o.wscale is not None:
        n += 4
    if o.sack_blocks:
        n += 4 + 8 * len(o.sack_blocks)
    n += sum(2 + len(data) for _, data in o.unknown)
    return (n + 3) // 4 * 4


@st.composite
def tcp_options(draw: st.DrawFn) -> Options:
    opts = Options(
        mss=draw(st.none() | u16),
        wscale=draw(st.none() | st.integers(0, 255)),
        sack_permitted=draw(st.booleans()),
        timestamps=draw(st.none() | st.tuples(u32, u32)),
        sack_blocks=tuple(draw(st.lists(st.tuples(u32, u32), max_size=4))),
        unknown=tuple(draw(st.lists(st.tuples(unknown_kinds, st.binary(max_size=10)), max_size=3))),
    )
    # Drop the variable-size parts until the options fit the 40 bytes TCP allows.
    while options_len(opts) > 40 and opts.unknown:
        opts = Options(
            opts.mss,
            opts.wscale,
            opts.sack_permitted,
            opts.timestamps,
            opts.sack_blocks,
            opts.unknown[:-1],
        )
    while options_len(opts) > 40:
        opts = Options(
            opts.mss, opts.wscale, opts.sack_permitted, opts.timestamps, opts.sack_blocks[:-1]
        )
    return opts


segments = st.builds(
    Segment,
    src_port=u16,
    dst_port=u16,
    seq=u32,
    ack=u32,
    flags=st.integers(0, 255).map(Flags),
    window=u16,
    options=st.one_of(st.just(NO_OPTIONS), tcp_options()),
    payload=st.one_of(st.just(b""), st.binary(max_size=2000)),
    urgent=u16,
)


# --- scapy reference builders ----------------------------------------------------------


def scapy_options(o: Options) -> list[tuple[object, object]]:
    """The same options in the same order as wire's Linux layout, as scapy spells them."""
    nop = ("NOP", None)
    out: list[tuple[object, object]] = []
    if o.mss is not None:
        out.append(("MSS", o.mss))
    if o.timestamps is not None:
        out += [("SAckOK", b"")] if o.sack_permitted else [nop, nop]
        out.append(("Timestamp", o.timestamps))
    elif o.sack_permitted:
        out += [nop, nop, ("SAckOK", b"")]
    if o.wscale is not None:
        out += [nop, ("WScale", o.wscale)]
    if o.sack_blocks:
        out += [nop, nop, ("SAck", tuple(edge for block in o.sack_blocks for edge in block))]
    out += list(o.unknown)
    return out


def scapy_tcp(
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: str,
    dst_ip: str,
    seg: Segment,
    *,
    ttl: int = 64,
    tos: int = 0,
    ip_id: int = 0,
    padding: bytes = b"",
) -> bytes:
    pkt = (
        Ether(src=mac_str(src_mac), dst=mac_str(dst_mac))
        / IP(src=src_ip, dst=dst_ip, ttl=ttl, tos=tos, id=ip_id, flags="DF")
        / TCP(
            sport=seg.src_port,
            dport=seg.dst_port,
            seq=seg.seq,
            ack=seg.ack,
            flags=int(seg.flags),
            window=seg.window,
            urgptr=seg.urgent,
            options=scapy_options(seg.options),
        )
    )
    if seg.payload:
        pkt = pkt / Raw(seg.payload)
    if padding:
        pkt = pkt / Padding(padding)
    return bytes(pkt)


def refresh_checksums(buf: bytearray) -> bytearray:
    """Recompute the IPv4 header and TCP/ICMP checksums of a hand-edited frame with
    scapy's checksum, after header fields were changed on purpose."""
    ihl = (buf[14] & 0x0F) * 4
    buf[24:26] = b"\0\0"
    buf[24:26] = struct.pack("!H", scapy_checksum(bytes(buf[14 : 14 + ihl])))
    total = struct.unpack_from("!H", buf, 16)[0]
    proto = buf[23]
    start, end = 14 + ihl, 14 + total
    if proto == 6 and end - start >= 20:
        buf[start + 16 : start + 18] = b"\0\0"
        pseudo = bytes(buf[26:34]) + struct.pack("!BBH", 0, 6, end - start)
        value = scapy_checksum(pseudo + bytes(buf[start:end]))
        buf[start + 16 : start + 18] = struct.pack("!H", value)
    elif proto == 1 and end - start >= 8:
        buf[start + 2 : start + 4] = b"\0\0"
        buf[start + 2 : start + 4] = struct.pack("!H", scapy_checksum(bytes(buf[start:end])))
    return buf


# --- checksum --------------------------------------------------------------------------


@given(st.binary(max_size=3000))
def test_checksum_matches_scapy(data: bytes) -> None:
    assert internet_checksum(data) == scapy_checksum(data)
    assert internet_checksum(memoryview(data)) == scapy_checksum(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"\0", b"\0\0", b"\0" * 7, b"\xff", b"\xff\xff", b"\xff" * 9, b"\x01", b"\xfe\xff\x01"],
)
def test_checksum_edge_cases(data: bytes) -> None:
    assert internet_checksum(data) == scapy_checksum(data)


@given(st.binary(max_size=64).map(lambda b: b[: len(b) & ~1]), st.binary(max_size=600))
def test_checksum_initial_is_a_prefix_sum(prefix: bytes, data: bytes) -> None:
    assert internet_checksum(data, int.from_bytes(prefix, "big")) == scapy_checksum(prefix + data)


@given(st.binary(min_size=2, max_size=600).map(lambda b: b[: len(b) & ~1]))
def test_checksum_of_checksummed_data_is_zero(data: bytes) -> None:
    field = internet_checksum(b"\0\0" + data)
    assert internet_checksum(struct.pack("!H", field) + data) == 0


# --- encoding against scapy ------------------------------------------------------------


@SCAPY
@given(macs, macs, any_ips, any_ips, segments, ttls, u16, st.integers(0, 255))
def test_encode_tcp_matches_scapy(
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: str,
    dst_ip: str,
    seg: Segment,
    ttl: int,
    ip_id: int,
    tos: int,
) -> None:
    ours = encode_tcp(src_mac, dst_mac, src_ip, dst_ip, seg, ttl=ttl, tos=tos, ip_id=ip_id)
    assert ours == scapy_tcp(src_mac, dst_mac, src_ip, dst_ip, seg, ttl=ttl, tos=tos, ip_id=ip_id)


@SCAPY
@given(macs, macs, st.sampled_from([1, 2]), macs, any_ips, macs, any_ips)
def test_encode_arp_matches_scapy(
    src_mac: bytes, dst_mac: bytes, op: int, sha: bytes, spa: str, tha: bytes, tpa: str
) -> None:
    ref = Ether(src=mac_str(src_mac), dst=mac_str(dst_mac)) / ARP(
        hwtype=1,
        ptype=0x0800,
        hwlen=6,
        plen=4,
        op=op,
        hwsrc=mac_str(sha),
        psrc=spa,
        hwdst=mac_str(tha),
        pdst=tpa,
    )
    assert encode_arp(src_mac, dst_mac, op, sha, spa, tha, tpa) == bytes(ref)


@SCAPY
@given(
    macs,
    macs,
    any_ips,
    any_ips,
    st.sampled_from([0, 8]),
    u16,
    u16,
    st.binary(max_size=1500),
    ttls,
    u16,
)
def test_encode_icmp_echo_matches_scapy(
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: str,
    dst_ip: str,
    icmp_type: int,
    ident: int,
    sequence: int,
    payload: bytes,
    ttl: int,
    ip_id: int,
) -> None:
    ours = encode_icmp_echo(
        src_mac,
        dst_mac,
        src_ip,
        dst_ip,
        type=icmp_type,
        ident=ident,
        sequence=sequence,
        payload=payload,
        ttl=ttl,
        ip_id=ip_id,
    )
    ref = (
        Ether(src=mac_str(src_mac), dst=mac_str(dst_mac))
        / IP(src=src_ip, dst=dst_ip, ttl=ttl, id=ip_id, flags=0)
        / ICMP(type=icmp_type, code=0, id=ident, seq=sequence)
    )
    if payload:
        ref = ref / Raw(payload)
    assert ours == bytes(ref)


def test_linux_syn_option_layout() -> None:
    opts = Options(mss=1460, wscale=7, sack_permitted=True, timestamps=(0x01020304, 0))
    frame = encode_tcp(MAC_A, MAC_B, IP_A, IP_B, Segment(1, 2, 3, flags=Flags.SYN, options=opts))
    assert frame[34 + 12] >> 4 == 10  # 20 bytes of options
    assert frame[54:74] == bytes.fromhex("020405b40402080a010203040000000001030307")
    mss_only = encode_tcp(MAC_A, MAC_B, IP_A, IP_B, Segment(1, 2, 3, options=Options(mss=536)))
    assert mss_only[54:] == bytes.fromhex("02040218")
    ts_only = encode_tcp(
        MAC_A, MAC_B, IP_A, IP_B, Segment(1, 2, 3, options=Options(timestamps=(5, 6)))
    )
    assert ts_only[54:] == bytes.fromhex("0101080a0000000500000006")


def test_encode_masks_sequence_numbers() -> None:
    big = Segment(1, 2, 2**32 + 5, ack=2**33 + 7, flags=Flags.ACK)
    frame = encode_tcp(MAC_A, MAC_B, IP_A, IP_B, big)
    assert struct.unpack_from("!II", frame, 38) == (5, 7)


@pytest.mark.parametrize(
    "options",
    [
        Options(sack_blocks=((1, 2),) * 5),
        Options(mss=1460, timestamps=(1, 2), sack_blocks=((1, 2),) * 3),
        Options(unknown=((99, b"x" * 39),)),
    ],
)
def test_encode_rejects_oversized_options(options: Options) -> None:
    with pytest.raises(ValueError):
        encode_tcp(MAC_A, MAC_B, IP_A, IP_B, Segment(1, 2, 3, options=options))


def test_encode_rejects_bad_macs_and_oversized_frames() -> None:
    with pytest.raises(ValueError):
        encode_tcp(MAC_A[:5], MAC_B, IP_A, IP_B, Segment(1, 2, 3))
    with pytest.raises(ValueError):
        encode_tcp(MAC_A, MAC_B, IP_A, IP_B, Segment(1, 2, 3, payload=bytes(65_496)))
    encode_tcp(MAC_A, MAC_B, IP_A, IP_B, Segment(1, 2, 3, payload=bytes(65_495)))


# --- decoding --------------------------------------------------------------------------


@SCAPY
@given(macs, macs, unicast_ips, any_ips, segments, ttls, u16, st.binary(max_size=20))
def test_decode_scapy_built_tcp(
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: str,
    dst_ip: str,
    seg: Segment,
    ttl: int,
    ip_id: int,
    padding: bytes,
) -> None:
    frame = scapy_tcp(src_mac, dst_mac, src_ip, dst_ip, seg, ttl=ttl, ip_id=ip_id, padding=padding)
    assert decode_frame(frame) == TcpPacket(src_mac, dst_mac, src_ip, dst_ip, ttl, seg)


@SCAPY
@given(macs, macs, st.sampled_from([1, 2]), macs, any_ips, macs, any_ips, st.binary(max_size=18))
def test_decode_scapy_built_arp(
    src_mac: bytes,
    dst_mac: bytes,
    op: int,
    sha: bytes,
    spa: str,
    tha: bytes,
    tpa: str,
    padding: bytes,
) -> None:
    ref = Ether(src=mac_str(src_mac), dst=mac_str(dst_mac)) / ARP(
        op=op, hwsrc=mac_str(sha), psrc=spa, hwdst=mac_str(tha), pdst=tpa
    )
    frame = bytes(ref) + padding
    assert decode_frame(frame) == ArpPacket(src_mac, dst_mac, op, sha, spa, tha, tpa)


@SCAPY
@given(
    macs, macs, unicast_ips, any_ips, st.sampled_from([0, 8]), u16, u16, st.binary(max_size=1500)
)
def test_decode_scapy_built_icmp(
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: str,
    dst_ip: str,
    icmp_type: int,
    ident: int,
    sequence: int,
    payload: bytes,
) -> None:
    ref = (
        Ether(src=mac_str(src_mac), dst=mac_str(dst_mac))
        / IP(src=src_ip, dst=dst_ip, ttl=9)
        / ICMP(type=icmp_type, id=ident, seq=sequence)
        / Raw(payload)
    )
    want = IcmpEcho(src_mac, dst_mac, src_ip, dst_ip, 9, icmp_type, ident, sequence, payload)
    assert decode_frame(bytes(ref)) == want


@given(macs, macs, unicast_ips, any_ips, segments, ttls, u16)
def test_round_trip(
    src_mac: bytes, dst_mac: bytes, src_ip: str, dst_ip: str, seg: Segment, ttl: int, ip_id: int
) -> None:
    frame = encode_tcp(src_mac, dst_mac, src_ip, dst_ip, seg, ttl=ttl, ip_id=ip_id)
    want = TcpPacket(src_mac, dst_mac, src_ip, dst_ip, ttl, seg)
    assert decode_frame(frame) == want
    assert decode_frame(memoryview(frame)) == want
    assert decode_frame(bytearray(frame), checksum_trusted=True) == want


def test_round_trip_arp_and_icmp() -> None:
    arp = encode_arp(MAC_A, BROADCAST_MAC, 1, MAC_A, IP_A, bytes(6), IP_B)
    assert decode_frame(arp) == ArpPacket(MAC_A, BROADCAST_MAC, 1, MAC_A, IP_A, bytes(6), IP_B)
    icmp = encode_icmp_echo(
        MAC_A, MAC_B, IP_A, IP_B, type=0, ident=7, sequence=9, payload=b"odd", ttl=3
    )
    assert decode_frame(icmp) == IcmpEcho(MAC_A, MAC_B, IP_A, IP_B, 3, 0, 7, 9, b"odd")


def test_no_options_reuses_the_shared_singleton() -> None:
    frame = encode_tcp(MAC_A, MAC_B, IP_A, IP_B, Segment(1, 2, 3, flags=Flags.ACK))
    packet = decode_frame(frame)
    assert isinstance(packet, TcpPacket)
    assert packet.segment.options is NO_OPTIONS
    # Only NOPs and EOL padding: still no options.
    padded = tcp_with_raw_options(b"\x01\x01\x01\x00")
    packet = decode_frame(padded)
    assert isinstance(packet, TcpPacket)
    assert packet.segment.options is NO_OPTIONS


def test_ethernet_padding_is_not_payload() -> None:
    seg = Segment(40000, 80, 1, ack=2, flags=Flags.ACK | Flags.PSH, window=100, payload=b"x")
    frame = encode_tcp(MAC_A, MAC_B, IP_A, IP_B, seg)
    assert len(frame) == 55
    padded = frame + b"\xaa" * 5
    packet = decode_frame(padded)
    assert isinstance(packet, TcpPacket)
    assert packet.segment.payload == b"x"
    assert packet.segment == seg
    # Scapy's own padding layer, zero-filled as a NIC pads.
    ref = scapy_tcp(MAC_A, MAC_B, IP_A, IP_B, seg, padding=b"\0" * 5)
    assert len(ref) == 60
    assert decode_frame(ref) == packet


@pytest.mark.parametrize("trusted", [False, True])
def test_gso_super_frame_decodes(trusted: bool) -> None:
    payload = bytes(range(256)) * 253 + b"\x01\x02\x03\x04\x05\x06\x07\x08"
    assert len(payload) == 64_776
    seg = Segment(5001, 40000, 0xFFFF_0000, 17, Flags.ACK, 512, Options(timestamps=(1, 2)), payload)
    frame = encode_tcp(MAC_A, MAC_B, IP_A, IP_B, seg)
    assert struct.unpack_from("!H", frame, 16)[0] == 64_828
    assert len(frame) > 1514
    packet = decode_frame(frame, checksum_trusted=trusted)
    assert isinstance(packet, TcpPacket)
    assert packet.segment == seg


def test_gso_frame_with_partial_checksum_needs_trust() -> None:
    # The kernel hands raw sockets locally generated GSO frames whose TCP checksum field
    # holds only the pseudo-header sum (CHECKSUM_PARTIAL).
    seg = Segment(5001, 40000, 1, 2, Flags.ACK, 512, NO_OPTIONS, bytes(64_960))
    frame = bytearray(encode_tcp(MAC_A, MAC_B, IP_A, IP_B, seg))
    assert struct.unpack_from("!H", frame, 16)[0] == 65_000
    frame[50:52] = b"\x12\x34"
    with pytest.raises(DecodeError) as err:
        decode_frame(frame)
    assert err.value.reason == "tcp_bad_checksum"
    packet = decode_frame(frame, checksum_trusted=True)
    assert isinstance(packet, TcpPacket)
    assert packet.segment.payload == bytes(64_960)


def test_option_parsing_details() -> None:
    # EOL ends parsing: garbage after it is padding, not options.
    opts = decode_options(b"\x02\x04\x05\xb4\x00\xff\x00\x07")
    assert opts == Options(mss=1460)
    # Window scale kept raw (above 14), unknown option kept with its bytes, SACK blocks.
    opts = decode_options(
        b"\x01\x03\x03\x0f" + b"\x22\x04\xab\xcd" + b"\x01\x01\x05\x0a" + bytes(range(8))
    )
    assert opts.wscale == 15
    assert opts.unknown == ((0x22, b"\xab\xcd"),)
    assert opts.sack_blocks == ((0x00010203, 0x04050607),)
    assert decode_options(b"\x04\x02\x08\x0a" + bytes(8) + b"\x01\x01\x00\x00").sack_permitted
    # A repeated option overwrites the earlier one, as in Linux.
    assert decode_options(b"\x02\x04\x05\xb4\x02\x04\x02\x18").mss == 536


def test_flags_and_raw_ack_kept() -> None:
    for value in range(256):
        seg = Segment(1, 2, 3, ack=0xDEADBEEF, flags=Flags(value))
        packet = decode_frame(encode_tcp(MAC_A, MAC_B, IP_A, IP_B, seg))
        assert isinstance(packet, TcpPacket)
        assert packet.segment.flags == Flags(value)
        assert packet.segment.ack == 0xDEADBEEF


def test_ip_checksum_checked_even_when_trusted() -> None:
    frame = bytearray(encode_tcp(MAC_A, MAC_B, IP_A, IP_B, Segment(1, 2, 3)))
    frame[24] ^= 0x40
    with pytest.raises(DecodeError) as err:
        decode_frame(frame, checksum_trusted=True)
    assert err.value.reason == "ip_bad_checksum"


def test_icmp_all_zero_message_fails_checksum() -> None:
    # Sum of an all-zero message is true zero; the right field value would be 0xFFFF.
    frame = bytearray(
        encode_icmp_echo(MAC_A, MAC_B, IP_A, IP_B, type=0, ident=0, sequence=0, payload=b"")
    )
    assert frame[36:38] == b"\xff\xff"
    frame[36:38] = b"\0\0"
    with pytest.raises(DecodeError) as err:
        decode_frame(frame)
    assert err.value.reason == "icmp_bad_checksum"


# --- hand-built malformed frames: one case per drop reason -----------------------------


def base_tcp(payload: bytes = b"data", options: Options = NO_OPTIONS) -> bytearray:
    seg = Segment(40000, 80, 100, 200, Flags.ACK, 1000, options, payload)
    return bytearray(encode_tcp(MAC_A, MAC_B, IP_A, IP_B, seg))


def base_icmp(payload: bytes = b"ping") -> bytearray:
    return bytearray(
        encode_icmp_echo(MAC_A, MAC_B, IP_A, IP_B, type=8, ident=1, sequence=2, payload=payload)
    )


def icmp_error_frame(
    icmp_type: int = 3, code: int = 3, *, quote_len: int = 28, quoted_proto: int = 6
) -> bytes:
    """An ICMP error from B about a TCP segment A sent, quoting ``quote_len`` bytes of
    it (RFC 792 asks for the IP header and 8 octets), built by scapy."""
    quoted = bytes(
        IP(src=IP_A, dst=IP_B, proto=quoted_proto)
        / TCP(sport=40000, dport=80, seq=123456, flags="S")
    )[:quote_len]
    return bytes(
        Ether(src=MAC_B, dst=MAC_A)
        / IP(src=IP_B, dst=IP_A)
        / ICMP(type=icmp_type, code=code, nexthopmtu=1280 if code == 4 else 0)
        / Raw(quoted)
    )


@pytest.mark.parametrize(("icmp_type", "code"), [(3, 0), (3, 1), (3, 3), (3, 4), (4, 0), (11, 0)])
def test_icmp_errors_decode_what_they_quote(icmp_type: int, code: int) -> None:
    packet = decode_frame(icmp_error_frame(icmp_type, code))
    assert packet == wire.IcmpError(
        MAC_B, MAC_A, IP_B, IP_A, 64, icmp_type, code, 1280 if (icmp_type, code) == (3, 4) else 0,
        IP_A, IP_B, 40000, 80, 123456,
    )  # fmt: skip


def base_arp() -> bytearray:
    return bytearray(encode_arp(MAC_A, BROADCAST_MAC, 1, MAC_A, IP_A, bytes(6), IP_B))


def tcp_with_raw_options(opts: bytes, payload: bytes = b"") -> bytearray:
    """A TCP frame whose option bytes are exactly ``opts`` (a multiple of 4 long)."""
    assert len(opts) % 4 == 0
    buf = base_tcp(b"")
    buf += opts + payload
    buf[46] = (5 + len(opts) // 4) << 4
    struct.pack_into("!H", buf, 16, 40 + len(opts) + len(payload))
    return refresh_checksums(buf)


def decode_options(opts: bytes) -> Options:
    packet = decode_frame(tcp_with_raw_options(opts))
    assert isinstance(packet, TcpPacket)
    return packet.segment.options


def edit(buf: bytearray, offset: int, value: bytes, *, fix: bool = True) -> bytearray:
    buf[offset : offset + len(value)] = value
    return refresh_checksums(buf) if fix else buf


def with_ip_options() -> bytearray:
    buf = base_tcp()
    buf[34:34] = b"\x01\x01\x01\x00"  # four bytes of NOP/EOL options after the header
    buf[14] = 0x46
    struct.pack_into("!H", buf, 16, struct.unpack_from("!H", buf, 16)[0] + 4)
    return refresh_checksums(buf)


def test_ip_options_are_skipped_not_refused() -> None:
    # RFC 9293 MUST-50: options TCP does not know are ignored, the segment still counts.
    plain = wire.decode_frame(base_tcp())
    optioned = wire.decode_frame(with_ip_options())
    assert isinstance(optioned, wire.TcpPacket) and isinstance(plain, wire.TcpPacket)
    assert optioned.segment == plain.segment


def set_total_length(buf: bytearray, total: int) -> bytearray:
    struct.pack_into("!H", buf, 16, total)
    return refresh_checksums(buf)


def corrupt_tcp_checksum() -> bytearray:
    buf = base_tcp()
    buf[50] ^= 0x01
    return buf


BAD_FRAMES: list[tuple[str, Callable[[], bytes | bytearray], str]] = [
    ("empty", lambda: b"", "eth_truncated"),
    ("13_bytes", lambda: base_tcp()[:13], "eth_truncated"),
    ("ipv6_ethertype", lambda: edit(base_tcp(), 12, b"\x86\xdd", fix=False), "not_ipv4"),
    ("vlan_ethertype", lambda: edit(base_tcp(), 12, b"\x81\x00", fix=False), "not_ipv4"),
    ("lldp_ethertype", lambda: edit(base_tcp(), 12, b"\x88\xcc", fix=False), "not_ipv4"),
    ("arp_27_bytes", lambda: base_arp()[:41], "arp_truncated"),
    ("arp_htype_6", lambda: edit(base_arp(), 14, b"\x00\x06", fix=False), "arp_unsupported"),
    ("arp_ipv6_ptype", lambda: edit(base_arp(), 16, b"\x86\xdd", fix=False), "arp_unsupported"),
    ("arp_hlen_8", lambda: edit(base_arp(), 18, b"\x08", fix=False), "arp_unsupported"),
    ("arp_plen_16", lambda: edit(base_arp(), 19, b"\x10", fix=False), "arp_unsupported"),
    ("arp_op_rarp", lambda: edit(base_arp(), 20, b"\x00\x03", fix=False), "arp_unsupported"),
    ("ip_header_only_14", lambda: base_tcp()[:14], "ip_truncated"),
    ("ip_header_19_bytes", lambda: base_tcp()[:33], "ip_truncated"),
    ("ihl_15_beyond_frame", lambda: edit(base_tcp(b""), 14, b"\x4f", fix=False), "ip_truncated"),
    ("version_6", lambda: edit(base_tcp(), 14, b"\x65", fix=False), "ip_bad_version"),
    ("version_6_short", lambda: edit(base_tcp()[:20], 14, b"\x65", fix=False), "ip_bad_version"),
    ("ihl_4", lambda: edit(base_tcp(), 14, b"\x44", fix=False), "ip_bad_ihl"),
    ("ihl_4_short", lambda: edit(base_tcp()[:30], 14, b"\x44", fix=False), "ip_bad_ihl"),
    ("total_above_frame", lambda: set_total_length(base_tcp(), 45), "ip_bad_length"),
    ("total_below_header", lambda: set_total_length(base_tcp(), 19), "ip_bad_length"),
    ("bad_ip_checksum", lambda: edit(base_tcp(), 24, b"\x00\x00", fix=False), "ip_bad_checksum"),
    ("more_fragments", lambda: edit(base_tcp(), 20, b"\x20\x00"), "ip_fragment"),
    ("fragment_offset", lambda: edit(base_tcp(), 20, b"\x40\x10"), "ip_fragment"),
    ("ttl_0", lambda: edit(base_tcp(), 22, b"\x00"), "ip_ttl_zero"),
    ("broadcast_source", lambda: edit(base_tcp(), 26, b"\xff\xff\xff\xff"), "ip_bad_source"),
    ("multicast_source", lambda: edit(base_tcp(), 26, b"\xe0\x00\x00\x01"), "ip_bad_source"),
    ("multicast_source_239", lambda: edit(base_tcp(), 26, b"\xef\xff\xff\xff"), "ip_bad_source"),
    ("udp", lambda: edit(base_tcp(), 23, b"\x11"), "ip_unsupported_protocol"),
    ("icmp_4_bytes", lambda: set_total_length(base_icmp(b""), 24), "icmp_truncated"),
    ("icmp_bad_checksum", lambda: edit(base_icmp(), 37, b"\x00", fix=False), "icmp_bad_checksum"),
    ("icmp_redirect", lambda: edit(base_icmp(), 34, b"\x05"), "icmp_unsupported"),
    ("icmp_error_short_quote", lambda: icmp_error_frame(quote_len=27), "icmp_quote_truncated"),
    ("icmp_error_quotes_udp", lambda: icmp_error_frame(quoted_proto=17), "icmp_quote_not_tcp"),
    ("icmp_echo_code_1", lambda: edit(base_icmp(), 35, b"\x01"), "icmp_unsupported"),
    ("tcp_19_bytes", lambda: set_total_length(base_tcp(b""), 39), "tcp_truncated"),
    ("data_offset_4", lambda: edit(base_tcp(), 46, b"\x40"), "tcp_bad_offset"),
    ("data_offset_beyond", lambda: edit(base_tcp(b""), 46, b"\x60"), "tcp_bad_offset"),
    ("data_offset_15", lambda: edit(base_tcp(b"x" * 30), 46, b"\xf0"), "tcp_bad_offset"),
    ("bad_tcp_checksum", corrupt_tcp_checksum, "tcp_bad_checksum"),
    ("option_length_0", lambda: tcp_with_raw_options(b"\x22\x00\x00\x00"), "tcp_bad_options"),
    ("option_length_1", lambda: tcp_with_raw_options(b"\x22\x01\x00\x00"), "tcp_bad_options"),
    ("option_overruns", lambda: tcp_with_raw_options(b"\x01\x22\x04\x00"), "tcp_bad_options"),
    ("option_no_length", lambda: tcp_with_raw_options(b"\x01\x01\x01\x22"), "tcp_bad_options"),
    ("mss_length_3", lambda: tcp_with_raw_options(b"\x02\x03\x05\x00"), "tcp_bad_options"),
    ("wscale_length_4", lambda: tcp_with_raw_options(b"\x03\x04\x07\x00"), "tcp_bad_options"),
    ("sackok_length_3", lambda: tcp_with_raw_options(b"\x04\x03\x00\x00"), "tcp_bad_options"),
    ("ts_length_8", lambda: tcp_with_raw_options(b"\x08\x08" + bytes(6)), "tcp_bad_options"),
    ("sack_length_2", lambda: tcp_with_raw_options(b"\x05\x02\x00\x00"), "tcp_bad_options"),
    ("sack_length_9", lambda: tcp_with_raw_options(b"\x05\x09" + bytes(10)), "tcp_bad_options"),
]


@pytest.mark.parametrize(
    ("build", "reason"), [case[1:] for case in BAD_FRAMES], ids=[case[0] for case in BAD_FRAMES]
)
def test_drop_reason(build: Callable[[], bytes | bytearray], reason: str) -> None:
    frame = build()
    with pytest.raises(DecodeError) as err:
        decode_frame(frame)
    assert err.value.reason == reason
    assert reason in str(err.value)


def test_every_drop_reason_has_a_case() -> None:
    assert {reason for _, _, reason in BAD_FRAMES} == set(DROP_REASONS)
    assert len(set(DROP_REASONS)) == len(DROP_REASONS)


def test_bad_tcp_checksum_accepted_when_trusted() -> None:
    packet = decode_frame(corrupt_tcp_checksum(), checksum_trusted=True)
    assert isinstance(packet, TcpPacket)
    assert packet.segment.payload == b"data"


def test_bad_icmp_checksum_accepted_when_trusted() -> None:
    packet = decode_frame(edit(base_icmp(), 37, b"\x00", fix=False), checksum_trusted=True)
    assert isinstance(packet, IcmpEcho)
    assert packet.payload == b"ping"


# --- fuzzing: only DecodeError, ever ---------------------------------------------------


def decode_or_drop(frame: bytes | bytearray, trusted: bool) -> None:
    try:
        decode_frame(frame, checksum_trusted=trusted)
    except DecodeError as err:
        assert err.reason in DROP_REASONS


@FUZZ
@given(st.binary(max_size=120), st.booleans())
def test_random_bytes_only_raise_decode_error(data: bytes, trusted: bool) -> None:
    decode_or_drop(data, trusted)


@FUZZ
@given(
    st.sampled_from([b"\x08\x00\x45", b"\x08\x00\x46", b"\x08\x06\x00\x01\x08\x00\x06\x04"]),
    st.binary(max_size=120),
    st.booleans(),
)
def test_random_bodies_only_raise_decode_error(prefix: bytes, body: bytes, trusted: bool) -> None:
    decode_or_drop(MAC_A + MAC_B + prefix + body, trusted)


@st.composite
def valid_frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["tcp", "tcp", "tcp", "icmp", "arp"]))
    if kind == "arp":
        return encode_arp(MAC_A, MAC_B, draw(st.sampled_from([1, 2])), MAC_A, IP_A, MAC_B, IP_B)
    if kind == "icmp":
        return encode_icmp_echo(
            MAC_A,
            MAC_B,
            IP_A,
            IP_B,
            type=draw(st.sampled_from([0, 8])),
            ident=1,
            sequence=2,
            payload=draw(st.binary(max_size=40)),
        )
    seg = draw(segments.map(lambda s: dataclasses.replace(s, payload=s.payload[:40])))
    return encode_tcp(MAC_A, MAC_B, IP_A, IP_B, seg)


@FUZZ_SLOW
@given(
    valid_frames(),
    st.lists(st.tuples(st.integers(12, 110), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 200),
    st.binary(max_size=20),
    st.booleans(),
    st.booleans(),
)
def test_mutated_frames_only_raise_decode_error(
    frame: bytes,
    mutations: list[tuple[int, int]],
    cut: int,
    tail: bytes,
    fix: bool,
    trusted: bool,
) -> None:
    buf = bytearray(frame)
    for index, value in mutations:
        if index < len(buf):
            buf[index] = value
    buf = buf[: max(cut, 14)] + bytearray(tail) if cut < len(buf) else buf + bytearray(tail)
    # Refreshing checksums lets mutations reach the TCP header and option parser.
    if fix and len(buf) >= 34 and buf[12:14] == b"\x08\x00" and (buf[14] & 0x0F) >= 5:
        ihl = (buf[14] & 0x0F) * 4
        total = struct.unpack_from("!H", buf, 16)[0]
        if 14 + ihl <= len(buf) and ihl <= total and 14 + total <= len(buf):
            refresh_checksums(buf)
    decode_or_drop(buf, trusted)


# Odd bytes become kinds and lengths that matter, so the parser gets past the first option.
_OPTION_BYTES = (0, 1, 2, 3, 4, 5, 8, 10, 18, 34)


@FUZZ
@given(st.integers(0, 10).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)))
def test_random_option_bytes_only_raise_decode_error(raw: bytes) -> None:
    opts = bytes(_OPTION_BYTES[b % 10] if b & 1 else b for b in raw)
    decode_or_drop(tcp_with_raw_options(opts), False)


@FUZZ
@given(st.binary(min_size=0, max_size=100))
def test_random_tcp_segments_only_raise_decode_error(segment: bytes) -> None:
    # A valid IPv4 header with correct checksums around arbitrary TCP bytes.
    buf = base_tcp(b"")[:34] + bytearray(segment)
    struct.pack_into("!H", buf, 16, 20 + len(segment))
    decode_or_drop(refresh_checksums(buf), False)


# --- addresses, traces, import hygiene -------------------------------------------------


@given(macs)
def test_mac_round_trip(mac: bytes) -> None:
    assert parse_mac(mac_str(mac)) == mac
    assert parse_mac(mac_str(mac).upper()) == mac


def test_mac_text() -> None:
    assert mac_str(bytes.fromhex("020000000001")) == "02:00:00:00:00:01"
    assert parse_mac("2:0:0:0:0:a") == bytes.fromhex("02000000000a")
    assert parse_mac("02-00-00-00-00-01") == bytes.fromhex("020000000001")
    for bad in ["", "02:00:00:00:00", "02:00:00:00:00:01:02", "02:00:00:00:00:0g", "002:0:0:0:0:1"]:
        with pytest.raises(ValueError):
            parse_mac(bad)


def test_to_scapy() -> None:
    seg = Segment(1234, 80, 5, flags=Flags.SYN, options=Options(mss=1460))
    pkt = to_scapy(encode_tcp(MAC_A, MAC_B, IP_A, IP_B, seg))
    assert pkt[IP].src == IP_A
    assert pkt[TCP].sport == 1234
    assert pkt[TCP].options == [("MSS", 1460)]


def test_wire_does_not_import_scapy() -> None:
    code = "import sys, tcpstack.wire; sys.exit('scapy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    assert "scapy" not in wire.__dict__
