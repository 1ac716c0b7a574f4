"""What a connection reports to its owner. Each event states one fact, in the past tense."""

from __future__ import annotations

from dataclasses import dataclass

from tcpstack.core.segment import Segment
from tcpstack.core.state import State


class Event:
    """Base class of everything TcpConnection.next_event() returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class StateChanged(Event):
    """The connection moved from one RFC 9293 state to another."""

    old: State
    new: State
    source: Segment | str
    """What caused it: the segment, or a timer name or an API call."""

    @property
    def cause(self) -> str:
        """The source as text: a segment in packetdrill form. Described only when
        asked (a trace), since describing every segment that changes state was a
        sixth of the engine's time in a connect."""
        source = self.source
        return source if isinstance(source, str) else source.describe()


@dataclass(frozen=True, slots=True)
class ConnectionEstablished(Event):
    """The three-way handshake completed: the connection is ESTABLISHED."""


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    """New in-order bytes are readable with TcpConnection.receive()."""

    nbytes: int


@dataclass(frozen=True, slots=True)
class EofReceived(Event):
    """The peer's FIN arrived in order: after the buffered bytes, reads return EOF."""


@dataclass(frozen=True, slots=True)
class DataAcknowledged(Event):
    """The peer acknowledged bytes: send-buffer space was freed."""

    nbytes: int


@dataclass(frozen=True, slots=True)
class ConnectionRefused(Event):
    """An acceptable RST answered our SYN (RFC 9293 §3.10.7.3); the connection is CLOSED."""


@dataclass(frozen=True, slots=True)
class ConnectionReset(Event):
    """An acceptable RST arrived in a synchronized state; the connection is CLOSED."""

    state: State
    """The state it arrived in (Linux reports EPIPE rather than ECONNRESET in CLOSE-WAIT)."""


@dataclass(frozen=True, slots=True)
class ConnectionTimedOut(Event):
    """Retransmissions were exhausted (RFC 9293 §3.8.3, R2), or the user timeout
    passed; the connection is CLOSED."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The connection reached CLOSED by the normal close sequence or by TIME-WAIT expiry."""


@dataclass(frozen=True, slots=True)
class ReturnedToListen(Event):
    """A passive half-open connection was reset and went back to LISTEN (RFC 9293 §3.10.7.4)."""


@dataclass(frozen=True, slots=True)
class Retransmitted(Event):
    """A segment went out again. reason: "timeout" (after an RTO), "fast" (fast
    recovery: duplicate ACKs or SACK), "tail_probe" (RFC 8985 TLP), "probe" (zero
    window), or "syn" (our SYN or SYN-ACK)."""

    seq: int
    length: int
    reason: str


@dataclass(frozen=True, slots=True)
class SoftError(Event):
    """An ICMP error reported trouble the connection may survive (RFC 9293 §3.9.2.2):
    it goes on, and the error is the application's to read (SO_ERROR), and the one
    reported should the connection later time out, as Linux does."""

    errno: int


@dataclass(frozen=True, slots=True)
class DeliveryTrouble(Event):
    """R1 reached (RFC 9293 §3.8.3): the same data went out ``retransmissions`` times
    and nothing new was acknowledged. The connection goes on until R2; the IP layer
    should check its route to the peer (negative advice, MUST-20) and the application
    hears of it (SHLD-9). Cleared by the next ACK of new data."""

    retransmissions: int


@dataclass(frozen=True, slots=True)
class ConnectionUnreachable(Event):
    """An ICMP hard error ended the connection while it was opening; the connection
    is CLOSED, and ``errno`` says why (ECONNREFUSED for a port unreachable)."""

    errno: int


@dataclass(frozen=True, slots=True)
class UrgentDataArrived(Event):
    """The peer's urgent pointer moved ahead of what the application has read
    (RFC 9293 §3.8.5): ``pending`` bytes remain up to and including the last urgent
    octet, which stays in line in the stream."""

    pending: int
