"""pcapng files of what the endpoint sent and received, annotated with our TCP state.

`PcapWriter` is a trace subscriber (`Stack.subscribe`) that writes every frame
the endpoint sent or received to a pcapng file, each with a packet comment
holding the connection's state and variables at that moment, so Wireshark shows
what our side believed next to what was on the wire. `write_pcapng` does the same
for events recorded earlier (`tcpstack.trace.Recorder().events`).

    with PcapWriter("trace.pcapng") as pcap:
        stack.subscribe(pcap)
        ...
        stack.close()  # or stack.unsubscribe(pcap): no events after close()

Which events become packets
---------------------------
- Every event with frame bytes: a `SegmentEvent` (a segment of a connection,
  in or out) or a `FrameEvent` (ARP, ICMP, a segment to no connection and our
  RST to it). That includes frames that arrived and were then dropped
  (malformed, a forged source, or dropped by an incoming hook): they did reach
  the interface, so they are in the file, and the comment's note says why they
  went no further.
- A `SegmentEvent` without frame bytes is one an outgoing hook dropped: it never
  reached the wire, so it is left out. With ``include_dropped=True`` it is
  written anyway, rebuilt from the segment with all-zero MAC addresses (the
  engine never chose any) and no IP ID; its note ("dropped by hook ...") says it
  was not sent. This shows where a test's drop happened, at the cost of the
  file no longer being what a capture on the interface would show.
- State, timer and retransmission events carry no frame and are not written.

Packet comments
---------------
One line of space-separated ``key=value`` pairs in a fixed order; `parse_comment`
turns one back into a dict. For a segment of a connection:

    dir=out state=ESTABLISHED snd_una=1001 snd_nxt=1006 rcv_nxt=7001
    snd_wnd=65535 rcv_wnd=64240 cwnd=14600 srtt=1.234ms rto=201.234ms
    rel_seq=1 rel_ack=1 note="dropped by hook"

(on one line). ``dir`` is ``in`` or ``out``; ``state`` the RFC 9293 state name.
``snd_una``, ``snd_nxt`` and ``rcv_nxt`` are absolute, so they compare directly
with the sequence numbers on the wire (Wireshark's ``tcp.seq_raw``); ``rel_seq``
and ``rel_ack`` count from the ISN of the segment's sender and receiver, like
Wireshark's relative numbers (negative for a number before the ISN, as
`tcpstack.trace` and the ladder count them). ``snd_wnd`` is the peer's window as
we use it, ``rcv_wnd`` the window we advertise, ``cwnd`` the congestion window,
all in bytes. ``srtt`` and ``rto`` are milliseconds to the microsecond, suffixed
``ms``; ``srtt=-`` before the first RTT sample, ``rel_ack=-`` on a segment
without ACK. For a received segment the values are those after we processed it
(before, for one an incoming hook dropped: we never processed it). ``note`` is
present only when the event has one; its value is in double quotes, with ``"``
and ``\\`` escaped by a backslash (shell-style, so `shlex.split` reads it too).

For other frames the comment is ``dir=in note="arp"``: the direction and the
engine's note ("arp request", "icmp echo reply", "to no connection",
"dropped: tcp_bad_checksum", ...).

Direction and time
------------------
Each packet's direction is also in its pcapng flags (``epb_flags``: inbound or
outbound), which Wireshark shows as ``frame.packet_flags_direction``.

Events carry `time.monotonic()` readings, which have no fixed epoch; pcapng wants
wall-clock time. The writer measures the offset between `time.time_ns()` and
`time.monotonic_ns()` once, when it is created, and adds it to every event's
time, so the packets keep the monotonic clock's spacing exactly (a wall clock
stepped mid-capture does not reorder or stretch them) while their absolute times
are as accurate as the wall clock was at creation. ``epoch_offset=`` sets the
offset instead, e.g. for reproducible files. Timestamps are written in
nanoseconds (``if_tsresol`` 9).

Why our own writer and not scapy's `PcapNgWriter`: scapy's takes only a file
name, takes comments and direction as attributes of a scapy `Packet` (building
one per frame on the engine's thread), writes an unnamed interface block first
and another for each named interface, and stores microseconds through a float.
The format itself is three kinds of block, written here with `struct`; the tests
read the files back with both tshark and scapy.
"""

from __future__ import annotations

import os
import shlex
import struct
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Protocol

from tcpstack import wire
from tcpstack.core import seq
from tcpstack.core.segment import Flags
from tcpstack.trace import FrameEvent, SegmentEvent, TraceEvent

__all__ = ["BinaryFile", "PcapWriter", "comment_for", "parse_comment", "write_pcapng"]

# pcapng block types and option codes (draft-ietf-opsawg-pcapng).
_SHB = 0x0A0D0D0A
_IDB = 0x00000001
_EPB = 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END = 0
_OPT_COMMENT = 1
_SHB_USERAPPL = 4
_IF_NAME = 2
_IF_TSRESOL = 9
_EPB_FLAGS = 2
_LINKTYPE_ETHERNET = 1
# veth hands us GSO super-frames of up to 64 KiB; a limit well above that keeps
# readers from truncating them.
_SNAPLEN = 262144
_INBOUND, _OUTBOUND = 1, 2
_ZERO_MAC = b"\0" * 6
_ACK = int(Flags.ACK)


class BinaryFile(Protocol):
    """What the writer needs of a file object: an open binary file, BytesIO, ..."""

    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...

    def close(self) -> object: ...


def _option(code: int, value: bytes) -> bytes:
    # The length field counts the value without the padding to 32 bits.
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(kind: int, body: bytes, options: bytes = b"") -> bytes:
    if options:
        options += struct.pack("<HH", _OPT_END, 0)
    body += b"\0" * (-len(body) % 4)
    length = 12 + len(body) + len(options)
    return struct.pack("<II", kind, length) + body + options + struct.pack("<I", length)


def _header(interface_name: str) -> bytes:
    shb = _block(
        _SHB,
        # Version 1.0; section length -1: not known, as we write as we go.
        struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1),
        _option(_SHB_USERAPPL, b"tcpstack"),
    )
    idb = _block(
        _IDB,
        struct.pack("<HHI", _LINKTYPE_ETHERNET, 0, _SNAPLEN),
        _option(_IF_NAME, interface_name.encode()) + _option(_IF_TSRESOL, bytes([9])),
    )
    return shb + idb


def _flags_option(direction: int) -> bytes:
    return _option(_EPB_FLAGS, struct.pack("<I", direction)) + struct.pack("<HH", _OPT_END, 0)


_FLAGS = {"in": _flags_option(_INBOUND), "out": _flags_option(_OUTBOUND)}


def _packet(frame: bytes, ns: int, direction: str, comment: str) -> bytes:
    # One join rather than _block's concatenations: this runs for every frame on
    # the engine's thread, and copying a full-sized frame several times shows.
    ns = max(ns, 0)
    size = len(frame)
    pad = -size % 4
    options = _option(_OPT_COMMENT, comment.encode()) + _FLAGS[direction]
    length = 32 + size + pad + len(options)
    return b"".join(
        (
            struct.pack("<7I", _EPB, length, 0, ns >> 32, ns & 0xFFFFFFFF, size, size),
            frame,
            b"\0" * pad,
            options,
            struct.pack("<I", length),
        )
    )


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.3f}ms"


def comment_for(event: SegmentEvent | FrameEvent) -> str:
    """The packet comment for an event, in the format the module docstring gives."""
    if isinstance(event, FrameEvent):
        return f"dir={event.direction} note={_quote(event.note)}"
    seg = event.segment
    # int() first: IntFlag's own & costs more than the rest of this line.
    rel_ack = seq.sub(seg.ack, event.ack_base) if int(seg.flags) & _ACK else None
    text = (
        f"dir={event.direction} state={event.state.name}"
        f" snd_una={event.snd_una} snd_nxt={event.snd_nxt} rcv_nxt={event.rcv_nxt}"
        f" snd_wnd={event.snd_wnd} rcv_wnd={event.rcv_wnd} cwnd={event.cwnd}"
        f" srtt={_ms(event.srtt)} rto={_ms(event.rto)}"
        f" rel_seq={event.relative_seq} rel_ack={'-' if rel_ack is None else rel_ack}"
    )
    return f"{text} note={_quote(event.note)}" if event.note else text


def parse_comment(comment: str) -> dict[str, str]:
    """A packet comment back as {key: value}, values as written (``"1.234ms"``)."""
    pairs = (item.partition("=") for item in shlex.split(comment))
    return {key: value for key, _, value in pairs}


def _monotonic_epoch_offset_ns() -> int:
    # Read the wall clock on both sides of the monotonic one: their midpoint is
    # within half the (sub-microsecond) gap of the true offset.
    before = time.time_ns()
    mono = time.monotonic_ns()
    after = time.time_ns()
    return (before + after) // 2 - mono


class PcapWriter:
    """A trace subscriber that writes each frame event to a pcapng file.

    `target` is a path, or a buffered binary file open for writing (`open(...,
    "wb")`, `io.BytesIO`; flushed, not closed, by `close`): a raw unbuffered file
    may write only part of a block. The section and interface headers are written at once, so even
    a capture with no packets is a valid file.

    The engine calls subscribers with its lock held, from its own thread or an
    application thread, so `__call__` only formats and writes to a buffered
    file, and never raises: the first error (e.g. a full disk) is kept, later
    events are ignored (the file may end mid-block), and `close` raises it.
    Events that arrive after `close` are ignored, so closing before
    unsubscribing is harmless.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | BinaryFile,
        *,
        interface_name: str = "tcpstack",
        include_dropped: bool = False,
        epoch_offset: float | None = None,
    ) -> None:
        self.include_dropped = include_dropped
        self._offset_ns = (
            _monotonic_epoch_offset_ns() if epoch_offset is None else round(epoch_offset * 1e9)
        )
        self.packets = 0  # packets written
        self.skipped = 0  # frameless segment events left out (see the module docstring)
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._closed = False
        self._own = isinstance(target, str | os.PathLike)
        if isinstance(target, str | os.PathLike):
            self._file: BinaryFile = open(target, "wb")  # noqa: SIM115 - closed in close()
        else:
            self._file = target
        try:
            self._file.write(_header(interface_name))
        except BaseException:
            if self._own:
                self._file.close()
            raise

    @property
    def epoch_offset(self) -> float:
        """Seconds added to events' monotonic times to make them epoch times."""
        return self._offset_ns / 1e9

    def __call__(self, event: TraceEvent) -> None:
        if not isinstance(event, SegmentEvent | FrameEvent):
            return
        with self._lock:
            if self._closed or self._error is not None:
                return
            try:
                frame = event.frame or self._synthesize(event)
                if frame is None:
                    self.skipped += 1
                    return
                ns = round(event.time * 1e9) + self._offset_ns
                self._file.write(_packet(frame, ns, event.direction, comment_for(event)))
                self.packets += 1
            except Exception as exc:  # noqa: BLE001 - must not break the engine; see close()
                self._error = exc

    def _synthesize(self, event: SegmentEvent | FrameEvent) -> bytes | None:
        if not self.include_dropped or not isinstance(event, SegmentEvent):
            return None
        src, dst = event.local, event.remote
        if event.direction == "in":
            src, dst = dst, src
        try:
            return wire.encode_tcp(_ZERO_MAC, _ZERO_MAC, src[0], dst[0], event.segment)
        except ValueError:
            return None  # a hook rewrote it into something no frame can carry

    def flush(self) -> None:
        """Push buffered packets to the file, e.g. to read it while capturing."""
        with self._lock:
            if not self._closed and self._error is None:
                try:
                    self._file.flush()
                except Exception as exc:  # noqa: BLE001 - reported by close()
                    self._error = exc

    def close(self) -> None:
        """Finish the file (close it if we opened it). Raises the first error
        writing met, once. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            error, self._error = self._error, None
            try:
                if self._own:
                    self._file.close()
                else:
                    self._file.flush()
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def write_pcapng(
    target: str | os.PathLike[str] | BinaryFile,
    events: Iterable[TraceEvent],
    *,
    interface_name: str = "tcpstack",
    include_dropped: bool = False,
    epoch_offset: float | None = None,
) -> int:
    """Write recorded events (e.g. `Recorder().events`) as pcapng, as a PcapWriter
    subscribed at the time would have; the number of packets written.

    The default epoch offset is measured now, which is right for events recorded
    earlier in this boot of the machine (the monotonic clock's epoch is the boot).
    """
    writer = PcapWriter(
        target,
        interface_name=interface_name,
        include_dropped=include_dropped,
        epoch_offset=epoch_offset,
    )
    with writer:
        for event in events:
            writer(event)
    return writer.packets
