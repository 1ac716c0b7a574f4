"""A streaming checker of what an endpoint puts on the wire, fed trace events.

Conformance scripts test what an endpoint does in the situations someone thought of.
This module checks the rules that must hold in every situation, on every segment,
whatever the test was about: subscribe a `TraceChecker` to a stack (or run
`check_events` over a recording) and any test, benchmark or capture becomes a check
of the invariants below. A test passing while the endpoint breaks one of them is a
bug the retransmissions of TCP would otherwise hide.

What is checked is what the endpoint *sent* (SegmentEvent direction "out"); what it
received ("in") is only context: the peer's SYN options, window, ACKs and how far
its own sequence space reaches. Numbering follows the conformance plan:

* I-1  A frame's IPv4 header and TCP checksums are right (only for events that carry
  their frame). A frame whose TCP checksum field holds just the pseudo-header sum is
  one left to checksum offload (`wire.encode_tcp(partial_checksum=True)`) and passes.
* I-2  MSS, window scale and SACK-permitted appear only on SYNs, and a SYN-ACK offers
  window scale, SACK-permitted or timestamps only if the peer's SYN did (RFC 9293
  §3.2, RFC 7323 §2.2 and §3.2, RFC 2018 §2).
* I-3  Sequence space is used in order: every segment starts between our ISS and the
  end of the highest sequence number sent so far, so new data never leaves a gap;
  anything below that end is a retransmission and is fine. Retransmitted bytes are
  also compared with the bytes first sent at the same sequence number, on a sample:
  the first new byte of each new segment is remembered, at most _SAMPLES of them per
  connection, the oldest kept (retransmissions mostly resend the oldest data) and
  forgotten once the peer acknowledges them. Memory stays bounded; coverage of a
  large flight is partial.
* I-4  No data beyond the right edge of the peer's window (SEG.ACK + SEG.WND scaled,
  RFC 9293 §3.8.6 and RFC 7323 §2.3), judged against the furthest edge the peer
  ever advertised, since a window may shrink after data was legitimately sent into
  it. A one-byte zero-window probe just past the edge is allowed (§3.8.6.1). SYN and
  FIN occupy sequence numbers but are not data, so they do not count.
* I-6  The ACK field never moves backwards and never acknowledges more than the peer
  has sent (its highest sequence number, SYN and FIN included). A received segment
  that starts beyond the furthest right edge we advertised is unacceptable (RFC 9293
  §3.10.7.4) and does not count as sent: a blind attacker's forged segments, far
  off, are dropped by the endpoint and must not move that mark.
* I-7  The right edge of the window we offer (SEG.ACK + SEG.WND scaled by our shift)
  never moves left of the furthest one offered before by a whole unit of the scale
  or more (SHLD-14). Less is the truncation RFC 7323 §2.4 defines the field by, which
  a full buffer needs to close its window.
* I-8  Once both SYNs carried timestamps, every segment but a RST carries one too
  (RFC 7323 §3.2), and without both it is never sent on a non-SYN segment; our TSval
  never decreases.
* I-10 Nothing follows our FIN: no segment carries data beyond its sequence number
  and a FIN is never sent again at another one.
* I-15 The four reserved header bits are zero. `Segment` does not represent them, so
  they are read from the frame, when the event carries one.

Not checked: I-9 (never a RST in reply to a RST), since a stream of events does not
say which received segment a sent one answers, and a RST sent for another reason
just after a received one would be a false alarm.

Limits, all deliberate:

* A RST's numbers answer the segment that provoked it (its sequence number may be
  that segment's ACK, RFC 9293 §3.10.7.1), not our sequence space: RSTs are
  checked for I-1, I-2 and I-15 only, and end the connection.
* Checks that need the handshake (I-3, I-4, the "acknowledges more than sent" half
  of I-6, I-8's negotiation half, I-2 on SYN-ACKs) are armed only for connections
  whose SYNs the checker saw. Subscribed in mid-connection, it checks what it can.
* Segments whose `note` starts with "dropped" never reached the wire and are
  skipped, sent or received. Ones "held" by a delay hook leave later than they were
  made, so the hook, not the endpoint, reorders them: they are exempt from the
  ordering checks (ACK and TSval going backwards). Segments "rewritten" by a hook
  are checked as they went out: that is what the wire carried.
* Connections are keyed by (local, remote) address. A SYN with a new ISN, or any
  SYN once the previous connection on the key ended (a RST either way, a received
  segment or StateEvent that left it CLOSED, or both FINs acknowledged), starts
  afresh. But a received SYN on a key already known (on a live connection, one with
  a new ISN) starts afresh only if the event's `irs` snapshot shows the endpoint
  took it; otherwise it was challenged (RFC 5961 §4) or, in TIME-WAIT, answered
  with the old connection's ACK, and is ignored.

Everything compares sequence numbers modulo 2**32 (tcpstack.core.seq), and offsets
into our own sequence space are kept as unbounded integers from the ISS, so a
transfer of more than 4 GiB is measured correctly too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from tcpstack import wire
from tcpstack.core import seq
from tcpstack.core.segment import Segment
from tcpstack.core.state import State
from tcpstack.trace import Address, SegmentEvent, StateEvent, TraceEvent

__all__ = ["INVARIANTS", "MAX_VIOLATIONS", "TraceChecker", "Violation", "check_events"]

# The ids of the invariants checked here, as Violation.invariant names them.
INVARIANTS = ("I-1", "I-2", "I-3", "I-4", "I-6", "I-7", "I-8", "I-10", "I-15")
MAX_VIOLATIONS = 100
# Sampled bytes kept per connection for the retransmission comparison of I-3.
_SAMPLES = 32
# RFC 7323 §2.3: a shift above 14 is taken as 14.
_MAX_WSCALE = 14

# The flag bits as plain ints: Flags' own operators go through a table lookup each.
_FIN = 0x01
_SYN = 0x02
_RST = 0x04
_ACK = 0x10

_ETH_LEN = 14
_IPV4_HI, _IPV4_LO = 0x08, 0x00
_PROTO_TCP = 6


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant on one segment.

    `text` numbers sequence space relative to the ISN of the side it belongs to when
    the checker saw that ISN, and says "absolute" otherwise."""

    invariant: str
    connection: tuple[Address, Address]  # (local, remote)
    time: float
    text: str

    def __str__(self) -> str:
        (lip, lport), (rip, rport) = self.connection
        return f"{self.invariant} {lip}:{lport}>{rip}:{rport} at {self.time:.6f}: {self.text}"


class _Conn:
    """What one connection's checks need to remember: a few numbers, no segments."""

    __slots__ = (
        "iss",
        "snd_max",
        "sent",
        "fin",
        "fin_acked",
        "last_ack",
        "tsval",
        "our_wscale",
        "our_ts",
        "our_shift",
        "our_edge",
        "irs",
        "peer_max",
        "peer_fin",
        "peer_fin_acked",
        "peer_wscale",
        "peer_sack",
        "peer_ts",
        "edge",
        "samples",
        "ended",
        "una",
        "max_wnd",
    )

    def __init__(self) -> None:
        # Our side. iss is set only from our SYN, so "iss is not None" means we saw it.
        self.iss: int | None = None
        self.snd_max = 0  # sequence number just past the highest we sent
        self.sent = 0  # snd_max's distance from iss, unbounded
        self.fin: int | None = None  # our FIN's sequence number
        self.fin_acked = False
        self.last_ack: int | None = None
        self.tsval: int | None = None
        self.our_wscale = False
        self.our_ts = False
        self.our_shift = 0  # the window scale our SYN offered, capped at 14
        self.our_edge: int | None = None  # furthest right edge we advertised
        # The peer's side; irs is set only from its SYN.
        self.irs: int | None = None
        self.peer_max = 0  # just past the highest sequence number the peer sent
        self.peer_fin: int | None = None
        self.peer_fin_acked = False
        self.peer_wscale: int | None = None
        self.peer_sack = False
        self.peer_ts = False
        self.edge: int | None = None  # furthest right edge the peer advertised
        self.una: int | None = None  # the highest ACK of the peer's (SND.UNA)
        self.max_wnd = 0  # the largest window the peer offered (MAX.SND.WND), scaled
        # (offset from iss, byte) of data we sent, in increasing offset order.
        self.samples: deque[tuple[int, int]] | None = None
        self.ended = False


def _rel(x: int, base: int | None) -> str:
    return str(seq.sub(x, base)) if base is not None else f"{x} (absolute)"


class TraceChecker:
    """Subscribe it to a Stack (stack.subscribe(checker)) or feed it events; it keeps
    O(connections) state, not the events.

    It runs on the engine's thread for every segment, so the common path is a few
    integer comparisons; frames are only summed when they are present and
    `check_checksums` is on. Violations past the first MAX_VIOLATIONS are counted
    in `dropped`, not kept; `counts` has every violation, kept or not, by invariant.
    """

    def __init__(self, *, check_checksums: bool = True) -> None:
        self.check_checksums = check_checksums
        self.violations: list[Violation] = []
        self.dropped = 0
        self.counts: dict[str, int] = {}
        self._conns: dict[tuple[Address, Address], _Conn] = {}

    # ------------------------------------------------------------------ input

    def __call__(self, event: TraceEvent) -> None:
        if type(event) is SegmentEvent:
            note = event.note
            if note and note.startswith("dropped"):
                return
            if event.direction == "out":
                self._sent(event, note)
            else:
                self._received(event)
        elif type(event) is StateEvent and event.new is State.CLOSED:
            conn = self._conns.get((event.local, event.remote))
            if conn is not None:
                conn.ended = True

    def report(self) -> list[str]:
        """One line per violation kept, and one more saying how many were not."""
        lines = [str(v) for v in self.violations]
        if self.dropped:
            lines.append(f"... and {self.dropped} more violations not kept")
        return lines

    def _flag(self, invariant: str, event: SegmentEvent, text: str) -> None:
        self.counts[invariant] = self.counts.get(invariant, 0) + 1
        if len(self.violations) >= MAX_VIOLATIONS:
            self.dropped += 1
            return
        self.violations.append(Violation(invariant, (event.local, event.remote), event.time, text))

    # --------------------------------------------------------------- received

    def _received(self, ev: SegmentEvent) -> None:
        s = ev.segment
        f = int(s.flags)
        key = (ev.local, ev.remote)
        c = self._conns.get(key)
        if f & _SYN:
            if not f & _ACK:
                if c is None:
                    c = self._conns[key] = _Conn()
                elif c.ended:
                    if ev.irs != s.seq:
                        # Not taken: TIME-WAIT answers an unacceptable SYN with an
                        # ACK of the old connection (RFC 9293 §3.10.7.4), nothing new.
                        return
                    c = self._conns[key] = _Conn()
                elif c.irs is None:
                    if c.iss is None:  # only context from before: nothing to keep
                        c = self._conns[key] = _Conn()
                    # else a simultaneous open: our SYN is out, theirs crosses it
                elif c.irs != s.seq:
                    if ev.irs != s.seq:
                        return  # challenged, not taken: the old connection goes on
                    c = self._conns[key] = _Conn()
            elif c is None:
                c = self._conns[key] = _Conn()
            elif c.ended or (c.irs is not None and c.irs != s.seq):
                return  # a stray or bogus SYN-ACK: the endpoint answers it, not us
            if c.irs is None:
                o = s.options
                c.irs = s.seq
                c.peer_max = seq.add(s.seq, 1)
                c.peer_wscale = o.wscale
                c.peer_sack = o.sack_permitted
                c.peer_ts = o.timestamps is not None
        elif c is None:
            c = self._conns[key] = _Conn()
        elif c.ended:
            return
        if f & _RST or ev.state is State.CLOSED:
            if f & _RST and ev.state is not State.CLOSED:
                return  # not accepted (out of window, or challenged): no context
            c.ended = True
            return
        # A segment starting beyond the furthest edge we offered is not acceptable
        # (RFC 9293 §3.10.7.4): the endpoint drops it, so it extends nothing. Forged
        # segments far off (a blind attacker's) would otherwise move peer_max by up
        # to 2**31 and make every later ACK look beyond it, modulo 2**32.
        if c.irs is not None and (c.our_edge is None or not seq.gt(s.seq, c.our_edge)):
            fin_at = seq.add(s.seq, len(s.payload) + (1 if f & _SYN else 0))
            end = seq.add(fin_at, 1) if f & _FIN else fin_at
            if seq.gt(end, c.peer_max):
                c.peer_max = end
            if f & _FIN and c.peer_fin is None:
                c.peer_fin = fin_at
        if f & _ACK:
            self._peer_ack(c, s, f)

    def _peer_ack(self, c: _Conn, s: Segment, f: int) -> None:
        iss = c.iss
        if iss is None:
            return
        ack = s.ack
        ahead = seq.sub(ack, c.snd_max)
        if ahead > 0:
            return  # acknowledges what we never sent: the endpoint ignores it, so do we
        if c.fin is not None and seq.gt(ack, c.fin):
            c.fin_acked = True
            if c.peer_fin_acked:
                c.ended = True
        samples = c.samples
        if samples:
            acked = c.sent + ahead
            while samples and samples[0][0] < acked:
                samples.popleft()
        if c.irs is None:
            return  # without the peer's SYN its window scale is unknown
        if c.una is not None and seq.lt(ack, seq.add(c.una, -c.max_wnd)):
            # Older than SND.UNA - MAX.SND.WND: the endpoint drops it (RFC 5961 §5.2).
            # A blind attacker's ACK almost half the sequence space behind would
            # otherwise put the edge almost half of it ahead.
            return
        if f & _SYN:
            shift = 0  # a SYN's window is never scaled
        elif c.our_wscale and c.peer_wscale is not None:
            shift = min(c.peer_wscale, _MAX_WSCALE)
        else:
            shift = 0
        window = s.window << shift
        c.max_wnd = max(c.max_wnd, window)
        if c.una is None or seq.gt(ack, c.una):
            c.una = ack
        edge = seq.add(ack, window)
        if c.edge is None or seq.gt(edge, c.edge):
            c.edge = edge

    # ------------------------------------------------------------------- sent

    def _sent(self, ev: SegmentEvent, note: str) -> None:
        s = ev.segment
        frame = ev.frame
        if frame:
            self._check_frame(ev, frame)
        f = int(s.flags)
        key = (ev.local, ev.remote)
        c = self._conns.get(key)
        opts = s.options
        syn = f & _SYN
        if syn:
            # Only two SYNs continue what is known: one at our ISS again (a
            # retransmission, or the SYN-ACK of a simultaneous open), and the
            # SYN-ACK answering the peer's SYN. Any other starts a new connection.
            if (
                c is None
                or c.ended
                or not (c.iss == s.seq or (c.iss is None and f & _ACK and c.irs is not None))
            ):
                c = self._conns[key] = _Conn()
            if c.iss is None:
                c.iss = c.snd_max = s.seq
            c.our_wscale = opts.wscale is not None
            c.our_shift = min(opts.wscale, _MAX_WSCALE) if opts.wscale is not None else 0
            c.our_ts = opts.timestamps is not None
            if f & _ACK and c.irs is not None:
                offered = []
                if opts.wscale is not None and c.peer_wscale is None:
                    offered.append("window scale")
                if opts.sack_permitted and not c.peer_sack:
                    offered.append("SACK-permitted")
                if opts.timestamps is not None and not c.peer_ts:
                    offered.append("timestamps")
                if offered:
                    self._flag(
                        "I-2", ev, f"SYN-ACK offers {', '.join(offered)} the peer's SYN did not"
                    )
        else:
            if opts.mss is not None or opts.wscale is not None or opts.sack_permitted:
                found = [
                    name
                    for name, present in (
                        ("MSS", opts.mss is not None),
                        ("window scale", opts.wscale is not None),
                        ("SACK-permitted", opts.sack_permitted),
                    )
                    if present
                ]
                self._flag("I-2", ev, f"{', '.join(found)} on a segment without SYN")
            if c is None:
                c = self._conns[key] = _Conn()
            elif c.ended:
                return
        if f & _RST:
            c.ended = True
            return
        held = note.startswith("held") if note else False
        n = len(s.payload)
        start = s.seq
        data_start = seq.add(start, 1) if syn else start
        data_end = seq.add(data_start, n)
        iss = c.iss

        # I-3: in order, and (sampled) the same bytes when sent again.
        if iss is not None:
            gap = seq.sub(start, c.snd_max)
            if gap > 0:
                self._flag(
                    "I-3",
                    ev,
                    f"seq {_rel(start, iss)} leaves a gap of {gap}: "
                    f"the highest sent so far ends at {_rel(c.snd_max, iss)}",
                )
            offset = c.sent + gap
            if offset < 0:
                self._flag("I-3", ev, f"seq {_rel(start, iss)} is before our ISS")
            length = n + (1 if syn else 0) + (1 if f & _FIN else 0)
            end = offset + length
            old = c.sent
            if n:
                first = offset + (1 if syn else 0)
                samples = c.samples
                if samples and first < old:
                    self._compare(ev, c, samples, first, min(first + n, old), s.payload)
                if first + n > old:
                    if samples is None:
                        samples = c.samples = deque()
                    if len(samples) < _SAMPLES:
                        at = max(first, old)
                        samples.append((at, s.payload[at - first]))
            if end > old:
                c.sent = end
                c.snd_max = seq.add(start, length)

        # I-4: data within the furthest right edge the peer offered.
        if n and c.edge is not None:
            over = seq.sub(data_end, c.edge)
            if over > 0 and not (n == 1 and over == 1):
                self._flag(
                    "I-4",
                    ev,
                    f"data up to {_rel(data_end, iss)} is {over} bytes beyond the peer's "
                    f"right edge {_rel(c.edge, iss)}",
                )

        # I-10: nothing after our FIN.
        if c.fin is not None:
            if n and seq.gt(data_end, c.fin):
                self._flag(
                    "I-10",
                    ev,
                    f"data up to {_rel(data_end, iss)} after our FIN at {_rel(c.fin, iss)}",
                )
            if f & _FIN and data_end != c.fin:
                self._flag(
                    "I-10",
                    ev,
                    f"FIN at {_rel(data_end, iss)}, but our FIN was at {_rel(c.fin, iss)}",
                )
        elif f & _FIN:
            c.fin = data_end

        # I-6: the ACK field moves forward only, and not past what the peer sent.
        if f & _ACK:
            ack = s.ack
            last = c.last_ack
            irs = c.irs
            backwards = last is not None and seq.lt(ack, last)
            if last is not None and backwards:
                if not held:
                    self._flag(
                        "I-6",
                        ev,
                        f"ACK went backwards: {_rel(ack, irs)} after {_rel(last, irs)}",
                    )
            elif not held:
                c.last_ack = ack
            if irs is not None:
                # Our window, for the acceptability of what the peer sends next.
                if not syn and c.our_wscale and c.peer_wscale is not None:
                    edge = seq.add(ack, s.window << c.our_shift)
                else:
                    edge = seq.add(ack, s.window)
                if c.our_edge is None or seq.gt(edge, c.our_edge):
                    c.our_edge = edge
                elif seq.sub(c.our_edge, edge) >= 1 << c.our_shift and not (
                    syn or held or backwards
                ):
                    # (An ACK gone backwards takes its edge along: I-6 says so.)
                    self._flag(
                        "I-7",
                        ev,
                        f"our right edge moved left: {_rel(edge, irs)} after "
                        f"{_rel(c.our_edge, irs)}",
                    )
                if seq.gt(ack, c.peer_max):
                    self._flag(
                        "I-6",
                        ev,
                        f"ACK {_rel(ack, irs)} is beyond what the peer sent, "
                        f"which ends at {_rel(c.peer_max, irs)}",
                    )
                elif c.peer_fin is not None and seq.gt(ack, c.peer_fin):
                    c.peer_fin_acked = True

        # I-8: timestamps on every segment once negotiated, and TSval never falling.
        ts = opts.timestamps
        if ts is not None:
            value = ts[0]
            if c.tsval is not None and seq.lt(value, c.tsval):
                if not held:
                    self._flag("I-8", ev, f"TSval {value} is below the {c.tsval} sent before")
            elif not held:
                c.tsval = value
        if iss is not None and c.irs is not None:
            if c.our_ts and c.peer_ts:
                if ts is None:
                    self._flag("I-8", ev, "no timestamps, though both SYNs carried them")
            elif ts is not None and not syn:
                self._flag("I-8", ev, "timestamps, though not both SYNs carried them")

        if c.fin_acked and c.peer_fin_acked:
            c.ended = True  # both FINs acknowledged: a SYN next is a new connection

    def _compare(
        self,
        ev: SegmentEvent,
        c: _Conn,
        samples: deque[tuple[int, int]],
        first: int,
        hi: int,
        payload: bytes,
    ) -> None:
        """I-3's second half: the sampled bytes from `first` (the payload's offset from
        the ISS) up to `hi` must be the ones sent there the first time."""
        for at, byte in samples:
            if at >= hi:
                break
            if at >= first and payload[at - first] != byte:
                where = seq.add(c.snd_max, at - c.sent)
                self._flag(
                    "I-3",
                    ev,
                    f"retransmitted byte at {_rel(where, c.iss)} is 0x{payload[at - first]:02x}, "
                    f"first sent as 0x{byte:02x}",
                )
                return

    # ----------------------------------------------------------------- frames

    def _check_frame(self, ev: SegmentEvent, frame: bytes) -> None:
        """I-1 and I-15, from the frame's bytes (without decoding the segment again)."""
        size = len(frame)
        if size < _ETH_LEN + 20 or frame[12] != _IPV4_HI or frame[13] != _IPV4_LO:
            self._flag("I-1", ev, f"frame of {size} bytes is not IPv4")
            return
        ihl = (frame[_ETH_LEN] & 0x0F) * 4
        total = (frame[_ETH_LEN + 2] << 8) | frame[_ETH_LEN + 3]
        tcp_at = _ETH_LEN + ihl
        end = _ETH_LEN + total
        if ihl < 20 or end > size or total < ihl + 20 or frame[_ETH_LEN + 9] != _PROTO_TCP:
            self._flag("I-1", ev, "frame does not hold a whole IPv4/TCP header")
            return
        view = memoryview(frame)
        if self.check_checksums:
            if wire.internet_checksum(view[_ETH_LEN:tcp_at]):
                self._flag("I-1", ev, "IPv4 header checksum is wrong")
            tcp_len = total - ihl
            # The pseudo-header (RFC 9293 §3.1): both addresses, protocol, TCP length.
            pseudo = (
                int.from_bytes(view[_ETH_LEN + 12 : tcp_at], "big") % 0xFFFF + _PROTO_TCP + tcp_len
            )
            field = (frame[tcp_at + 16] << 8) | frame[tcp_at + 17]
            # Offload leaves the uncomplemented pseudo-header sum for the device. That
            # is checked first: it needs no pass over the segment, and offloaded
            # frames are the large ones (64 KiB TSO segments).
            partial = 0xFFFF - wire.internet_checksum(b"", pseudo)
            if field != partial and wire.internet_checksum(view[tcp_at:end], pseudo):
                zeroed = (
                    bytes(view[tcp_at : tcp_at + 16]) + b"\0\0" + bytes(view[tcp_at + 18 : end])
                )
                right = wire.internet_checksum(zeroed, pseudo)
                self._flag(
                    "I-1", ev, f"TCP checksum 0x{field:04x} is wrong (should be 0x{right:04x})"
                )
        reserved = frame[tcp_at + 12] & 0x0F
        if reserved:
            self._flag("I-15", ev, f"reserved header bits set: 0x{reserved:x}")


def check_events(events: Iterable[TraceEvent], *, check_checksums: bool = True) -> list[Violation]:
    """Run a TraceChecker over recorded events; the violations it keeps."""
    checker = TraceChecker(check_checksums=check_checksums)
    for event in events:
        checker(event)
    return checker.violations
