"""Tunables, as frozen dataclasses passed in explicitly (never module globals).

Each default names its source. Where RFC 9293 leaves a choice, we follow Linux,
because our peer is Linux and users compare the two side by side.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TcpConfig:
    """Per-connection TCP settings."""

    mss: int = 1460
    """MSS we announce: the link MTU (1500) minus 40 bytes of IPv4 and TCP headers."""

    default_peer_mss: int = 536
    """Send MSS assumed when the peer's SYN carries no MSS option (RFC 9293 §3.7.1, MUST-15)."""

    receive_buffer: int = 65535
    """Receive buffer, and so the largest window we advertise. Without window
    scaling (a later feature) a window cannot exceed 65535."""

    send_buffer: int = 256 * 1024
    """Bytes the application may queue before send() blocks."""

    rto_initial: float = 1.0
    """RFC 6298 §2.1: initial RTO of one second (Linux uses the same for SYNs)."""

    rto_min: float = 0.2
    """Linux's TCP_RTO_MIN; RFC 6298 §2.4 says 1 s, Linux and we choose 200 ms."""

    rto_max: float = 120.0
    """Linux's TCP_RTO_MAX; RFC 6298 §2.5 allows an upper bound of at least 60 s."""

    msl: float = 30.0
    """Maximum segment lifetime; TIME-WAIT lasts 2*MSL, Linux's fixed 60 s."""

    syn_retries: int = 6
    """SYN retransmissions before connect() gives up (Linux tcp_syn_retries)."""

    synack_retries: int = 5
    """SYN-ACK retransmissions before a half-open connection is dropped
    (Linux tcp_synack_retries)."""

    max_retries: int = 15
    """Data retransmissions before the connection is aborted (Linux tcp_retries2, RFC 9293 R2)."""

    def __post_init__(self) -> None:
        if not 88 <= self.mss <= 65495:
            raise ValueError(f"mss {self.mss} outside 88..65495")
        if not 1 <= self.receive_buffer <= 65535:
            raise ValueError("receive_buffer must be 1..65535 until window scaling exists")
        if self.send_buffer < 1:
            raise ValueError("send_buffer must be positive")
        if not 0 < self.rto_min <= self.rto_initial <= self.rto_max:
            raise ValueError("need 0 < rto_min <= rto_initial <= rto_max")
        if self.msl < 0:
            raise ValueError("msl must not be negative")
