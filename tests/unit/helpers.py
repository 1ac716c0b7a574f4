"""Builders and drivers for the core's unit tests, in the manner of packetdrill.

Every state fixture is reached by driving the public API with segments, never by
assigning private fields. Time is an explicit number; nothing here sleeps.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tcpstack.config import TcpConfig
from tcpstack.core import seq
from tcpstack.core.connection import TcpConnection
from tcpstack.core.events import Event, Retransmitted, StateChanged
from tcpstack.core.segment import Options, Segment, parse_flags
from tcpstack.core.state import State

LOCAL_PORT = 40000
REMOTE_PORT = 8080
LOCAL_ISS = 1_000_000
REMOTE_ISS = 5_000_000
# ISNs a few bytes below 2**32, so every connection built from them wraps.
WRAP_LOCAL_ISS = 0xFFFF_FFF0
WRAP_REMOTE_ISS = 0xFFFF_FFFA

# The plain profile: no options beyond MSS, every segment ACKed at once, no Nagle,
# a 64 KB window, so segment-by-segment expectations stay short. The options,
# delayed ACKs, Nagle and recovery have tests of their own with the defaults.
CONFIG = TcpConfig(
    msl=1.0,
    rto_initial=1.0,
    rto_min=0.2,
    receive_buffer=65535,
    window_scaling=False,
    sack=False,
    timestamps=False,
    delayed_ack=0.0,
    quick_acks=0,
    nagle=False,
)


def seg(
    flags: str,
    seq_no: int,
    ack: int = 0,
    *,
    win: int = 65535,
    data: bytes = b"",
    mss: int | None = None,
    src: int = REMOTE_PORT,
    dst: int = LOCAL_PORT,
    urg: int = 0,
) -> Segment:
    """A segment from the peer, e.g. seg("S.", REMOTE_ISS, LOCAL_ISS + 1, mss=1460)."""
    options = Options(mss=mss) if mss is not None else Options()
    return Segment(
        src, dst, seq_no & seq.MASK, ack & seq.MASK, parse_flags(flags), win, options, data, urg
    )


def out(
    flags: str,
    seq_no: int,
    ack: int = 0,
    *,
    win: int | None = None,
    data: bytes = b"",
    mss: int | None = None,
) -> Segment:
    """A segment we expect the connection under test to send."""
    return seg(
        flags,
        seq_no,
        ack,
        win=CONFIG.receive_buffer if win is None else win,
        data=data,
        mss=mss,
        src=LOCAL_PORT,
        dst=REMOTE_PORT,
    )


def render(segments: Iterable[Segment]) -> list[str]:
    return [f"{s.src_port} > {s.dst_port}: {s.describe()}" for s in segments]


@dataclass
class Driver:
    """One connection under test plus the clock it sees."""

    conn: TcpConnection
    now: float = 0.0
    local_iss: int = LOCAL_ISS
    remote_iss: int = REMOTE_ISS
    events: list[Event] = field(default_factory=list)

    def _drain(self) -> list[Segment]:
        sent = self.conn.segments_to_send(self.now)
        while (ev := self.conn.next_event()) is not None:
            self.events.append(ev)
        return sent

    def push(self, segment: Segment, *, at: float | None = None) -> list[Segment]:
        """Deliver one segment at time `at`; return what the connection sends in reply."""
        if at is not None:
            self.now = at
        self.conn.handle_segment(segment, self.now)
        return self._drain()

    def flush(self) -> list[Segment]:
        return self._drain()

    def advance(self, to: float) -> list[Segment]:
        """Move time forward to `to`, firing every deadline on the way."""
        sent: list[Segment] = []
        for _ in range(1000):
            deadline = self.conn.get_timer()
            if deadline is None or deadline > to:
                break
            self.now = max(self.now, deadline)
            self.conn.handle_timer(self.now)
            sent += self._drain()
        else:  # pragma: no cover - a runaway timer is a bug worth a clear message
            raise AssertionError("timer kept firing")
        self.now = to
        return sent

    def fire_timer(self) -> list[Segment]:
        """Jump to the next deadline and fire it."""
        deadline = self.conn.get_timer()
        assert deadline is not None, "no timer armed"
        self.now = deadline
        self.conn.handle_timer(self.now)
        return self._drain()

    def transitions(self) -> list[tuple[State, State]]:
        return [(e.old, e.new) for e in self.events if isinstance(e, StateChanged)]

    def event_types(self) -> list[type[Event]]:
        """The events that report outcomes (transitions and retransmissions left out)."""
        return [type(e) for e in self.events if not isinstance(e, StateChanged | Retransmitted)]

    def out(self, flags: str, seq_no: int, ack: int = 0, **kw: object) -> Segment:
        """Like out(), with the window defaulting to this connection's empty buffer."""
        kw.setdefault("win", self.conn.config.receive_buffer)
        return out(flags, seq_no, ack, **kw)  # type: ignore[arg-type]

    # Shorthands relative to the ISNs, like packetdrill's relative numbers.
    def l(self, n: int) -> int:  # noqa: E743 - "local sequence number n"
        return seq.add(self.local_iss, n)

    def r(self, n: int) -> int:
        return seq.add(self.remote_iss, n)


def expect(sent: list[Segment], *expected: Segment) -> None:
    assert render(sent) == render(expected), "\n".join(
        ["sent:"] + render(sent) + ["expected:"] + render(expected)
    )


def new_driver(
    *, config: TcpConfig = CONFIG, wrap: bool = False, local_port: int = LOCAL_PORT
) -> Driver:
    local_iss = WRAP_LOCAL_ISS if wrap else LOCAL_ISS
    remote_iss = WRAP_REMOTE_ISS if wrap else REMOTE_ISS
    conn = TcpConnection(config, local_port, REMOTE_PORT, iss=local_iss, name="test")
    return Driver(conn, local_iss=local_iss, remote_iss=remote_iss)


# --------------------------------------------------------------- state factories


def syn_sent(**kw: object) -> Driver:
    d = new_driver(**kw)  # type: ignore[arg-type]
    d.conn.open_active(d.now)
    expect(d.flush(), d.out("S", d.l(0), mss=d.conn.config.announced_mss))
    assert d.conn.state is State.SYN_SENT
    return d


def established(**kw: object) -> Driver:
    """Active open completed: we sent SYN, got SYN-ACK, sent ACK."""
    d = syn_sent(**kw)
    sent = d.push(seg("S.", d.r(0), d.l(1), mss=1460), at=0.01)
    expect(sent, d.out(".", d.l(1), d.r(1)))
    assert d.conn.state is State.ESTABLISHED
    return d


def listen(**kw: object) -> Driver:
    d = new_driver(**kw)  # type: ignore[arg-type]
    d.conn.remote_port = 0
    d.conn.open_passive()
    assert d.conn.state is State.LISTEN
    return d


def syn_received(**kw: object) -> Driver:
    """Passive: LISTEN got a SYN and answered SYN-ACK."""
    d = listen(**kw)
    sent = d.push(seg("S", d.r(0), mss=1460))
    expect(sent, d.out("S.", d.l(0), d.r(1), mss=d.conn.config.announced_mss))
    assert d.conn.state is State.SYN_RECEIVED
    return d


def established_passive(**kw: object) -> Driver:
    d = syn_received(**kw)
    expect(d.push(seg(".", d.r(1), d.l(1)), at=0.01))
    assert d.conn.state is State.ESTABLISHED
    return d


def fin_wait_1(**kw: object) -> Driver:
    d = established(**kw)
    d.conn.shutdown(d.now)
    expect(d.flush(), d.out("F.", d.l(1), d.r(1)))
    assert d.conn.state is State.FIN_WAIT_1
    return d


def fin_wait_2(**kw: object) -> Driver:
    d = fin_wait_1(**kw)
    expect(d.push(seg(".", d.r(1), d.l(2))))
    assert d.conn.state is State.FIN_WAIT_2
    return d


def close_wait(**kw: object) -> Driver:
    d = established(**kw)
    expect(d.push(seg("F.", d.r(1), d.l(1))), d.out(".", d.l(1), d.r(2)))
    assert d.conn.state is State.CLOSE_WAIT
    return d


def last_ack(**kw: object) -> Driver:
    d = close_wait(**kw)
    d.conn.shutdown(d.now)
    expect(d.flush(), d.out("F.", d.l(1), d.r(2)))
    assert d.conn.state is State.LAST_ACK
    return d


def closing(**kw: object) -> Driver:
    """FINs crossed: our FIN is out, theirs arrives without acknowledging ours."""
    d = fin_wait_1(**kw)
    expect(d.push(seg("F.", d.r(1), d.l(1))), d.out(".", d.l(2), d.r(2)))
    assert d.conn.state is State.CLOSING
    return d


def time_wait(**kw: object) -> Driver:
    d = fin_wait_2(**kw)
    expect(d.push(seg("F.", d.r(1), d.l(2))), d.out(".", d.l(2), d.r(2)))
    assert d.conn.state is State.TIME_WAIT
    return d


FACTORIES = {
    State.LISTEN: listen,
    State.SYN_SENT: syn_sent,
    State.SYN_RECEIVED: syn_received,
    State.ESTABLISHED: established,
    State.FIN_WAIT_1: fin_wait_1,
    State.FIN_WAIT_2: fin_wait_2,
    State.CLOSE_WAIT: close_wait,
    State.CLOSING: closing,
    State.LAST_ACK: last_ack,
    State.TIME_WAIT: time_wait,
}


class Pair:
    """Two cores joined by a lossless-unless-told wire, for whole scenarios."""

    def __init__(
        self, *, config: TcpConfig = CONFIG, a_iss: int = LOCAL_ISS, b_iss: int = REMOTE_ISS
    ):
        self.a = TcpConnection(config, LOCAL_PORT, REMOTE_PORT, iss=a_iss, name="a")
        self.b = TcpConnection(config, REMOTE_PORT, LOCAL_PORT, iss=b_iss, name="b")
        self.now = 0.0
        self.latency = 0.001
        self.log: list[tuple[str, Segment]] = []
        self.events: dict[str, list[Event]] = {"a": [], "b": []}
        self._wire: list[tuple[float, str, Segment]] = []
        self.drop: set[int] = set()  # indexes (in self.log order) of segments to lose
        self.duplicate: set[int] = set()  # ... to deliver twice
        self.delay: dict[int, float] = {}  # ... to hold back this much longer (reordering)
        self.received: dict[str, bytearray] = {"a": bytearray(), "b": bytearray()}

    def conn(self, name: str) -> TcpConnection:
        return self.a if name == "a" else self.b

    def _collect(self, name: str) -> None:
        c = self.conn(name)
        for s in c.segments_to_send(self.now):
            index = len(self.log)
            self.log.append((name, s))
            if index in self.drop:
                continue
            arrival = self.now + self.latency + self.delay.get(index, 0.0)
            other = "b" if name == "a" else "a"
            self._wire.append((arrival, other, s))
            if index in self.duplicate:
                self._wire.append((arrival + self.latency / 10, other, s))
        while (ev := c.next_event()) is not None:
            self.events[name].append(ev)
        self.received[name] += c.receive(1 << 20)

    def connect(self) -> bool:
        """b connects to a listening a; whether both got to ESTABLISHED (losses can
        defeat the handshake itself)."""
        self.a.open_passive()
        self.b.remote_port = self.a.local_port
        self.b.open_active(0.0)
        self.run(until=300.0)
        return self.a.state is State.ESTABLISHED and self.b.state is State.ESTABLISHED

    def exchange(self, size: int) -> None:
        """`size` octets from b and half as many from a at once, both sides close, and
        each must have received exactly what the other sent."""
        one = bytes(i % 253 for i in range(size))
        two = bytes(i % 241 for i in range(size // 2))
        sent_a = sent_b = 0
        for _ in range(400):
            if sent_a == len(two) and sent_b == len(one):
                break
            sent_b += self.b.send(one[sent_b:])
            sent_a += self.a.send(two[sent_a:])
            self.run(until=self.now + 5.0)
        self.a.shutdown(self.now)
        self.b.shutdown(self.now)
        self.run(until=self.now + 600.0)
        assert bytes(self.received["a"]) == one
        assert bytes(self.received["b"]) == two

    def run(self, until: float, *, max_steps: int = 100_000) -> None:
        """Deliver segments and fire timers in time order until nothing is left or `until`."""
        self._collect("a")
        self._collect("b")
        for _ in range(max_steps):
            candidates: list[tuple[float, int, str]] = []
            if self._wire:
                candidates.append((min(t for t, _, _ in self._wire), 0, "wire"))
            for name in ("a", "b"):
                t = self.conn(name).get_timer()
                if t is not None:
                    candidates.append((t, 1, name))
            if not candidates:
                return
            t, _, what = min(candidates)
            if t > until:
                self.now = until
                return
            self.now = max(self.now, t)
            if what == "wire":
                i = min(range(len(self._wire)), key=lambda k: self._wire[k][0])
                _, to, s = self._wire.pop(i)
                self.conn(to).handle_segment(s, self.now)
                self._collect(to)
            else:
                self.conn(what).handle_timer(self.now)
                self._collect(what)
        raise AssertionError("pair did not settle")

    def transitions(self, name: str) -> list[tuple[State, State]]:
        return [(e.old, e.new) for e in self.events[name] if isinstance(e, StateChanged)]


# ------------------------------------------------------- the default options profile

# Linux-like defaults (window scaling, SACK, timestamps, CUBIC), minus delayed ACKs
# and Nagle so that each input has an immediate, checkable answer.
FULL = TcpConfig(msl=1.0, delayed_ack=0.0, quick_acks=0, nagle=False)
ISS = 1000
PEER_TS = 777_000


def peer(
    flags: str,
    seq_no: int,
    ack: int = 0,
    *,
    win: int = 65535,
    data: bytes = b"",
    ts: tuple[int, int] | None = None,
    sack: tuple[tuple[int, int], ...] = (),
    **options: object,
) -> Segment:
    opts = Options(timestamps=ts, sack_blocks=sack, **options)  # type: ignore[arg-type]
    return Segment(REMOTE_PORT, LOCAL_PORT, seq_no, ack, parse_flags(flags), win, opts, data)


def active(config: TcpConfig | None = None, **syn_ack_options: object) -> tuple[Driver, Segment]:
    """Open actively; the peer answers with a SYN-ACK carrying the given options."""
    conn = TcpConnection(config or FULL, LOCAL_PORT, REMOTE_PORT, iss=ISS, ts_offset=5000, name="t")
    d = Driver(conn, local_iss=ISS)
    conn.open_active(0.0)
    (syn,) = d.flush()
    syn_ack = peer("S.", REMOTE_ISS, ISS + 1, win=65535, **syn_ack_options)  # type: ignore[arg-type]
    d.push(syn_ack, at=0.01)
    assert conn.state is State.ESTABLISHED
    return d, syn
