"""One TCP connection: the transmission control block and the RFC 9293 state machine.

Sans-I/O. Inputs are application calls, received segments and timer expiries, each
carrying ``now``; outputs are drained by the owner after every input:
``segments_to_send(now)``, ``next_event()`` and ``get_timer()``.

Must not import scapy, socket, select, threading, time or random: the ISS comes in
from the caller, time comes in as ``now``, and a misbehaving peer never makes this
module raise (the segment is dropped or answered, and a counter names why).
Exceptions are raised only for misuse of the API by the application.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import replace
from typing import Any, Final

from tcpstack.config import TcpConfig
from tcpstack.core import seq
from tcpstack.core.events import (
    ConnectionClosed,
    ConnectionEstablished,
    ConnectionRefused,
    ConnectionReset,
    ConnectionTimedOut,
    DataAcknowledged,
    DataReceived,
    EofReceived,
    Event,
    ReturnedToListen,
    StateChanged,
)
from tcpstack.core.rtt import RttEstimator
from tcpstack.core.segment import NO_OPTIONS, Flags, Options, Segment
from tcpstack.core.state import State

log = logging.getLogger("tcpstack.core")

_MAX_WINDOW: Final = 0xFFFF
_ACK = Flags.ACK
_RST = Flags.RST


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


class TcpConnection:
    """A TCB plus the event processing of RFC 9293 §3.10."""

    def __init__(
        self,
        config: TcpConfig,
        local_port: int,
        remote_port: int = 0,
        *,
        iss: int,
        name: str = "",
    ) -> None:
        self.config = config
        self.local_port = local_port
        self.remote_port = remote_port
        self.state = State.CLOSED
        self.passive = False
        self.stats: Counter[str] = Counter()
        self._log = _ConnectionLog(log, {"conn": name or str(local_port)})
        self._name = name
        self._events: deque[Event] = deque()

        # Send sequence space (RFC 9293 §3.3.1). _snd_buf holds the bytes from
        # _buf_seq on: unacknowledged first, then not yet sent.
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
        self._syn_sent = False  # our SYN (or SYN-ACK) has been transmitted at least once

        # Receive sequence space.
        self.irs = 0
        self.rcv_nxt = 0
        self._rcv_buf = bytearray()
        self._fin_received = False
        self._rcv_adv_edge = 0  # right edge (RCV.NXT + RCV.WND) we last advertised

        # Retransmission and timers: absolute deadlines, None when idle.
        self.rtt = RttEstimator(
            initial=config.rto_initial, minimum=config.rto_min, maximum=config.rto_max
        )
        self._rto_at: float | None = None
        self._time_wait_at: float | None = None
        self._retries = 0
        self._retransmit_due = False
        self._rtt_seq: int | None = None  # sequence number being timed (Karn: one at a time)
        self._rtt_sent_at = 0.0

        self._ack_due = False
        self._probe_due = False
        self._control: list[Segment] = []  # RSTs and ACKs decided while processing input

    # ------------------------------------------------------------------ queries

    def __repr__(self) -> str:
        return f"<TcpConnection {self._name or self.local_port} {self.state.name}>"

    @property
    def rcv_wnd(self) -> int:
        """RCV.WND: free space in the receive buffer (never more than 16 bits, unscaled)."""
        return min(self.config.receive_buffer - len(self._rcv_buf), _MAX_WINDOW)

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
        return max(self.config.send_buffer - self.unsent - self.in_flight, 0)

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
        return min(self.peer_mss, self.config.mss)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """The earliest absolute time at which handle_timer() must be called, or None."""
        if self._rto_at is None:
            return self._time_wait_at
        if self._time_wait_at is None:
            return self._rto_at
        return min(self._rto_at, self._time_wait_at)

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

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue up to send_space bytes; returns how many were taken (maybe 0)."""
        if not self.state.can_send or self._fin_queued:
            raise InvalidStateError("send", self.state)
        n = min(len(data), self.send_space)
        if n:
            self._snd_buf += data[:n]
        return n

    def receive(self, max_bytes: int) -> bytes:
        """Take up to max_bytes of in-order data; reading may open the window."""
        n = min(max_bytes, len(self._rcv_buf))
        if n <= 0:
            return b""
        data = bytes(self._rcv_buf[:n])
        del self._rcv_buf[:n]
        self._window_opened()
        return data

    def receive_into(self, buffer: memoryview) -> int:
        n = min(len(buffer), len(self._rcv_buf))
        if n <= 0:
            return 0
        buffer[:n] = self._rcv_buf[:n]
        del self._rcv_buf[:n]
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

    def abort(self, now: float) -> None:
        """ABORT (RFC 9293 §3.10.5): send <SEQ=SND.NXT><CTL=RST> if synchronized, then CLOSED."""
        if self.state in (
            State.SYN_RECEIVED,
            State.ESTABLISHED,
            State.FIN_WAIT_1,
            State.FIN_WAIT_2,
            State.CLOSE_WAIT,
        ):
            self._control.append(self._make(self.snd_nxt, 0, _RST))
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
        if self._rto_at is not None and now >= self._rto_at:
            self._on_retransmission_timeout(now)

    def _on_retransmission_timeout(self, now: float) -> None:
        self.stats["timeouts"] += 1
        limit = {
            State.SYN_SENT: self.config.syn_retries,
            State.SYN_RECEIVED: self.config.synack_retries,
        }.get(self.state, self.config.max_retries)
        if self._retries >= limit:
            # RFC 9293 §3.8.3: R2 reached, close the connection (Linux: ETIMEDOUT).
            self._rto_at = None
            self._enter_closed("retransmission limit")
            self._events.append(ConnectionTimedOut())
            return
        self.rtt.back_off()
        self._rto_at = now + self.rtt.rto
        if self.state.is_synchronized and self.snd_una == self.snd_nxt:
            # Persist timer: nothing in flight, data waits for a window (no retry count).
            self._probe_due = True
            return
        self._retries += 1
        self._rtt_seq = None  # Karn's rule: never time a retransmitted segment
        self._retransmit_due = True

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
            self._control.append(self._make(seg.ack, 0, _RST))
            self.stats["resets_sent"] += 1
            return
        if not seg.syn:
            self.stats["drop_listen_no_syn"] += 1
            return
        # Policy: data or FIN on a SYN is not queued (we ACK only the SYN, and the
        # peer retransmits the data), which §3.10.7.2 allows.
        self.remote_port = seg.src_port
        self._take_syn(seg)
        self.snd_nxt = seq.add(self.iss, 1)
        self._set_state(State.SYN_RECEIVED, seg)

    def _on_syn_sent(self, seg: Segment, now: float) -> None:
        """RFC 9293 §3.10.7.3."""
        ack_ok = False
        if seg.has_ack:
            if seq.le(seg.ack, self.iss) or seq.gt(seg.ack, self.snd_nxt):
                if not seg.rst:
                    self._control.append(self._make(seg.ack, 0, _RST))
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
        self._take_syn(seg)
        if ack_ok:
            self._advance_una(seg.ack, now)
        if seq.gt(self.snd_una, self.iss):
            # Our SYN is acknowledged: ESTABLISHED, and ACK their SYN.
            self._update_window(seg)
            self._retries = 0
            self._set_state(State.ESTABLISHED, seg)
            self._events.append(ConnectionEstablished())
            self._ack_due = True
            if seg.payload or seg.fin:
                # §3.10.7.3: continue with the sixth step; the text starts after the SYN.
                self._accept_text(seg, seq.add(seg.seq, 1), now)
        else:
            # Simultaneous open (§3.5, Figure 7): answer with SYN-ACK <SEQ=ISS><ACK=RCV.NXT>.
            self._syn_sent = False
            self._rtt_seq = None  # the SYN-ACK repeats our SYN: Karn's rule applies
            self._set_state(State.SYN_RECEIVED, seg)

    def _take_syn(self, seg: Segment) -> None:
        self.irs = seg.seq
        self.rcv_nxt = seq.add(seg.seq, 1)
        self._rcv_adv_edge = self.rcv_nxt
        if seg.options.mss is not None and seg.options.mss > 0:
            self.peer_mss = seg.options.mss
        # SND.WND from a SYN is never scaled; the ACK processing sets WL1/WL2 later.
        self.snd_wnd = seg.window
        self.snd_wl1 = seg.seq
        self.max_snd_wnd = max(self.max_snd_wnd, seg.window)

    def _on_synchronized(self, seg: Segment, now: float) -> None:
        """RFC 9293 §3.10.7.4, for SYN-RECEIVED and every later state."""
        state = self.state
        # SYN-RECEIVED, Linux behaviour: a retransmitted SYN means our SYN-ACK was
        # lost; answer it with the SYN-ACK again rather than a bare ACK that the
        # peer in SYN-SENT would drop (§3.10.7.3, "neither SYN nor RST").
        if state is State.SYN_RECEIVED and seg.syn and not seg.has_ack and seg.seq == self.irs:
            self._retransmit_due = True
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

        # First: sequence number check.
        if not self._acceptable(seg):
            if state is State.TIME_WAIT and seg.fin and not seg.rst and seg.end_seq == self.rcv_nxt:
                # §3.10.7.4 eighth step, TIME-WAIT: a retransmitted FIN means our last
                # ACK was lost. ACK it again and restart the 2 MSL wait.
                self._time_wait_at = now + 2 * self.config.msl
                self.stats["fin_retransmits_seen"] += 1
            if not seg.rst:
                self._ack_due = True
            self.stats["drop_unacceptable"] += 1
            return

        # Second: RST. RFC 9293 includes RFC 5961 §3.2: reset only on an exact match.
        if seg.rst:
            self._on_rst(seg, now)
            return

        # Fourth: SYN in a synchronized state (RFC 5961 §4, RFC 9293 §3.10.7.4).
        if seg.syn:
            if state is State.SYN_RECEIVED and self.passive:
                self._return_to_listen(seg)
                return
            self._challenge_ack()
            return

        # Fifth: ACK.
        if not seg.has_ack:
            self.stats["drop_no_ack"] += 1
            return
        if not self._on_ack(seg, now):
            return

        # Sixth (URG) is not supported: urgent data is delivered inline.
        # Seventh and eighth: text and FIN.
        if self.state.is_synchronized:
            self._accept_text(seg, seg.seq, now)

    def _acceptable(self, seg: Segment) -> bool:
        """The four cases of the acceptability test (§3.10.7.4, first check)."""
        length = seg.seg_len
        wnd = self._rcv_window_for_check()
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

    def _rcv_window_for_check(self) -> int:
        # Accept what fits the larger of the current free space and what we last
        # advertised, so a window we offered is honoured even if we could not
        # shrink it (we never shrink, RFC 9293 §3.8.6.2.2 SHLD-14).
        return max(self.rcv_wnd, seq.sub(self._rcv_adv_edge, self.rcv_nxt), 0)

    def _on_rst(self, seg: Segment, now: float) -> None:
        if seg.seq != self.rcv_nxt:
            # In the window but not exact: challenge ACK (RFC 5961 §3.2).
            self._challenge_ack()
            return
        match self.state:
            case State.SYN_RECEIVED:
                if self.passive:
                    self._return_to_listen(seg)
                else:
                    self._enter_closed(seg)
                    self._events.append(ConnectionRefused())
            case State.ESTABLISHED | State.FIN_WAIT_1 | State.FIN_WAIT_2 | State.CLOSE_WAIT:
                self._enter_closed(seg)
                self._events.append(ConnectionReset())
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
        self._retransmit_due = False
        self.remote_port = 0
        self._syn_sent = False
        self._set_state(State.LISTEN, cause)
        self._events.append(ReturnedToListen())

    def _challenge_ack(self) -> None:
        self.stats["challenge_acks"] += 1
        self._ack_due = True

    def _on_ack(self, seg: Segment, now: float) -> bool:
        """Fifth check. Returns False if the segment must be dropped."""
        ack = seg.ack
        if self.state is State.SYN_RECEIVED:
            if seq.lt(self.snd_una, ack) and seq.le(ack, self.snd_nxt):
                self._set_state(State.ESTABLISHED, seg)
                self._events.append(ConnectionEstablished())
                self.snd_wnd = seg.window
                self.snd_wl1 = seg.seq
                self.snd_wl2 = ack
                self._retries = 0
                if self._fin_queued:
                    # A close() made in SYN-RECEIVED takes effect now (§3.10.4).
                    self._set_state(State.FIN_WAIT_1, "queued close()")
            else:
                self._control.append(self._make(ack, 0, _RST))
                self.stats["resets_sent"] += 1
                self.stats["drop_syn_received_bad_ack"] += 1
                return False

        if seq.gt(ack, self.snd_nxt):
            # Acknowledges something not yet sent: ACK and drop (§3.10.7.4).
            self._ack_due = True
            self.stats["drop_ack_unsent"] += 1
            return False
        if self.max_snd_wnd and seq.lt(ack, seq.add(self.snd_una, -self.max_snd_wnd)):
            # RFC 5961 §5.2: older than SND.UNA - MAX.SND.WND is not acceptable.
            self._challenge_ack()
            self.stats["drop_ack_too_old"] += 1
            return False

        if seq.gt(ack, self.snd_una):
            self._advance_una(ack, now)
        elif ack == self.snd_una and not seg.payload and not seg.fin and self.in_flight:
            self.stats["duplicate_acks"] += 1
            if seg.window == 0:
                # The peer answered a zero-window probe: it is alive, so probing goes
                # on without counting towards the give-up limit (RFC 9293 §3.8.6.1).
                self._retries = 0

        if seq.le(self.snd_una, ack) and (
            seq.lt(self.snd_wl1, seg.seq) or (self.snd_wl1 == seg.seq and seq.le(self.snd_wl2, ack))
        ):
            self._update_window(seg)

        match self.state:
            case State.FIN_WAIT_1 if self.fin_acknowledged:
                self._set_state(State.FIN_WAIT_2, seg)
            case State.CLOSING if self.fin_acknowledged:
                self._enter_time_wait(seg, now)
            case State.LAST_ACK if self.fin_acknowledged:
                self._enter_closed(seg)
                self._events.append(ConnectionClosed())
                return False
        return True

    def _update_window(self, seg: Segment) -> None:
        self.snd_wnd = seg.window
        self.snd_wl1 = seg.seq
        self.snd_wl2 = seg.ack
        self.max_snd_wnd = max(self.max_snd_wnd, seg.window)

    def _advance_una(self, ack: int, now: float) -> None:
        """SND.UNA < SEG.ACK =< SND.NXT: drop acknowledged bytes, time the RTT, rearm the RTO."""
        data_end = self._data_nxt()
        acked_data = 0
        if seq.gt(ack, self._buf_seq):
            acked_data = min(seq.sub(ack, self._buf_seq), seq.sub(data_end, self._buf_seq))
            if acked_data > 0:
                self._snd_off += acked_data
                self._buf_seq = seq.add(self._buf_seq, acked_data)
                if self._snd_off > 65536 and self._snd_off * 2 > len(self._snd_buf):
                    del self._snd_buf[: self._snd_off]
                    self._snd_off = 0
                self._events.append(DataAcknowledged(acked_data))
        self.snd_una = ack
        if self._rtt_seq is not None and seq.ge(ack, self._rtt_seq):
            self.rtt.sample(now - self._rtt_sent_at)
            self._rtt_seq = None
        self._retries = 0
        self.rtt.reset_backoff()
        self._retransmit_due = False
        # RFC 6298 §5.2/§5.3: stop the timer when all is acknowledged, else restart it.
        if self.snd_una == self.snd_nxt:
            self._rto_at = None
        else:
            self._rto_at = now + self.rtt.rto

    def _accept_text(self, seg: Segment, start: int, now: float) -> None:
        """Seventh and eighth steps: queue in-order text, then process FIN."""
        payload = seg.payload
        fin = seg.fin
        if payload:
            # Trim what we already have (a retransmission overlapping RCV.NXT).
            skip = seq.sub(self.rcv_nxt, start)
            if skip > 0:
                payload = payload[skip:]
                start = self.rcv_nxt
            if not self.state.can_receive:
                # CLOSE-WAIT, CLOSING, LAST-ACK, TIME-WAIT: the peer already sent FIN.
                self.stats["drop_data_after_fin"] += 1
                payload = b""
        if start != self.rcv_nxt:
            # Out of order. Reassembly arrives with the loss-recovery work; for now
            # drop and send an immediate duplicate ACK (RFC 5681 §4.2) so the peer
            # retransmits quickly.
            if payload or fin:
                self.stats["drop_out_of_order"] += 1
                self._ack_due = True
            return
        if payload:
            room = self.rcv_wnd
            if len(payload) > room:
                payload = payload[:room]
                fin = False  # the FIN lies beyond what we keep
                self.stats["trimmed_to_window"] += 1
            if payload:
                self._rcv_buf += payload
                self.rcv_nxt = seq.add(self.rcv_nxt, len(payload))
                self._events.append(DataReceived(len(payload)))
            self._ack_due = True
        if fin and self.state in (
            State.ESTABLISHED,
            State.FIN_WAIT_1,
            State.FIN_WAIT_2,
        ):
            self._on_fin(seg, now)

    def _on_fin(self, seg: Segment, now: float) -> None:
        """Eighth step: the FIN is in order."""
        self.rcv_nxt = seq.add(self.rcv_nxt, 1)
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
        self._rto_at = None
        self._retransmit_due = False
        self._time_wait_at = now + 2 * self.config.msl

    def _enter_closed(self, cause: Segment | str) -> None:
        self._clear_timers()
        self._retransmit_due = False
        self._set_state(State.CLOSED, cause)

    def _clear_timers(self) -> None:
        self._rto_at = None
        self._time_wait_at = None
        self._rtt_seq = None

    def _window_opened(self) -> None:
        # Tell the peer when reading freed a useful amount of space, so a sender
        # that filled our window does not wait for its persist timer (RFC 9293
        # §3.8.6.2.2: increase by at least min(buffer/2, MSS) — we use 2*MSS to
        # keep ACK traffic down during bulk reads).
        if not self.state.can_receive:
            return
        edge = seq.add(self.rcv_nxt, self.rcv_wnd)
        grown = seq.sub(edge, self._rcv_adv_edge)
        threshold = min(self.config.receive_buffer // 2, 2 * self.config.mss)
        if grown >= threshold:
            self._ack_due = True

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
            if not self._syn_sent or self._retransmit_due:
                out.append(self._syn_segment(_SYN_ONLY, 0))
                self._after_syn(now)
        elif state is State.SYN_RECEIVED:
            if not self._syn_sent or self._retransmit_due:
                out.append(self._syn_segment(_SYN_ACK, self.rcv_nxt))
                self._after_syn(now)
        elif seq.le(self.snd_una, self.iss):
            # Closed from SYN-RECEIVED before our SYN was acknowledged: the SYN-ACK
            # is what needs (re)sending; the FIN follows it in the same burst.
            if not self._syn_sent or self._retransmit_due:
                out.append(self._syn_segment(_SYN_ACK, self.rcv_nxt))
                self._after_syn(now)
            self._transmit_new(out, now)
        else:
            if self._retransmit_due:
                self._retransmit_due = False
                retransmission = self._retransmission()
                if retransmission is not None:
                    out.append(retransmission)
                    self.stats["retransmissions"] += 1
            self._transmit_new(out, now)

        if self._ack_due:
            if state is not State.SYN_SENT:
                out.append(self._make(self.snd_nxt, self.rcv_nxt, _ACK))
            self._ack_due = False
        if out:
            self._rcv_adv_edge = seq.add(self.rcv_nxt, self.rcv_wnd)
        self.stats["segments_out"] += len(out)
        return out

    def _after_syn(self, now: float) -> None:
        if self._syn_sent:
            self.stats["retransmissions"] += 1
        elif self._retries == 0:
            self._rtt_seq = seq.add(self.iss, 1)
            self._rtt_sent_at = now
        self._syn_sent = True
        self._retransmit_due = False
        if self._rto_at is None:
            self._rto_at = now + self.rtt.rto
        self._ack_due = False

    def _syn_segment(self, flags: Flags, ack: int) -> Segment:
        return Segment(
            self.local_port,
            self.remote_port,
            self.iss,
            ack,
            flags,
            self.rcv_wnd,
            Options(mss=self.config.mss),
        )

    def _data_nxt(self) -> int:
        """Sequence number after the last data byte sent (SND.NXT without our FIN)."""
        if self._fin_seq is not None:
            return self._fin_seq
        return self.snd_nxt

    def _transmit_new(self, out: list[Segment], now: float) -> None:
        """Send queued data the peer's window allows, then our FIN once the data is out."""
        if self._fin_seq is not None:
            return  # FIN sent: nothing new can follow it
        mss = self.send_mss
        buf = self._snd_buf
        window_end = seq.add(self.snd_una, self.snd_wnd)
        while True:
            offset = self._snd_off + seq.sub(self.snd_nxt, self._buf_seq)
            available = len(buf) - offset
            usable = seq.sub(window_end, self.snd_nxt)
            n = min(available, usable, mss)
            if n <= 0 < available and self._probe_due:
                # Zero-window probe: one new byte beyond the window. Linux never
                # answers a zero-length probe at SND.NXT, so the probe carries data.
                n = 1
                self.stats["window_probes"] += 1
            self._probe_due = False
            fin = self._fin_queued and n == available
            if n <= 0 and not fin:
                if available > 0 and self.snd_una == self.snd_nxt and self._rto_at is None:
                    # Nothing in flight and a closed window: the same timer serves
                    # as the persist timer (RFC 9293 §3.8.6.1).
                    self._rto_at = now + self.rtt.rto
                return
            flags = _ACK
            if n > 0 and n == available:
                flags |= Flags.PSH
            if fin:
                flags |= Flags.FIN
            payload = bytes(buf[offset : offset + n]) if n > 0 else b""
            out.append(self._make(self.snd_nxt, self.rcv_nxt, flags, payload))
            if self._rtt_seq is None and self._retries == 0:
                self._rtt_seq = seq.add(self.snd_nxt, n + (1 if fin else 0))
                self._rtt_sent_at = now
            self.snd_nxt = seq.add(self.snd_nxt, n)
            if fin:
                self._fin_seq = self.snd_nxt
                self.snd_nxt = seq.add(self.snd_nxt, 1)
            self._ack_due = False
            if self._rto_at is None:
                self._rto_at = now + self.rtt.rto
            if fin:
                return

    def _retransmission(self) -> Segment | None:
        """The earliest unacknowledged segment (RFC 6298 §5.4)."""
        if self.snd_una == self.snd_nxt:
            return None
        offset = self._snd_off
        in_flight = self.in_flight
        n = min(in_flight, self.send_mss)
        fin = self._fin_seq is not None and n == in_flight
        flags = _ACK | (Flags.FIN if fin else Flags(0))
        if n and n == in_flight:
            flags |= Flags.PSH
        payload = bytes(self._snd_buf[offset : offset + n])
        self._ack_due = False
        return self._make(self.snd_una, self.rcv_nxt, flags, payload)

    def _make(self, seq_no: int, ack: int, flags: Flags, payload: bytes = b"") -> Segment:
        window = 0 if flags & _RST else self.rcv_wnd
        return Segment(
            self.local_port,
            self.remote_port,
            seq_no & seq.MASK,
            ack & seq.MASK,
            flags,
            window,
            NO_OPTIONS,
            payload,
        )

    # ------------------------------------------------------------------ state

    def _set_state(self, new: State, cause: Segment | str) -> None:
        old = self.state
        if old is new:
            return
        reason = cause.describe() if isinstance(cause, Segment) else cause
        self._log.debug("%s -> %s (%s)", old.name, new.name, reason)
        self.state = new
        self._events.append(StateChanged(old, new, reason))


_SYN_ONLY: Final = Flags.SYN
_SYN_ACK: Final = Flags.SYN | Flags.ACK
