"""Segments written as packetdrill and tcpdump write them, relative to each side's ISN.

    S 0:0(0) win 65535 <mss 1460,sackOK,TS val 100 ecr 0,nop,wscale 7>
    S. 0:0(0) ack 1 win * <mss *,!TS>
    P. 1:101(100) ack 1
    R 1:1(0)

Flags are tcpdump's letters ("." is ACK, "none" is no flag at all). `start:end(len)`
is the sequence range relative to the sender's initial sequence number, so a SYN is at
0 and the first data byte at 1; `ack` is relative to the receiver's. For a segment
the scripted peer injects, every field given is put on the wire and options are
encoded in exactly the order written (a `nop` before `mss` misaligns it on purpose),
`raw 0a02` adds bytes as they are, and the option area is padded with zeros. For a
segment the device under test is expected to send, a field left out or written `*`
matches anything; a listed option must be present with the values given (`*` for
any), `!name` says it must be absent, and options not listed are not checked, since
two correct TCPs legitimately differ in them.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from tcpstack.core.segment import Flags, Options, Segment, flags_str, parse_flags

ANY = None  # a field that matches anything

_RANGE = re.compile(r"^(\*|-?\d+):(\*|-?\d+)\((\*|\d+)\)$")
_OPTION_NAMES = ("mss", "wscale", "sackOK", "TS", "sack", "nop", "eol", "raw")


class NotationError(ValueError):
    """A segment line that does not parse."""


@dataclass(frozen=True, slots=True)
class OptionSpec:
    name: str  # one of _OPTION_NAMES
    values: tuple[int | None, ...] = ()  # None is a wildcard in an expectation
    absent: bool = False  # "!name": the option must not be there
    raw: bytes = b""  # for "raw": the bytes themselves

    def __str__(self) -> str:
        if self.absent:
            return f"!{self.name}"
        if self.name == "raw":
            return f"raw {self.raw.hex()}"
        if self.name == "TS":
            val, ecr = self.values
            return f"TS val {_num(val)} ecr {_num(ecr)}"
        if self.name == "sack":
            pairs = zip(self.values[::2], self.values[1::2], strict=True)
            return "sack " + " ".join(f"{_num(a)}:{_num(b)}" for a, b in pairs)
        return " ".join([self.name, *(_num(v) for v in self.values)])


@dataclass(frozen=True, slots=True)
class SegmentSpec:
    flags: Flags
    start: int | None = 0  # relative sequence number of the first octet (SYN or data)
    length: int | None = 0  # payload octets
    ack: int | None = ANY  # relative; ANY with ACK set in an expectation: any ack
    window: int | None = ANY
    urgent: int | None = ANY
    options: tuple[OptionSpec, ...] | None = None  # None: not written
    optional: Flags = Flags(0)  # "P?": flags an expectation does not care about

    @property
    def end(self) -> int | None:
        if self.start is None or self.length is None:
            return None
        return self.start + self.length

    def __str__(self) -> str:
        letters = flags_str(self.flags)
        if self.optional:
            letters = flags_str(self.optional) + "?" + letters.replace("P", "")
        text = f"{letters} {_num(self.start)}:{_num(self.end)}({_num(self.length)})"
        if self.flags & Flags.ACK:
            text += f" ack {_num(self.ack)}"
        if self.window is not None:
            text += f" win {self.window}"
        if self.urgent is not None:
            text += f" urg {self.urgent}"
        if self.options is not None:
            text += " <" + ",".join(str(o) for o in self.options) + ">"
        return text


def _num(value: int | None) -> str:
    return "*" if value is None else str(value)


def _int(token: str) -> int | None:
    if token == "*":
        return None
    try:
        return int(token, 0)
    except ValueError:
        raise NotationError(f"not a number: {token!r}") from None


def parse(text: str) -> SegmentSpec:
    """`S. 0:0(0) ack 1 win 65535 <mss 1460>` as a SegmentSpec."""
    body, _, rest = text.partition("<")
    options = None
    if rest:
        inner, close, trailing = rest.partition(">")
        if not close or trailing.strip():
            raise NotationError(f"options must end the line with '>': {text!r}")
        options = _parse_options(inner)
    tokens = body.split()
    if not tokens:
        raise NotationError("an empty segment")
    letters = tokens[0]
    optional = Flags(0)
    if "?" in letters:
        # Only PSH: where a sender sets it is its own choice (RFC 9293 §3.9.1.2).
        if letters.replace("P?", "").count("?"):
            raise NotationError(f"only PSH can be optional (P?): {letters!r}")
        optional, letters = Flags.PSH, letters.replace("P?", "") or "none"
    try:
        flags = parse_flags(letters)
    except KeyError:
        raise NotationError(f"unknown flag letters {tokens[0]!r} (tcpdump's: SFRPUEW.)") from None
    start: int | None = 0
    length: int | None = 0
    i = 1
    if i < len(tokens) and (m := _RANGE.match(tokens[i])):
        start, end, length = _int(m.group(1)), _int(m.group(2)), _int(m.group(3))
        if None not in (start, end, length) and end != start + length:  # type: ignore[operator]
            raise NotationError(f"{tokens[i]}: end is not start plus length")
        i += 1
    fields: dict[str, int | None] = {}
    while i < len(tokens):
        name = tokens[i]
        if name not in ("ack", "win", "urg") or i + 1 >= len(tokens):
            raise NotationError(f"unexpected {name!r} in {text!r}")
        fields[name] = _int(tokens[i + 1])
        i += 2
    if "ack" in fields and not flags & Flags.ACK:
        raise NotationError(f"an ack number without the ACK flag: {text!r}")
    return SegmentSpec(
        flags,
        start,
        length,
        fields.get("ack"),
        fields.get("win"),
        fields.get("urg"),
        options,
        optional,
    )


def _parse_options(text: str) -> tuple[OptionSpec, ...]:
    specs = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        absent = part.startswith("!")
        words = part.lstrip("!").split()
        name = words[0]
        if name not in _OPTION_NAMES:
            raise NotationError(f"unknown option {name!r} (known: {', '.join(_OPTION_NAMES)})")
        if absent:
            specs.append(OptionSpec(name, absent=True))
        elif name == "raw":
            specs.append(OptionSpec(name, raw=bytes.fromhex("".join(words[1:]))))
        elif name == "TS":
            if len(words) != 5 or words[1] != "val" or words[3] != "ecr":
                raise NotationError(f"write timestamps as 'TS val N ecr N': {part!r}")
            specs.append(OptionSpec(name, (_int(words[2]), _int(words[4]))))
        elif name == "sack":
            values: list[int | None] = []
            for block in words[1:]:
                left, colon, right = block.partition(":")
                if not colon:
                    raise NotationError(f"write SACK blocks as 'sack L:R L:R': {part!r}")
                values += [_int(left), _int(right)]
            specs.append(OptionSpec(name, tuple(values)))
        elif name in ("mss", "wscale"):
            if len(words) != 2:
                raise NotationError(f"{name} takes one value: {part!r}")
            specs.append(OptionSpec(name, (_int(words[1]),)))
        else:
            specs.append(OptionSpec(name))
    return tuple(specs)


# -------------------------------------------------------------------- encoding

_KIND = {"eol": 0, "nop": 1, "mss": 2, "wscale": 3, "sackOK": 4, "sack": 5, "TS": 8}


def encode_options(specs: tuple[OptionSpec, ...], *, seq_base: int) -> bytes:
    """The option bytes in the order written, zero-padded to a 32-bit boundary.
    SACK edges are relative to `seq_base` (the receiver of the SACK's ISN)."""
    out = bytearray()
    for spec in specs:
        if spec.absent:
            continue
        values = [0 if v is None else v for v in spec.values]
        if spec.name in ("eol", "nop"):
            out.append(_KIND[spec.name])
        elif spec.name == "raw":
            out += spec.raw
        elif spec.name == "mss":
            out += struct.pack("!BBH", 2, 4, values[0] & 0xFFFF)
        elif spec.name == "wscale":
            out += bytes((3, 3, values[0] & 0xFF))
        elif spec.name == "sackOK":
            out += b"\x04\x02"
        elif spec.name == "TS":
            out += struct.pack("!BBII", 8, 10, values[0] & 0xFFFFFFFF, values[1] & 0xFFFFFFFF)
        elif spec.name == "sack":
            out += bytes((5, 2 + 4 * len(values)))
            for edge in values:
                out += struct.pack("!I", (seq_base + edge) & 0xFFFFFFFF)
    if len(out) % 4:
        out += bytes(4 - len(out) % 4)
    return bytes(out)


# -------------------------------------------------------------------- matching


def describe(seg: Segment, *, seq_base: int, ack_base: int) -> str:
    """A segment the device under test sent, in this notation, relative to the ISNs."""
    start = (seg.seq - seq_base) & 0xFFFFFFFF
    n = len(seg.payload)
    text = f"{flags_str(seg.flags)} {start}:{start + n}({n})"
    if seg.has_ack:
        text += f" ack {(seg.ack - ack_base) & 0xFFFFFFFF}"
    text += f" win {seg.window}"
    if seg.urgent:
        text += f" urg {seg.urgent}"
    parts = _options_text(seg.options, ack_base)
    return text + (f" <{','.join(parts)}>" if parts else "")


def _options_text(options: Options, ack_base: int) -> list[str]:
    parts = []
    if options.mss is not None:
        parts.append(f"mss {options.mss}")
    if options.sack_permitted:
        parts.append("sackOK")
    if options.timestamps is not None:
        parts.append(f"TS val {options.timestamps[0]} ecr {options.timestamps[1]}")
    if options.wscale is not None:
        parts.append(f"wscale {options.wscale}")
    if options.sack_blocks:
        blocks = (
            f"{(a - ack_base) & 0xFFFFFFFF}:{(b - ack_base) & 0xFFFFFFFF}"
            for a, b in options.sack_blocks
        )
        parts.append("sack " + " ".join(blocks))
    for kind, data in options.unknown:
        parts.append(f"raw {kind:02x}{len(data) + 2:02x}{data.hex()}")
    return parts


def mismatches(spec: SegmentSpec, seg: Segment, *, seq_base: int, ack_base: int) -> list[str]:
    """Why `seg` does not match the expectation `spec` (empty if it does).
    `seq_base` is the sender's ISN, `ack_base` the receiver's."""
    why = []
    if seg.flags & ~spec.optional != spec.flags & ~spec.optional:
        why.append(f"flags {flags_str(seg.flags)}, not {flags_str(spec.flags)}")
    start = (seg.seq - seq_base) & 0xFFFFFFFF
    if spec.start is not None and start != spec.start & 0xFFFFFFFF:
        why.append(f"seq {start}, not {spec.start}")
    if spec.length is not None and len(seg.payload) != spec.length:
        why.append(f"{len(seg.payload)} payload octets, not {spec.length}")
    if spec.ack is not None and seg.has_ack:
        ack = (seg.ack - ack_base) & 0xFFFFFFFF
        if ack != spec.ack & 0xFFFFFFFF:
            why.append(f"ack {ack}, not {spec.ack}")
    if spec.window is not None and seg.window != spec.window:
        why.append(f"win {seg.window}, not {spec.window}")
    if spec.urgent is not None and seg.urgent != spec.urgent:
        why.append(f"urg {seg.urgent}, not {spec.urgent}")
    for option in spec.options or ():
        problem = _option_mismatch(option, seg.options, ack_base)
        if problem:
            why.append(problem)
    return why


def _option_mismatch(spec: OptionSpec, options: Options, ack_base: int) -> str:
    present: dict[str, tuple[int, ...] | None] = {
        "mss": None if options.mss is None else (options.mss,),
        "wscale": None if options.wscale is None else (options.wscale,),
        "sackOK": () if options.sack_permitted else None,
        "TS": options.timestamps,
        "sack": (
            tuple((e - ack_base) & 0xFFFFFFFF for block in options.sack_blocks for e in block)
            if options.sack_blocks
            else None
        ),
    }
    if spec.name not in present:
        return ""  # nop, eol and raw bytes are layout, which is not compared
    have = present[spec.name]
    if spec.absent:
        return f"has {spec.name}, which must be absent" if have is not None else ""
    if have is None:
        return f"no {spec.name} option"
    if len(spec.values) != len(have) or any(
        want is not None and want != got for want, got in zip(spec.values, have, strict=False)
    ):
        return f"{spec}: the segment has {spec.name} {' '.join(map(str, have))}"
    return ""
