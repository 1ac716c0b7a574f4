"""What a scenario runs in: a lab, a device under test, a kernel peer, and the record.

The device under test (DUT) sits at 198.18.0.2. Normally it is this endpoint (a
`Stack` on a veth end or a TAP device); in differential mode it is a kernel socket in
a "kernel" lab, so that the same scenario script shows what Linux itself does. The
scenario talks to the DUT and to the kernel peer (198.18.0.1) through a `Run`, which
records every segment the DUT sent or received together with both sides' states at
that moment, and collects the scenario's checks and its corrections of the source
documents.
"""

from __future__ import annotations

import concurrent.futures
import socket as _socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from tcpstack import wire
from tcpstack.capture import Capture, CapturedFrame
from tcpstack.config import TcpConfig
from tcpstack.core.state import State
from tcpstack.hooks import Hook
from tcpstack.lab import KernelStates, Lab
from tcpstack.ladder import Ladder
from tcpstack.stack import Stack
from tcpstack.trace import Recorder, SegmentEvent, StateEvent, TraceEvent

T = TypeVar("T")
TIMEOUT = 10.0
Address = tuple[str, int]


class NeedsHooks(Exception):
    """The scenario scripts segments with hooks, which a kernel DUT does not have."""


@dataclass(frozen=True, slots=True)
class Check:
    claim: str
    ok: bool
    detail: str = ""

    def __str__(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        return f"  {mark} {self.claim}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True, slots=True)
class Correction:
    """A source document's claim that this run shows to be wrong."""

    source: str
    says: str
    really: str

    def lines(self) -> list[str]:
        verb = "say" if "," in self.source else "says"
        return [f"  {self.source} {verb}: {self.says}", f"      really: {self.really}"]


@dataclass
class Outcome:
    name: str
    dut: str  # "tcpstack" or "kernel"
    kind: str  # the lab: veth, tap or kernel
    checks: list[Check] = field(default_factory=list)
    corrections: list[Correction] = field(default_factory=list)
    unjudged: list[Check] = field(default_factory=list)  # see Run.check_states
    ladder: Ladder = field(default_factory=Ladder)
    events: list[TraceEvent] = field(default_factory=list)
    dut_states: set[str] = field(default_factory=set)  # states the DUT's connections visited
    peer_states: set[str] = field(default_factory=set)  # states the kernel peer was seen in
    error: str = ""  # the scenario stopped with an exception

    @property
    def passed(self) -> bool:
        return not self.error and bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def segments(self) -> list[SegmentEvent]:
        return [e for e in self.events if isinstance(e, SegmentEvent)]

    def report(self) -> list[str]:
        lines = self.ladder.render()
        lines.append("")
        lines += [str(c) for c in self.checks]
        lines += [f"  n/a  {c.claim} (states sampled on a kernel DUT)" for c in self.unjudged]
        if self.error:
            lines.append(f"  FAIL stopped: {self.error}")
        for correction in self.corrections:
            lines += correction.lines()
        lines.append(f"{'PASS' if self.passed else 'FAIL'} {self.name} ({self.dut} on {self.kind})")
        return lines


class DutSocket(Protocol):
    """What scenarios use of a DUT socket: ours (`tcpstack.Socket`) or a kernel one
    (`KernelDutSocket`)."""

    @property
    def state(self) -> State: ...
    def wait_for_state(self, *states: State, timeout: float | None = None) -> State: ...
    def bind(self, address: Address, /) -> None: ...
    def listen(self, backlog: int = ..., /) -> None: ...
    def connect(self, address: Address, /) -> None: ...
    def accept(self) -> tuple[DutSocket, Address]: ...
    def send(self, data: bytes, flags: int = ..., /) -> int: ...
    def sendall(self, data: bytes, flags: int = ..., /) -> None: ...
    def recv(self, bufsize: int, flags: int = ..., /) -> bytes: ...
    def shutdown(self, how: int, /) -> None: ...
    def close(self) -> None: ...
    def getsockname(self) -> Any: ...
    def settimeout(self, value: float | None, /) -> None: ...
    def setblocking(self, flag: bool, /) -> None: ...


class KernelDutSocket:
    """A kernel socket in the DUT's namespace with our Socket's `state` and
    `wait_for_state`, read from inet_diag, so one script drives either DUT."""

    def __init__(self, sock: _socket.socket, states: KernelStates) -> None:
        self._sock = sock
        self._states = states
        self._local: Address | None = None
        self._remote: Address | None = None
        self._listening = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def connect(self, address: Address) -> None:
        try:
            self._sock.connect(address)
        finally:
            self._remote = address
            self._local = self._sock.getsockname()

    def listen(self, backlog: int = 128) -> None:
        self._sock.listen(backlog)
        self._listening = True
        self._local = self._sock.getsockname()

    def accept(self) -> tuple[KernelDutSocket, Address]:
        conn, address = self._sock.accept()
        conn.settimeout(self._sock.gettimeout())
        wrapped = KernelDutSocket(conn, self._states)
        wrapped._local, wrapped._remote = conn.getsockname(), address
        return wrapped, address

    def getsockname(self) -> Address:
        # Still answers after close(), as ours does: the ladder needs the port.
        if self._local is None:
            self._local = self._sock.getsockname()
        return self._local

    @property
    def state(self) -> State:
        if self._remote is None or self._local is None:
            return State.LISTEN if self._listening else State.CLOSED
        return State[self._states.state(self._local, self._remote)]

    def wait_for_state(self, *states: State, timeout: float | None = None) -> State:
        deadline = time.monotonic() + (TIMEOUT if timeout is None else timeout)
        while (state := self.state) not in states:
            if time.monotonic() > deadline:
                raise TimeoutError(f"still {state.name}, not {'/'.join(s.name for s in states)}")
            time.sleep(0.001)
        return state


class Run:
    """The scenario's handle on the lab; see the module docstring."""

    def __init__(
        self,
        lab: Lab,
        outcome: Outcome,
        *,
        msl: float,
        subscribers: Sequence[Callable[[TraceEvent], None]] = (),
    ) -> None:
        self.lab = lab
        self.outcome = outcome
        self.msl = msl
        self.dut_address = lab.endpoint_address
        self.peer_address = lab.peer_address
        self.start = time.monotonic()
        self._pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="scenario")
        self._peer_states = KernelStates(lab.peer_tcp_sockets)
        self._lock = threading.Lock()
        self.stack: Stack | None = None
        self._capture: Capture | None = None
        self._dut_sockets: list[DutSocket] = []
        self._peer_sockets: list[_socket.socket] = []
        self.recorder = Recorder()
        self._frozen = False
        self._frozen_at = float("inf")
        if lab.kind == "kernel":
            self._dut_states = KernelStates(lab.endpoint_tcp_sockets)
            self._isns: dict[tuple[Address, Address], dict[str, int]] = {}
            self._capture = Capture(lab.endpoint_interface, lab.endpoint_netns, self._captured)
            self._capture.start()
        else:
            self.stack = Stack(
                interface=lab.endpoint_interface,
                address=lab.endpoint_cidr,
                netns=lab.endpoint_netns,
                config=TcpConfig(msl=msl),
            )
            self.stack.subscribe(self._observe)
            for subscriber in subscribers:
                self.stack.subscribe(subscriber)

    # ------------------------------------------------------------- recording

    def _observe(self, event: TraceEvent) -> None:
        """Runs in the engine's thread as each event happens, so the kernel's state
        polled here is its state at that moment."""
        if self._frozen:
            return
        self.recorder(event)
        if isinstance(event, SegmentEvent):
            theirs = self._peer_states.state(event.remote, event.local)
            self.outcome.peer_states.add(theirs)
            with self._lock:
                self.outcome.ladder.add(event, theirs)
        elif isinstance(event, StateEvent):
            self.outcome.dut_states.update((event.old.name, event.new.name))

    def _captured(self, captured: CapturedFrame) -> None:
        """A kernel DUT's frame: made into the trace event our engine would have given.

        The states beside it are polled when the capture thread gets to the frame,
        which on a busy machine can be after the kernels have moved on: a kernel
        DUT's transient states (LAST_ACK for a few microseconds) may not show."""
        if captured.time > self._frozen_at:
            return
        try:
            packet = wire.decode_frame(captured.frame, checksum_trusted=True)
        except wire.DecodeError:
            return
        if not isinstance(packet, wire.TcpPacket):
            return
        seg = packet.segment
        out = captured.outgoing
        local = (packet.src_ip, seg.src_port) if out else (packet.dst_ip, seg.dst_port)
        remote = (packet.dst_ip, seg.dst_port) if out else (packet.src_ip, seg.src_port)
        isns = self._isns.setdefault((local, remote), {})
        if seg.syn:
            isns.setdefault("out" if out else "in", seg.seq)
        ours = self._dut_states.state(local, remote)
        theirs = self._peer_states.state(remote, local)
        self.outcome.dut_states.add(ours)
        self.outcome.peer_states.add(theirs)
        event = SegmentEvent(
            captured.time,
            "out" if out else "in",
            local,
            remote,
            seg,
            State[ours],
            isns.get("out", 0),
            isns.get("in", 0),
            frame=captured.frame,
        )
        self.recorder(event)
        with self._lock:
            self.outcome.ladder.add(event, theirs)

    def _sync(self) -> None:
        """Let the record catch up with what both sides have already seen."""
        if self.stack is not None:
            self.stack.sync()
        if self._capture is not None:
            self._capture.sync()

    def freeze(self) -> None:
        """Stop recording: what follows is teardown, not the scenario."""
        if self.stack is not None:
            self.stack.sync()
        self._frozen = True
        self._frozen_at = time.monotonic()

    def close(self) -> None:
        for sock in self._dut_sockets + self._peer_sockets:
            sock.close()
        if self.stack is not None:
            self.stack.close()
        if self._capture is not None:
            self._capture.stop()
            if self._capture.errors:
                raise self._capture.errors[0]
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.outcome.events = list(self.recorder.events)

    # ------------------------------------------------------------- the DUT

    @property
    def dut(self) -> str:
        return "tcpstack" if self.stack is not None else "kernel"

    def socket(self) -> DutSocket:
        """A socket of the device under test: ours, or a kernel one in the DUT's namespace."""
        if self.stack is not None:
            sock: DutSocket = self.stack.socket()
        else:
            with self.lab.in_endpoint():
                raw = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
            sock = KernelDutSocket(raw, self._dut_states)
        sock.settimeout(TIMEOUT)
        self._dut_sockets.append(sock)
        return sock

    def hook(self, hook: Hook) -> Hook:
        if self.stack is None:
            raise NeedsHooks(f"hook {hook.name or hook.action!r} needs the tcpstack DUT")
        return self.stack.add_hook(hook)

    @property
    def can_hook(self) -> bool:
        return self.stack is not None

    # ------------------------------------------------------------- the kernel peer

    def peer_socket(self, bind_port: int = 0) -> _socket.socket:
        with self.lab.in_peer():
            sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        if bind_port:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            sock.bind((self.peer_address, bind_port))
        self._peer_sockets.append(sock)
        return sock

    def peer_listener(self, port: int, backlog: int = 8) -> _socket.socket:
        with self.lab.in_peer():
            server = _socket.create_server((self.peer_address, port), backlog=backlog)
        server.settimeout(TIMEOUT)
        self._peer_sockets.append(server)
        return server

    def own(self, sock: _socket.socket) -> _socket.socket:
        """Keep a kernel socket open until the scenario ends (a socket the garbage
        collector closes mid-scenario would put a stray FIN in the ladder)."""
        self._peer_sockets.append(sock)
        return sock

    def peer_state(self, peer: Address, dut: Address) -> str:
        """The kernel peer's state for the connection between `peer` and `dut`."""
        return self._peer_states.state(peer, dut)

    def wait_peer_state(
        self, peer: Address, dut: Address, *states: str, timeout: float = TIMEOUT
    ) -> str:
        def reached() -> bool:
            state = self.peer_state(peer, dut)
            self.outcome.peer_states.add(state)
            return state in states

        return self.wait_until(reached, f"kernel {'/'.join(states)}", timeout)

    # ------------------------------------------------------------- commentary

    def note(self, side: str, text: str) -> float:
        """A line in the ladder at this moment ("us", "kernel" or "" for between)."""
        now = time.monotonic()
        with self._lock:
            self.outcome.ladder.note(now, side, text)
        return now

    def check(self, ok: bool, claim: str, detail: str = "") -> bool:
        self.outcome.checks.append(Check(claim, bool(ok), detail))
        return bool(ok)

    def check_states(self, ok: bool, claim: str, detail: str = "") -> bool:
        """A claim about the states beside each segment. Exact with our DUT, whose
        core reports them; a kernel DUT's are sampled, possibly late, so there the
        claim is shown but not judged."""
        if self.stack is None:
            self.outcome.unjudged.append(Check(claim, bool(ok), detail))
            return True
        return self.check(ok, claim, detail)

    def correct(self, source: str, says: str, really: str) -> None:
        self.outcome.corrections.append(Correction(source, says, really))

    # ------------------------------------------------------------- helpers

    def background(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        return self._pool.submit(fn, *args)

    def wait_until(self, predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.001)
        return what

    def segments(self, sock: DutSocket) -> list[SegmentEvent]:
        """The DUT's segments on this socket's connection so far, in order."""
        local = sock.getsockname()
        return self.connection_segments(local[1])

    def connection_segments(
        self, local_port: int | None = None, *, remote_port: int | None = None
    ) -> list[SegmentEvent]:
        self._sync()
        return [
            e
            for e in list(self.recorder.events)
            if isinstance(e, SegmentEvent)
            and local_port in (None, e.local[1])
            and remote_port in (None, e.remote[1])
        ]

    def state_path(self, local_port: int) -> list[str]:
        """The DUT connection's states in order: from our state events, or for a
        kernel DUT from its states polled as its segments passed."""
        self._sync()
        path: list[str] = []
        for e in list(self.recorder.events):
            if self.stack is not None:
                if isinstance(e, StateEvent) and e.local[1] == local_port:
                    if not path:
                        path.append(e.old.name)
                    path.append(e.new.name)
            elif isinstance(e, SegmentEvent) and e.local[1] == local_port:
                if not path or path[-1] != e.state.name:
                    path.append(e.state.name)
        return path
