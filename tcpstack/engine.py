"""The engine: one I/O thread that owns the link and drives every connection's core.

It reads frames in batches, answers ARP and ICMP echo, demultiplexes TCP by 4-tuple
in one dict lookup, feeds the core, sends what the core returns and runs timers from
absolute deadlines (a heap; the thread sleeps in select() until the earliest one, so
an idle stack uses no CPU).

All mutable state, the cores included, is guarded by one lock. Application threads
take it for a call into a core and pump the result themselves (no hand-off to the
I/O thread, so a send costs no thread switch); they wait on Conditions built on the
same lock, which the engine notifies after each input that touched the connection.
"""

from __future__ import annotations

import _thread
import errno
import heapq
import ipaddress
import itertools
import logging
import math
import os
import random
import select
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from tcpstack import sockopts, wire
from tcpstack.arp import ArpCache
from tcpstack.config import MAX_MSS, StackConfig, TcpConfig
from tcpstack.core import seq
from tcpstack.core.connection import TcpConnection, reset_for_unknown
from tcpstack.core.events import (
    ConnectionClosed,
    ConnectionEstablished,
    ConnectionRefused,
    ConnectionReset,
    ConnectionTimedOut,
    ConnectionUnreachable,
    DeliveryTrouble,
    Retransmitted,
    ReturnedToListen,
    StateChanged,
    UrgentDataArrived,
)
from tcpstack.core.ratelimit import PerSecondLimit
from tcpstack.core.segment import Flags, Options, Segment
from tcpstack.core.state import State
from tcpstack.hooks import DELAY, DROP, DUPLICATE, Hook, HookContext
from tcpstack.isn import IsnFunction, Rfc6528Isn, TimestampOffsets
from tcpstack.link import Link, link_counters
from tcpstack.syncookies import SynCookies
from tcpstack.trace import (
    FrameEvent,
    RetransmitEvent,
    SegmentEvent,
    StateEvent,
    Subscriber,
    TimerEvent,
    TraceEvent,
    TraceRecord,
    TroubleEvent,
    UrgentEvent,
)

log = logging.getLogger("tcpstack.engine")

# Linux's ip_local_port_range.
EPHEMERAL_PORTS = range(32768, 61000)
# Frames handled per wake-up before timers and waiters get their turn.
BATCH_FRAMES = 256
# How long after sending a SYN cookie a bare ACK to a listener is checked for one.
COOKIE_WINDOW = 128.0

FlowKey = tuple[str, int, int]
"""(remote IP, remote port, local port): our own IP is the same for every flow."""


class EngineFailed(OSError):
    """The I/O thread stopped on an error; every call on the stack raises this."""


Observer = Subscriber


@dataclass(eq=False)
class Flow:
    """The engine's record of one connection."""

    conn: TcpConnection
    remote_ip: str
    key: FlowKey  # fixed at creation: the core forgets its remote port on a return to LISTEN
    cond: threading.Condition
    listener: Listener | None = None
    error: OSError | None = None
    deadline: float | None = None
    timers: dict[str, float] = field(default_factory=dict)  # as last traced
    # Called with the lock held whenever the connection may have become readable or
    # writable: a socket's readiness file descriptor (tcpstack.readiness) listens here.
    watch: Callable[[], None] | None = None

    def changed(self) -> None:
        self.cond.notify_all()
        if self.watch is not None:
            self.watch()  # never raises: see Socket._update_ready


@dataclass(eq=False)
class Listener:
    """A passive open on one local port, with its bounded queues."""

    port: int
    backlog: int
    cond: threading.Condition
    config: TcpConfig
    options: dict[tuple[int, int], int | str | bytes] = field(default_factory=dict)
    half_open: set[Flow] = field(default_factory=set)
    accept_queue: deque[Flow] = field(default_factory=deque)
    closed: bool = False
    cookies_sent_at: float | None = None  # last time the half-open queue overflowed
    watch: Callable[[], None] | None = None  # as Flow.watch

    def changed(self) -> None:
        self.cond.notify_all()
        if self.watch is not None:
            self.watch()  # never raises: see Socket._update_ready


class Engine:
    def __init__(
        self,
        link: Link,
        *,
        address: str,
        mac: bytes,
        config: TcpConfig,
        limits: StackConfig | None = None,
        isn: IsnFunction | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        iface = ipaddress.IPv4Interface(address)
        self.limits = limits or StackConfig()
        self.challenge_limit = PerSecondLimit(self.limits.challenge_acks_per_second)
        self.cookies = SynCookies()
        self.time_wait_count = 0
        self.ip = str(iface.ip)
        self.network = iface.network
        self._on_link = _OnLink(self.network)
        self.mac = mac
        self.link = link
        self.config = config
        self.clock = clock
        self.isn: IsnFunction = isn or Rfc6528Isn()
        self.ts_offsets = TimestampOffsets()
        # Reentrant so an observer may read the stack (stats, connections) from its callback.
        self.lock = _EngineLock()
        self.lock.on_free = self._drain_tx
        # Frames made while the lock is held, sent in order once it is free (see _transmit).
        self._txq: deque[tuple[bytes, int]] = deque()
        self._tx_lock = threading.Lock()
        self._input_note = ""  # for the trace: what a hook did to the segment being input
        self.stats: Counter[str] = Counter()
        self.ended_stats: Counter[str] = Counter()  # counters of connections now gone
        self.flows: dict[FlowKey, Flow] = {}
        self.listeners: dict[int, Listener] = {}
        self.bound_ports: set[int] = set()
        self._deferred: deque[Callable[[], None]] = deque()
        # Held until ARP answers: the frame, its trace record and its GSO size.
        self.arp: ArpCache[tuple[bytes, TraceRecord | None, int]] = ArpCache(
            max_pending=self.limits.max_arp_pending
        )
        self.observers: list[Observer] = []
        self.hooks: list[Hook] = []
        self._delayed: list[tuple[float, int, Callable[[float], None]]] = []
        self.failure: BaseException | None = None
        self._ip_id = itertools.count(random.randrange(0x10000))
        self._timers: list[tuple[float, int, Flow]] = []
        self._timer_seq = itertools.count()
        self._sleep_until: float | None = None
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tcpstack-engine", daemon=True)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Reset live connections, stop the thread and close the link. Idempotent."""
        with self.lock:
            if self._stopping:
                return
            self._stopping = True
            if self.failure is None:
                now = self.clock()
                for flow in list(self.flows.values()):
                    if flow.conn.state not in (State.TIME_WAIT, State.CLOSED):
                        flow.conn.abort(now)
                        self.pump(flow, now)
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)
        with self.lock:
            self._fail_all(EngineFailed(errno.ESHUTDOWN, "stack closed"))
        self.link.close()
        wake_fd, self._wake_fd = self._wake_fd, -1
        os.close(wake_fd)

    @property
    def alive(self) -> bool:
        """True while the engine serves calls (not failed, not stopped)."""
        return self.failure is None and not self._stopping

    def check(self) -> None:
        """Raise if the engine can no longer serve calls. Called with the lock held."""
        if self.failure is not None:
            raise EngineFailed(errno.EIO, f"tcpstack engine failed: {self.failure!r}")
        if self._stopping:
            raise EngineFailed(errno.ESHUTDOWN, "stack closed")

    @property
    def on_engine_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def defer(self, work: Callable[[], None]) -> None:
        """Run work on the engine thread, with the lock held, at its next turn. For
        what may not run where it is asked for: a socket closed by the garbage
        collector, which can run in the middle of the engine's own loops."""
        self._deferred.append(work)
        self._wake()

    def _wake(self) -> None:
        if self._wake_fd < 0:
            return  # stopped: the descriptor is closed and its number may be reused
        try:
            os.eventfd_write(self._wake_fd, 1)
        except BlockingIOError:
            pass  # the counter is saturated: the thread is already woken

    # --------------------------------------------------------------- I/O thread

    def _run(self) -> None:
        link_fd = self.link.fileno()
        # poll, not select: select() cannot watch descriptors numbered 1024 or more.
        poller = select.poll()
        poller.register(link_fd, select.POLLIN)
        poller.register(self._wake_fd, select.POLLIN)
        link_deadline = getattr(self.link, "next_deadline", None)
        try:
            while not self._stopping:
                with self.lock:
                    deadline = self._next_deadline()
                    if link_deadline is not None:
                        held = link_deadline()
                        if held is not None and (deadline is None or held < deadline):
                            deadline = held
                    self._sleep_until = deadline
                timeout = None if deadline is None else max(deadline - self.clock(), 0.0)
                # poll takes milliseconds; round up so we never wake just before a deadline.
                ready = poller.poll(None if timeout is None else math.ceil(timeout * 1000))
                with self.lock:
                    self._sleep_until = None
                    readable = {fd for fd, _ in ready}
                    if self._wake_fd in readable:
                        try:
                            os.eventfd_read(self._wake_fd)
                        except BlockingIOError:
                            pass
                    if link_deadline is not None:
                        # An impairment layer holds frames back; release what is due.
                        self.link.flush(self.clock())  # type: ignore[attr-defined]
                        self._receive_frames()
                    elif link_fd in readable:
                        self._receive_frames()
                    self._run_timers(self.clock())
                    while self._deferred:
                        self._deferred.popleft()()
        except BaseException as exc:  # noqa: BLE001 - surfaced to every caller below
            if not self._stopping:
                log.exception("engine thread failed")
                with self.lock:
                    self.failure = exc
                    # The link may be what failed: frames still queued are lost with it,
                    # rather than raising again when the lock is let go.
                    self._txq.clear()
                    self._fail_all(EngineFailed(errno.EIO, f"tcpstack engine failed: {exc!r}"))

    def _fail_all(self, error: OSError) -> None:
        for flow in self.flows.values():
            flow.error = flow.error or error
            flow.changed()
        for listener in self.listeners.values():
            listener.changed()

    def _receive_frames(self) -> None:
        for _ in range(BATCH_FRAMES // 64):
            frames = self.link.recv_batch(64)
            if not frames:
                return
            now = self.clock()
            stats = self.stats
            stats["frames_in"] += len(frames)
            for frame, trusted in frames:
                if len(frame) > 1514:
                    # A GSO/GRO super-frame from veth: several MSS in one frame.
                    stats["gso_frames_in"] += 1
                if trusted:
                    stats["checksum_trusted_in"] += 1
                self._on_frame(frame, trusted, now)
            if len(frames) < 64:
                return

    def _on_frame(self, frame: bytes, trusted: bool, now: float) -> None:
        try:
            packet = wire.decode_frame(frame, checksum_trusted=trusted)
        except wire.DecodeError as exc:
            self._drop(exc.reason, now, frame)
            return
        if packet.dst_mac != self.mac and packet.dst_mac != wire.BROADCAST_MAC:
            self._drop("not_our_mac", now, frame)
            return
        if isinstance(packet, wire.TcpPacket):
            if packet.dst_ip != self.ip:
                self._drop("not_our_ip", now, frame)
                return
            self._on_tcp(packet, now, frame)
            return
        if self.observers:
            kind = "arp" if isinstance(packet, wire.ArpPacket) else "icmp"
            self._notify(FrameEvent(now, "in", frame, kind))
        if isinstance(packet, wire.ArpPacket):
            self._on_arp(packet, now)
        else:
            self._on_icmp(packet, now)

    # --------------------------------------------------------------- ARP, ICMP

    def _on_arp(self, arp: wire.ArpPacket, now: float) -> None:
        self.stats["arp_in"] += 1
        # RFC 826 merge: refresh a sender we already know; learn it if it asks us.
        if arp.target_ip == self.ip or self.arp.knows(arp.sender_ip):
            if arp.sender_ip != "0.0.0.0" and ipaddress.IPv4Address(arp.sender_ip) in self.network:
                for held, record, gso_size in self.arp.learn(arp.sender_ip, arp.sender_mac, now):
                    frame = arp.sender_mac + held[6:]
                    lost = self._transmit(frame, gso_size)
                    if record is not None:
                        self._notify(
                            replace(record, time=now, frame=frame, note=lost or record.note)
                        )
        if arp.target_ip != self.ip:
            self.stats["arp_not_for_us"] += 1
        if arp.op == 1 and arp.target_ip == self.ip:
            reply = wire.encode_arp(
                self.mac, arp.sender_mac, 2, self.mac, self.ip, arp.sender_mac, arp.sender_ip
            )
            self._transmit_frame(reply, "arp reply")
            self.stats["arp_replies"] += 1

    def _on_icmp(self, icmp: wire.IcmpEcho | wire.IcmpError, now: float) -> None:
        if icmp.dst_ip != self.ip:
            self.stats["drop_not_our_ip"] += 1
            return
        if isinstance(icmp, wire.IcmpError):
            self._on_icmp_error(icmp, now)
            return
        if icmp.type != 8:
            self.stats["icmp_ignored"] += 1
            return
        reply = wire.encode_icmp_echo(
            self.mac,
            icmp.src_mac,
            self.ip,
            icmp.src_ip,
            type=0,
            ident=icmp.ident,
            sequence=icmp.sequence,
            payload=icmp.payload,
            ip_id=next(self._ip_id) & 0xFFFF,
        )
        self._transmit_frame(reply, "icmp echo reply")
        self.stats["icmp_echo_replies"] += 1

    def _on_icmp_error(self, icmp: wire.IcmpError, now: float) -> None:
        """Hand an ICMP error to the connection whose segment it quotes (MUST-54)."""
        self.stats["icmp_errors_in"] += 1
        if icmp.quoted_src_ip != self.ip:
            self.stats["drop_icmp_not_our_segment"] += 1
            return
        key = (icmp.quoted_dst_ip, icmp.quoted_dst_port, icmp.quoted_src_port)
        flow = self.flows.get(key)
        if flow is None:
            self.stats["drop_icmp_no_connection"] += 1
            return
        try:
            flow.conn.handle_icmp_error(icmp.type, icmp.code, icmp.quoted_seq, now)
        except Exception as exc:  # a bug in one core must not take the others down
            self._core_failed(flow, exc, now)
        self.pump(flow, now)

    def _send_ip(
        self,
        remote_ip: str,
        build: Callable[[bytes], bytes],
        now: float,
        record: TraceRecord | None = None,
        gso_size: int = 0,
    ) -> None:
        mac = self.arp.lookup(remote_ip, now)
        if mac is not None:
            frame = build(mac)
            lost = self._transmit(frame, gso_size)
            if record is not None:
                self._notify(replace(record, frame=frame, note=lost or record.note))
            return
        # Unresolved: build with a placeholder destination, patched on resolution;
        # observers hear of the segment when it really leaves.
        frame = build(b"\0" * 6)
        if self.arp.enqueue(remote_ip, (frame, record, gso_size), now):
            self._arp_request(remote_ip)

    def _arp_request(self, ip: str) -> None:
        self.stats["arp_requests"] += 1
        request = wire.encode_arp(self.mac, wire.BROADCAST_MAC, 1, self.mac, self.ip, b"\0" * 6, ip)
        self._transmit_frame(request, "arp request")

    def _drop(self, reason: str, now: float, frame: bytes) -> None:
        """Count an incoming frame we drop, by reason (like nstat), and tell observers."""
        self.stats[f"drop_{reason}"] += 1
        if self.observers and frame:
            self._notify(FrameEvent(now, "in", frame, f"dropped: {reason}"))

    def _transmit_frame(self, frame: bytes, note: str) -> None:
        lost = self._transmit(frame)
        if self.observers:
            self._notify(FrameEvent(self.clock(), "out", frame, lost or note))

    def _transmit(self, frame: bytes, gso_size: int = 0) -> str:
        """Send a frame; "" if it went (or was queued), else why it did not (a trace note).

        A send on veth or TAP runs the kernel peer's receive path, and often its
        sender, inside the syscall: tens of microseconds. Made under the engine lock
        it kept the application (or the engine thread) waiting for that lock, so the
        frame is queued and sent when the lock is released (_drain_tx), in order.
        A trace wants each frame's fate at once, so with observers it goes now."""
        if self.observers and not self._txq:
            return self._send_frame(frame, gso_size)
        self._txq.append((frame, gso_size))
        if not self.lock._is_owned():
            self._drain_tx()
        return ""

    def _drain_tx(self) -> None:
        """Send the queued frames, in order, from whichever thread gets here first;
        a thread that finds another sending leaves its frames to that one, which
        looks at the queue again after letting go."""
        queue = self._txq
        while queue:
            if not self._tx_lock.acquire(blocking=False):
                return
            try:
                while queue:
                    self._send_frame(*queue.popleft())
            finally:
                self._tx_lock.release()

    def _send_frame(self, frame: bytes, gso_size: int) -> str:
        try:
            if gso_size:
                self.link.send(frame, gso_size)
            else:
                self.link.send(frame)
        except (BlockingIOError, InterruptedError):
            # The link's queue is full: a lost frame, which TCP recovers.
            self.stats["drop_tx_queue_full"] += 1
            return "dropped: tx_queue_full"
        except OSError as exc:
            if exc.errno in (errno.ENOBUFS, errno.EAGAIN):
                self.stats["drop_tx_queue_full"] += 1
                return "dropped: tx_queue_full"
            if exc.errno == errno.ENETDOWN:
                # The interface is down (perhaps for a moment): the frame is lost
                # and TCP retransmits, as when a kernel's own link goes down.
                self.stats["drop_tx_link_down"] += 1
                return "dropped: tx_link_down"
            if self._stopping:
                # The goodbye RSTs of stop(), on a link whose other end may be gone.
                self.stats["drop_tx_link_down"] += 1
                return "dropped: tx_link_down"
            raise
        self.stats["frames_out"] += 1
        return ""

    # ----------------------------------------------------------------- TCP input

    def _on_tcp(
        self, packet: wire.TcpPacket, now: float, frame: bytes = b"", hooked: bool = False
    ) -> None:
        seg = packet.segment
        if not hooked:
            self.stats["tcp_in"] += 1  # once per frame, not again when a hook re-inputs it
        if packet.src_ip == self.ip or packet.src_ip not in self._on_link:
            # A "land" segment from our own address, or a source we could never
            # answer on this link: a forgery either way.
            self._drop("bad_source", now, frame)
            return
        key = (packet.src_ip, seg.src_port, seg.dst_port)
        flow = self.flows.get(key)
        if self.hooks and not hooked:
            rewritten = self._hook_in(packet, flow, now, frame)
            if rewritten is None:
                return  # a hook took it: dropped, or input later (delayed) or now (altered)
            packet, seg = rewritten, rewritten.segment
        reopen_iss = None
        if flow is not None and seg.dst_port in self.listeners and flow.conn.reopens_time_wait(seg):
            # RFC 9293 §3.6.1 (MAY-2) with RFC 6191: a new SYN may reopen a 4-tuple
            # in TIME-WAIT; Linux accepts it, so we do too.
            self.stats["time_wait_reopened"] += 1
            reopen_iss = flow.conn.next_incarnation_iss
            flow.conn.abort(now)  # TIME-WAIT -> CLOSED; its socket sees it end
            self.pump(flow, now)
            flow = None
        if flow is None:
            listener = self.listeners.get(seg.dst_port)
            if listener is None or listener.closed:
                if self.observers:
                    self._notify(
                        TraceRecord(
                            now, "in", (self.ip, seg.dst_port), (packet.src_ip, seg.src_port),
                            seg, State.CLOSED, 0, seg.seq if seg.syn else 0,
                            frame=frame, note=self._input_note or "to no connection",
                        )
                    )  # fmt: skip
                self._reset_unknown(packet, seg, now)
                return
            flow = self._listener_input(listener, packet, now, frame, reopen_iss)
            if flow is None:
                return
        else:
            if (
                flow.listener is not None
                and flow.conn.state is State.SYN_RECEIVED
                and seg.has_ack
                and len(flow.listener.accept_queue) >= flow.listener.backlog
            ):
                # Accept queue full: drop the handshake's last ACK, as Linux does
                # (ListenOverflows); our SYN-ACK is retransmitted and the client
                # ACKs again, by which time the application may have accepted.
                self._drop("listen_overflow", now, frame)
                return
            try:
                flow.conn.handle_segment(seg, now)
            except Exception as exc:  # a bug in one core must not take the others down
                self._core_failed(flow, exc, now)
            self._observe("in", flow, seg, now, frame)
        self.pump(flow, now)

    def _hook_in(
        self, packet: wire.TcpPacket, flow: Flow | None, now: float, frame: bytes
    ) -> wire.TcpPacket | None:
        """Apply the first matching incoming hook; None if it consumed the segment."""
        ctx = HookContext(packet.segment, "in", packet.src_ip, flow.conn if flow else None)
        hook = next((h for h in self.hooks if h.matches(ctx)), None)
        if hook is None:
            return packet
        hook.fired += 1
        self.stats[f"hook_{hook.action}_in"] += 1
        if hook.action == DROP:
            if self.observers:
                note = f"dropped by hook {hook.name}".strip()
                record = self._record("in", flow, packet.segment, now) if flow else None
                self._notify(
                    replace(record, frame=frame, note=note)
                    if record
                    else FrameEvent(now, "in", frame, note)
                )
            return None
        name = f" {hook.name}" if hook.name else ""
        if hook.action == DELAY:
            held = f"held {hook.delay * 1000:g} ms by hook{name}"
            self._schedule(now + hook.delay, lambda at: self._reinject(packet, at, frame, held))
            return None
        if hook.action == DUPLICATE:
            self._reinject(packet, now, frame, "")
            self._reinject(packet, now, frame, f"duplicated by hook{name}")
            return None
        assert hook.rewrite is not None
        rewritten = replace(packet, segment=hook.rewrite(packet.segment))
        self._reinject(rewritten, now, frame, f"rewritten by hook{name}")
        return None

    def _reinject(self, packet: wire.TcpPacket, now: float, frame: bytes, note: str) -> None:
        """Input a segment a hook let through, its trace event carrying `note`."""
        self._input_note = note
        try:
            self._on_tcp(packet, now, frame, True)
        finally:
            self._input_note = ""

    def _core_failed(self, flow: Flow, exc: Exception, now: float) -> None:
        log.error("core failed on %s", flow.key, exc_info=exc)
        self.stats["internal_errors"] += 1
        flow.error = flow.error or OSError(errno.EIO, f"tcpstack internal error: {exc!r}")
        try:
            flow.conn.abort(now)
        except Exception:  # noqa: BLE001 - already failing; the flow is dropped below
            log.exception("abort failed too")
            self._forget(flow)

    def _reset_unknown(self, packet: wire.TcpPacket, seg: Segment, now: float) -> None:
        self.stats["tcp_no_connection"] += 1
        reply = reset_for_unknown(seg)
        if reply is None:
            return
        self.stats["resets_sent"] += 1
        record = None
        if self.observers:
            # Numbered relative to the peer's SYN, if that is what we answer, as a
            # connection would number it; other numbers stay absolute.
            irs = seg.seq if seg.syn else 0
            record = TraceRecord(
                now, "out", (self.ip, reply.src_port), (packet.src_ip, reply.dst_port), reply,
                State.CLOSED, 0, irs,
            )  # fmt: skip
        self._send_segment(packet.src_ip, reply, now, record)

    def _listener_input(
        self,
        listener: Listener,
        packet: wire.TcpPacket,
        now: float,
        frame: bytes = b"",
        iss: int | None = None,
    ) -> Flow | None:
        """A segment for LISTENER with no connection; ISS, if given, for the one a
        SYN starts (a 4-tuple reopened from TIME-WAIT)."""
        seg = packet.segment
        four = (self.ip, seg.dst_port, packet.src_ip, seg.src_port)
        if seg.syn and not seg.has_ack and not seg.rst:
            if len(listener.accept_queue) >= listener.backlog:
                # Linux drops SYNs while the accept queue is full; the client retries.
                self._drop("listen_overflow", now, frame)
                return None
            if len(listener.half_open) >= self.limits.max_half_open:
                if not self.limits.syn_cookies or seg.fin:
                    self._drop("syn_queue_full", now, frame)
                    return None
                if self.observers:
                    self._notify(FrameEvent(now, "in", frame, "SYN, answered with a cookie"))
                self._send_syn_cookie(listener, packet, four, now)
                return None
        elif (
            seg.has_ack
            and not (seg.syn or seg.rst)
            and listener.cookies_sent_at is not None
            and now - listener.cookies_sent_at < COOKIE_WINDOW
        ):
            # Since we sent cookies, an ACK to the listener is checked for one. One
            # that fails is dropped, not reset as LISTEN otherwise would (and Linux
            # does): under a flood we lose frames, and a client whose handshake ACK
            # and first data were lost may send a later ACK whose sequence number no
            # longer matches its ISN; its retransmitted data will, if we keep quiet.
            return self._cookie_ack(listener, packet, four, now, frame)
        conn = TcpConnection(
            listener.config,
            seg.dst_port,
            0,
            iss=self.isn(*four) if iss is None else iss,
            ts_offset=self.ts_offsets(*four),
            name=f"{seg.dst_port}<{packet.src_ip}:{seg.src_port}",
            challenge_limit=self.challenge_limit,
        )
        # Options set on the listening socket carry over, as on Linux.
        sockopts.apply_options(conn, listener.options, now)
        conn.open_passive()
        key = (packet.src_ip, seg.src_port, seg.dst_port)
        flow = Flow(conn, packet.src_ip, key, threading.Condition(self.lock), listener=listener)
        try:
            conn.handle_segment(seg, now)
        except Exception as exc:
            self._core_failed(flow, exc, now)
            return None
        if conn.state is State.SYN_RECEIVED:
            listener.half_open.add(flow)
            self.flows[flow.key] = flow
            self._observe("in", flow, seg, now, frame)
            return flow
        # Not a SYN: LISTEN answered (RST for an ACK) or dropped it; nothing to keep
        # but its counters (the drop reason is among them).
        self.ended_stats.update(conn.stats)
        self._observe("in", flow, seg, now, frame)
        for reply in conn.segments_to_send(now):
            self._send_segment(
                packet.src_ip, reply, now, self._record("out", flow, reply, now), conn
            )
        return None

    def _send_syn_cookie(
        self,
        listener: Listener,
        packet: wire.TcpPacket,
        four: tuple[str, int, str, int],
        now: float,
    ) -> None:
        """RFC 4987: answer with a SYN-ACK whose ISN encodes the handshake; keep nothing."""
        seg = packet.segment
        peer_mss = seg.options.mss or listener.config.default_peer_mss
        cookie = self.cookies.make(four, seg.seq, peer_mss, now)
        window = min(listener.config.receive_buffer, 0xFFFF)
        reply = Segment(
            seg.dst_port,
            seg.src_port,
            cookie,
            seg.end_seq,
            Flags.SYN | Flags.ACK,
            window,
            Options(mss=listener.config.announced_mss),
        )
        listener.cookies_sent_at = now
        self.stats["syn_cookies_sent"] += 1
        record = None
        if self.observers:
            record = TraceRecord(
                now, "out", (self.ip, reply.src_port), (packet.src_ip, reply.dst_port), reply,
                State.LISTEN, cookie, seg.seq, note="SYN cookie",
            )  # fmt: skip
        self._send_segment(packet.src_ip, reply, now, record)

    def _cookie_ack(
        self,
        listener: Listener,
        packet: wire.TcpPacket,
        four: tuple[str, int, str, int],
        now: float,
        frame: bytes,
    ) -> Flow | None:
        """The ACK that completes a cookie handshake: rebuild the connection from it."""
        seg = packet.segment
        client_isn = seq.add(seg.seq, -1)
        iss = seq.add(seg.ack, -1)
        mss = self.cookies.check(four, client_isn, iss, now)
        if mss is None:
            self._drop("syn_cookie_failed", now, frame)
            return None
        if len(listener.accept_queue) >= listener.backlog:
            self._drop("listen_overflow", now, frame)
            return None
        conn = TcpConnection.from_syn_cookie(
            listener.config,
            seg.dst_port,
            seg.src_port,
            iss=iss,
            irs=client_isn,
            peer_mss=mss,
            now=now,
            name=f"{seg.dst_port}<{packet.src_ip}:{seg.src_port} (cookie)",
            challenge_limit=self.challenge_limit,
        )
        sockopts.apply_options(conn, listener.options, now)
        key = (packet.src_ip, seg.src_port, seg.dst_port)
        flow = Flow(conn, packet.src_ip, key, threading.Condition(self.lock), listener=listener)
        listener.half_open.add(flow)  # ConnectionEstablished moves it to the accept queue
        self.flows[key] = flow
        try:
            conn.handle_segment(seg, now)
        except Exception as exc:
            self._core_failed(flow, exc, now)
        self.stats["syn_cookies_accepted"] += 1
        self._observe("in", flow, seg, now, frame)
        return flow

    # ---------------------------------------------------------------- pumping

    def pump(self, flow: Flow, now: float) -> None:
        """Send what the core has, deliver its events, re-arm its timer (aioquic transmit())."""
        conn = flow.conn
        try:
            for s in conn.segments_to_send(now):
                self._send_segment(flow.remote_ip, s, now, self._record("out", flow, s, now), conn)
        finally:
            # Whatever the link did, deliver the events and re-arm the timer, so a
            # send failure cannot leave a connection without its retransmission timer.
            self._after_output(flow, now)

    def _after_output(self, flow: Flow, now: float) -> None:
        conn = flow.conn
        while (event := conn.next_event()) is not None:
            self._on_event(flow, event, now)
        if self.observers:
            self._trace_timers(flow, now)
        deadline = conn.get_timer()
        if deadline != flow.deadline:
            flow.deadline = deadline
            if deadline is not None:
                heapq.heappush(self._timers, (deadline, next(self._timer_seq), flow))
                if threading.current_thread() is not self._thread and (
                    self._sleep_until is None or deadline < self._sleep_until
                ):
                    self._wake()
        if conn.state is State.CLOSED or conn.state is State.LISTEN:
            self._forget(flow)
        flow.changed()

    def _trace_fired(self, flow: Flow, now: float) -> None:
        local, remote = (self.ip, flow.conn.local_port), (flow.remote_ip, flow.key[1])
        for name, deadline in list(flow.timers.items()):
            if deadline <= now:
                self._notify(TimerEvent(now, local, remote, name, "fired", deadline))
                del flow.timers[name]

    def _trace_timers(self, flow: Flow, now: float) -> None:
        current = flow.conn.timers()
        local, remote = (self.ip, flow.conn.local_port), (flow.remote_ip, flow.key[1])
        for name, deadline in current.items():
            if flow.timers.get(name) != deadline:
                self._notify(TimerEvent(now, local, remote, name, "armed", deadline))
        for name, deadline in flow.timers.items():
            if name not in current:
                self._notify(TimerEvent(now, local, remote, name, "cancelled", deadline))
        flow.timers = current

    def _on_event(self, flow: Flow, event: object, now: float) -> None:
        if self.observers:
            local, remote = (self.ip, flow.conn.local_port), (flow.remote_ip, flow.key[1])
            if isinstance(event, StateChanged):
                self._notify(StateEvent(now, local, remote, event.old, event.new, event.cause))
            elif isinstance(event, Retransmitted):
                self._notify(
                    RetransmitEvent(now, local, remote, event.seq, event.length, event.reason)
                )
            elif isinstance(event, UrgentDataArrived):
                self._notify(UrgentEvent(now, local, remote, event.pending))
            elif isinstance(event, DeliveryTrouble):
                self._notify(TroubleEvent(now, local, remote, event.retransmissions))
        match event:
            case StateChanged(old=old, new=new):
                if new is State.TIME_WAIT:
                    self.time_wait_count += 1
                    if self.time_wait_count > self.limits.max_time_wait:
                        # Like Linux past tcp_max_tw_buckets: skip TIME-WAIT rather
                        # than let closed connections pile up without bound.
                        self.stats["time_wait_overflow"] += 1
                        flow.conn.abort(self.clock())
                elif old is State.TIME_WAIT:
                    self.time_wait_count -= 1
            case DeliveryTrouble():
                # Negative advice to our IP layer (MUST-20): its one route is the
                # peer's link address, which may have moved (a failover, a new NIC).
                # The next frame asks for it again.
                self.arp.forget(flow.remote_ip)
            case ConnectionEstablished():
                listener = flow.listener
                if listener is not None and flow in listener.half_open:
                    listener.half_open.discard(flow)
                    listener.accept_queue.append(flow)
                    listener.changed()
            case ConnectionRefused():
                flow.error = flow.error or ConnectionRefusedError(
                    errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED)
                )
            case ConnectionReset(state=state):
                # Linux's tcp_reset(): EPIPE if we had already seen the peer's FIN.
                error: OSError
                if state is State.CLOSE_WAIT:
                    error = BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
                else:
                    error = ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))
                flow.error = flow.error or error
                self.stats["connections_reset"] += 1
            case ConnectionTimedOut():
                # Linux's tcp_write_err(): a soft error an ICMP message reported says
                # more than ETIMEDOUT, so it is the one the application gets.
                soft, flow.conn.soft_error = flow.conn.soft_error, 0
                flow.error = flow.error or (
                    OSError(soft, os.strerror(soft))
                    if soft
                    else TimeoutError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))
                )
                self.stats["connections_timed_out"] += 1
            case ConnectionUnreachable(errno=code):
                flow.error = flow.error or OSError(code, os.strerror(code))
                self.stats["connections_unreachable"] += 1
            case ReturnedToListen():
                self.stats["half_open_reset"] += 1
            case ConnectionClosed():
                pass

    def totals(self) -> dict[str, int]:
        """Engine counters plus every connection's, live and ended."""
        totals = Counter(self.stats)
        totals.update(self.ended_stats)
        for flow in self.flows.values():
            totals.update(flow.conn.stats)
        if self.arp.dropped_frames:
            totals["drop_arp_unresolved"] = self.arp.dropped_frames
        # What the kernel side of the link dropped before we could read it.
        totals.update(link_counters(self.link))
        impairment = getattr(self.link, "stats", None)
        if impairment:
            totals.update({f"impair_{k}": v for k, v in impairment.items()})
        return dict(totals)

    def _forget(self, flow: Flow) -> None:
        if self.flows.get(flow.key) is flow:
            del self.flows[flow.key]
            self.ended_stats.update(flow.conn.stats)
        flow.deadline = None
        listener = flow.listener
        if listener is not None:
            listener.half_open.discard(flow)

    def _send_segment(
        self,
        remote_ip: str,
        segment: Segment,
        now: float,
        record: TraceRecord | None,
        conn: TcpConnection | None = None,
        hooked: bool = False,
    ) -> None:
        copy_note = ""
        if self.hooks and not hooked:
            ctx = HookContext(segment, "out", remote_ip, conn)
            hook = next((h for h in self.hooks if h.matches(ctx)), None)
            if hook is not None:
                hook.fired += 1
                self.stats[f"hook_{hook.action}_out"] += 1
                name = f" {hook.name}" if hook.name else ""
                if hook.action == DROP:
                    if record is not None:
                        self._notify(replace(record, note=f"dropped by hook{name}"))
                    return
                if hook.action == DELAY:
                    held = f"held {hook.delay * 1000:g} ms by hook{name}"

                    def later(at: float) -> None:
                        delayed = replace(record, time=at, note=held) if record else None
                        self._send_segment(remote_ip, segment, at, delayed, conn, True)

                    self._schedule(now + hook.delay, later)
                    return
                if hook.action == DUPLICATE:
                    copy_note = f"duplicated by hook{name}"
                else:
                    assert hook.rewrite is not None
                    segment = hook.rewrite(segment)
                    if record is not None:
                        record = replace(record, segment=segment, note=f"rewritten by hook{name}")
        ip_id = next(self._ip_id) & 0xFFFF
        ttl, tos = (conn.ip_ttl, conn.ip_tos) if conn is not None else (64, 0)
        # With an offloading link the kernel checksums data segments, and cuts those
        # longer than one MSS (our TSO) into MSS-sized ones.
        gso_size = 0
        if self.link.gso_max and segment.payload and conn is not None:
            gso_size = conn.send_mss - segment.options.encoded_length()
            if len(segment.payload) > gso_size:
                self.stats["gso_frames_out"] += 1

        def build(dst_mac: bytes) -> bytes:
            return wire.encode_tcp(
                self.mac, dst_mac, self.ip, remote_ip, segment, ip_id=ip_id,
                partial_checksum=bool(gso_size), ttl=ttl, tos=tos,
            )  # fmt: skip

        self.stats["tcp_out"] += 1
        self._send_ip(remote_ip, build, now, record, gso_size)
        if copy_note:
            # The very same frame again, IP ID included, as a duplicating network sends it.
            self.stats["tcp_out"] += 1
            copy = replace(record, note=copy_note) if record else None
            self._send_ip(remote_ip, build, now, copy, gso_size)

    def _observe(
        self, direction: str, flow: Flow, seg: Segment, now: float, frame: bytes = b""
    ) -> None:
        record = self._record(direction, flow, seg, now)
        if record is not None:
            note = self._input_note if direction == "in" else ""
            self._notify(replace(record, frame=frame, note=note) if frame or note else record)

    def _notify(self, event: TraceEvent) -> None:
        for observer in self.observers:
            observer(event)

    def _record(self, direction: str, flow: Flow, seg: Segment, now: float) -> TraceRecord | None:
        """A trace record, or None (and no cost) when nobody observes."""
        if not self.observers:
            return None
        conn = flow.conn
        return SegmentEvent(
            now,
            direction,
            (self.ip, conn.local_port),
            (flow.remote_ip, seg.src_port if direction == "in" else seg.dst_port),
            seg,
            conn.state,
            conn.iss,
            conn.irs,
            conn.snd_una,
            conn.snd_nxt,
            conn.rcv_nxt,
            conn.snd_wnd,
            conn.advertised_window,
            conn.cc.cwnd,
            conn.rtt.srtt,
            conn.rtt.rto,
        )

    def _schedule(self, at: float, action: Callable[[float], None]) -> None:
        """Run action(now) at time `at` on the engine's thread (hooks' delays)."""
        heapq.heappush(self._delayed, (at, next(self._timer_seq), action))
        if threading.current_thread() is not self._thread and (
            self._sleep_until is None or at < self._sleep_until
        ):
            self._wake()

    # ----------------------------------------------------------------- timers

    def _next_deadline(self) -> float | None:
        timers = self._timers
        while timers:
            deadline, _, flow = timers[0]
            if flow.deadline == deadline and self.flows.get(flow.key) is flow:
                break
            heapq.heappop(timers)  # stale entry: the flow re-armed or went away
        first = timers[0][0] if timers else None
        for other in (self.arp.next_deadline(), self._delayed[0][0] if self._delayed else None):
            if other is not None and (first is None or other < first):
                first = other
        return first

    def _run_timers(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, _, action = heapq.heappop(self._delayed)
            action(now)
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, _, flow = heapq.heappop(timers)
            if flow.deadline != deadline or self.flows.get(flow.key) is not flow:
                continue
            flow.deadline = None
            if self.observers:
                self._trace_fired(flow, now)
            flow.conn.handle_timer(now)
            self.pump(flow, now)
        for ip in self.arp.due_requests(now):
            self._arp_request(ip)

    # ------------------------------------------------------- facade operations

    def new_flow(
        self, remote_ip: str, remote_port: int, local_port: int, config: TcpConfig | None = None
    ) -> Flow:
        """Create and register an active-open connection (the caller opens it)."""
        if remote_ip not in self._on_link:
            # MUST-46: never open a connection to a broadcast, multicast or invalid
            # address; Linux's connect() answers those with ENETUNREACH too.
            raise OSError(errno.ENETUNREACH, f"{remote_ip} is not a host on {self.network}")
        iss = self.isn(self.ip, local_port, remote_ip, remote_port)
        conn = TcpConnection(
            config or self.config,
            local_port,
            remote_port,
            iss=iss,
            ts_offset=self.ts_offsets(self.ip, local_port, remote_ip, remote_port),
            name=f"{local_port}>{remote_ip}:{remote_port}",
            challenge_limit=self.challenge_limit,
        )
        key = (remote_ip, remote_port, local_port)
        flow = Flow(conn, remote_ip, key, threading.Condition(self.lock))
        if key in self.flows:
            raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
        self.flows[flow.key] = flow
        return flow

    def ephemeral_port(self, remote_ip: str, remote_port: int) -> int:
        """A random free local port (RFC 6056 algorithm 1, Linux's range)."""
        start = random.randrange(len(EPHEMERAL_PORTS))
        for i in range(len(EPHEMERAL_PORTS)):
            port = EPHEMERAL_PORTS[(start + i) % len(EPHEMERAL_PORTS)]
            if port in self.bound_ports or port in self.listeners:
                continue
            if (remote_ip, remote_port, port) in self.flows:
                continue
            return port
        raise OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))

    def add_listener(self, port: int, backlog: int, config: TcpConfig | None = None) -> Listener:
        listener = Listener(
            port, max(backlog, 1), threading.Condition(self.lock), config or self.config
        )
        self.listeners[port] = listener
        return listener

    def close_listener(self, listener: Listener, now: float) -> None:
        """Stop listening; connections nobody accepted are reset (Linux does the same)."""
        listener.closed = True
        if self.listeners.get(listener.port) is listener:
            del self.listeners[listener.port]
        for flow in list(listener.half_open) + list(listener.accept_queue):
            flow.conn.abort(now)
            self.pump(flow, now)
        listener.half_open.clear()
        listener.accept_queue.clear()
        listener.changed()

    def connection_table(self) -> list[tuple[tuple[str, int], tuple[str, int], State]]:
        rows: list[tuple[tuple[str, int], tuple[str, int], State]] = [
            ((self.ip, port), ("0.0.0.0", 0), State.LISTEN) for port in sorted(self.listeners)
        ]
        for flow in self.flows.values():
            rows.append(
                (
                    (self.ip, flow.conn.local_port),
                    (flow.remote_ip, flow.conn.remote_port),
                    flow.conn.state,
                )
            )
        return rows


def with_link_mss(config: TcpConfig, mtu: int, gso_max: int = 0) -> TcpConfig:
    """Our announced MSS follows the link MTU (RFC 9293 §3.7.1: MTU minus 40), up to
    the configured one if any, and the sender's segmentation offload the link's GSO
    limit (unless configured off)."""
    tso = gso_max if config.tso_max is None else min(config.tso_max, gso_max)
    link_mss = min(mtu - 40, MAX_MSS)
    mss = link_mss if config.mss is None else min(config.mss, link_mss)
    return replace(config, mss=mss, tso_max=tso)


class _EngineLock(_thread.RLock):  # type: ignore[misc]
    """The engine's reentrant lock, which sends the queued frames when it is let go
    by the last level of its holder, also when a Condition waits on it."""

    on_free: Callable[[], None]
    _is_owned: Callable[[], bool]  # the C RLock's, which typeshed does not declare

    def release(self) -> None:
        super().release()
        if not self._is_owned():
            self.on_free()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _release_save(self) -> object:
        state = super()._release_save()  # type: ignore[misc]
        self.on_free()
        return state


class _OnLink:
    """Membership in our subnet, minus its network and broadcast addresses, cached
    per address string: it is checked on every segment."""

    def __init__(self, network: ipaddress.IPv4Network) -> None:
        self._network = network
        self._cache: dict[str, bool] = {}

    def __contains__(self, ip: str) -> bool:
        known = self._cache.get(ip)
        if known is None:
            address = ipaddress.IPv4Address(ip)
            known = (
                address in self._network
                and address != self._network.network_address
                and address != self._network.broadcast_address
            )
            if len(self._cache) < 4096:
                self._cache[ip] = known
        return known
