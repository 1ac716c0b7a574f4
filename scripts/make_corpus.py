#!/usr/bin/env python3
"""Write tests/corpus/malformed.json: hostile and malformed frames built with scapy.

Each entry names the frame, holds it in hex, and says what the endpoint must do:
`drop:<reason>` for a frame the decoder refuses (the counter is drop_<reason>), or
`tcp:<counter>` for a well-formed frame whose TCP is nonsense, which the stack
answers or ignores and counts under that name. Frames are addressed to the lab's
endpoint (198.18.0.2, MAC 02:00:00:00:00:02) from the kernel peer (198.18.0.1),
aimed at a listener on port 80.

Run: .venv/bin/python scripts/make_corpus.py   (the output is committed)
"""

from __future__ import annotations

import json
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

OUT = Path(__file__).resolve().parent.parent / "tests" / "corpus" / "malformed.json"
OUR_MAC, PEER_MAC = "02:00:00:00:00:02", "02:00:00:00:00:01"
OUR_IP, PEER_IP = "198.18.0.2", "198.18.0.1"
PORT = 80


def eth() -> Ether:
    return Ether(src=PEER_MAC, dst=OUR_MAC)


def ip(**kw: object) -> IP:
    fields = {"src": PEER_IP, "dst": OUR_IP}
    fields.update(kw)
    return IP(**fields)


def tcp(**kw: object) -> TCP:
    fields = {"sport": 40000, "dport": PORT, "seq": 1000, "flags": "S", "window": 64240}
    fields.update(kw)
    return TCP(**fields)


def frame(pkt: object) -> bytes:
    return bytes(pkt)  # type: ignore[call-overload]


def with_byte(data: bytes, offset: int, value: int) -> bytes:
    out = bytearray(data)
    out[offset] = value
    return bytes(out)


def main() -> None:
    good = frame(eth() / ip() / tcp())
    entries: dict[str, tuple[bytes, str]] = {
        "ethernet header truncated": (good[:10], "drop:eth_truncated"),
        "ip header truncated": (good[:30], "drop:ip_truncated"),
        "tcp header truncated": (
            frame(eth() / ip(proto=6) / Raw(b"\x00" * 12)),
            "drop:tcp_truncated",
        ),
        "ihl below 5": (with_byte(good, 14, 0x44), "drop:ip_bad_ihl"),
        "ip version 6 in an ipv4 frame": (with_byte(good, 14, 0x65), "drop:ip_bad_version"),
        "total length above the frame": (frame(eth() / ip(len=1400) / tcp()), "drop:ip_bad_length"),
        "total length below the ip header": (
            frame(eth() / ip(len=19) / tcp()),
            "drop:ip_bad_length",
        ),
        "total length cutting the tcp header": (
            frame(eth() / ip(len=30) / tcp()),
            "drop:tcp_truncated",
        ),
        "bad ip checksum": (frame(eth() / ip(chksum=0x1234) / tcp()), "drop:ip_bad_checksum"),
        "bad tcp checksum": (frame(eth() / ip() / tcp(chksum=0x1234)), "drop:tcp_bad_checksum"),
        "data offset below 5": (frame(eth() / ip() / tcp(dataofs=4)), "drop:tcp_bad_offset"),
        "data offset beyond the segment": (
            frame(eth() / ip() / tcp(dataofs=15)),
            "drop:tcp_bad_offset",
        ),
        "option length 0": (
            frame(eth() / ip() / tcp(dataofs=6) / Raw(b"\x02\x00\x00\x00")),
            "drop:tcp_bad_options",
        ),
        "option length 1": (
            frame(eth() / ip() / tcp(dataofs=6) / Raw(b"\x08\x01\x00\x00")),
            "drop:tcp_bad_options",
        ),
        "option overrunning the header": (
            frame(eth() / ip() / tcp(dataofs=6) / Raw(b"\x02\x09\x05\xb4")),
            "drop:tcp_bad_options",
        ),
        "mss option of length 3": (
            frame(eth() / ip() / tcp(dataofs=6) / Raw(b"\x02\x03\x05\x00")),
            "drop:tcp_bad_options",
        ),
        "ip fragment (more fragments)": (frame(eth() / ip(flags="MF") / tcp()), "drop:ip_fragment"),
        "ip fragment (offset)": (frame(eth() / ip(frag=10) / tcp()), "drop:ip_fragment"),
        # IP options are skipped (MUST-50): this one reaches TCP, which drops it there.
        "ip options": (
            frame(eth() / ip(options=[b"\x01\x01\x01\x01"]) / tcp(flags="")),
            "tcp:drop_listen_no_syn",
        ),
        "broadcast source": (
            frame(eth() / ip(src="255.255.255.255") / tcp()),
            "drop:ip_bad_source",
        ),
        "multicast source": (frame(eth() / ip(src="224.0.0.1") / tcp()), "drop:ip_bad_source"),
        "ttl 0": (frame(eth() / ip(ttl=0) / tcp()), "drop:ip_ttl_zero"),
        "udp": (frame(eth() / ip(proto=17) / Raw(b"\x00" * 8)), "drop:ip_unsupported_protocol"),
        "ipv6": (frame(Ether(src=PEER_MAC, dst=OUR_MAC) / IPv6() / TCP()), "drop:not_ipv4"),
        "arp with ipv6 protocol type": (
            frame(Ether(src=PEER_MAC, dst=OUR_MAC) / ARP(ptype=0x86DD, plen=16)),
            "drop:arp_unsupported",
        ),
        "icmp truncated": (frame(eth() / ip(proto=1) / Raw(b"\x08\x00")), "drop:icmp_truncated"),
        "icmp bad checksum": (frame(eth() / ip() / ICMP(chksum=0x1234)), "drop:icmp_bad_checksum"),
        # Well-formed frames with hostile TCP: answered or ignored, never fatal.
        "source equal to destination (land)": (
            frame(eth() / ip(src=OUR_IP) / tcp()),
            "tcp:drop_bad_source",
        ),
        "source outside the link": (
            frame(eth() / ip(src="198.19.1.1") / tcp()),
            "tcp:drop_bad_source",
        ),
        "syn+fin": (frame(eth() / ip() / tcp(flags="SF")), "tcp:drop_listen_syn_fin"),
        "syn+rst": (frame(eth() / ip() / tcp(flags="SR")), "tcp:drop_listen_rst"),
        "no flags at all": (frame(eth() / ip() / tcp(flags="")), "tcp:drop_listen_no_syn"),
        "urgent data without ack": (
            frame(eth() / ip() / tcp(flags="U", urgptr=5) / Raw(b"hello")),
            "tcp:drop_listen_no_syn",
        ),
        "ack to a listener": (frame(eth() / ip() / tcp(flags="A", ack=12345)), "tcp:resets_sent"),
        "window scale above 14": (
            frame(eth() / ip() / tcp(options=[("MSS", 1460), ("WScale", 15)])),
            "tcp:segments_in",
        ),
        "segment to a closed port": (frame(eth() / ip() / tcp(dport=81)), "tcp:tcp_no_connection"),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    records = [
        {"name": name, "expect": expect, "hex": data.hex()}
        for name, (data, expect) in entries.items()
    ]
    OUT.write_text(json.dumps(records, indent=1) + "\n")
    print(f"wrote {len(records)} frames to {OUT}")


if __name__ == "__main__":
    main()
