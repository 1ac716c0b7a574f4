"""Run a packetdrill-like script between the scripted peer and a device under test.

    +0    listen 8080
    +0    < S 0:0(0) win 65535 <mss 1460>
    +0    > S. 0:0(0) ack 1 <mss *>
    +0    < . 1:1(0) ack 1 win 65535
    +0    accept
    +0    < P. 1:101(100) ack 1 win 65535
    +0    > . 1:1(0) ack 101
    +0    read 100 -> 100
    +0.2  < R 101:101(0)
    +0    quiet 0.3

Each line starts with when it happens: `+T` seconds after the previous line, `T`
seconds after the script began, or `*` (an expected segment: whenever it comes; an
injected one: at once). `<` is a segment the peer injects, `>` one the device under
test must send next on the connection, checked within the script's tolerance of its
time, both in the notation of tcpstack.testing.notation. Anything else is a socket
call on the device under test (see `Conversation.call` for the verbs), run in a
thread so that a blocking call such as connect can wait while the script goes on;
`-> result` checks what it returned (a count, EOF, or an errno name such as
ECONNREFUSED) once it has. A line prefixed `[linux]`, `[tcpstack]` or
`[linux>=6.10]` applies only to that device (and kernel release): where two correct
TCPs may differ, the script says what each does.

Data has a known content: the peer's payload octet at relative sequence number n is
`pattern(n - 1)`, and so is what the device writes, so every read checks the bytes
and their order, not just the count.
"""

from __future__ import annotations

import concurrent.futures
import errno
import random
import re
import socket as _socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tcpstack.core.segment import Flags, Segment
from tcpstack.scenarios.harness import DutSocket
from tcpstack.testing import notation
from tcpstack.testing.dut import Dut, release_matches
from tcpstack.testing.notation import SegmentSpec
from tcpstack.testing.peer import Craft, Received, ScriptedPeer, craft_text, quote_of

TOLERANCE = 0.5  # seconds either side of an expected segment's time (Python on 2 cores)
PATIENCE = 5.0  # for "*": how long an expected segment may take
CALL_TIMEOUT = 10.0
CALL_GRACE = 0.05  # the longest any socket call may block
_TIMING = re.compile(r"^(\+?)(\d+(?:\.\d*)?|\.\d+)$")
NO_CRAFT = Craft()
_PREFIX = re.compile(r"^\[(linux|tcpstack)([<>=]{1,2}[\d.]+)?\]\s*")


def pattern(offset: int, length: int) -> bytes:
    """The known content of the stream from `offset` on: no run repeats within 251."""
    return bytes((offset + i) % 251 for i in range(length))


class ScriptFailure(AssertionError):
    """The device did not do what the script expected; the message has the transcript."""


@dataclass
class Connection:
    peer_port: int
    dut_port: int | None
    peer_isn: int
    dut_isn: int | None = None


@dataclass
class _Call:
    text: str
    expected: str | None
    future: concurrent.futures.Future[Any]
    line: str


@dataclass
class Conversation:
    """One script's run against one device under test."""

    dut: Dut
    peer: ScriptedPeer
    tolerance: float = TOLERANCE
    peer_port: int = 40000
    transcript: list[str] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conn = Connection(self.peer_port, None, random.getrandbits(32))
        self.start = time.monotonic()
        self.last = self.start
        self.last_segment: Segment | None = None
        self.last_received: Received | None = None  # the frame of last_segment
        self.sock: DutSocket | None = None
        self.listener: DutSocket | None = None
        self.read_offset = 0
        self.write_offset = 0
        self._pending: _Call | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="script-call")
        self._sockets: list[DutSocket] = []

    # ------------------------------------------------------------ the script

    def run(self, text: str) -> None:
        """Run script lines (see the module docstring); blank lines and # comments skip."""
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if line:
                self._line(line)

    def _line(self, line: str) -> None:
        match = _PREFIX.match(line)
        if match:
            who, condition = match.group(1), match.group(2) or ""
            if who != self.dut.name or (condition and not release_matches(condition)):
                return
            line = line[match.end() :]
        timing, _, body = line.partition(" ")
        body = body.strip()
        when = self._when(timing)
        if body.startswith("<"):
            self.inject(body[1:].strip(), at=when)
        elif body.startswith(">"):
            self.expect(body[1:].strip(), at=when)
        else:
            self.call(body, at=when)

    def _when(self, timing: str) -> float | None:
        if timing == "*":
            return None
        match = _TIMING.match(timing)
        if not match:
            raise ValueError(f"a line starts with +T, T or *, not {timing!r}")
        seconds = float(match.group(2))
        return (self.last if match.group(1) else self.start) + seconds

    def _log(self, when: float, text: str) -> None:
        self.transcript.append(f"{when - self.start:8.3f}  {text}")

    def note(self, text: str, when: float | None = None) -> None:
        """A line in the transcript, for what a scenario body checks itself."""
        self._log(time.monotonic() if when is None else when, text)

    def fail(self, why: str) -> None:
        self._log(time.monotonic(), f"FAIL {why}")
        raise ScriptFailure(
            f"{why}\n  transcript ({self.dut.name}):\n    " + "\n    ".join(self.transcript)
        )

    def restart(self, peer_port: int) -> None:
        """Start a new connection from another peer port (listeners stay)."""
        self._join()
        self.conn = Connection(peer_port, self.conn.dut_port, random.getrandbits(32))
        self.sock = None
        self.read_offset = self.write_offset = 0
        self.last_segment = None
        self.last_received = None

    # ------------------------------------------------------------ segments

    def inject(
        self,
        spec: str | SegmentSpec,
        *,
        at: float | None = None,
        payload: bytes | None = None,
        craft: Craft = NO_CRAFT,
    ) -> None:
        """Send a segment from the peer; relative numbers as in notation."""
        if isinstance(spec, str):
            spec = notation.parse(spec)
        if at is not None and (delay := at - time.monotonic()) > 0:
            time.sleep(delay)  # the script's own timing, not a wait for anything
        start = spec.start or 0
        length = spec.length or 0
        if payload is None:
            payload = pattern(max(start - 1, 0), length)
        dut_base = self.conn.dut_isn or 0
        frame = self.peer.frame(
            src_port=self.conn.peer_port,
            dst_port=self.conn.dut_port or 0,
            seq=self.conn.peer_isn + start,
            ack=dut_base + (spec.ack or 0) if spec.flags & Flags.ACK else 0,
            flags=int(spec.flags),
            window=65535 if spec.window is None else spec.window,
            urgent=spec.urgent or 0,
            options=notation.encode_options(spec.options or (), seq_base=dut_base),
            payload=payload,
            craft=craft,
        )
        # The time before the send: a reply can be stamped by the kernel before
        # send() has even returned here.
        self.last = time.monotonic()
        self.peer.send(frame)
        broken = f"  [{craft_text(craft)}]" if craft != NO_CRAFT else ""
        self._log(self.last, f"< {spec}{broken}")

    def icmp(
        self,
        icmp_type: int,
        code: int,
        *,
        about: Received | None = None,
        rest: int = 0,
        at: float | None = None,
    ) -> None:
        """Send an ICMP error from the peer about a segment the device sent (by default
        the last one the script saw), quoting its IP header and first 8 octets."""
        about = about or self.last_received
        if about is None:
            raise ValueError("script error: an ICMP error about what? The device sent nothing")
        if at is not None and (delay := at - time.monotonic()) > 0:
            time.sleep(delay)  # the script's own timing, not a wait for anything
        frame = self.peer.icmp_error(icmp_type, code, quote_of(about.frame), rest=rest)
        self.last = time.monotonic()
        self.peer.send(frame)
        self._log(
            self.last,
            f"< icmp type {icmp_type} code {code} about {self._describe(about.packet.segment)}",
        )

    def expect(self, spec: str | SegmentSpec, *, at: float | None = None) -> Segment:
        """The device's next segment on the connection must match `spec`, around `at`."""
        if isinstance(spec, str):
            spec = notation.parse(spec)
        if at is None:
            earliest, latest = self.last, time.monotonic() + PATIENCE
        else:
            earliest, latest = at - self.tolerance, at + self.tolerance
        got = self._next(latest)
        if got is None:
            self.fail(f"expected > {spec}, but the device sent nothing")
            raise AssertionError  # unreachable: fail() raises
        seg = got.packet.segment
        text = self._describe(seg)
        self._log(got.time, f"> {text}")
        wrong = notation.mismatches(
            spec, seg, seq_base=self.conn.dut_isn or 0, ack_base=self.conn.peer_isn
        )
        if wrong:
            self.fail(f"expected > {spec}\n  got      > {text}\n  ({'; '.join(wrong)})")
        if not got.checksum_ok:
            self.fail(f"> {text} has a bad checksum")
        if got.time < earliest:
            self.fail(f"> {text} came {earliest - got.time:.3f} s earlier than the script allows")
        self.last = got.time
        self.last_segment = seg
        self.last_received = got
        return seg

    def quiet(self, seconds: float) -> None:
        """The device must send nothing on the connection for `seconds`."""
        got = self._next(time.monotonic() + seconds)
        if got is not None:
            text = self._describe(got.packet.segment)
            self._log(got.time, f"> {text}")
            self.fail(f"expected {seconds:g} s of silence, got > {text}")
        self.last = time.monotonic()
        self._log(self.last, f"(quiet for {seconds:g} s)")

    def collect(self, seconds: float) -> list[Segment]:
        """Every segment the device sends on the connection in the next `seconds`,
        for checks on a burst whose exact shape two correct TCPs may choose apart."""
        out = []
        deadline = time.monotonic() + seconds
        while (got := self._next(deadline)) is not None:
            seg = got.packet.segment
            self._log(got.time, f"> {self._describe(seg)}")
            out.append(seg)
            self.last = got.time
            self.last_segment = seg
            self.last_received = got
        return out

    def _next(self, deadline: float) -> Received | None:
        while (left := deadline - time.monotonic()) > 0:
            got = self.peer.receive(left)
            if got is None:
                return None
            self.received.append(got)
            seg = got.packet.segment
            if seg.dst_port != self.conn.peer_port:
                continue
            if self.conn.dut_port is None:
                self.conn.dut_port = seg.src_port
            if seg.src_port == self.conn.dut_port:
                if seg.syn and self.conn.dut_isn is None:
                    self.conn.dut_isn = seg.seq
                return got
        return None

    def _describe(self, seg: Segment) -> str:
        return notation.describe(seg, seq_base=self.conn.dut_isn or 0, ack_base=self.conn.peer_isn)

    @property
    def dut_window(self) -> int:
        """The window field of the last segment the device sent."""
        if self.last_segment is None:
            raise RuntimeError("the device has sent nothing yet")
        return self.last_segment.window

    # ------------------------------------------------------------ socket calls

    def call(self, text: str, *, at: float | None = None) -> None:
        """A socket call on the device under test: listen PORT, connect PORT, accept,
        write N, read N, shutdown wr|rd|rdwr, close [listener], linger0, nodelay,
        oobinline,
        state NAME[|NAME...] (the connection's, within the tolerance),
        port N (the device's port, for scripts that open no socket), quiet SECONDS,
        icmp TYPE CODE [REST] (not a call: the peer sends an ICMP error about the
        device's last segment, see `icmp`)."""
        body, _, expected = text.partition("->")
        words = body.split()
        verb = words[0]
        if at is not None and (delay := at - time.monotonic()) > 0:
            time.sleep(delay)  # the script's own timing
        if verb == "quiet":
            self.quiet(float(words[1]))
            return
        if verb == "state":
            self._check_state(words[1].split("|"))
            return
        if verb == "icmp":
            rest = int(words[3], 0) if len(words) > 3 else 0
            self.icmp(int(words[1]), int(words[2]), rest=rest)
            return
        if verb == "port":
            self.conn.dut_port = int(words[1])  # a port with no socket behind it
            return
        self._join()
        action = self._action(verb, words[1:])
        self.last = time.monotonic()
        self._log(self.last, text.strip())
        future = self._pool.submit(action)
        call = _Call(
            text.strip(), expected.strip() or None, future, f"{verb} {' '.join(words[1:])}"
        )
        try:
            # A moment to return at once, as most calls do; a call that blocks (a
            # connect waiting for the SYN-ACK the script has yet to send) goes on.
            future.result(timeout=CALL_GRACE)
        except concurrent.futures.TimeoutError:
            self._pending = call  # still blocked: judged at the next call or the end
            return
        except Exception:
            pass
        self._judge(call)

    def _action(self, verb: str, args: list[str]) -> Callable[[], Any]:
        peer = (self.peer.address, 0)
        if verb == "listen":
            port = int(args[0])
            self.conn.dut_port = port
            sock = self._socket()
            self.listener = sock

            def listen() -> int:
                sock.bind((self.dut.address, port))
                sock.listen(8)
                return 0

            return listen
        if verb == "connect":
            port = int(args[0])
            self.conn.peer_port = port
            sock = self._socket()
            self.sock = sock
            return _then_zero(lambda: sock.connect((peer[0], port)))
        if verb == "accept":
            listener = self._require(self.listener, "accept before listen")

            def accept() -> int:
                conn, _ = listener.accept()
                conn.settimeout(CALL_TIMEOUT)
                self._sockets.append(conn)
                self.sock = conn
                return 0

            return accept
        sock = self._require(self.sock, f"{verb} with no connected socket")
        if verb == "write":
            data = pattern(self.write_offset, int(args[0]))

            def write() -> int:
                sent = sock.send(data)
                self.write_offset += sent
                return sent

            return write
        if verb == "read":
            size = int(args[0])
            return lambda: self._read(sock, size)
        if verb == "shutdown":
            how = {"rd": _socket.SHUT_RD, "wr": _socket.SHUT_WR, "rdwr": _socket.SHUT_RDWR}
            return _then_zero(lambda: sock.shutdown(how[args[0]]))
        if verb == "close":
            target = self.listener if args[:1] == ["listener"] else sock
            return _then_zero(lambda: self._require(target, "close what?").close())
        if verb == "linger0":
            value = struct.pack("ii", 1, 0)
            return lambda: sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, value) or 0  # type: ignore[attr-defined]
        if verb == "oobinline":
            return lambda: sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_OOBINLINE, 1) or 0  # type: ignore[attr-defined]
        if verb == "nodelay":
            return lambda: sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1) or 0  # type: ignore[attr-defined]
        raise ValueError(f"unknown socket call {verb!r}")

    def _socket(self) -> DutSocket:
        sock = self.dut.socket()
        sock.settimeout(CALL_TIMEOUT)
        self._sockets.append(sock)
        return sock

    @staticmethod
    def _require(sock: DutSocket | None, why: str) -> DutSocket:
        if sock is None:
            raise ValueError(f"script error: {why}")
        return sock

    def _read(self, sock: DutSocket, size: int) -> int | str:
        data = sock.recv(size)
        if not data:
            return "EOF"
        want = pattern(self.read_offset, len(data))
        if data != want:
            raise ValueError(f"read {data[:16].hex()}..., the stream has {want[:16].hex()}...")
        self.read_offset += len(data)
        return len(data)

    def _join(self) -> None:
        call, self._pending = self._pending, None
        if call is not None:
            try:
                call.future.result(timeout=CALL_TIMEOUT)
            except Exception:
                pass
            self._judge(call)

    def _judge(self, call: _Call) -> None:
        failed = False
        try:
            result = str(call.future.result(timeout=0))
        except concurrent.futures.TimeoutError:
            self.fail(f"{call.line} still blocked after {CALL_TIMEOUT:g} s")
            return
        except Exception as exc:
            result, failed = _error_name(exc), True
        if call.expected is None:
            if failed:
                self.fail(f"{call.line} failed: {result}")
        elif result != call.expected:
            self.fail(f"{call.line} returned {result}, the script expects {call.expected}")

    def _check_state(self, states: list[str]) -> None:
        local = (self.dut.address, self.conn.dut_port or 0)
        remote = (self.peer.address, self.conn.peer_port)
        deadline = time.monotonic() + self.tolerance
        while (state := self.dut.state(local, remote)) not in states:
            if time.monotonic() > deadline:
                self.fail(f"the device is {state}, not {'|'.join(states)}")
            time.sleep(0.005)  # polling the device's table, with a deadline
        self._log(time.monotonic(), f"state {state}")

    # ------------------------------------------------------------ the end

    def finish(self) -> None:
        """Judge a call still pending, then fail on any segment the script did not
        expect that has already arrived."""
        self._join()
        while (got := self._next(time.monotonic() + 0.001)) is not None:
            text = self._describe(got.packet.segment)
            self._log(got.time, f"> {text}")
            self.fail(f"the device sent > {text}, which the script does not expect")

    def close(self) -> None:
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)


def _then_zero(action: Callable[[], object]) -> Callable[[], int]:
    """A call whose success returns 0, as the system call does."""

    def call() -> int:
        action()
        return 0

    return call


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno]
    if isinstance(exc, TimeoutError):
        return "ETIMEDOUT"
    if isinstance(exc, ConnectionResetError):
        return "ECONNRESET"
    if isinstance(exc, ConnectionRefusedError):
        return "ECONNREFUSED"
    return f"{type(exc).__name__}: {exc}"
