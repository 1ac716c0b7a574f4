"""The demo: a whole TCP conversation between this endpoint and a real kernel, as a ladder.

It builds a lab, runs a kernel TCP socket in the lab's peer namespace (a server,
or with passive=True a client), talks to it from the userspace endpoint, closes,
waits for the last state changes, and prints every segment with both ends' states:
ours from the state machine, the kernel's from inet_diag (what `ss` reads) polled
in the peer namespace right after each segment.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tcpstack.config import TcpConfig
from tcpstack.core.state import State
from tcpstack.lab import KernelStates, Lab
from tcpstack.ladder import Ladder
from tcpstack.stack import Socket, Stack, recv_exactly
from tcpstack.trace import SegmentEvent, TraceEvent

SERVER_PORT = 7007
CLIENT_PORT = 8080
TIMEOUT = 10.0


@dataclass
class DemoResult:
    lines: list[str] = field(default_factory=list)
    our_states: list[str] = field(default_factory=list)
    kernel_states: list[str] = field(default_factory=list)
    reply: bytes = b""
    ok: bool = False


def run(
    *,
    kind: str = "veth",
    passive: bool = False,
    msl: float = 1.0,
    emit: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo on a fresh lab; returns what it printed and whether it went right."""
    result = DemoResult()
    with Lab(kind) as lab:
        for line in lab.describe():
            emit(line)
        config = TcpConfig(msl=msl)
        stack = Stack(
            interface=lab.endpoint_interface,
            address=lab.endpoint_cidr,
            netns=lab.endpoint_netns,
            config=config,
        )
        with stack:
            ladder = Ladder(
                local_name=f"us {stack.address}", remote_name=f"kernel {lab.peer_address}"
            )
            start = time.monotonic()

            kernel_states = KernelStates(lab.peer_tcp_sockets)

            def observe(record: TraceEvent) -> None:
                if not isinstance(record, SegmentEvent):
                    return
                theirs = kernel_states.state(record.remote, record.local)
                ladder.add(record, theirs)
                result.our_states.append(record.state.name)
                result.kernel_states.append(theirs)

            stack.subscribe(observe)

            def note(side: str, text: str) -> None:
                ladder.note(time.monotonic(), side, text)

            emit("")
            emit(f"link: {stack.link_kind} on {lab.endpoint_interface}, our MAC {_mac(stack)}")
            if passive:
                sock = _passive(lab, stack, note, result)
            else:
                sock = _active(lab, stack, note, result)
            # Let the last timers run (TIME-WAIT is 2*MSL) so the ladder shows the end.
            sock.wait_for_state(State.CLOSED, timeout=2 * msl + TIMEOUT)
            note(
                "us",
                f"2MSL ({2 * msl:g} s) expired: TIME_WAIT -> CLOSED" if not passive else "CLOSED",
            )
            final = lab.peer_tcp_sockets()
            for ks in final:
                if ks.state != "LISTEN":
                    note("kernel", f"ss: {ks.state} {ks.local[0]}:{ks.local[1]}")
            stack.unsubscribe(observe)
            counters = stack.stats()
        emit("")
        result.lines = ladder.render()
        for line in result.lines:
            emit(line)
        elapsed = time.monotonic() - start
        emit("")
        emit(f"{len(ladder.rows)} segments in {elapsed * 1000:.1f} ms; reply {result.reply!r}")
        shown = ("segments_in", "segments_out", "retransmissions", "frames_in", "frames_out")
        emit(
            "counters: "
            + ", ".join(f"{k} {counters.get(k, 0)}" for k in shown)
            + (
                "; drops: "
                + ", ".join(f"{k[5:]} {v}" for k, v in counters.items() if k.startswith("drop_"))
                if any(k.startswith("drop_") for k in counters)
                else ""
            )
        )
    return result


def _mac(stack: Stack) -> str:
    return ":".join(f"{b:02x}" for b in stack.mac)


def _active(lab: Lab, stack: Stack, note: Callable[[str, str], None], result: DemoResult) -> Socket:
    """We connect to a kernel server that upper-cases what it reads, then closes."""
    with lab.in_peer():
        server = socket.create_server((lab.peer_address, SERVER_PORT))
    server.settimeout(TIMEOUT)
    errors: list[BaseException] = []
    # The server stays in CLOSE_WAIT until we have seen it there, so the ladder
    # shows the four-way close segment by segment.
    may_close = threading.Event()

    def serve() -> None:
        try:
            conn, _ = server.accept()
            note("kernel", "accept() returned")
            with conn:
                conn.settimeout(TIMEOUT)
                while data := conn.recv(4096):
                    conn.sendall(data.upper())
                note("kernel", "recv() returned b'' (our FIN)")
                may_close.wait(TIMEOUT)
                note("kernel", "close()")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        sock = stack.socket()
        sock.settimeout(TIMEOUT)
        note("us", f"connect(({lab.peer_address}, {SERVER_PORT}))")
        sock.connect((lab.peer_address, SERVER_PORT))
        note("us", "connect() returned")
        sock.sendall(b"hello, kernel")
        note("us", "sendall(b'hello, kernel') returned")
        result.reply = recv_exactly(sock, 13)
        note("us", f"recv() -> {result.reply!r}")
        sock.shutdown(socket.SHUT_WR)
        note("us", "shutdown(SHUT_WR)")
        sock.wait_for_state(State.FIN_WAIT_2, State.TIME_WAIT, timeout=TIMEOUT)
        may_close.set()
        eof = sock.recv(100)
        note("us", f"recv() -> {eof!r} (kernel's FIN)")
        sock.close()
        note("us", "close()")
        thread.join(TIMEOUT)
        if errors:
            raise errors[0]
        result.ok = result.reply == b"HELLO, KERNEL" and eof == b""
        return sock
    finally:
        server.close()


def _passive(
    lab: Lab, stack: Stack, note: Callable[[str, str], None], result: DemoResult
) -> Socket:
    """A kernel client connects to us, sends, reads our reply, and closes first."""
    listener = stack.socket()
    listener.bind(("", CLIENT_PORT))
    listener.listen(8)
    listener.settimeout(TIMEOUT)
    errors: list[BaseException] = []
    replies: list[bytes] = []

    def client() -> None:
        try:
            with lab.in_peer():
                conn = socket.socket()
            with conn:
                conn.settimeout(TIMEOUT)
                note("kernel", f"connect(({stack.address}, {CLIENT_PORT}))")
                conn.connect((stack.address, CLIENT_PORT))
                note("kernel", "connect() returned")
                conn.sendall(b"hello, userspace")
                note("kernel", "sendall(b'hello, userspace') returned")
                replies.append(conn.recv(100))
                note("kernel", f"recv() -> {replies[-1]!r}")
                note("kernel", "close()")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    sock, peer = listener.accept()
    note("us", f"accept() returned {peer[0]}:{peer[1]}")
    with sock:
        sock.settimeout(TIMEOUT)
        data = sock.recv(100)
        note("us", f"recv() -> {data!r}")
        sock.sendall(data.upper())
        note("us", "sendall()")
        eof = sock.recv(100)
        note("us", f"recv() -> {eof!r} (kernel's FIN)")
        note("us", "close()")
    listener.close()
    thread.join(TIMEOUT)
    if errors:
        raise errors[0]
    result.reply = replies[0] if replies else b""
    result.ok = result.reply == b"HELLO, USERSPACE" and eof == b""
    return sock
