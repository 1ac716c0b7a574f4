"""The scripted peer's segment notation: parsing, printing, encoding and matching."""

from __future__ import annotations

import pytest

from tcpstack import wire
from tcpstack.core.segment import Flags, Options, Segment
from tcpstack.testing import notation
from tcpstack.testing.dut import release_matches
from tcpstack.testing.peer import Craft, build_frame, build_icmp_error, quote_of
from tcpstack.testing.script import pattern

MAC_A, MAC_B = b"\x02" * 6, b"\x04" * 6


def test_a_line_parses_into_its_fields_and_prints_back() -> None:
    spec = notation.parse("S. 0:0(0) ack 1 win 65535 <mss 1460,sackOK,TS val 5 ecr *,wscale 7>")
    assert spec.flags == Flags.SYN | Flags.ACK
    assert (spec.start, spec.length, spec.ack, spec.window) == (0, 0, 1, 65535)
    assert [o.name for o in spec.options or ()] == ["mss", "sackOK", "TS", "wscale"]
    assert str(spec) == "S. 0:0(0) ack 1 win 65535 <mss 1460,sackOK,TS val 5 ecr *,wscale 7>"


@pytest.mark.parametrize(
    "bad",
    ["", "Q 0:0(0)", ". 1:5(3)", "S 0:0(0) ack 1", ". 1:1(0) <mss 1", ". 1:1(0) <bogus 3>"],
)
def test_malformed_lines_are_refused(bad: str) -> None:
    with pytest.raises(notation.NotationError):
        notation.parse(bad)


def test_matching_is_relative_to_both_isns() -> None:
    seg = Segment(80, 40000, seq=1000 + 1, ack=5000 + 101, flags=Flags.ACK, window=100)
    spec = notation.parse(". 1:1(0) ack 101")
    assert notation.mismatches(spec, seg, seq_base=1000, ack_base=5000) == []
    wrong = notation.parse(". 1:1(0) ack 102 win 99")
    assert notation.mismatches(wrong, seg, seq_base=1000, ack_base=5000) == [
        "ack 101, not 102",
        "win 100, not 99",
    ]


def test_psh_can_be_left_open_and_options_required_or_forbidden() -> None:
    seg = Segment(80, 1, seq=1, ack=1, flags=Flags.ACK | Flags.PSH, options=Options(mss=1460))
    assert notation.mismatches(notation.parse("P?. 0:0(0)"), seg, seq_base=1, ack_base=0) == []
    assert notation.mismatches(notation.parse(". 0:0(0)"), seg, seq_base=1, ack_base=0)
    forbidden = notation.parse("P?. 0:0(0) <!mss>")
    assert notation.mismatches(forbidden, seg, seq_base=1, ack_base=0) == [
        "has mss, which must be absent"
    ]
    assert (
        notation.mismatches(notation.parse("P. 0:0(0) <mss *>"), seg, seq_base=1, ack_base=0) == []
    )


def test_options_are_encoded_in_the_order_written_and_padded_with_zeros() -> None:
    specs = notation.parse("S 0:0(0) <nop,mss 1460,wscale 7,raw 0a02>").options or ()
    assert notation.encode_options(specs, seq_base=0) == bytes.fromhex("01020405b40303070a020000")


def test_a_built_frame_decodes_as_written_and_a_crafted_one_does_not() -> None:
    opts = notation.encode_options(notation.parse("S 0:0(0) <mss 1000>").options or (), seq_base=0)
    fields = dict(src_port=1, dst_port=2, seq=7, ack=0, flags=2, window=512, options=opts)
    frame = build_frame(MAC_A, MAC_B, "198.18.0.1", "198.18.0.2", **fields)  # type: ignore[arg-type]
    packet = wire.decode_frame(frame)
    assert isinstance(packet, wire.TcpPacket)
    assert packet.segment.options.mss == 1000 and packet.segment.seq == 7
    for craft, reason in (
        (Craft(bad_tcp_checksum=True), "tcp_bad_checksum"),
        (Craft(bad_ip_checksum=True), "ip_bad_checksum"),
        (Craft(data_offset=4), "tcp_bad_offset"),
    ):
        broken = build_frame(MAC_A, MAC_B, "198.18.0.1", "198.18.0.2", craft=craft, **fields)  # type: ignore[arg-type]
        with pytest.raises(wire.DecodeError) as refused:
            wire.decode_frame(broken)
        assert refused.value.reason == reason


def test_a_crafted_frame_can_go_to_and_come_from_other_addresses() -> None:
    fields = dict(src_port=1, dst_port=2, seq=7, ack=0, flags=2, window=512)
    craft = Craft(
        ip_source="198.18.0.9", ip_destination="224.0.0.1", mac_destination=wire.BROADCAST_MAC
    )
    frame = build_frame(MAC_A, MAC_B, "198.18.0.1", "198.18.0.2", craft=craft, **fields)  # type: ignore[arg-type]
    packet = wire.decode_frame(frame)  # the checksum is right for the addresses used
    assert isinstance(packet, wire.TcpPacket)
    assert (packet.src_ip, packet.dst_ip, packet.dst_mac) == (
        "198.18.0.9",
        "224.0.0.1",
        wire.BROADCAST_MAC,
    )


def test_an_icmp_error_quotes_the_ip_header_and_8_octets_of_the_segment() -> None:
    fields = dict(src_port=1, dst_port=2, seq=7, ack=0, flags=2, window=512)
    segment = build_frame(MAC_A, MAC_B, "198.18.0.2", "198.18.0.1", payload=b"x" * 100, **fields)  # type: ignore[arg-type]
    quote = quote_of(segment)
    assert quote == segment[14 : 14 + 20 + 8]
    frame = build_icmp_error(
        MAC_B, MAC_A, "198.18.0.1", "198.18.0.2", icmp_type=4, code=0, quote=quote
    )
    ip, icmp = frame[14:34], frame[34:]
    assert ip[9] == wire.PROTO_ICMP and int.from_bytes(ip[2:4], "big") == 20 + len(icmp)
    assert wire.internet_checksum(ip) == 0 and wire.internet_checksum(icmp) == 0
    assert icmp[:2] == bytes((4, 0)) and icmp[8:] == quote


def test_the_stream_pattern_has_no_short_repeats() -> None:
    data = pattern(0, 251)
    assert len(set(data)) == 251 and pattern(10, 5) == data[10:15]


@pytest.mark.parametrize(
    ("condition", "release", "holds"),
    [
        ("", "6.1.0", True),
        (">=6.10", "6.18.44-fc-v595", True),
        (">=6.10", "6.9.2", False),
        ("<6.10", "6.9.2", True),
        ("==6.18", "6.18.44", True),
    ],
)
def test_kernel_conditions_key_on_uname_r(condition: str, release: str, holds: bool) -> None:
    assert release_matches(condition, release) is holds
