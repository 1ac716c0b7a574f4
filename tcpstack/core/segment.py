"""TCP segments as frozen values, printed the way packetdrill and tcpdump print them."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tcpstack.core import seq


class Flags(enum.IntFlag):
    """TCP control bits, valued as in the header's flags byte (RFC 9293 §3.1)."""

    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80

    # enum's own operators build each result through EnumType.__call__ (~1.5 µs),
    # several times per segment; a table of the 256 values makes them cheap.
    def __and__(self, other: int) -> Flags:
        return _BY_VALUE[int.__and__(self, other) & 0xFF]

    def __or__(self, other: int) -> Flags:
        return _BY_VALUE[int.__or__(self, other) & 0xFF]

    __rand__ = __and__
    __ror__ = __or__


_BY_VALUE: tuple[Flags, ...] = tuple(Flags(i) for i in range(256))
NO_FLAGS = Flags(0)

# tcpdump's letters, in tcpdump's order; "." stands for ACK.
_LETTERS = (
    (Flags.SYN, "S"),
    (Flags.FIN, "F"),
    (Flags.RST, "R"),
    (Flags.PSH, "P"),
    (Flags.URG, "U"),
    (Flags.ECE, "E"),
    (Flags.CWR, "W"),
    (Flags.ACK, "."),
)


def flags_str(flags: Flags) -> str:
    """tcpdump-style flag letters, e.g. ``S.`` for SYN-ACK; ``none`` for no flags."""
    text = "".join(letter for bit, letter in _LETTERS if flags & bit)
    return text or "none"


def parse_flags(text: str) -> Flags:
    """Inverse of flags_str: ``"S."`` -> SYN|ACK."""
    out = NO_FLAGS
    if text == "none":
        return out
    table = {letter: bit for bit, letter in _LETTERS}
    for ch in text:
        out |= table[ch]
    return out


@dataclass(frozen=True, slots=True)
class Options:
    """The TCP options this endpoint understands. Unknown options are kept raw."""

    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    timestamps: tuple[int, int] | None = None
    sack_blocks: tuple[tuple[int, int], ...] = ()
    unknown: tuple[tuple[int, bytes], ...] = ()

    def encoded_length(self) -> int:
        """Bytes these options take in the header, padded as tcpstack.wire lays them out."""
        n = 4 if self.mss is not None else 0
        if self.timestamps is not None:
            n += 12  # NOP,NOP,TS or sackOK,TS
        elif self.sack_permitted:
            n += 4
        if self.wscale is not None:
            n += 4
        if self.sack_blocks:
            n += 4 + 8 * len(self.sack_blocks)
        for _, data in self.unknown:
            n += 2 + len(data)
        return (n + 3) & ~3

    def __str__(self) -> str:
        parts = []
        if self.mss is not None:
            parts.append(f"mss {self.mss}")
        if self.sack_permitted:
            parts.append("sackOK")
        if self.timestamps is not None:
            parts.append(f"TS val {self.timestamps[0]} ecr {self.timestamps[1]}")
        if self.wscale is not None:
            parts.append(f"wscale {self.wscale}")
        if self.sack_blocks:
            parts.append("sack " + " ".join(f"{a}:{b}" for a, b in self.sack_blocks))
        for kind, data in self.unknown:
            parts.append(f"opt-{kind}[{data.hex()}]")
        return ",".join(parts)


NO_OPTIONS = Options()


# The ECN field of the IP header (RFC 3168 §5).
NOT_ECT = 0
ECT_1 = 1
ECT_0 = 2
CE = 3


@dataclass(frozen=True, slots=True)
class Segment:
    """One TCP segment, without its IP addresses.

    ``ack`` is only meaningful when ``flags`` has ACK; decoders keep the raw field
    so traces show what was on the wire. ``ecn`` is the ECN field of the IP header
    the segment rides in (RFC 3168 §5: NOT_ECT, ECT_1, ECT_0 or CE): an IP matter,
    kept here because TCP is what sets and reads it.
    """

    src_port: int
    dst_port: int
    seq: int
    ack: int = 0
    flags: Flags = NO_FLAGS
    window: int = 0
    options: Options = NO_OPTIONS
    payload: bytes = b""
    urgent: int = 0
    ecn: int = 0

    @property
    def has_ack(self) -> bool:
        return bool(self.flags & Flags.ACK)

    @property
    def syn(self) -> bool:
        return bool(self.flags & Flags.SYN)

    @property
    def fin(self) -> bool:
        return bool(self.flags & Flags.FIN)

    @property
    def rst(self) -> bool:
        return bool(self.flags & Flags.RST)

    @property
    def seg_len(self) -> int:
        """SEG.LEN: payload octets plus one for SYN and one for FIN (RFC 9293 §3.4)."""
        return (
            len(self.payload)
            + (1 if self.flags & Flags.SYN else 0)
            + (1 if self.flags & Flags.FIN else 0)
        )

    @property
    def end_seq(self) -> int:
        return seq.add(self.seq, self.seg_len)

    def describe(self, *, seq_base: int = 0, ack_base: int = 0) -> str:
        """packetdrill-style text; bases make the numbers relative (pass ISS / IRS)."""
        start = seq.sub(self.seq, seq_base) if seq_base else self.seq
        text = f"{flags_str(self.flags)} {start}:{start + len(self.payload)}({len(self.payload)})"
        if self.has_ack:
            ack = seq.sub(self.ack, ack_base) if ack_base else self.ack
            text += f" ack {ack}"
        text += f" win {self.window}"
        opts = str(self.options)
        if opts:
            text += f" <{opts}>"
        return text

    def __str__(self) -> str:
        return f"{self.src_port} > {self.dst_port}: {self.describe()}"
