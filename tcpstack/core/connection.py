"""One TCP connection: the transmission control block and the RFC 9293 state machine.

Sans-I/O. Inputs are application calls, received segments and timer expiries, each
carrying ``now``; outputs are drained by the owner after every input:
``segments_to_send(now)``, ``next_event()`` and ``get_timer()``.

Must not import scapy, socket, select, threading, time or random: the ISS and the
timestamp offset come in from the caller, time comes in as ``now``, and a
misbehaving peer never makes this module raise (the segment is dropped or
answered, and a counter names why). Exceptions are raised only for misuse of the
API by the application.

What it does, by RFC: event processing of RFC 9293 §3.10 in all eleven states;
RFC 5961 challenge ACKs; RTO per RFC 6298; loss recovery with fast retransmit,
NewReno (RFC 6582) and SACK-based recovery (RFC 6675) under Reno or CUBIC
congestion control (RFC 5681, RFC 9438); window scaling, timestamps and PAWS
(RFC 7323); SACK (RFC 2018); delayed ACKs, Nagle and silly-window avoidance
(RFC 9293 §3.8.6, §3.7.4); zero-window probes and keep-alives (§3.8.6.1, §3.8.4).
"""

from __future__ import annotations

import errno
import logging
from collections import Counter, deque
from dataclasses import dataclass, replace
from typing import Any, Final

from tcpstack.config import TcpConfig
from tcpstack.core import congestion, seq
from tcpstack.core.bytequeue import ByteQueue
from tcpstack.core.events import (
    ConnectionClosed,
    ConnectionEstablished,
    ConnectionRefused,
    ConnectionReset,
    ConnectionTimedOut,
    ConnectionUnreachable,
    DataAcknowledged,
    DataReceived,
    DeliveryTrouble,
    EofReceived,
    Event,
    Retransmitted,
    ReturnedToListen,
    SoftError,
    StateChanged,
    UrgentDataArrived,
)
from tcpstack.core.ratelimit import PerSecondLimit
from tcpstack.core.reassembly import Reassembler
from tcpstack.core.rtt import RttEstimator
from tcpstack.core.rtxqueue import Rack, RetransmitQueue, Sent
from tcpstack.core.segment import CE, ECT_0, NO_OPTIONS, NOT_ECT, Flags, Options, Segment
from tcpstack.core.state import State

log = logging.getLogger("tcpstack.core")

_ACK: Final = Flags.ACK
_RST: Final = Flags.RST
_SYN_ONLY: Final = Flags.SYN
_SYN_ACK: Final = Flags.SYN | Flags.ACK
_ECN_SETUP: Final = Flags.ECE | Flags.CWR  # an ECN-setup SYN (RFC 3168 §6.1.1)
# Retransmissions that probe rather than repair (Retransmitted.reason).
_PROBES: Final = ("tail_probe", "probe")
_MAX_FIELD: Final = 0xFFFF
# Linux's tcp_min_snd_mss: a tiny announced MSS is raised to this (CVE-2019-11479).
_MIN_SEND_MSS: Final = 48
# RFC 5681 §3.2 / RFC 6675: three duplicate ACKs (or that much SACKed) mean a loss.
_DUP_THRESH: Final = 3
# RFC 6298 §5.7: after a SYN timed out, data starts with an RTO of at least 3 s.
_RTO_AFTER_SYN_TIMEOUT: Final = 3.0
# RFC 8985 §7.2: the tail loss probe timeout is 2*SRTT, plus the worst-case delayed
# ACK when a single segment is in flight; Linux never goes below 10 ms.
_TLP_MIN: Final = 0.01
_WORST_CASE_DELACK: Final = 0.2
# RFC 7323 §5.5: a TS.Recent idle for 24 days is invalid for PAWS.
_PAWS_IDLE: Final = 24 * 24 * 3600.0
_TS_OPTION_BYTES: Final = 12  # NOP, NOP, kind 8, length 10

# What an ICMP error about one of our segments means (RFC 9293 §3.9.2.2, RFC 1122
# §4.2.3.9): the errno the application sees, as Linux reports it, and whether the
# error is hard. Destination unreachable codes 0, 1 and 5 are soft (MUST-56); 2 to 4
# are hard, except that "fragmentation needed" is path-MTU news (RFC 1191), not a
# verdict on the connection; the codes after 5 are classed as Linux classes them.
# Source quench (type 4) is absent: it is ignored (MUST-55, RFC 6633).
_UNREACHABLE: Final[dict[int, tuple[int, bool]]] = {
    0: (errno.ENETUNREACH, False),
    1: (errno.EHOSTUNREACH, False),
    2: (errno.ENOPROTOOPT, True),
    3: (errno.ECONNREFUSED, True),
    4: (errno.EMSGSIZE, False),
    5: (errno.EOPNOTSUPP, False),
    6: (errno.ENETUNREACH, True),
    7: (errno.EHOSTDOWN, True),
    8: (errno.ENONET, True),
    9: (errno.ENETUNREACH, True),
    10: (errno.EHOSTUNREACH, True),
    11: (errno.ENETUNREACH, False),
    12: (errno.EHOSTUNREACH, False),
    13: (errno.EHOSTUNREACH, True),
    14: (errno.EHOSTUNREACH, True),
    15: (errno.EHOSTUNREACH, True),
}
# Where RFC 9293 §3.10.7.4's sixth step reads the urgent pointer: not once the
# peer has closed its side, when no more of its data can come.
_URGENT_STATES: Final = frozenset((State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2))
_ICMP_DEST_UNREACHABLE: Final = 3
_ICMP_TIME_EXCEEDED: Final = 11
_ICMP_PARAMETER_PROBLEM: Final = 12


def icmp_error_meaning(icmp_type: int, code: int) -> tuple[int, bool] | None:
    """(errno, hard) for an ICMP error TCP acts on; None for one it ignores."""
    if icmp_type == _ICMP_DEST_UNREACHABLE:
        return _UNREACHABLE.get(code)
    if icmp_type == _ICMP_TIME_EXCEEDED:
        return errno.EHOSTUNREACH, False
    if icmp_type == _ICMP_PARAMETER_PROBLEM:
        return errno.EPROTO, False
    return None


class _ConnectionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every line with the connection's name, like aioquic's QuicConnectionAdapter."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['conn'] if self.extra else ''}] {msg}", kwargs


class InvalidStateError(Exception):
    """An application call that the connection's current state does not allow."""

    def __init__(self, call: str, state: State) -> None:
        super().__init__(f"{call}() not allowed in state {state.name}")
        self.call = call
        self.state = state


def reset_for_unknown(seg: Segment) -> Segment | None:
    """The reply to a segment that matches no connection (RFC 9293 §3.10.7.1).

    Never answer a RST with a RST. If the ACK bit is off the reply is
    <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>, otherwise <SEQ=SEG.ACK><CTL=RST>.
    """
    if seg.rst:
        return None
    if seg.has_ack:
        return Segment(seg.dst_port, seg.src_port, seg.ack, 0, _RST, 0)
    return Segment(seg.dst_port, seg.src_port, 0, seg.end_seq, _RST | _ACK, 0)


@dataclass(frozen=True, slots=True)
class TcpInfo:
    """A snapshot of one connection, in the spirit of Linux's TCP_INFO / `ss -ti`."""

    state: State
    snd_una: int
    snd_nxt: int
    snd_wnd: int
    rcv_nxt: int
    rcv_wnd: int
    send_mss: int
    snd_wscale: int
    rcv_wscale: int
    sack: bool
    timestamps: bool
    congestion: str
    cwnd: int
    ssthresh: int
    in_flight: int
    srtt: float | None
    rttvar: float | None
    rto: float
    recovery: str
    counters: dict[str, int]


def _dsack(seg: Segment) -> tuple[int, int] | None:
    """The D-SACK block of SEG, if any (RFC 2883 §4): a first SACK block that lies
    below the cumulative ACK, or inside the second block."""
    blocks = seg.options.sack_blocks
    if not blocks:
        return None
    left, right = blocks[0]
    if not seq.lt(left, right):
        return None
    if seq.le(right, seg.ack):
        return left, right
    if len(blocks) > 1 and seq.ge(left, blocks[1][0]) and seq.le(right, blocks[1][1]):
        return left, right
    return None


class TcpConnection:
    """A TCB plus the event processing of RFC 9293 §3.10."""

    def __init__(
        self,
        config: TcpConfig,
        local_port: int,
        remote_port: int = 0,
        *,
        iss: int,
        ts_offset: int = 0,
        name: str = "",
        challenge_limit: PerSecondLimit | None = None,
    ) -> None:
        self.config = config
        self._challenge_limit = challenge_limit  # shared by the stack's connections
        self._last_oow_ack = -1e9  # when we last answered an out-of-window segment
        self.local_port = local_port
        self.remote_port = remote_port
        self.state = State.CLOSED
        self.passive = False
        self.orphaned = False
        self.reads_shut = False  # SHUT_RD: the application will read nothing more
        self.stats: Counter[str] = Counter()
        self._log = _ConnectionLog(log, {"conn": name or str(local_port)})
        self._name = name
        self._events: deque[Event] = deque()

        # Per-socket options (setsockopt), starting from the stack's configuration.
        self.nodelay = not config.nagle
        self.keepalive = config.keepalive
        self.keepalive_idle = config.keepalive_idle
        self.keepalive_interval = config.keepalive_interval
        self.keepalive_probes = config.keepalive_probes
        # TCP_USER_TIMEOUT (RFC 9293 §3.8.3, MUST-21): give up once the peer has shown
        # no progress for this long, whatever the retry count; 0 leaves R2 alone.
        self.user_timeout = 0.0
        # The IP header fields of our segments (MUST-48, MUST-49). The core never
        # reads them; they ride here so a socket option reaches every segment.
        self.ip_ttl = 64
        self.ip_tos = 0
        # The last soft error an ICMP message reported (Linux's sk_err_soft).
        self.soft_error = 0
        # R1 reached and nothing new acknowledged since (see DeliveryTrouble).
        self.delivery_trouble = False
        # SO_RCVBUF shrank the buffer below a window already offered.
        self._buffer_shrunk = False
        # The furthest right edge we ever offered (see _make's window).
        self._rcv_max_edge: int | None = None

        # Negotiated in the handshake (RFC 7323, RFC 2018).
        self.snd_wscale = 0
        self.rcv_wscale = 0
        self.sack_ok = False
        self.ts_ok = False
        # RFC 3168: in use; an ECE to send on every ACK until the sender's CWR; a CWR
        # to send on the next new data; the SND.NXT at our last reduction for an ECE.
        self.ecn_ok = False
        self._ecn_asked = config.ecn == "on"
        self._ece_pending = False
        self._cwr_pending = False
        self._ecn_high: int | None = None
        self._peer_syn_options = NO_OPTIONS
        self._ts_offset = ts_offset & seq.MASK
        self.ts_recent = 0
        self._ts_recent_at = 0.0
        self._last_ack_sent = 0

        # Send sequence space (RFC 9293 §3.3.1). SND.NXT is the highest sequence
        # number sent plus one; retransmissions never move it back. _snd_buf holds
        # the bytes from _buf_seq on: unacknowledged first, then not yet sent.
        self.iss = iss & seq.MASK
        self.snd_una = self.iss
        self.snd_nxt = self.iss
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.max_snd_wnd = 0
        self.peer_mss = config.default_peer_mss
        self._snd_buf = bytearray()
        self._snd_off = 0  # bytes at the front of _snd_buf already acknowledged
        self._buf_seq = seq.add(self.iss, 1)  # sequence number of _snd_buf[_snd_off]
        self._fin_queued = False  # the application will send no more
        self._fin_seq: int | None = None  # sequence number our FIN occupies once sent
        self.snd_up: int | None = None  # SND.UP: after our last urgent octet, until acked
        self._syn_sent = False  # our SYN (or SYN-ACK) has been transmitted at least once
        self._syn_timed_out = False
        self._last_send = 0.0

        # Loss recovery: every segment in flight has a record; lost ones go out again
        # before any new data. RACK-TLP (RFC 8985) finds losses when SACK is in use;
        # without SACK, three duplicate ACKs and NewReno partial ACKs do.
        self.cc: congestion.CongestionControl = congestion.create(
            config.congestion, config.announced_mss
        )
        self._rtxq = RetransmitQueue()
        self._rack = Rack()
        self.recovery = "open"  # "open", "recovery" (fast) or "loss" (after an RTO)
        self._recover = self.iss
        self._force_rtx = False  # fast retransmit goes out whatever cwnd says
        self._dupacks = 0
        self._reno_sacked = 0  # NewReno: each duplicate ACK stands for a segment that left
        self._reorder_at: float | None = None  # RACK reordering timer
        self._tlp_at: float | None = None  # tail loss probe timer
        self._tlp_due = False
        self._tlp_armed = True  # one probe per flight, re-armed by an ACK that advances
        self._retrans_stamp: int | None = None  # our TSval at the episode's first retransmission
        # Bytes retransmitted in the current recovery episode and not yet reported
        # duplicate by a D-SACK (RFC 2883); None outside an episode. At zero every
        # retransmission was needless, and the reduction is undone (RFC 3708).
        self._undo_bytes: int | None = None
        self._episode_retransmitted = 0  # bytes, the same episode, D-SACKed or not

        # Receive sequence space.
        self.irs = 0
        self.rcv_nxt = 0
        self._rcv_buf = ByteQueue()
        self._ooo = Reassembler()
        self._fin_received = False
        self.rcv_up: int | None = None  # RCV.UP: after the last urgent octet announced
        self._rcv_adv_edge = 0  # right edge (RCV.NXT + RCV.WND) we last advertised
        self._syn_window = 0  # the unscaled window our SYN or SYN-ACK offered

        # Timers: absolute deadlines, None when idle.
        self.rtt = RttEstimator(
            initial=config.rto_initial, minimum=config.rto_min, maximum=config.rto_max
        )
        self._rto_at: float | None = None  # retransmission, or persist while probing
        self._time_wait_at: float | None = None
        self._fin_wait_2_at: float | None = None  # orphans only
        self._delack_at: float | None = None
        self._keepalive_at: float | None = None
        self._retries = 0
        self._progress_at = 0.0  # when the peer last acknowledged or answered, for user_timeout
        self._rtt_seq: int | None = None  # sequence number being timed (Karn: one at a time)
        self._rtt_sent_at = 0.0
        self._persisting = False
        self._probe_due = False
        self._keepalive_sent = 0
        self._keepalive_due = False

        # ACK generation.
        self._ack_due = False
        self._unacked_bytes = 0
        self._quick_acks = config.quick_acks
        self._control: list[Segment] = []  # RSTs and ACKs decided while processing input

    @classmethod
    def from_syn_cookie(
        cls,
        config: TcpConfig,
        local_port: int,
        remote_port: int,
        *,
        iss: int,
        irs: int,
        peer_mss: int,
        now: float,
        name: str = "",
        challenge_limit: PerSecondLimit | None = None,
    ) -> TcpConnection:
        """A passive connection whose SYN and SYN-ACK were exchanged statelessly
        (RFC 4987 SYN cookies), now in SYN-RECEIVED, waiting for the ACK that carried
        the cookie. Only the MSS survived the cookie; no other option is in force."""
        conn = cls(config, local_port, 0, iss=iss, name=name, challenge_limit=challenge_limit)
        conn.open_passive()
        syn = Segment(remote_port, local_port, irs, 0, _SYN_ONLY, 0, Options(mss=peer_mss))
        conn.handle_segment(syn, now)
        conn._syn_sent = True  # the SYN-ACK went out, as a cookie
        conn._syn_window = min(conn.rcv_wnd, _MAX_FIELD)
        conn._rcv_adv_edge = seq.add(conn.rcv_nxt, conn._syn_window)
        return conn

    # ------------------------------------------------------------------ queries

    def __repr__(self) -> str:
        return f"<TcpConnection {self._name or self.local_port} {self.state.name}>"

    @property
    def rcv_wnd(self) -> int:
        """Free space in the receive buffer: what RCV.WND could be advertised as."""
        return max(self.config.receive_buffer - len(self._rcv_buf), 0)

    @property
    def advertised_window(self) -> int:
        """The window we last advertised, from RCV.NXT (RCV.WND in RFC 9293 terms)."""
        return max(seq.sub(self._rcv_adv_edge, self.rcv_nxt), 0)

    @property
    def readable(self) -> int:
        """Bytes the application can read now."""
        return len(self._rcv_buf)

    @property
    def eof(self) -> bool:
        """True once the peer's FIN arrived (reads past the buffered bytes return EOF)."""
        return self._fin_received

    @property
    def send_space(self) -> int:
        """Bytes send() would accept now."""
        return max(self.config.send_buffer - (len(self._snd_buf) - self._snd_off), 0)

    @property
    def in_flight(self) -> int:
        """Data bytes sent and not yet acknowledged."""
        return max(seq.sub(self._data_nxt(), self._buf_seq), 0)

    @property
    def unsent(self) -> int:
        """Data bytes queued by the application and not yet sent."""
        return len(self._snd_buf) - self._snd_off - self.in_flight

    @property
    def fin_acknowledged(self) -> bool:
        return self._fin_seq is not None and seq.gt(self.snd_una, self._fin_seq)

    @property
    def send_mss(self) -> int:
        """Effective send MSS: the peer's announcement, capped by ours (RFC 9293 §3.7.1)."""
        return min(self.peer_mss, self.config.announced_mss)

    @property
    def ooo_segments(self) -> int:
        """Out-of-order blocks waiting for a hole to fill."""
        return len(self._ooo)

    def info(self) -> TcpInfo:
        return TcpInfo(
            state=self.state,
            snd_una=self.snd_una,
            snd_nxt=self.snd_nxt,
            snd_wnd=self.snd_wnd,
            rcv_nxt=self.rcv_nxt,
            rcv_wnd=self.advertised_window,
            send_mss=self.send_mss,
            snd_wscale=self.snd_wscale,
            rcv_wscale=self.rcv_wscale,
            sack=self.sack_ok,
            timestamps=self.ts_ok,
            congestion=self.cc.name,
            cwnd=self.cc.cwnd,
            ssthresh=self.cc.ssthresh,
            in_flight=seq.sub(self.snd_nxt, self.snd_una),
            srtt=self.rtt.srtt,
            rttvar=self.rtt.rttvar,
            rto=self.rtt.rto,
            recovery=self.recovery,
            counters=dict(self.stats),
        )

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def timers(self) -> dict[str, float]:
        """Every armed timer by name, with its absolute deadline (for traces)."""
        named = {
            "persist" if self._persisting else "retransmit": self._rto_at,
            "time_wait": self._time_wait_at,
            "fin_wait_2": self._fin_wait_2_at,
            "delayed_ack": self._delack_at,
            "keepalive": self._keepalive_at,
            "reorder": self._reorder_at,
            "tail_probe": self._tlp_at,
        }
        return {name: t for name, t in named.items() if t is not None}

    def get_timer(self) -> float | None:
        """The earliest absolute time at which handle_timer() must be called, or None."""
        earliest: float | None = None
        for t in (
            self._rto_at,
            self._time_wait_at,
            self._fin_wait_2_at,
            self._delack_at,
            self._keepalive_at,
            self._reorder_at,
            self._tlp_at,
        ):
            if t is not None and (earliest is None or t < earliest):
                earliest = t
        return earliest

    # ------------------------------------------------------------ application

    def open_active(self, now: float) -> None:
        """OPEN, active (RFC 9293 §3.10.1): send a SYN, enter SYN-SENT."""
        if self.state is not State.CLOSED:
            raise InvalidStateError("open_active", self.state)
        if not self.remote_port:
            raise ValueError("active open needs a remote port")
        self.snd_nxt = seq.add(self.iss, 1)
        self._set_state(State.SYN_SENT, "connect()")

    def open_passive(self) -> None:
        """OPEN, passive: wait in LISTEN for a SYN."""
        if self.state is not State.CLOSED:
            raise InvalidStateError("open_passive", self.state)
        self.passive = True
        self._set_state(State.LISTEN, "listen()")

    def reopens_time_wait(self, seg: Segment) -> bool:
        """Whether SEG, arriving in TIME-WAIT, may start a new incarnation of this
        4-tuple at once (RFC 9293 §3.6.1 MAY-2). With timestamps on both
        incarnations RFC 6191 decides: a newer TSval, or an equal one with a
        higher sequence number; an older TSval never, as PAWS would drop it.
        Otherwise a sequence number above RCV.NXT (RFC 1122 §4.2.2.13). A SYN that
        does not qualify meets TIME-WAIT's ACK, as any unacceptable segment does."""
        if self.state is not State.TIME_WAIT or not seg.syn or seg.has_ack or seg.rst:
            return False
        ts = seg.options.timestamps
        if self.ts_ok and ts is not None and self.config.timestamps:
            if ts[0] == self.ts_recent:
                return seq.gt(seg.seq, self.rcv_nxt)
            return seq.gt(ts[0], self.ts_recent)
        return seq.gt(seg.seq, self.rcv_nxt)

    @property
    def next_incarnation_iss(self) -> int:
        """An ISS for a connection reopening this 4-tuple from TIME-WAIT: above every
        sequence number this one used (MAY-2's condition), a window beyond SND.NXT
        as Linux picks it."""
        return seq.add(self.snd_nxt, 0xFFFF + 2)

    def set_receive_buffer(self, size: int) -> None:
        """SO_RCVBUF on a live connection. A smaller buffer does not shrink the window
        already offered (SHLD-14): the window closes as the data that fills it
        arrives, and what the buffer cannot hold is trimmed, so the ACK says what we
        took (scenario W-10; Linux drops such data too)."""
        if size < self.config.receive_buffer:
            self._buffer_shrunk = True
        self.config = replace(self.config, receive_buffer=size)

    def set_congestion(self, name: str) -> None:
        """TCP_CONGESTION: choose the algorithm (before data flows, like Linux)."""
        self.cc = congestion.create(
            name, self.send_mss if self.state.is_synchronized else self.config.announced_mss
        )

    def set_keepalive(self, enabled: bool, now: float) -> None:
        self.keepalive = enabled
        self._keepalive_sent = 0
        self._rearm_keepalive(now)

    def send(self, data: bytes | bytearray | memoryview, *, urgent: bool = False) -> int:
        """Queue up to send_space bytes; returns how many were taken (maybe 0).

        urgent=True (MSG_OOB) makes the last byte taken urgent: the segments up to
        it carry URG with a pointer to the octet after it (RFC 9293 §3.8.5, MUST-62),
        until the peer acknowledges it."""
        if not self.state.can_send or self._fin_queued:
            raise InvalidStateError("send", self.state)
        n = min(len(data), self.send_space)
        if n:
            self._snd_buf += data[:n]
            if urgent:
                queued = len(self._snd_buf) - self._snd_off
                self.snd_up = seq.add(self._buf_seq, queued)
                self.stats["urgent_sent"] += 1
        return n

    @property
    def urgent_pending(self) -> int:
        """Bytes still to read up to and including the last urgent octet (MUST-33)."""
        if self.rcv_up is None:
            return 0
        return max(seq.sub(self.rcv_up, self._read_seq), 0)

    @property
    def at_urgent_mark(self) -> bool:
        """The next byte to read is the last urgent octet (sockatmark())."""
        return self.rcv_up is not None and seq.add(self._read_seq, 1) == self.rcv_up

    @property
    def _read_seq(self) -> int:
        """Sequence number of the next byte the application will read."""
        end = seq.add(self.rcv_nxt, -1) if self._fin_received else self.rcv_nxt
        return seq.add(end, -len(self._rcv_buf))

    def _readable_before_mark(self, wanted: int) -> int:
        """Reads stop at the last urgent octet, as Linux's do, so that the application
        can tell with at_urgent_mark where the urgent data ends."""
        n = min(wanted, len(self._rcv_buf))
        if self.rcv_up is not None and n > 0:
            before = seq.sub(self.rcv_up, self._read_seq) - 1
            if 0 < before < n:
                n = before
        return n

    def receive(self, max_bytes: int) -> bytes:
        """Take up to max_bytes of in-order data; reading may open the window."""
        n = self._readable_before_mark(max_bytes)
        if n <= 0:
            return b""
        data = self._rcv_buf.take(n)
        self._window_opened()
        return data

    def receive_into(self, buffer: memoryview) -> int:
        n = self._readable_before_mark(len(buffer))
        if n <= 0:
            return 0
        self._rcv_buf.take_into(buffer[:n])
        self._window_opened()
        return n

    def shutdown(self, now: float) -> None:
        """CLOSE for our direction (RFC 9293 §3.10.4): a FIN follows the queued data.

        Repeating it is harmless, like shutdown(SHUT_WR) on a socket.
        """
        match self.state:
            case State.LISTEN | State.SYN_SENT:
                # Nothing was synchronized: delete the TCB.
                self._enter_closed("close()")
                self._events.append(ConnectionClosed())
            case State.ESTABLISHED:
                self._fin_queued = True
                self._set_state(State.FIN_WAIT_1, "close()")
            case State.SYN_RECEIVED:
                self._fin_queued = True
                # §3.10.4: with nothing queued, send FIN now and enter FIN-WAIT-1;
                # otherwise the FIN waits for ESTABLISHED (see _on_ack).
                if not self.unsent:
                    self._set_state(State.FIN_WAIT_1, "close()")
            case State.CLOSE_WAIT:
                # RFC 793 said CLOSING here; RFC 9293 corrects it to LAST-ACK, as Linux does.
                self._fin_queued = True
                self._set_state(State.LAST_ACK, "close()")
            case _:
                # FIN-WAIT-*, CLOSING, LAST-ACK, TIME-WAIT, CLOSED: already closing.
                pass

    def shutdown_read(self) -> None:
        """SHUT_RD. While we still send, data is taken as ever (the peer cannot
        know); once our FIN is out, new data is reset as for an orphan, as Linux's
        tcp_rcv_state_process does for RCV_SHUTDOWN in FIN-WAIT-1 and FIN-WAIT-2."""
        self.reads_shut = True

    def orphan(self, now: float) -> None:
        """The application closed its socket: nobody will read or write again.

        Like Linux: data that still arrives is answered with RST (TCPAbortOnData,
        RFC 2525 §2.17), and FIN-WAIT-2 lasts at most `fin_timeout` (tcp_fin_timeout).
        """
        self.orphaned = True
        self.shutdown(now)
        if self.state is State.FIN_WAIT_2:
            self._fin_wait_2_at = now + self.config.fin_timeout

    def abort(self, now: float) -> None:
        """ABORT (RFC 9293 §3.10.5): send <SEQ=SND.NXT><CTL=RST> if synchronized, then CLOSED."""
        if self.state in (
            State.SYN_RECEIVED,
            State.ESTABLISHED,
            State.FIN_WAIT_1,
            State.FIN_WAIT_2,
            State.CLOSE_WAIT,
        ):
            self._control.append(self._make(self.snd_nxt, 0, _RST, now=now))
            self.stats["resets_sent"] += 1
        if self.state is not State.CLOSED:
            self._enter_closed("abort()")
            self._events.append(ConnectionClosed())

    # ------------------------------------------------------------------ timers

    def handle_timer(self, now: float) -> None:
        """Run whatever deadlines have passed."""
        if self._time_wait_at is not None and now >= self._time_wait_at:
            # RFC 9293 §3.10.8: TIME-WAIT expired, delete the TCB.
            self._enter_closed("2MSL timer")
            self._events.append(ConnectionClosed())
            return
        if self._fin_wait_2_at is not None and now >= self._fin_wait_2_at:
            # An orphan waited fin_timeout for the peer's FIN: give up quietly, as
            # Linux does (no RST).
            self._enter_closed("FIN-WAIT-2 timeout")
            self._events.append(ConnectionClosed())
            return
        if self._delack_at is not None and now >= self._delack_at:
            self._delack_at = None
            self._ack_due = True
        if self._keepalive_at is not None and now >= self._keepalive_at:
            self._on_keepalive_timer(now)
            if self.state is State.CLOSED:
                return
        if self._reorder_at is not None and now >= self._reorder_at:
            self._reorder_at = None
            self._detect_loss(now)
        if self._tlp_at is not None and now >= self._tlp_at:
            # RFC 8985 §7.3: probe the tail so a lost last segment brings SACKs back
            # (and fast recovery) instead of waiting for the RTO.
            self._tlp_at = None
            self._tlp_due = True
            self._tlp_armed = False
            self.stats["tail_loss_probes"] += 1
        if self._rto_at is not None and now >= self._rto_at:
            self._on_retransmission_timeout(now)

    def _on_retransmission_timeout(self, now: float) -> None:
        self.stats["timeouts"] += 1
        limit = {
            State.SYN_SENT: self.config.syn_retries,
            State.SYN_RECEIVED: self.config.synack_retries,
        }.get(self.state, self.config.max_retries)
        user_deadline = self._progress_at + self.user_timeout if self.user_timeout else None
        if self._retries >= limit or (user_deadline is not None and now >= user_deadline):
            # RFC 9293 §3.8.3: R2 reached, close the connection (Linux: ETIMEDOUT).
            self._rto_at = None
            self._enter_closed("retransmission limit" if self._retries >= limit else "user timeout")
            self._events.append(ConnectionTimedOut())
            return
        self.rtt.back_off()
        self._rto_at = now + self.rtt.rto
        if user_deadline is not None:
            # The user timeout ends the connection on time, not at the next backed-off
            # retransmission (Linux's tcp_clamp_rto_to_user_timeout).
            self._rto_at = min(self._rto_at, user_deadline)
        self._rtt_seq = None  # Karn's rule: never time a retransmitted segment
        if not self.state.is_synchronized or seq.le(self.snd_una, self.iss):
            # Our SYN (or SYN-ACK) is unacknowledged: send it again. A FIN queued
            # behind it, after a close() in SYN-RECEIVED, goes again with it.
            self._retries += 1
            self._syn_timed_out = True
            # A SYN sent again goes without ECN-setup bits, in case a middlebox
            # dropped the first for them (RFC 3168 §6.1.1.1; Linux's ecn fallback).
            self._ecn_asked = False
            self._syn_sent = False
            self.stats["retransmissions"] += 1
            self._events.append(Retransmitted(self.iss, 0, "syn"))
            self._rtxq.mark_all_lost()
            return
        if self._persisting:
            # Persist timer (RFC 9293 §3.8.6.1): probe the closed window. Unanswered
            # probes count towards the limit; answered ones reset it (_on_ack).
            self._probe_due = True
            if self.snd_una != self.snd_nxt:
                self._retries += 1
            self.stats["persist_timeouts"] += 1
            return
        if self.snd_una == self.snd_nxt:
            self._rto_at = None  # nothing outstanding after all
            return
        self._retries += 1
        if self._retries == self.config.r1:
            self.delivery_trouble = True
            self.stats["delivery_trouble"] += 1
            self._events.append(DeliveryTrouble(self._retries))
        # RFC 5681 §3.1 / RFC 6298 §5.5: the loss window, then slow start back up,
        # with everything not SACKed deemed lost (RFC 8985 §6.3).
        if self.recovery == "open":
            self.cc.on_timeout(now, self._rtxq.outstanding)
            self._undo_bytes = self._episode_retransmitted = 0
        else:
            self.cc.on_timeout_again()
        head = self._rtxq.head
        if head is not None and head.sacked:
            # SND.UNA sits on data the receiver SACKed: it reneged (RFC 2018 §8),
            # so nothing it reported can be trusted any more.
            self.stats["sack_reneging"] += 1
            self._rtxq.clear_sacked()
        self._rtxq.mark_all_lost()
        self.recovery = "loss"
        self._recover = self.snd_nxt
        self._dupacks = 0
        self._reno_sacked = 0
        self._reorder_at = None
        self._tlp_at = None

    def _on_keepalive_timer(self, now: float) -> None:
        self._keepalive_at = None
        if not self._keepalive_applies() or self.snd_una != self.snd_nxt:
            # Data in flight: the retransmission timer watches the peer instead.
            self._rearm_keepalive(now)
            return
        if self._keepalive_sent >= self.keepalive_probes:
            # RFC 9293 §3.8.4: the peer stopped answering; Linux reports ETIMEDOUT.
            self._enter_closed("keep-alive timeout")
            self._events.append(ConnectionTimedOut())
            return
        self._keepalive_sent += 1
        self._keepalive_due = True
        self.stats["keepalive_probes"] += 1
        self._keepalive_at = now + self.keepalive_interval

    def _keepalive_applies(self) -> bool:
        return self.keepalive and self.state in (State.ESTABLISHED, State.CLOSE_WAIT)

    def _rearm_keepalive(self, now: float) -> None:
        if self._keepalive_applies():
            self._keepalive_at = now + self.keepalive_idle
        else:
            self._keepalive_at = None

    # -------------------------------------------------------------------- ICMP

    def handle_icmp_error(self, icmp_type: int, code: int, seq_no: int, now: float) -> None:
        """An ICMP error arrived quoting one of our segments, whose sequence number
        is ``seq_no`` (RFC 9293 §3.9.2.2)."""
        self.stats["icmp_errors_in"] += 1
        meaning = icmp_error_meaning(icmp_type, code)
        if meaning is None:
            self.stats["icmp_ignored"] += 1  # source quench (MUST-55) and unknown codes
            return
        if (
            self.state in (State.CLOSED, State.LISTEN, State.TIME_WAIT)
            or seq.lt(seq_no, self.snd_una)
            or seq.gt(seq_no, self.snd_nxt)
        ):
            # RFC 5927 §4.1: only a quote of data still in flight can be about this
            # connection; anything else is stale or forged.
            self.stats["drop_icmp_out_of_window"] += 1
            return
        error, hard = meaning
        if hard and self.state is State.SYN_SENT:
            # A hard error while opening ends the attempt (SHLD-26). In synchronized
            # states it is taken as soft (RFC 5927 §7.2, as Linux does): a forged
            # ICMP message must not be able to reset an established connection.
            self._enter_closed(f"ICMP type {icmp_type} code {code}")
            self._events.append(ConnectionUnreachable(error))
            return
        self.soft_error = error
        self.stats["icmp_soft_errors"] += 1
        self._events.append(SoftError(error))

    # ---------------------------------------------------------------- segments

    def handle_segment(self, seg: Segment, now: float) -> None:
        """SEGMENT ARRIVES (RFC 9293 §3.10.7) for a connection that exists."""
        self.stats["segments_in"] += 1
        match self.state:
            case State.CLOSED:
                # Owners do not route segments to a CLOSED TCB; answer as §3.10.7.1 if they do.
                reply = reset_for_unknown(seg)
                if reply is not None:
                    self._control.append(reply)
            case State.LISTEN:
                self._on_listen(seg, now)
            case State.SYN_SENT:
                self._on_syn_sent(seg, now)
            case _:
                self._on_synchronized(seg, now)

    def _on_listen(self, seg: Segment, now: float) -> None:
        """RFC 9293 §3.10.7.2."""
        if seg.rst:
            self.stats["drop_listen_rst"] += 1
            return
        if seg.has_ack:
            # <SEQ=SEG.ACK><CTL=RST>, to the sender's port (we have no peer yet).
            self._control.append(Segment(self.local_port, seg.src_port, seg.ack, 0, _RST, 0))
            self.stats["resets_sent"] += 1
            return
        if not seg.syn:
            self.stats["drop_listen_no_syn"] += 1
            return
        if seg.fin:
            # SYN and FIN together open and close at once: Linux drops it, and so do we.
            self.stats["drop_listen_syn_fin"] += 1
            return
        # Policy: data or FIN on a SYN is not queued (we ACK only the SYN, and the
        # peer retransmits the data), which §3.10.7.2 allows.
        self.remote_port = seg.src_port
        self._take_syn(seg, now)
        self._negotiate(seg.options)
        self.ecn_ok = self.config.ecn != "off" and seg.flags & _ECN_SETUP == _ECN_SETUP
        self.snd_nxt = seq.add(self.iss, 1)
        self._set_state(State.SYN_RECEIVED, seg)

    def _on_syn_sent(self, seg: Segment, now: float) -> None:
        """RFC 9293 §3.10.7.3."""
        ack_ok = False
        if seg.has_ack:
            if seq.le(seg.ack, self.iss) or seq.gt(seg.ack, self.snd_nxt):
                if not seg.rst:
                    self._control.append(self._make(seg.ack, 0, _RST, now=now))
                    self.stats["resets_sent"] += 1
                self.stats["drop_syn_sent_bad_ack"] += 1
                return
            ack_ok = True
        if seg.rst:
            if ack_ok:
                self._enter_closed(seg)
                self._events.append(ConnectionRefused())
            else:
                # RFC 5961 §3 / RFC 9293: a RST without an acceptable ACK is ignored here.
                self.stats["drop_syn_sent_rst_no_ack"] += 1
            return
        if not seg.syn:
            self.stats["drop_syn_sent_no_syn"] += 1
            return
        self._take_syn(seg, now)
        self._negotiate(seg.options)
        # An ECN-setup SYN-ACK has ECE without CWR; a SYN crossing ours sets up nothing.
        self.ecn_ok = ack_ok and self._ecn_asked and seg.flags & _ECN_SETUP == Flags.ECE
        if ack_ok:
            self._advance_una(seg, now)
        if seq.gt(self.snd_una, self.iss):
            # Our SYN is acknowledged: ESTABLISHED, and ACK their SYN.
            self._update_window(seg)
            self._established(seg, now)
            self._ack_due = True
            if seg.payload or seg.fin:
                # §3.10.7.3: continue with the sixth step; the text starts after the SYN.
                self._accept_text(seg, seq.add(seg.seq, 1), now)
        else:
            # Simultaneous open (§3.5, Figure 7): answer with SYN-ACK <SEQ=ISS><ACK=RCV.NXT>.
            self._syn_sent = False
            self._rtt_seq = None  # the SYN-ACK repeats our SYN: Karn's rule applies
            self._set_state(State.SYN_RECEIVED, seg)

    def _take_syn(self, seg: Segment, now: float) -> None:
        self.irs = seg.seq
        self.rcv_nxt = seq.add(seg.seq, 1)
        # Active open: the window our SYN offered now starts at RCV.NXT.
        self._rcv_adv_edge = seq.add(self.rcv_nxt, self._syn_window)
        self._peer_syn_options = seg.options
        if seg.options.mss is not None:
            # Linux clamps a tiny MSS to tcp_min_snd_mss (48) since CVE-2019-11479:
            # an MSS of 1 would make us cut 64 KB into 65,535 segments.
            self.peer_mss = max(seg.options.mss, _MIN_SEND_MSS)
        # SND.WND from a SYN is never scaled (RFC 7323 §2.2).
        self.snd_wnd = seg.window
        self.snd_wl1 = seg.seq
        self.max_snd_wnd = max(self.max_snd_wnd, seg.window)
        if seg.options.timestamps is not None:
            self.ts_recent = seg.options.timestamps[0]
            self._ts_recent_at = now

    def _negotiate(self, peer: Options) -> None:
        """Options in force once the SYNs crossed: each needs both sides' consent
        (RFC 7323 §2.2, §3.2; RFC 2018 §2). A SYN-ACK answers only what was offered."""
        config = self.config
        if config.window_scaling and peer.wscale is not None:
            # RFC 7323 §2.3: a shift above 14 is treated as 14.
            self.snd_wscale = min(peer.wscale, 14)
            self.rcv_wscale = config.window_shift
        self.sack_ok = config.sack and peer.sack_permitted
        self.ts_ok = config.timestamps and peer.timestamps is not None
        self.cc = congestion.create(
            self.cc.name, self.send_mss - (_TS_OPTION_BYTES if self.ts_ok else 0)
        )

    def _established(self, cause: Segment, now: float) -> None:
        self._retries = 0
        self._progress_at = now
        if self._syn_timed_out and self.rtt.srtt is None:
            self.rtt.rto = max(self.rtt.rto, _RTO_AFTER_SYN_TIMEOUT)
        else:
            self.rtt.reset_backoff()
        self._set_state(State.ESTABLISHED, cause)
        self._events.append(ConnectionEstablished())
        self._rearm_keepalive(now)

    def _on_synchronized(self, seg: Segment, now: float) -> None:
        """RFC 9293 §3.10.7.4, for SYN-RECEIVED and every later state."""
        state = self.state
        # SYN-RECEIVED, Linux behaviour: a retransmitted SYN means our SYN-ACK was
        # lost; answer it with the SYN-ACK again rather than a bare ACK that the
        # peer in SYN-SENT would drop (§3.10.7.3, "neither SYN nor RST").
        if state is State.SYN_RECEIVED and seg.syn and not seg.has_ack and seg.seq == self.irs:
            self._syn_sent = False
            self.stats["syn_retransmits_seen"] += 1
            return

        if (
            state is State.SYN_RECEIVED
            and not self.passive
            and seg.syn
            and seg.has_ack
            and seg.seq == self.irs
        ):
            # Simultaneous open, Figure 7 line 6: the peer's SYN-ACK repeats the SYN
            # we already hold, so the acceptability test would reject it although
            # its ACK completes the handshake. Linux (tcp_validate_incoming) lets it
            # through as an ACK; we strip the old SYN and do the same.
            seg = replace(seg, seq=seq.add(seg.seq, 1), flags=seg.flags & ~Flags.SYN)

        ts = seg.options.timestamps if self.ts_ok else None
        # RFC 7323 §5.3 R1, PAWS: an older timestamp marks an old duplicate.
        if (
            ts is not None
            and not seg.rst
            and seq.lt(ts[0], self.ts_recent)
            and now - self._ts_recent_at < _PAWS_IDLE
            and not self._disordered_ack(seg, ts[0])
        ):
            self.stats["drop_paws"] += 1
            self._oow_ack(seg, now)
            return

        # First: sequence number check.
        if not self._acceptable(seg):
            if state is State.TIME_WAIT and seg.fin and not seg.rst and seg.end_seq == self.rcv_nxt:
                # §3.10.7.4 eighth step, TIME-WAIT: a retransmitted FIN means our last
                # ACK was lost. ACK it again and restart the 2 MSL wait.
                self._time_wait_at = now + 2 * self.config.msl
                self.stats["fin_retransmits_seen"] += 1
            if not seg.rst:
                self._oow_ack(seg, now)
            self.stats["drop_unacceptable"] += 1
            return

        # RFC 7323 §4.3 R3: remember the timestamp to echo, from the segment that
        # covers the left edge of what we last acknowledged.
        if (
            ts is not None
            and seq.ge(ts[0], self.ts_recent)
            and seq.le(seg.seq, self._last_ack_sent)
        ):
            self.ts_recent = ts[0]
            self._ts_recent_at = now

        # Second: RST. RFC 9293 includes RFC 5961 §3.2: reset only on an exact match.
        if seg.rst:
            self._on_rst(seg, now)
            return

        # Fourth: SYN in a synchronized state (RFC 5961 §4, RFC 9293 §3.10.7.4).
        if seg.syn:
            if state is State.SYN_RECEIVED and self.passive:
                self._return_to_listen(seg)
                return
            self._challenge_ack(now)
            return

        # Fifth: ACK.
        if not seg.has_ack:
            self.stats["drop_no_ack"] += 1
            return
        if self.ecn_ok:
            self._on_ecn(seg, now)
        if not self._on_ack(seg, now):
            return
        if self._keepalive_at is not None:
            self._keepalive_sent = 0
            self._rearm_keepalive(now)

        # Sixth: URG. Urgent data stays in line (like SO_OOBINLINE); the pointer marks
        # where it ends, and this runs with a zero window too (MUST-66).
        if seg.flags & Flags.URG and self.state in _URGENT_STATES:
            self._on_urgent(seg)
        # Seventh and eighth: text and FIN.
        if self.state.is_synchronized:
            self._accept_text(seg, seg.seq, now)

    def _on_urgent(self, seg: Segment) -> None:
        # The pointer is an offset to the octet after the urgent data (MUST-62).
        up = seq.add(seg.seq, seg.urgent)
        self.stats["urgent_received"] += 1
        if self.rcv_up is not None and not seq.gt(up, self.rcv_up):
            return
        self.rcv_up = up
        if seq.gt(up, self._read_seq):
            # Tell the application at once (MUST-32), even before the data is here.
            self._events.append(UrgentDataArrived(seq.sub(up, self._read_seq)))

    def _disordered_ack(self, seg: Segment, tsval: int) -> bool:
        """A pure duplicate ACK that was merely reordered: exempt from PAWS, as in
        Linux's tcp_disordered_ack(), so the SACK blocks it carries are not lost."""
        return (
            seg.has_ack
            and not seg.payload
            and not seg.syn
            and not seg.fin
            and seg.seq == self.rcv_nxt
            and seg.ack == self.snd_una
            and seg.window << self.snd_wscale == self.snd_wnd
            and seq.sub(self.ts_recent, tsval) <= self.rtt.rto * 1000
        )

    def _acceptable(self, seg: Segment) -> bool:
        """The four cases of the acceptability test (§3.10.7.4, first check)."""
        length = seg.seg_len
        wnd = max(seq.sub(self._rcv_adv_edge, self.rcv_nxt), 0)
        if length == 0:
            if wnd == 0:
                return seg.seq == self.rcv_nxt
            return seq.in_window(seg.seq, self.rcv_nxt, wnd)
        if wnd == 0:
            # "Special allowance should be made to accept valid ACKs, URGs, and RSTs":
            # a segment at RCV.NXT is processed for its control fields and its text
            # is trimmed away (Linux does the same for zero-window probes).
            return seg.seq == self.rcv_nxt
        return seq.in_window(seg.seq, self.rcv_nxt, wnd) or seq.in_window(
            seq.add(seg.seq, length - 1), self.rcv_nxt, wnd
        )

    def _on_rst(self, seg: Segment, now: float) -> None:
        if seg.seq != self.rcv_nxt:
            # In the window but not exact: challenge ACK (RFC 5961 §3.2).
            self._challenge_ack(now)
            return
        match self.state:
            case State.SYN_RECEIVED:
                if self.passive:
                    self._return_to_listen(seg)
                else:
                    self._enter_closed(seg)
                    self._events.append(ConnectionRefused())
            case State.ESTABLISHED | State.FIN_WAIT_1 | State.FIN_WAIT_2 | State.CLOSE_WAIT:
                state = self.state
                self._enter_closed(seg)
                self._events.append(ConnectionReset(state))
            case _:
                # CLOSING, LAST-ACK, TIME-WAIT: enter CLOSED. In TIME-WAIT this is the
                # RFC text and Linux's default (tcp_rfc1337 = 0), not RFC 1337's choice.
                self._enter_closed(seg)
                self._events.append(ConnectionClosed())

    def _return_to_listen(self, cause: Segment) -> None:
        self._clear_timers()
        self._snd_buf.clear()
        self._snd_off = 0
        self._control.clear()
        self._ack_due = False
        self.remote_port = 0
        self._syn_sent = False
        self._set_state(State.LISTEN, cause)
        self._events.append(ReturnedToListen())

    def _challenge_ack(self, now: float) -> None:
        """RFC 5961: an ACK for the peer to prove itself, at most one per
        invalid_ack_interval per connection and within the stack's per-second budget
        (Linux's tcp_invalid_ratelimit and tcp_challenge_ack_limit)."""
        if now - self._last_oow_ack < self.config.invalid_ack_interval:
            self.stats["challenge_acks_suppressed"] += 1
            return
        if self._challenge_limit is not None and not self._challenge_limit.allow(now):
            self.stats["challenge_acks_suppressed"] += 1
            return
        self._last_oow_ack = now
        self.stats["challenge_acks"] += 1
        self._ack_due = True

    def _oow_ack(self, seg: Segment, now: float) -> None:
        """The ACK owed for an unacceptable segment (RFC 9293 §3.10.7.4). A segment that
        carries data is always answered; one without data (or a SYN) at most once per
        invalid_ack_interval, as Linux's tcp_oow_rate_limited() does, so two endpoints
        that disagree cannot ping-pong ACKs forever."""
        if seg.syn or not (seg.payload or seg.fin):
            if now - self._last_oow_ack < self.config.invalid_ack_interval:
                self.stats["oow_acks_suppressed"] += 1
                return
            self._last_oow_ack = now
        self._ack_due = True

    def _on_ecn(self, seg: Segment, now: float) -> None:
        """RFC 3168 §6.1.2 and §6.1.3, on a segment that passed the checks before ACK."""
        flags = seg.flags
        if flags & Flags.CWR:
            self._ece_pending = False  # the sender has reduced: stop echoing
        if seg.ecn == CE:
            # A router saw congestion: echo it on every ACK until the sender's CWR,
            # and send the first at once rather than after the delayed-ACK time.
            self._ece_pending = True
            self._ack_due = True
            self.stats["ce_received"] += 1
        if not flags & Flags.ECE:
            return
        ack = seg.ack
        if seq.lt(ack, self.snd_una) or seq.gt(ack, self.snd_nxt):
            return  # an old ACK's echo is stale; one for unsent data is not acceptable
        if self._ecn_high is not None and seq.lt(ack, self._ecn_high):
            return  # once per window of data: this one was sent before our reduction
        self._ecn_high = self.snd_nxt
        self._cwr_pending = True
        if self.recovery == "open":
            # As for a loss, without a retransmission (RFC 3168 §6.1.2); in loss
            # recovery cwnd is down already, and CWR just says so.
            self.cc.on_congestion(now, self._rtxq.outstanding)
            self.stats["ecn_reductions"] += 1

    def _on_ack(self, seg: Segment, now: float) -> bool:
        """Fifth check. Returns False if the segment must be dropped."""
        ack = seg.ack
        if self.state is State.SYN_RECEIVED:
            if seq.lt(self.snd_una, ack) and seq.le(ack, self.snd_nxt):
                self._established(seg, now)
                self.snd_wnd = seg.window << self.snd_wscale
                self.snd_wl1 = seg.seq
                self.snd_wl2 = ack
                self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
                if self._fin_queued:
                    # A close() made in SYN-RECEIVED takes effect now (§3.10.4).
                    self._set_state(State.FIN_WAIT_1, "queued close()")
            else:
                self._control.append(self._make(ack, 0, _RST, now=now))
                self.stats["resets_sent"] += 1
                self.stats["drop_syn_received_bad_ack"] += 1
                return False

        if seq.gt(ack, self.snd_nxt):
            # Acknowledges something not yet sent: ACK and drop (§3.10.7.4, RFC 5961 §5.2).
            self._challenge_ack(now)
            self.stats["drop_ack_unsent"] += 1
            return False
        if self.max_snd_wnd and seq.lt(ack, seq.add(self.snd_una, -self.max_snd_wnd)):
            # RFC 5961 §5.2: older than SND.UNA - MAX.SND.WND is not acceptable.
            self._challenge_ack(now)
            self.stats["drop_ack_too_old"] += 1
            return False

        window = seg.window << self.snd_wscale
        if self.sack_ok and seg.options.sack_blocks:
            self._count_dsack(seg)
        delivered: list[Sent] = []
        if seq.gt(ack, self.snd_una):
            delivered = self._advance_una(seg, now)
        newly_sacked = 0
        if self.sack_ok and seg.options.sack_blocks:
            self.stats["sack_blocks_received"] += len(seg.options.sack_blocks)
            sacked = self._rtxq.sack(self.snd_una, seg.options.sack_blocks)
            newly_sacked = len(sacked)
            delivered += sacked
        if delivered:
            self._rack.update(delivered, now, self.rtt.srtt)
        if (
            not delivered
            and ack == self.snd_una
            and seq.sub(self.snd_nxt, self.snd_una) > 0
            and not seg.payload
            and not seg.fin
            and (window == self.snd_wnd or newly_sacked)
        ):
            # A duplicate ACK (RFC 5681 §2), or one that brings new SACK information.
            self._dupacks += 1
            self.stats["duplicate_acks"] += 1
            if not self.sack_ok:
                # Each duplicate ACK means a segment left the network (RFC 5681
                # §3.2); counting it lets limited transmit (RFC 3042) and fast
                # recovery send while the hole is being filled.
                self._reno_sacked = min(self._reno_sacked + self.send_mss, self._rtxq.outstanding)
            if window == 0 and (self._persisting or self.snd_wnd == 0):
                # The peer answered a zero-window probe (or a retransmission into a
                # window it shrank to zero): it is alive, so probing goes on without
                # counting towards the give-up limit (RFC 9293 §3.8.6.1, SHLD-17).
                self._retries = 0
                self._progress_at = now

        if seq.le(self.snd_una, ack) and (
            seq.lt(self.snd_wl1, seg.seq) or (self.snd_wl1 == seg.seq and seq.le(self.snd_wl2, ack))
        ):
            self._update_window(seg)

        self._detect_loss(now)

        match self.state:
            case State.FIN_WAIT_1 if self.fin_acknowledged:
                self._set_state(State.FIN_WAIT_2, seg)
                if self.orphaned:
                    self._fin_wait_2_at = now + self.config.fin_timeout
            case State.CLOSING if self.fin_acknowledged:
                self._enter_time_wait(seg, now)
            case State.LAST_ACK if self.fin_acknowledged:
                self._enter_closed(seg)
                self._events.append(ConnectionClosed())
                return False
        return True

    def _update_window(self, seg: Segment) -> None:
        # A SYN's window is never scaled; every later one is (RFC 7323 §2.2).
        window = seg.window if seg.syn else seg.window << self.snd_wscale
        reopened = window > 0 and self.snd_wnd == 0 and self.state.is_synchronized
        grew = window > self.snd_wnd
        self.snd_wnd = window
        self.snd_wl1 = seg.seq
        self.snd_wl2 = seg.ack
        self.max_snd_wnd = max(self.max_snd_wnd, window)
        if grew and self._persisting or reopened and self.snd_una != self.snd_nxt:
            # Either the persist timer's window opened, or one the peer shrank to
            # zero under data in flight (§3.8.6): that data was dropped, and waiting
            # out a backed-off RTO for it would stall, so it goes again now.
            self._leave_persist()

    def _leave_persist(self) -> None:
        """The window reopened: resend any probe bytes the peer dropped, at once."""
        self._persisting = False
        self._probe_due = False
        self.rtt.reset_backoff()
        # Linux drops data sent into a zero window (TCPZeroWindowDrop), so the
        # probe bytes beyond SND.UNA are retransmitted now, not after an RTO.
        self._rtxq.mark_all_lost()
        self._rto_at = None

    def _advance_una(self, seg: Segment, now: float) -> list[Sent]:
        """SND.UNA < SEG.ACK =< SND.NXT: drop acknowledged bytes, measure, rearm the RTO.

        Returns the records this ACK delivered (for RACK)."""
        ack = seg.ack
        acked = seq.sub(ack, self.snd_una)
        if seq.le(self.snd_una, self.iss):
            # The SYN's sequence number is no data: counting it would grow the first
            # flight of a passive open to 11 segments (RFC 5681 §3.1: IW counts data).
            acked -= 1
        data_end = self._data_nxt()
        if seq.gt(ack, self._buf_seq):
            acked_data = min(seq.sub(ack, self._buf_seq), seq.sub(data_end, self._buf_seq))
            if acked_data > 0:
                self._snd_off += acked_data
                self._buf_seq = seq.add(self._buf_seq, acked_data)
                if self._snd_off > 65536 and self._snd_off * 2 > len(self._snd_buf):
                    del self._snd_buf[: self._snd_off]
                    self._snd_off = 0
                self._events.append(DataAcknowledged(acked_data))
                self.stats["bytes_acked"] += acked_data
        self.snd_una = ack
        if self.snd_up is not None and seq.ge(ack, self.snd_up):
            self.snd_up = None  # the urgent data arrived: leave urgent mode
        delivered = self._rtxq.acknowledge(ack)
        self._measure_rtt(seg, now)
        self._retries = 0
        self.delivery_trouble = False
        self._progress_at = now
        self._dupacks = 0
        self._tlp_armed = True
        if self.state.is_synchronized and acked > 0:
            ts = seg.options.timestamps if self.ts_ok else None
            # The largest of our transmissions this ACK covered (an ACK inside one
            # offload segment covered part of one): slow start counts per ACK at
            # most two of those, not two MSS, since the peer answers an offload
            # segment as the one segment it received (Linux counts its packets).
            largest = max((record.length for record in delivered), default=acked)
            self._on_new_ack(acked, now, ts[1] if ts else None, largest)
        # RFC 6298 §5.2/§5.3: stop the timer when all is acknowledged, else restart it.
        if self.snd_una == self.snd_nxt:
            # A probe that filled a small window was ACKed with the window shut: data
            # still waits, and only the persist timer will ask again (§3.8.6.1).
            waiting = self._persisting and self.unsent > 0
            self._rto_at = now + self.rtt.rto if waiting else None
            self._tlp_at = None
            self._reorder_at = None
        elif not self._persisting:
            self._rto_at = now + self.rtt.rto
            self._arm_tlp(now)
        return delivered

    def _measure_rtt(self, seg: Segment, now: float) -> None:
        ts = seg.options.timestamps if self.ts_ok else None
        if ts is not None and ts[1] != 0 and (not self.sack_ok or _dsack(seg) is None):
            # (An ACK with a D-SACK answers a duplicate whose TSval the peer did not
            # take, RFC 7323 §4.3: it echoes an older segment's, perhaps one sent
            # before a whole run of lost ACKs, and would time that, not the path.)
            # RFC 7323 §4.1: the echoed timestamp times this very transmission, so
            # retransmissions can be measured too (Karn's rule does not apply).
            elapsed_ms = seq.sub(self._ts_value(now), ts[1])
            if 0 <= elapsed_ms < 3_600_000:
                self.rtt.sample(elapsed_ms / 1000)
                self._rtt_seq = None
                return
        if self._rtt_seq is not None and seq.ge(seg.ack, self._rtt_seq):
            # A fresh measurement: RFC 6298 §5 lets the backed-off RTO collapse
            # only now, never on the ACK of a retransmission (Karn).
            self.rtt.sample(now - self._rtt_sent_at)
            self._rtt_seq = None

    def _count_dsack(self, seg: Segment) -> None:
        """What a D-SACK reports arrived twice, so our retransmission of it was
        needless; counted in any state, and against a recovery episode's undo."""
        dsack = _dsack(seg)
        if dsack is None:
            return
        self.stats["dsacks_received"] += 1
        if self._undo_bytes is not None:
            self._undo_bytes = max(self._undo_bytes - seq.sub(dsack[1], dsack[0]), 0)

    def _undo(self) -> None:
        """The recovery episode was for nothing: restore cwnd and forget the losses."""
        self.stats["spurious_recoveries_undone"] += 1
        self.cc.undo()
        self.recovery = "open"
        self._retrans_stamp = None
        self._undo_bytes = None
        self._reno_sacked = 0
        for record in self._rtxq.unsacked():
            if record.lost:
                self._rtxq.forgive(record)

    def _on_new_ack(self, acked: int, now: float, tsecr: int | None, largest: int) -> None:
        """Congestion control and recovery bookkeeping for an ACK that moved SND.UNA."""
        if (
            self.recovery != "open"
            and self._retrans_stamp is not None
            and tsecr is not None
            and seq.lt(tsecr, self._retrans_stamp)
        ):
            # Eifel detection (RFC 3522): this ACK echoes a transmission older than
            # our first retransmission, so the original arrived (late, reordered)
            # and the retransmissions were spurious. Undo the reduction, as Linux's
            # tcp_try_undo_recovery() does, and allow more reordering from now on.
            self._rack.reo_wnd_mult = min(self._rack.reo_wnd_mult + 1, 16)
            self._rack.reordering_seen = True
            self._undo()
            return
        if self.recovery != "open" and self._undo_bytes == 0 and self._episode_retransmitted:
            # Every retransmission came back reported duplicate (D-SACK): the data
            # had arrived, only ACKs were lost or late (RFC 3708; Linux's
            # tcp_try_undo_dsack and undo_retrans).
            self.stats["dsack_undos"] += 1
            self._undo()
            return
        if self.recovery == "open":
            self._undo_bytes = None
            self._retrans_stamp = None
            self._reno_sacked = 0
            self.cc.on_ack(acked, now, self.rtt.srtt, largest)
            return
        self._reno_sacked = max(self._reno_sacked - acked, 0)
        if seq.ge(self.snd_una, self._recover):
            # Full ACK: recovery is over (RFC 6582 §3.2 step 3, RFC 6675 §5).
            if self.recovery == "recovery":
                self.cc.on_recovery_end()
            self.recovery = "open"
            self._reno_sacked = 0
            self._retrans_stamp = None
            self._undo_bytes = None
            return
        if self.recovery == "loss":
            # After an RTO the window grows in slow start as retransmissions are ACKed.
            self.cc.on_ack(acked, now, self.rtt.srtt, largest)
        if not self.sack_ok:
            # NewReno partial ACK (RFC 6582 §3.2 step 4): the next segment is lost too.
            head = self._rtxq.head
            if head is not None and not head.lost:
                self._rtxq.mark_lost(head)
                self._force_rtx = True

    def _detect_loss(self, now: float) -> None:
        """Find lost segments: RACK with SACK (RFC 8985 §6.2), duplicate ACKs without
        (RFC 5681 §3.2); enter fast recovery on the first loss."""
        if not self._rtxq.outstanding:
            return
        lost: list[Sent] = []
        if self.sack_ok:
            # RFC 8985 §6.2 step 4: no reordering window in recovery or once
            # DupThresh segments' worth is SACKed, unless reordering has been seen.
            hurry = self.recovery != "open" or (
                self._rtxq.sacked_bytes > (_DUP_THRESH - 1) * self.send_mss
            )
            lost, self._reorder_at = self._rack.detect(self._rtxq, now, self.rtt.srtt, hurry)
        elif self._dupacks >= _DUP_THRESH and self.recovery == "open":
            head = self._rtxq.head
            if head is not None:
                self._rtxq.mark_lost(head)
                lost.append(head)
        if not lost:
            return
        self.stats["segments_marked_lost"] += len(lost)
        if self.recovery == "open":
            self.stats["fast_retransmits"] += 1
            self.cc.on_congestion(now, self._rtxq.outstanding)
            self._undo_bytes = self._episode_retransmitted = 0
            self.recovery = "recovery"
            self._recover = self.snd_nxt
            self._force_rtx = True
            self._tlp_at = None

    def _accept_text(self, seg: Segment, start: int, now: float) -> None:
        """Seventh and eighth steps: queue text in order or out of order, then FIN."""
        payload = seg.payload
        fin = seg.fin
        skip = seq.sub(self.rcv_nxt, start)
        if skip > 0:
            # Trim what we already have (a retransmission overlapping RCV.NXT).
            if skip > len(payload):
                return  # a duplicate of data and FIN we already processed
            payload = payload[skip:]
            start = self.rcv_nxt
        if payload:
            if not self.state.can_receive:
                # CLOSE-WAIT, CLOSING, LAST-ACK, TIME-WAIT: the peer already sent FIN.
                self.stats["drop_data_after_fin"] += 1
                return
            if self.orphaned or (
                self.reads_shut and self.state in (State.FIN_WAIT_1, State.FIN_WAIT_2)
            ):
                # New data for a socket nobody will read: reset (Linux TCPAbortOnData).
                self.stats["abort_on_data"] += 1
                if not self.orphaned:
                    # Still open, it learns of the reset as Linux's tcp_reset() says.
                    self._events.append(ConnectionReset(self.state))
                self.abort(now)
                return
            # Keep what fits in the window we advertised (never shrunk, §3.8.6.2.2),
            # and, once SO_RCVBUF made the buffer smaller than that window, in the
            # buffer. (Otherwise the window-scale rounding may let a little more in
            # than the buffer's size: we offered it, so we take it.)
            # Up to the furthest edge we ever offered: a truncated window may have
            # moved the edge back by less than a scale unit since (see _make), and
            # what the peer sent to the old edge is ours to take.
            edge = self._rcv_adv_edge
            if self._rcv_max_edge is not None and seq.gt(self._rcv_max_edge, edge):
                edge = self._rcv_max_edge
            room = max(seq.sub(edge, start), 0)
            if self._buffer_shrunk:
                room = min(room, max(seq.sub(seq.add(self.rcv_nxt, self.rcv_wnd), start), 0))
            if len(payload) > room:
                payload = payload[:room]
                fin = False  # the FIN lies beyond what we keep
                self.stats["trimmed_to_window"] += 1
                self._ack_due = True  # tell the sender where our window really ends
        if start != self.rcv_nxt:
            if payload or fin:
                # Out of order: hold it (RFC 9293 §3.10.7.4 allows queuing in-window
                # segments) and tell the peer at once, with SACK blocks if agreed.
                self._ooo.add(self.rcv_nxt, start, payload, fin=fin)
                self.stats["ooo_segments_queued"] += 1
                self._ack_due = True
            return
        if payload:
            self._rcv_buf.append(payload)
            self.rcv_nxt = seq.add(self.rcv_nxt, len(payload))
            self.stats["bytes_received"] += len(payload)
            filled = False
            ready = b""
            if self._ooo and not fin:
                # (A FIN here ends the stream: what is queued beyond it is not the
                # peer's data, however it got there; the FIN step drops it.)
                ready = self._ooo.pop_ready(self.rcv_nxt)
                if ready:
                    self._rcv_buf.append(ready)
                    self.rcv_nxt = seq.add(self.rcv_nxt, len(ready))
                    self.stats["bytes_received"] += len(ready)
                    filled = True
            # A FIN that came ahead of a hole is held even when no data came with it
            # (the reassembler then holds no block at all).
            if self._ooo.fin is not None and self._ooo.fin == self.rcv_nxt:
                fin = True
            self._events.append(DataReceived(len(payload) + (len(ready) if filled else 0)))
            self._ack_policy(len(payload), immediate=filled, now=now)
        if fin and self.state in (State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2):
            self._ooo.clear()
            self._on_fin(seg, now)

    def _ack_policy(self, received: int, *, immediate: bool, now: float) -> None:
        """RFC 9293 §3.8.6.3 / RFC 5681 §4.2: ACK every second full segment, else
        within the delayed-ACK time; at once while in quick-ACK mode or a hole filled."""
        self._unacked_bytes += received
        if (
            immediate
            or self.config.delayed_ack <= 0
            or self._quick_acks > 0
            or self._unacked_bytes >= 2 * self._full_segment()
        ):
            if self._quick_acks > 0:
                self._quick_acks -= 1
            self._ack_due = True
        elif self._delack_at is None:
            self._delack_at = now + self.config.delayed_ack

    def _full_segment(self) -> int:
        """The most data a segment from the peer can carry: our MSS less the
        timestamps it must carry (RFC 7323 §2.2 leaves them out of the MSS)."""
        return self.config.announced_mss - (_TS_OPTION_BYTES if self.ts_ok else 0)

    def _on_fin(self, seg: Segment, now: float) -> None:
        """Eighth step: the FIN is in order."""
        self.rcv_nxt = seq.add(self.rcv_nxt, 1)
        # The FIN takes a sequence number but no buffer space: the edge moves with it.
        self._rcv_adv_edge = seq.add(self._rcv_adv_edge, 1)
        self._fin_received = True
        self._ack_due = True
        self._events.append(EofReceived())
        match self.state:
            case State.ESTABLISHED:
                self._set_state(State.CLOSE_WAIT, seg)
            case State.FIN_WAIT_1:
                if self.fin_acknowledged:
                    self._enter_time_wait(seg, now)
                else:
                    # Both FINs crossed: simultaneous close (§3.6, Figure 13).
                    self._set_state(State.CLOSING, seg)
            case State.FIN_WAIT_2:
                self._enter_time_wait(seg, now)
            case _:
                pass

    def _enter_time_wait(self, cause: Segment | str, now: float) -> None:
        self._set_state(State.TIME_WAIT, cause)
        self._clear_timers()
        self._time_wait_at = now + 2 * self.config.msl

    def _enter_closed(self, cause: Segment | str) -> None:
        self._clear_timers()
        self._set_state(State.CLOSED, cause)

    def _clear_timers(self) -> None:
        self._reorder_at = None
        self._tlp_at = None
        self._tlp_due = False
        self._rto_at = None
        self._time_wait_at = None
        self._fin_wait_2_at = None
        self._delack_at = None
        self._keepalive_at = None
        self._rtt_seq = None
        self._persisting = False
        self._probe_due = False

    def _window_opened(self) -> None:
        # A window update of its own only when it matters, as Linux decides
        # (__tcp_cleanup_rbuf): the advertised window was at most half the buffer
        # and would now at least double. Otherwise the next ACK carries it.
        if not self.state.can_receive:
            return
        advertised = max(seq.sub(self._rcv_adv_edge, self.rcv_nxt), 0)
        # No more than the window field can say: without window scaling a buffer
        # above 64 KB would otherwise "open" on every read, sending the same ACK.
        possible = min(seq.sub(self._receive_edge(), self.rcv_nxt), 0xFFFF << self.rcv_wscale)
        if (
            2 * advertised <= self.config.receive_buffer
            and possible >= 2 * advertised
            and (possible > advertised)
        ):
            self._ack_due = True

    def _receive_edge(self) -> int:
        """The right edge to advertise, with receiver-side SWS avoidance (§3.8.6.2.2)."""
        edge = seq.add(self.rcv_nxt, self.rcv_wnd)
        grown = seq.sub(edge, self._rcv_adv_edge)
        if grown < min(self.config.receive_buffer // 2, self.config.announced_mss):
            return self._rcv_adv_edge if seq.ge(self._rcv_adv_edge, self.rcv_nxt) else self.rcv_nxt
        return edge

    # ----------------------------------------------------------------- output

    def segments_to_send(self, now: float) -> list[Segment]:
        """Everything to transmit now, in order. Arms the retransmission timer."""
        out = self._control
        self._control = []
        state = self.state
        if state is State.CLOSED or state is State.LISTEN:
            self.stats["segments_out"] += len(out)
            return out

        if state is State.SYN_SENT:
            if not self._syn_sent:
                out.append(self._syn_segment(_SYN_ONLY, 0, now))
                self._after_syn(now)
        elif state is State.SYN_RECEIVED or seq.le(self.snd_una, self.iss):
            # SYN-RECEIVED, or closed from it before our SYN was acknowledged: the
            # SYN-ACK is what needs (re)sending; a FIN follows it in the same burst.
            if not self._syn_sent:
                out.append(self._syn_segment(_SYN_ACK, self.rcv_nxt, now))
                self._after_syn(now)
            if state is not State.SYN_RECEIVED:
                self._transmit(out, now)
        else:
            self._transmit(out, now)
            if self._keepalive_due:
                # Linux's probe form: <SEQ=SND.UNA-1>, no data, which the peer must ACK.
                out.append(self._make(seq.add(self.snd_una, -1), self.rcv_nxt, _ACK, now=now))
                self._keepalive_due = False

        if self._ack_due and state is not State.SYN_SENT:
            out.append(self._make(self.snd_nxt, self.rcv_nxt, _ACK, now=now))
        self.stats["segments_out"] += len(out)
        return out

    def _after_syn(self, now: float) -> None:
        if self._retries == 0:
            self._progress_at = now
        if self._rtt_seq is None and self._retries == 0:
            self._rtt_seq = seq.add(self.iss, 1)
            self._rtt_sent_at = now
        self._syn_sent = True
        if self._rto_at is None:
            self._rto_at = now + self.rtt.rto
        self._ack_due = False

    def _syn_segment(self, flags: Flags, ack: int, now: float) -> Segment:
        """SYN or SYN-ACK with our options; the window field is never scaled here."""
        config = self.config
        if flags & Flags.ACK:
            # SYN-ACK: answer only what the peer's SYN offered.
            peer = self._peer_syn_options
            wscale = self.rcv_wscale if peer.wscale is not None and config.window_scaling else None
            sack = self.sack_ok
            ts = (self._ts_value(now), self.ts_recent) if self.ts_ok else None
        else:
            wscale = config.window_shift if config.window_scaling else None
            sack = config.sack
            ts = (self._ts_value(now), 0) if config.timestamps else None
        window = min(self.rcv_wnd, _MAX_FIELD)
        self._syn_window = window
        self._rcv_adv_edge = seq.add(self.rcv_nxt, window) if flags & Flags.ACK else 0
        self._last_ack_sent = ack
        options = Options(
            mss=config.announced_mss, wscale=wscale, sack_permitted=sack, timestamps=ts
        )
        if flags & Flags.ACK:
            if self.ecn_ok:
                flags |= Flags.ECE
        elif self._ecn_asked:
            flags |= _ECN_SETUP
        return Segment(self.local_port, self.remote_port, self.iss, ack, flags, window, options)

    def _data_nxt(self) -> int:
        """Sequence number after the last data byte sent (SND.NXT without our FIN)."""
        if self._fin_seq is not None:
            return self._fin_seq
        return self.snd_nxt

    def _option_overhead(self) -> int:
        """Option bytes on our data segments now: timestamps, plus SACK blocks while
        we hold out-of-order data (Linux's tcp_current_mss does the same sum)."""
        overhead = _TS_OPTION_BYTES if self.ts_ok else 0
        if self.sack_ok and self._ooo:
            blocks = min(len(self._ooo), 3 if self.ts_ok else 4)
            overhead += 4 + 8 * blocks  # NOP, NOP, kind, length, then the edges
        return overhead

    def _pipe(self) -> int:
        """Bytes estimated in the network (RFC 6675 §4 SetPipe, in Linux's form:
        outstanding - SACKed - lost but not yet retransmitted)."""
        return max(self._rtxq.pipe - self._reno_sacked, 0)

    def _transmit(self, out: list[Segment], now: float) -> None:
        """Retransmit what is deemed lost, then send new data, within cwnd and the
        peer's window; then our FIN once the data is out."""
        # (On the smallest links the options alone may not leave room: a byte goes.)
        mss = max(self.send_mss - self._option_overhead(), 1)
        sent_before = len(out)
        while True:
            budget = self.cc.cwnd - self._pipe()
            lost = self._rtxq.first_lost()
            if lost is not None:
                if budget <= 0 and not self._force_rtx:
                    break
                if lost.start != self.snd_una and seq.ge(
                    lost.start, seq.add(self.snd_una, self.snd_wnd)
                ):
                    # Past a right edge the peer pulled back (§3.8.6): only the head
                    # goes, as the probe of that window (Linux's tcp_retransmit_skb).
                    break
                # A lost offload segment goes again only as far as cwnd allows.
                room = max(budget - budget % mss, mss)
                if lost.length - lost.fin > room:
                    self._rtxq.split(lost, seq.add(lost.start, room))
                self._retransmit(out, lost, now, "timeout" if self.recovery == "loss" else "fast")
                continue
            if not self._send_new(out, mss, budget, now):
                break
        if self._tlp_due:
            self._tail_loss_probe(out, mss, now, sent_anything=len(out) > sent_before)
        if len(out) > sent_before:
            self._arm_tlp(now)

    def _retransmit(self, out: list[Segment], record: Sent, now: float, reason: str) -> None:
        data_end = self._data_nxt()
        n = record.length - (1 if record.fin else 0)
        offset = self._snd_off + seq.sub(record.start, self._buf_seq)
        payload = bytes(self._snd_buf[offset : offset + n])
        flags = _ACK | (Flags.FIN if record.fin else Flags(0))
        if n and seq.add(record.start, n) == data_end:
            flags |= Flags.PSH
        out.append(self._make(record.start, self.rcv_nxt, flags, payload, now=now))
        if self._undo_bytes is not None and reason not in _PROBES:
            self._undo_bytes += max(n, 1)
            self._episode_retransmitted += max(n, 1)
        if self._retrans_stamp is None and self.ts_ok and reason not in _PROBES:
            # Where a recovery episode starts, for Eifel. A probe starts none: the
            # peer's answer to it echoes its TSval, and taken as the start it would
            # hide that a later timeout was spurious.
            self._retrans_stamp = self._ts_value(now)
        self._rtxq.retransmitted(record, now)
        self._events.append(Retransmitted(record.start, n, reason))
        self._force_rtx = False
        self._rtt_seq = None  # Karn: a retransmission spoils the running measurement
        self.stats["retransmissions"] += 1
        self.stats["bytes_retransmitted"] += n
        if self._rto_at is None:
            self._rto_at = now + self.rtt.rto
        self._last_send = now

    def _arm_tlp(self, now: float) -> None:
        """RFC 8985 §7.2: schedule a tail loss probe while in the open state."""
        if not (self.sack_ok and self._tlp_armed and self.recovery == "open"):
            return
        if not self._rtxq.outstanding or self.rtt.srtt is None:
            return
        pto = max(2 * self.rtt.srtt, _TLP_MIN)
        if self._rtxq.outstanding <= self.send_mss:
            pto += _WORST_CASE_DELACK
        deadline = now + pto
        if self._rto_at is not None and deadline >= self._rto_at:
            return
        self._tlp_at = deadline

    def _tail_loss_probe(
        self, out: list[Segment], mss: int, now: float, sent_anything: bool
    ) -> None:
        """Send one new segment if possible, else the last one again (RFC 8985 §7.3)."""
        self._tlp_due = False
        if sent_anything:
            return
        offset = self._snd_off + seq.sub(self.snd_nxt, self._buf_seq)
        available = len(self._snd_buf) - offset
        usable = seq.sub(seq.add(self.snd_una, self.snd_wnd), self.snd_nxt)
        if available > 0 and usable > 0 and self._fin_seq is None:
            # New data the peer's window allows goes first, whatever cwnd says: it
            # probes as well and is no duplicate if the tail did arrive.
            n = min(available, usable, mss)
            self._send_data(out, offset, n, fin=self._fin_queued and n == available, now=now)
            self.stats["tail_loss_probes_new_data"] += 1
            self._rto_at = now + self.rtt.rto
            return
        tail = self._rtxq.tail
        if tail is None:
            return
        data = tail.length - tail.fin
        if data > mss:
            # Probe with the last MSS only, not a whole offload segment (as Linux does).
            tail = self._rtxq.split(tail, seq.add(tail.start, data - mss))
        self._retransmit(out, tail, now, "tail_probe")
        self.stats["retransmissions_by_tlp"] += 1
        self._rto_at = now + self.rtt.rto

    def _send_new(self, out: list[Segment], mss: int, budget: int, now: float) -> bool:
        """One new segment if window, cwnd, Nagle and SWS allow; False to stop."""
        if self._fin_seq is not None:
            return False  # FIN sent: nothing new can follow it
        offset = self._snd_off + seq.sub(self.snd_nxt, self._buf_seq)
        available = len(self._snd_buf) - offset
        if available <= 0:
            if self._fin_queued:
                self._send_data(out, offset, 0, fin=True, now=now)
            return False
        nothing_in_flight = self.snd_una == self.snd_nxt
        if nothing_in_flight and self._last_send and now - self._last_send > self.rtt.rto:
            self.cc.restart_after_idle()  # RFC 5681 §4.1: idle longer than an RTO
        usable = seq.sub(seq.add(self.snd_una, self.snd_wnd), self.snd_nxt)
        n = min(available, usable, mss)
        if n <= 0:
            return self._window_blocked(out, offset, available, usable, now)
        if budget <= 0:
            return False  # cwnd is full; ACKs will open it
        # Like Linux's packet-counted cwnd, any room at all admits a whole segment,
        # so a window of 2.8 segments does not stall with 2 in flight.
        if n < mss:
            if n < available:
                # Held back by the window or cwnd. Sender SWS avoidance (§3.8.6.2.1):
                # only a segment of at least half the largest window offered goes.
                if not (self.max_snd_wnd and n >= self.max_snd_wnd // 2):
                    if nothing_in_flight:
                        return self._window_blocked(out, offset, available, usable, now)
                    return False
            elif not (self.nodelay or nothing_in_flight or self._fin_queued):
                # Nagle (§3.7.4): one small segment in flight at a time.
                return False
        tso = self.config.tso_max or 0
        if n == mss and tso > mss:
            # Segmentation offload: one segment of as many whole MSS as the window,
            # cwnd and the link allow, which the link cuts up (Linux's TSO). Only the
            # end of the data may leave a partial MSS at its tail. Never more than
            # half of cwnd, as Linux's tcp_cwnd_test: a flight of one super-segment
            # draws one ACK, and with that ACK lost only a probe or an RTO goes on.
            half = max(self.cc.cwnd // 2, mss)
            n = min(available, usable, tso - tso % mss, max(budget, mss), half)
            if n < available:
                n = max(n - n % mss, mss)
        fin = self._fin_queued and n == available
        self._send_data(out, offset, n, fin=fin, now=now)
        return not fin

    def _send_data(
        self, out: list[Segment], offset: int, n: int, *, fin: bool, now: float, probe: bool = False
    ) -> None:
        available = len(self._snd_buf) - offset
        payload = bytes(self._snd_buf[offset : offset + n]) if n > 0 else b""
        flags = _ACK
        if n > 0 and n == available:
            flags |= Flags.PSH
        if fin:
            flags |= Flags.FIN
        ecn = NOT_ECT
        if self.ecn_ok and n > 0:
            # New data only is ECN-capable: never a window probe, a pure ACK, a SYN
            # or a retransmission (RFC 3168 §6.1.1, §6.1.4 to §6.1.6).
            if not probe:
                ecn = ECT_0
            if self._cwr_pending:
                flags |= Flags.CWR
                self._cwr_pending = False
        out.append(self._make(self.snd_nxt, self.rcv_nxt, flags, payload, now=now, ecn=ecn))
        if self.snd_una == self.snd_nxt:
            self._progress_at = now  # nothing was outstanding: the user timeout starts now
        end = seq.add(self.snd_nxt, n + (1 if fin else 0))
        self._rtxq.add(self.snd_nxt, end, fin, now)
        if self._rtt_seq is None and self._retries == 0:
            self._rtt_seq = end
            self._rtt_sent_at = now
        self.snd_nxt = seq.add(self.snd_nxt, n)
        if fin:
            self._fin_seq = self.snd_nxt
            self.snd_nxt = seq.add(self.snd_nxt, 1)
        if self._rto_at is None:
            self._rto_at = now + self.rtt.rto
        self._last_send = now
        self.stats["bytes_sent"] += n

    def _window_blocked(
        self, out: list[Segment], offset: int, available: int, usable: int, now: float
    ) -> bool:
        """Data waits for the peer's window: run the persist timer (RFC 9293 §3.8.6.1),
        and when it fires send what fits, or a one-byte probe into a closed window."""
        if not self._persisting and self.snd_una == self.snd_nxt:
            self._persisting = True
            self._progress_at = now
            self._rto_at = now + self.rtt.rto
        if not self._probe_due:
            return False
        self._probe_due = False
        self.stats["window_probes"] += 1
        head = self._rtxq.head
        if head is not None:
            # The earlier probe is still unacknowledged: send it again.
            self._retransmit(out, head, now, "probe")
            self.stats["retransmissions"] -= 1  # a probe, not a loss
            return False
        # Never a zero-length probe: Linux does not answer one at SND.NXT (it is in
        # its window and carries nothing to acknowledge). One byte, or what fits.
        n = max(1, min(usable, self.send_mss - self._option_overhead(), available))
        self._send_data(out, offset, n, fin=False, now=now, probe=True)
        return False

    def _make(
        self,
        seq_no: int,
        ack: int,
        flags: Flags,
        payload: bytes = b"",
        *,
        now: float | None = None,
        ecn: int = NOT_ECT,
    ) -> Segment:
        """A segment with our window, timestamps and SACK blocks as negotiated."""
        if flags & _RST:
            # With timestamps agreed, a RST carries them too (RFC 7323 §3.2), as
            # Linux's do; the peer's PAWS never drops a RST (§5.3).
            stamped = NO_OPTIONS
            if self.ts_ok and now is not None:
                stamped = Options(timestamps=(self._ts_value(now), self.ts_recent))
            return Segment(
                self.local_port,
                self.remote_port,
                seq_no & seq.MASK,
                ack & seq.MASK,
                flags,
                0,
                stamped,
            )
        edge = self._receive_edge()
        window = seq.sub(edge, self.rcv_nxt)
        shift = self.rcv_wscale
        # Round up so the advertised edge never moves left (RFC 7323 §2.4), while
        # the buffer has room for the rounding. Once it has not, truncate as §2.4
        # defines the field: the edge then moves left by less than one unit of the
        # scale, and the window closes. Rounding up every ACK past a full buffer
        # would let a peer sending less than a unit at a time keep it open for ever
        # (Linux learnt the same, and added tcp_shrink_window for it).
        top = self._rcv_max_edge
        if top is None or seq.gt(self._rcv_adv_edge, top):
            top = self._rcv_max_edge = self._rcv_adv_edge
        field = (window + (1 << shift) - 1) >> shift
        if field << shift > self.rcv_wnd:
            # Truncated against the furthest edge ever offered, not the last one, so
            # that one truncation after another cannot walk the edge left either.
            field = max(window, seq.sub(top, self.rcv_nxt), 0) >> shift
        field = min(field, _MAX_FIELD)
        self._rcv_adv_edge = seq.add(self.rcv_nxt, field << shift)
        if self._buffer_shrunk and field << shift < self.rcv_wnd + (1 << shift):
            self._buffer_shrunk = False  # the window offered fits the buffer again
        if not field:
            self.stats["zero_windows_sent"] += 1
        options = NO_OPTIONS
        if self.ts_ok or (self.sack_ok and self._ooo):
            ts = (self._ts_value(now or 0.0), self.ts_recent) if self.ts_ok else None
            limit = 3 if self.ts_ok else 4
            if payload:
                # A segment cut before we held out-of-order data (a retransmission)
                # may have no room for every block: send what fits the MSS.
                room = self.send_mss - len(payload) - (_TS_OPTION_BYTES if ts else 0) - 4
                limit = min(limit, max(room // 8, 0))
            blocks = self._ooo.sack_blocks(limit) if self.sack_ok and limit else ()
            if blocks:
                self.stats["sack_blocks_sent"] += len(blocks)
            options = Options(timestamps=ts, sack_blocks=blocks)
        if flags & _ACK:
            if self._ece_pending:
                flags |= Flags.ECE
            self._last_ack_sent = ack
            self._ack_due = False
            self._delack_at = None
            self._unacked_bytes = 0
        urgent = 0
        up = self.snd_up
        if up is not None and seq.lt(seq_no, up):
            # The pointer is 16 bits: an urgent octet further away than that is
            # announced as 0xFFFF ahead, closer with each segment (Linux's form).
            flags |= Flags.URG
            urgent = min(seq.sub(up, seq_no), _MAX_FIELD)
        return Segment(
            self.local_port,
            self.remote_port,
            seq_no & seq.MASK,
            ack & seq.MASK,
            flags,
            field,
            options,
            payload,
            urgent,
            ecn,
        )

    def _ts_value(self, now: float) -> int:
        """Our TSval: a millisecond clock from the offset the engine chose (RFC 7323 §5.4)."""
        return (int(now * 1000) + self._ts_offset) & seq.MASK

    # ------------------------------------------------------------------ state

    def _set_state(self, new: State, cause: Segment | str) -> None:
        old = self.state
        if old is new:
            return
        self.state = new
        event = StateChanged(old, new, cause)
        self._events.append(event)
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug("%s -> %s (%s)", old.name, new.name, event.cause)
