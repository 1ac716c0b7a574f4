"""The eleven connection states of RFC 9293 §3.3.2, under their RFC names."""

from __future__ import annotations

import enum


class State(enum.Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN_SENT"
    SYN_RECEIVED = "SYN_RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSE_WAIT = "CLOSE_WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"

    def __repr__(self) -> str:
        return f"State.{self.name}"

    @property
    def is_synchronized(self) -> bool:
        """True once both sides' SYNs are known (RFC 9293 §3.5.2, group 3)."""
        return self not in _UNSYNCHRONIZED

    @property
    def can_send(self) -> bool:
        """True while the application may still queue data for the peer."""
        return self in _CAN_SEND

    @property
    def can_receive(self) -> bool:
        """True while new data from the peer is accepted (no FIN received yet)."""
        return self in _CAN_RECEIVE


_UNSYNCHRONIZED = frozenset({State.CLOSED, State.LISTEN, State.SYN_SENT, State.SYN_RECEIVED})
_CAN_SEND = frozenset({State.SYN_SENT, State.SYN_RECEIVED, State.ESTABLISHED, State.CLOSE_WAIT})
_CAN_RECEIVE = frozenset({State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2})

# Every edge of the RFC 9293 §3.3.2 diagram (Figure 5), plus the edges that §3.10
# adds: RST, user ABORT and the retransmission limit take a state to CLOSED, and an
# RST or SYN in a passive SYN-RECEIVED returns it to LISTEN. A FIN that arrives
# with the ACK of ours in FIN-WAIT-1 passes FIN-WAIT-2 (the fifth step, ACK, runs
# before the eighth, FIN), so there is no direct FIN-WAIT-1 -> TIME-WAIT edge.
# The property tests check every observed transition against this table.
ALLOWED_TRANSITIONS: frozenset[tuple[State, State]] = frozenset(
    {
        (State.CLOSED, State.LISTEN),
        (State.CLOSED, State.SYN_SENT),
        (State.LISTEN, State.SYN_RECEIVED),
        (State.LISTEN, State.CLOSED),
        (State.SYN_SENT, State.SYN_RECEIVED),
        (State.SYN_SENT, State.ESTABLISHED),
        (State.SYN_SENT, State.CLOSED),
        (State.SYN_RECEIVED, State.ESTABLISHED),
        (State.SYN_RECEIVED, State.FIN_WAIT_1),
        (State.SYN_RECEIVED, State.LISTEN),
        (State.SYN_RECEIVED, State.CLOSED),
        (State.ESTABLISHED, State.FIN_WAIT_1),
        (State.ESTABLISHED, State.CLOSE_WAIT),
        (State.ESTABLISHED, State.CLOSED),
        (State.FIN_WAIT_1, State.FIN_WAIT_2),
        (State.FIN_WAIT_1, State.CLOSING),
        (State.FIN_WAIT_1, State.CLOSED),
        (State.FIN_WAIT_2, State.TIME_WAIT),
        (State.FIN_WAIT_2, State.CLOSED),
        (State.CLOSE_WAIT, State.LAST_ACK),
        (State.CLOSE_WAIT, State.CLOSED),
        (State.CLOSING, State.TIME_WAIT),
        (State.CLOSING, State.CLOSED),
        (State.LAST_ACK, State.CLOSED),
        (State.TIME_WAIT, State.CLOSED),
    }
)
