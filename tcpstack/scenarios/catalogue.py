"""The scenarios: each reproduces claims of the source documents against a real kernel.

The source documents are the five write-ups of the handshake, the close and the 11
states this project started from (kept in ../shared/seeds/, numbered 000 to 004).
Each scenario drives the device under test and the kernel peer through a `Run`,
checks what really happened on the wire and in both sides' states, and where a
document claims otherwise says so (`run.correct`). RFC 9293 is the authority and the
kernel the judge; the section numbers below are RFC 9293's.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from tcpstack.core import seq
from tcpstack.core.segment import Flags, Options, Segment
from tcpstack.core.state import State
from tcpstack.hooks import (
    DELAY,
    DROP,
    REWRITE,
    Hook,
    all_of,
    from_first,
    has_flags,
    in_state,
    is_flags,
    local_port,
)
from tcpstack.scenarios.harness import TIMEOUT, Address, DutSocket, Run
from tcpstack.stack import recv_exactly
from tcpstack.trace import SegmentEvent

# How long a hook holds a segment back: long enough to watch and poll the kernel,
# shorter than Linux's 200 ms minimum RTO, so the held segment is not also resent.
HOLD = 0.15
PORT = 7100


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    claim: str  # what the source documents say, in our words
    body: Callable[[Run], None]
    differential: bool  # scripted without hooks, so a kernel DUT can run it too


CATALOGUE: dict[str, Scenario] = {}


def scenario(
    name: str, title: str, claim: str, *, differential: bool = False
) -> Callable[[Callable[[Run], None]], Callable[[Run], None]]:
    def register(body: Callable[[Run], None]) -> Callable[[Run], None]:
        CATALOGUE[name] = Scenario(name, title, claim, body, differential)
        return body

    return register


# ---------------------------------------------------------------- helpers


def _connect(run: Run, port: int, *, bind: int = 0) -> tuple[DutSocket, socket.socket]:
    """The DUT connects to a new kernel listener; (DUT socket, kernel's accepted socket)."""
    return _connect_to(run, run.peer_listener(port), bind=bind)


def _connected(run: Run) -> tuple[DutSocket, socket.socket, Address, Address]:
    """A fresh connection: (DUT socket, kernel socket, DUT address, kernel address)."""
    sock, conn = _connect(run, PORT)
    return sock, conn, sock.getsockname(), conn.getsockname()


def _connect_to(
    run: Run, server: socket.socket, *, bind: int = 0
) -> tuple[DutSocket, socket.socket]:
    accepted = run.background(server.accept)
    sock = run.socket()
    if bind:
        sock.bind(("", bind))
    address = server.getsockname()
    run.note("us", f"connect(({address[0]}, {address[1]}))")
    sock.connect(address)
    run.note("us", "connect() returned")
    conn, _ = accepted.result(TIMEOUT)
    run.note("kernel", "accept() returned")
    conn.settimeout(TIMEOUT)
    return sock, run.own(conn)


def _wait_segments(run: Run, sock: DutSocket, count: int, what: str) -> list[SegmentEvent]:
    run.wait_until(lambda: len(run.segments(sock)) >= count, what)
    return run.segments(sock)


def _first(
    segments: list[SegmentEvent], direction: str, test: Callable[[Segment], bool]
) -> SegmentEvent | None:
    return next((e for e in segments if e.direction == direction and test(e.segment)), None)


def _flags(e: SegmentEvent | None) -> str:
    return e.segment.describe().split()[0] if e is not None else "missing"


def _linger_zero(sock: socket.socket) -> None:
    """close() will abort with RST, as SO_LINGER {1, 0} makes Linux do."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _to_rst(seg: Segment) -> Segment:
    """The same segment turned into a RST (keeping its sequence number, so it is the
    exact RCV.NXT RST that RFC 5961 accepts)."""
    return replace(seg, flags=Flags.RST | (seg.flags & Flags.ACK), payload=b"", options=Options())


def _hold_states(
    run: Run, sock: DutSocket, local: tuple[str, int], peer: tuple[str, int], seconds: float
) -> set[str]:
    """Both sides' states ("ours/kernel's"), sampled over a period of watching."""
    seen: set[str] = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.add(f"{sock.state.name}/{run.peer_state(peer, local)}")
        time.sleep(0.01)
    return seen


# ---------------------------------------------------------------- the handshake


@scenario(
    "handshake",
    "The three-way handshake",
    "SYN seq=x, then SYN-ACK seq=y ack=x+1, then ACK seq=x+1 ack=y+1; the ISNs x and y"
    " are random (seeds 001, 002, 003); seed 002 has the third segment carry SYN=1",
    differential=True,
)
def handshake(run: Run) -> None:
    ours: list[int] = []
    theirs: list[int] = []
    server = run.peer_listener(PORT)
    for _ in range(2):
        sock, _conn = _connect_to(run, server)
        syn, synack, ack = _wait_segments(run, sock, 3, "the third segment")[:3]
        run.check(
            (syn.direction, _flags(syn)) == ("out", "S"),
            "the first segment is our SYN, with no ACK",
            _flags(syn),
        )
        run.check(
            synack.direction == "in"
            and _flags(synack) == "S."
            and synack.segment.ack == seq.add(syn.segment.seq, 1),
            "the second is the kernel's SYN-ACK with ack = x+1",
            f"x={syn.segment.seq} ack={synack.segment.ack}",
        )
        third_ok = (
            ack.direction == "out"
            and _flags(ack) == "."
            and ack.segment.seq == seq.add(syn.segment.seq, 1)
            and ack.segment.ack == seq.add(synack.segment.seq, 1)
        )
        run.check(
            third_ok,
            "the third is a bare ACK: seq = x+1, ack = y+1, SYN = 0",
            f"{_flags(ack)} seq={ack.segment.seq} ack={ack.segment.ack}",
        )
        ours.append(syn.segment.seq)
        theirs.append(synack.segment.seq)
    run.check(
        ours[0] != ours[1] and theirs[0] != theirs[1] and 0 not in ours + theirs,
        "each connection starts from a fresh initial sequence number on both sides",
        f"ours {ours}, the kernel's {theirs}",
    )
    if all(c.ok for c in run.outcome.checks):
        run.correct(
            "seed 002",
            "the third handshake segment carries SYN=1",
            "it is a plain ACK (flags '.'); a SYN there would be a new connection request,"
            " and RFC 9293 §3.5 answers a SYN in a synchronized state with a challenge ACK",
        )


@scenario(
    "connect-accept",
    "connect() returns after the second segment, accept() after the third",
    "seed 003: the client's connect() returns once the SYN-ACK arrives; the server's"
    " accept() returns only when the third segment, the ACK, arrives",
    differential=True,
)
def connect_accept(run: Run) -> None:
    # 1. The DUT connects. Holding our third segment back shows that connect() did not
    # wait for it, while the kernel's accept() did.
    if run.can_hook:
        run.hook(
            Hook(
                "out",
                DELAY,
                where=all_of(is_flags("."), local_port(PORT + 1)),
                delay=HOLD,
                name="hold our third segment",
            )
        )
    server = run.peer_listener(PORT)

    def accept() -> float:
        conn, _ = server.accept()
        conn.close()
        return run.note("kernel", "accept() returned")

    accepted = run.background(accept)
    sock = run.socket()
    sock.bind(("", PORT + 1))
    run.note("us", "connect()")
    sock.connect((run.peer_address, PORT))
    connected = run.note("us", "connect() returned")
    accept_time = accepted.result(TIMEOUT)
    syn, synack, ack = _wait_segments(run, sock, 3, "our ACK")[:3]
    run.check(
        synack.time <= connected,
        "our connect() returned after the SYN-ACK (second segment) arrived",
        f"{(connected - synack.time) * 1000:.2f} ms after it",
    )
    if run.can_hook:
        run.check(
            connected < ack.time,
            "... and without waiting for our ACK (third segment) to leave",
            f"the ACK was held {HOLD * 1000:.0f} ms and left"
            f" {(ack.time - connected) * 1000:.1f} ms after connect() returned",
        )
    run.check(
        accept_time >= ack.time,
        "the kernel's accept() returned only after our ACK (third segment)",
        f"{(accept_time - ack.time) * 1000:.2f} ms after it",
    )

    # 2. The kernel connects to the DUT: now our accept() must wait for its ACK.
    listener = run.socket()
    listener.bind(("", PORT + 2))
    listener.listen(8)
    if run.can_hook:
        run.hook(
            Hook(
                "in",
                DELAY,
                where=all_of(is_flags("."), in_state(State.SYN_RECEIVED)),
                delay=HOLD,
                name="hold the kernel's third segment",
            )
        )
    client = run.peer_socket()

    def connect() -> float:
        run.note("kernel", "connect()")
        client.connect((run.dut_address, PORT + 2))
        return run.note("kernel", "connect() returned")

    connecting = run.background(connect)
    conn, _ = listener.accept()
    accepted_at = run.note("us", "accept() returned")
    kernel_connected = connecting.result(TIMEOUT)
    syn, synack, ack = _wait_segments(run, conn, 3, "the kernel's ACK")[:3]
    run.check(
        synack.direction == "out" and kernel_connected >= synack.time,
        "the kernel's connect() returned after our SYN-ACK (second segment)",
    )
    if run.can_hook:
        run.check(
            kernel_connected < ack.time,
            "... before its ACK (third segment) reached us",
            f"{(ack.time - kernel_connected) * 1000:.1f} ms before",
        )
    run.check(
        ack.direction == "in" and _flags(ack) == "." and accepted_at >= ack.time,
        "our accept() returned only after the kernel's ACK (third segment) arrived",
    )
    conn.close()


# ---------------------------------------------------------------- the close


@scenario(
    "close",
    "The four-way close, we close first",
    "FIN from the active closer, ACK, FIN from the passive closer, ACK; the passive side"
    " stays in CLOSE_WAIT until its application closes. Seed 001 has the active closer"
    " end in CLOSE_WAIT; seed 002 gives the FINs and last ACK random sequence numbers and"
    " the second segment a FIN; seeds 002 and 004 have the passive side wait for the timer",
    differential=True,
)
def close(run: Run) -> None:
    sock, conn, local, peer = _connected(run)
    port = local[1]
    sock.sendall(b"x" * 100)
    recv_exactly(conn, 100)
    conn.sendall(b"y" * 50)
    recv_exactly(sock, 50)
    sock.close()
    run.note("us", "close()")
    run.check(conn.recv(10) == b"", "the kernel's recv() returns b'' for our FIN")
    run.note("kernel", "recv() -> b''")
    sock.wait_for_state(State.FIN_WAIT_2)
    seen = _hold_states(run, sock, local, peer, 3 * HOLD)
    run.check(
        seen == {"FIN_WAIT_2/CLOSE_WAIT"},
        "until the kernel's application closes, it stays in CLOSE_WAIT and we in FIN_WAIT_2",
        ", ".join(sorted(seen)),
    )
    conn.close()
    run.note("kernel", "close()")
    sock.wait_for_state(State.TIME_WAIT, State.CLOSED)
    run.wait_peer_state(peer, local, "CLOSED")
    in_time_wait = sock.state is State.TIME_WAIT
    run.check(
        in_time_wait,
        "the kernel is CLOSED as soon as our last ACK arrives, while we are in TIME_WAIT",
    )
    if run.dut == "tcpstack":
        sock.wait_for_state(State.CLOSED, timeout=2 * run.msl + TIMEOUT)
        run.note("us", "TIME_WAIT over")
    else:
        run.note("us", "Linux keeps TIME_WAIT a fixed 60 s (TCP_TIMEWAIT_LEN); not waited for")
    segments = run.connection_segments(port)
    our_fin = _first(segments, "out", lambda s: s.fin)
    their_ack = _first(
        segments,
        "in",
        lambda s: our_fin is not None and s.ack == seq.add(our_fin.segment.seq, 1),
    )
    their_fin = _first(segments, "in", lambda s: s.fin)
    last_ack = _first(
        segments,
        "out",
        lambda s: their_fin is not None and s.ack == seq.add(their_fin.segment.seq, 1),
    )
    if None in (our_fin, their_ack, their_fin, last_ack):
        run.check(False, "all four segments of the close were seen")
        return
    assert our_fin and their_ack and their_fin and last_ack
    run.check(
        our_fin.relative_seq == 1 + 100,
        "our FIN's sequence number is the next byte after our data, not a random number",
        f"relative seq {our_fin.relative_seq} after 100 bytes",
    )
    run.check(
        _flags(their_ack) == "." and their_ack.relative_seq == 1 + 50,
        "the kernel's answer to it is a plain ACK (no FIN), seq = its next byte",
        f"{_flags(their_ack)} relative seq {their_ack.relative_seq}",
    )
    run.check(
        their_fin.relative_seq == 1 + 50,
        "the kernel's FIN also carries its next byte's sequence number",
        f"relative seq {their_fin.relative_seq} after 50 bytes",
    )
    run.check(
        _flags(last_ack) == "." and last_ack.segment.seq == seq.add(our_fin.segment.seq, 1),
        "our last segment is a plain ACK with seq = our FIN + 1",
        f"{_flags(last_ack)} relative seq {last_ack.relative_seq}",
    )
    path = run.state_path(port)
    run.check_states(
        _in_order(path, ["ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT", "CLOSED"]),
        "we went ESTABLISHED -> FIN_WAIT_1 -> FIN_WAIT_2 -> TIME_WAIT -> CLOSED",
        " -> ".join(path),
    )
    kernel_seen = {e_theirs for e_theirs in _their_states(run, port)}
    run.check_states(
        {"CLOSE_WAIT", "LAST_ACK"} <= kernel_seen,
        "the kernel went through CLOSE_WAIT and LAST_ACK",
        ", ".join(sorted(kernel_seen)),
    )
    run.correct(
        "seed 001",
        "after the fourth segment the active closer (the client) is in CLOSE_WAIT",
        "the active closer ends in TIME_WAIT (2 MSL), then CLOSED; CLOSE_WAIT belongs to the"
        " passive side, between the peer's FIN and its own close()",
    )
    run.correct(
        "seed 002",
        "each FIN and the last ACK carry a freshly random sequence number, and the"
        " second segment carries FIN=1",
        "only the ISN is random; a FIN takes the next sequence number of its stream and"
        " the last ACK FIN+1; the second segment is a plain ACK (the passive side sends"
        " its own FIN later, when its application closes)",
    )
    run.correct(
        "seeds 002, 004",
        "the server reaches CLOSED after waiting (2)MSL",
        "the passive closer is CLOSED as soon as the last ACK arrives; only the active"
        " closer waits, in TIME_WAIT, for 2 MSL (seed 004 says one MSL)",
    )


def _their_states(run: Run, port: int) -> list[str]:
    return [
        row.theirs for row in run.outcome.ladder.rows if row.record.local[1] == port and row.theirs
    ]


def _in_order(path: list[str], wanted: list[str]) -> bool:
    """`wanted` appears in `path` as a subsequence."""
    it = iter(path)
    return all(any(p == w for p in it) for w in wanted)


@scenario(
    "passive-close",
    "The four-way close, the kernel closes first",
    "seed 004: the passive side goes ESTABLISHED -> CLOSE_WAIT -> LAST_ACK -> CLOSED and"
    " the active side FIN_WAIT_1 -> FIN_WAIT_2 -> TIME_WAIT",
    differential=True,
)
def passive_close(run: Run) -> None:
    sock, conn, local, peer = _connected(run)
    port = local[1]
    conn.close()
    run.note("kernel", "close()")
    run.check(sock.recv(10) == b"", "our recv() returns b'' for the kernel's FIN")
    run.note("us", "recv() -> b''")
    run.wait_peer_state(peer, local, "FIN_WAIT_2")  # Linux may delay its ACK of a FIN
    seen = _hold_states(run, sock, local, peer, 3 * HOLD)
    run.check(
        seen == {"CLOSE_WAIT/FIN_WAIT_2"},
        "until we close, we stay in CLOSE_WAIT and the kernel in FIN_WAIT_2",
        ", ".join(sorted(seen)),
    )
    sock.close()
    run.note("us", "close()")
    sock.wait_for_state(State.CLOSED)
    run.wait_peer_state(peer, local, "TIME_WAIT")
    path = run.state_path(port)
    run.check_states(
        _in_order(path, ["ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"]),
        "we went ESTABLISHED -> CLOSE_WAIT -> LAST_ACK -> CLOSED",
        " -> ".join(path),
    )
    run.check(True, "the kernel, the active closer, is in TIME_WAIT after our FIN is ACKed")


@scenario(
    "half-close",
    "Half-close: data still flows from the CLOSE_WAIT side",
    "seed 002: after the first FIN the connection is half closed, and the side that has"
    " not closed may go on sending",
    differential=True,
)
def half_close(run: Run) -> None:
    sock, conn, local, peer = _connected(run)
    port = local[1]
    sock.shutdown(socket.SHUT_WR)
    run.note("us", "shutdown(SHUT_WR)")
    run.check(conn.recv(10) == b"", "the kernel reads our FIN as end of file")
    chunks = [b"after your FIN %d " % i * 20 for i in range(3)]
    for chunk in chunks:
        conn.sendall(chunk)
    sending_from = run.peer_state(peer, local)
    run.note("kernel", f"sendall() x3 from {sending_from}")
    expected = b"".join(chunks)
    got = recv_exactly(sock, len(expected))
    run.check(
        got == expected,
        "we receive every byte the kernel sent after our FIN",
        f"{len(got)}/{len(expected)} bytes",
    )
    data = [e for e in run.connection_segments(port) if e.direction == "in" and e.segment.payload]
    states = {e.state.name for e in data}
    run.check_states(
        states <= {"FIN_WAIT_1", "FIN_WAIT_2"},
        "we were in FIN_WAIT_1/2 as that data arrived",
        ", ".join(sorted(states)),
    )
    run.check(sending_from == "CLOSE_WAIT", "the kernel sent it from CLOSE_WAIT", sending_from)
    conn.close()
    run.check(sock.recv(10) == b"", "then the kernel's FIN ends our stream")
    sock.close()
    sock.wait_for_state(State.TIME_WAIT, State.CLOSED)


@scenario(
    "simultaneous-close",
    "Simultaneous close through CLOSING",
    "seed 002: CLOSING is the state of a side that sent a FIN and received the peer's FIN"
    " before its own was ACKed, which it puts down to a lost ACK",
)
def simultaneous_close(run: Run) -> None:
    sock, conn, local, peer = _connected(run)
    port = local[1]
    # The kernel's FIN, and the ACK that will follow it, reach us HOLD late: during
    # that time our FIN and the kernel's cross, as if both closed at once.
    run.hook(
        Hook(
            "in",
            DELAY,
            where=all_of(local_port(port), from_first(has_flags("F"))),
            times=None,
            delay=HOLD,
            name="hold the kernel's FIN and what follows",
        )
    )
    conn.close()
    run.note("kernel", "close()")
    run.wait_peer_state(peer, local, "FIN_WAIT_1")
    sock.close()
    run.note("us", "close(): the FINs cross")
    run.wait_peer_state(peer, local, "CLOSING", timeout=HOLD * 4)
    run.note("kernel", "ss: CLOSING")
    sock.wait_for_state(State.TIME_WAIT, State.CLOSED)
    run.wait_peer_state(peer, local, "TIME_WAIT")
    path = run.state_path(port)
    run.check(
        _in_order(path, ["FIN_WAIT_1", "CLOSING", "TIME_WAIT"]),
        "we went FIN_WAIT_1 -> CLOSING -> TIME_WAIT",
        " -> ".join(path),
    )
    run.check(True, "the kernel went FIN_WAIT_1 -> CLOSING -> TIME_WAIT (seen with ss)")
    run.correct(
        "seed 002",
        "CLOSING happens when the ACK sent by the server is lost",
        "CLOSING is simultaneous close: each side's FIN arrives before its own FIN is ACKed,"
        " so both sides pass through CLOSING and both end in TIME_WAIT; a lost ACK alone"
        " does not lead there, since the peer's FIN carries the same acknowledgement",
    )


# ---------------------------------------------------------------- TIME_WAIT and losses


@scenario(
    "time-wait",
    "TIME_WAIT lasts 2 MSL, and why: the lost last ACK is re-sent",
    "seed 002: TIME_WAIT lets the close finish reliably and old duplicates die out;"
    " seed 004 says it lasts one MSL",
)
def time_wait(run: Run) -> None:
    sock, conn, local, peer = _connected(run)
    port = local[1]
    sock.close()
    run.note("us", "close()")
    conn.recv(10)
    # Drop our ACK of the kernel's FIN: the kernel, in LAST_ACK, sends its FIN again.
    run.hook(
        Hook(
            "out",
            DROP,
            where=all_of(local_port(port), is_flags("."), in_state(State.TIME_WAIT)),
            name="lose our last ACK",
        )
    )
    conn.close()
    run.note("kernel", "close()")
    sock.wait_for_state(State.TIME_WAIT)
    run.wait_peer_state(peer, local, "CLOSED")
    sock.wait_for_state(State.CLOSED, timeout=2 * run.msl + TIMEOUT)
    segments = run.connection_segments(port)
    fins = [e for e in segments if e.direction == "in" and e.segment.fin]
    acks = [e for e in segments if e.direction == "out" and e.state is State.TIME_WAIT]
    run.check(
        len(fins) >= 2 and fins[0].segment.seq == fins[-1].segment.seq,
        "the kernel in LAST_ACK sent its FIN again",
        f"{len(fins)} FINs",
    )
    resent = [a for a in acks if a.time >= fins[-1].time and not a.note]
    run.check(bool(resent), "we ACKed it again from TIME_WAIT, and the kernel closed")
    ended = next(
        (e.time for e in run.recorder.states if e.local[1] == port and e.old is State.TIME_WAIT),
        None,
    )
    if ended is None:
        run.check(False, "TIME_WAIT ended")
        return
    lasted = ended - fins[-1].time
    run.check(
        2 * run.msl - 0.005 <= lasted <= 2 * run.msl + 0.5,
        f"TIME_WAIT lasted 2 MSL ({2 * run.msl:g} s) after the last FIN",
        f"{lasted:.3f} s: the retransmitted FIN restarted it (§3.10.7.4)",
    )
    run.correct(
        "seed 004",
        "the active closer waits one MSL before CLOSED",
        "it waits 2 MSL: one for its last ACK to reach the peer, one for the peer's"
        " retransmitted FIN to come back if that ACK was lost (each one restarts it)",
    )


@scenario(
    "lost-last-ack",
    "A lost last ACK: LAST_ACK retransmits its FIN",
    "seeds 002 and 004: TIME_WAIT exists because the last ACK may be lost; the passive"
    " closer in LAST_ACK then retransmits its FIN",
)
def lost_last_ack(run: Run) -> None:
    sock, conn, local, peer = _connected(run)
    port = local[1]
    run.hook(
        Hook(
            "in",
            DROP,
            where=all_of(local_port(port), is_flags("."), in_state(State.LAST_ACK)),
            name="lose the kernel's last ACK",
        )
    )
    conn.close()
    run.note("kernel", "close()")
    sock.recv(10)
    sock.close()
    run.note("us", "close()")
    sock.wait_for_state(State.CLOSED)
    segments = run.connection_segments(port)
    fins = [e for e in segments if e.direction == "out" and e.segment.fin]
    run.check(
        len(fins) >= 2 and fins[0].segment.seq == fins[1].segment.seq,
        "our FIN was retransmitted from LAST_ACK, with the same sequence number",
        f"{len(fins)} FINs",
    )
    retransmits = [e for e in run.recorder.events if getattr(e, "reason", None) == "timeout"]
    run.check(bool(retransmits), "the retransmission timer sent it")
    run.check(
        run.peer_state(peer, local) == "TIME_WAIT",
        "the kernel, in TIME_WAIT, ACKed it again and we closed",
    )


@scenario(
    "lost-syn",
    "A lost SYN is retransmitted after the initial RTO",
    "seed 000: connect() sends a SYN and waits in SYN_SENT for the SYN-ACK",
)
def lost_syn(run: Run) -> None:
    run.hook(Hook("out", DROP, where=is_flags("S"), name="lose our first SYN"))
    server = run.peer_listener(PORT)
    accepted = run.background(server.accept)
    sock = run.socket()
    started = run.note("us", "connect()")
    sock.connect((run.peer_address, PORT))
    done = run.note("us", "connect() returned")
    run.own(accepted.result(TIMEOUT)[0])
    syns = [e for e in run.segments(sock) if e.direction == "out" and e.segment.syn]
    run.check(
        len(syns) == 2 and syns[0].segment.seq == syns[1].segment.seq,
        "the SYN was sent again with the same ISN",
        f"{len(syns)} SYNs",
    )
    run.check(
        0.9 <= done - started <= 3.0,
        "after the initial RTO of 1 s (RFC 6298 §2.1), and connect() then returned",
        f"{done - started:.3f} s",
    )
    run.check(syns[0].note != "", "the first SYN never reached the wire", syns[0].note)


@scenario(
    "lost-syn-ack",
    "A lost SYN-ACK: the passive side retransmits it",
    "seed 000: the server in SYN_RCVD waits for the client's ACK",
)
def lost_syn_ack(run: Run) -> None:
    run.hook(Hook("out", DROP, where=is_flags("S."), name="lose our first SYN-ACK"))
    listener = run.socket()
    listener.bind(("", PORT))
    listener.listen(8)
    client = run.peer_socket()
    connecting = run.background(client.connect, (run.dut_address, PORT))
    conn, _ = listener.accept()
    run.note("us", "accept() returned")
    connecting.result(TIMEOUT)
    synacks = [e for e in run.segments(conn) if e.direction == "out" and _flags(e) == "S."]
    run.check(
        len(synacks) >= 2 and synacks[0].segment.seq == synacks[-1].segment.seq,
        "the SYN-ACK was sent again, same ISN",
        f"{len(synacks)} SYN-ACKs",
    )
    run.check(conn.state is State.ESTABLISHED, "and the handshake completed")


@scenario(
    "lost-fin",
    "A lost FIN is retransmitted",
    "seed 003: each direction is closed by a FIN and its ACK",
)
def lost_fin(run: Run) -> None:
    sock, conn, local, _ = _connected(run)
    port = local[1]
    run.hook(Hook("out", DROP, where=all_of(local_port(port), has_flags("F")), name="lose our FIN"))
    sock.close()
    run.note("us", "close()")
    run.check(conn.recv(10) == b"", "the kernel still reads our FIN, resent by our timer")
    conn.close()
    sock.wait_for_state(State.TIME_WAIT, State.CLOSED)
    fins = [e for e in run.connection_segments(port) if e.direction == "out" and e.segment.fin]
    run.check(
        len(fins) >= 2 and fins[0].segment.seq == fins[-1].segment.seq,
        "the FIN went out again with the same sequence number",
        f"{len(fins)} FINs",
    )


# ---------------------------------------------------------------- resets and opens


@scenario(
    "closed-port",
    "A SYN to a closed port gets RST",
    "seeds 000-004 assume a listener; RFC 9293 §3.10.7.1: in CLOSED, a SYN gets <RST,ACK>",
    differential=True,
)
def closed_port(run: Run) -> None:
    sock = run.socket()
    run.note("us", "connect() to a port nobody listens on")
    try:
        sock.connect((run.peer_address, PORT + 9))
    except ConnectionRefusedError:
        refused = True
    else:
        refused = False
    run.note("us", "connect() failed" if refused else "connect() returned?")
    # A refused connect gives its port back, so find the segments by the kernel's port.
    segs = run.connection_segments(remote_port=PORT + 9)
    syn = _first(segs, "out", lambda s: s.syn)
    rst = _first(segs, "in", lambda s: s.rst)
    run.check(refused, "our connect() raised ConnectionRefusedError")
    run.check(
        syn is not None
        and rst is not None
        and _flags(rst) == "R."
        and rst.segment.ack == seq.add(syn.segment.seq, 1)
        and rst.segment.seq == 0,
        "the kernel answered our SYN with RST,ACK: seq 0, ack = our ISN + 1",
        _flags(rst),
    )
    client = run.peer_socket()
    try:
        client.connect((run.dut_address, PORT + 9))
    except ConnectionRefusedError:
        kernel_refused = True
    else:
        kernel_refused = False
    run.note("kernel", "connect() failed" if kernel_refused else "connect() returned?")
    run.check(kernel_refused, "and our RST makes the kernel's connect() fail the same way")


@scenario(
    "simultaneous-open",
    "Simultaneous open: both sides send a SYN",
    "seed 002's 11 states: SYN_RECEIVED is reached from LISTEN; RFC 9293 §3.5 (Figure 7)"
    " also reaches it from SYN_SENT when the SYNs cross",
)
def simultaneous_open(run: Run) -> None:
    # The kernel's SYN and its SYN-ACK reach us HOLD late, so each side's SYN arrives
    # while that side is in SYN_SENT.
    run.hook(
        Hook(
            "in",
            DELAY,
            where=all_of(local_port(PORT + 1), has_flags("S")),
            times=2,
            delay=HOLD,
            name="hold the kernel's SYNs",
        )
    )
    client = run.peer_socket(bind_port=PORT)
    client.setblocking(False)
    run.note("kernel", "connect() (non-blocking)")
    client.connect_ex((run.dut_address, PORT + 1))
    run.wait_peer_state((run.peer_address, PORT), (run.dut_address, PORT + 1), "SYN_SENT")
    sock = run.socket()
    sock.bind(("", PORT + 1))
    run.note("us", "connect()")
    sock.connect((run.peer_address, PORT))
    run.note("us", "connect() returned")
    run.wait_peer_state((run.peer_address, PORT), sock.getsockname(), "ESTABLISHED")
    path = run.state_path(PORT + 1)
    run.check(
        _in_order(path, ["SYN_SENT", "SYN_RECEIVED", "ESTABLISHED"]),
        "we went SYN_SENT -> SYN_RECEIVED -> ESTABLISHED",
        " -> ".join(path),
    )
    our_syn = next(
        (
            r
            for r in run.outcome.ladder.rows
            if r.record.local[1] == PORT + 1
            and _flags(r.record) == "S"
            and r.record.direction == "out"
        ),
        None,
    )
    run.check(
        our_syn is not None and our_syn.theirs == "SYN_RECEIVED",
        "the kernel, in SYN_SENT, went to SYN_RECEIVED on our SYN and answered with a SYN-ACK",
        our_syn.theirs if our_syn else "no SYN",
    )
    client.setblocking(True)
    client.sendall(b"both opened")
    run.check(recv_exactly(sock, 11) == b"both opened", "and data flows")


@scenario(
    "reset",
    "A RST in each state",
    "RFC 9293 §3.10.7.4: an acceptable RST closes a synchronized connection (the user"
    " sees 'connection reset'); in SYN_SENT it refuses the connect; in SYN_RECEIVED"
    " from a passive open it returns to LISTEN",
)
def reset(run: Run) -> None:
    base = PORT + 20
    server = run.peer_listener(base)

    def connected(port: int) -> tuple[DutSocket, socket.socket]:
        accepted = run.background(server.accept)
        sock = run.socket()
        sock.bind(("", port))
        sock.connect((run.peer_address, base))
        conn, _ = accepted.result(TIMEOUT)
        conn.settimeout(TIMEOUT)
        return sock, run.own(conn)

    def rewrite_rst(port: int, state: State, flags: str = ".") -> None:
        run.hook(
            Hook(
                "in",
                REWRITE,
                where=all_of(local_port(port), in_state(state), is_flags(flags)),
                rewrite=_to_rst,
                name=f"RST in {state.name}",
            )
        )

    # SYN_SENT: the SYN-ACK becomes a RST.
    rewrite_rst(base + 1, State.SYN_SENT, "S.")
    sock = run.socket()
    sock.bind(("", base + 1))
    try:
        sock.connect((run.peer_address, base))
        outcome = "connected"
    except ConnectionRefusedError:
        outcome = "refused"
    run.note("us", f"SYN_SENT + RST: connect() {outcome}")
    run.check(outcome == "refused", "SYN_SENT: connect() raises ConnectionRefusedError")

    # SYN_RECEIVED (passive open): the kernel's ACK becomes a RST.
    listener = run.socket()
    listener.bind(("", base + 2))
    listener.listen(8)
    rewrite_rst(base + 2, State.SYN_RECEIVED)
    client = run.peer_socket()
    client.connect((run.dut_address, base + 2))
    port = client.getsockname()[1]
    run.wait_until(
        lambda: any(e.new is State.LISTEN for e in run.recorder.states if e.remote[1] == port),
        "back to LISTEN",
    )
    listener.setblocking(False)
    try:
        listener.accept()
        queued = True
    except BlockingIOError:
        queued = False
    run.note("us", "SYN_RECEIVED + RST: back to LISTEN")
    run.check(not queued, "SYN_RECEIVED: back to LISTEN, nothing for accept()")
    client.close()

    # ESTABLISHED, FIN_WAIT_2, CLOSE_WAIT: the kernel aborts (SO_LINGER 0 sends RST).
    for i, state in enumerate((State.ESTABLISHED, State.FIN_WAIT_2, State.CLOSE_WAIT)):
        sock, conn = connected(base + 3 + i)
        if state is State.FIN_WAIT_2:
            sock.shutdown(socket.SHUT_WR)
            sock.wait_for_state(State.FIN_WAIT_2)
        if state is State.CLOSE_WAIT:
            conn.shutdown(socket.SHUT_WR)
            sock.wait_for_state(State.CLOSE_WAIT)
            sock.recv(10)
        _linger_zero(conn)
        conn.close()
        sock.wait_for_state(State.CLOSED)
        try:
            sock.send(b"after the RST") if state is State.CLOSE_WAIT else sock.recv(10)
            error = "none"
        except (ConnectionResetError, BrokenPipeError) as exc:
            error = type(exc).__name__
        run.note("us", f"{state.name} + RST: {error}")
        expected = "BrokenPipeError" if state is State.CLOSE_WAIT else "ConnectionResetError"
        run.check(error == expected, f"{state.name}: CLOSED, and the socket raises {expected}")

    # FIN_WAIT_1 and LAST_ACK: the ACK of our FIN becomes a RST.
    sock, conn = connected(base + 6)
    rewrite_rst(base + 6, State.FIN_WAIT_1)
    sock.close()
    sock.wait_for_state(State.CLOSED)
    run.note("us", "FIN_WAIT_1 + RST: CLOSED")
    path = run.state_path(base + 6)
    run.check(
        path[-2:] == ["FIN_WAIT_1", "CLOSED"], "FIN_WAIT_1: CLOSED, no TIME_WAIT", " -> ".join(path)
    )
    conn.close()

    sock, conn = connected(base + 7)
    rewrite_rst(base + 7, State.LAST_ACK)
    conn.shutdown(socket.SHUT_WR)
    sock.recv(10)
    sock.close()
    sock.wait_for_state(State.CLOSED)
    run.note("us", "LAST_ACK + RST: CLOSED")
    path = run.state_path(base + 7)
    run.check(path[-2:] == ["LAST_ACK", "CLOSED"], "LAST_ACK: CLOSED", " -> ".join(path))
    conn.close()


ORDER = tuple(CATALOGUE)
