"""Tunables, as frozen dataclasses passed in explicitly (never module globals).

Each default names its source. Where RFC 9293 leaves a choice, we follow Linux,
because our peer is Linux and users compare the two side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

# An Ethernet MTU (1500) minus 40 bytes of IPv4 and TCP headers.
DEFAULT_MSS = 1460
# The largest IPv4 datagram (65535) minus the same 40.
MAX_MSS = 65495
# What the smallest IPv4 MTU (68, RFC 791) leaves: a link may be that small, and
# the MSS we announce follows it, since we do not reassemble IP fragments.
MIN_MSS = 68 - 40


@dataclass(frozen=True, slots=True)
class TcpConfig:
    """Per-connection TCP settings."""

    mss: int | None = None
    """MSS we announce. None follows the link, as Linux does: its MTU minus 40 bytes
    of IPv4 and TCP headers (RFC 9293 §3.7.1), 8960 on a 9000-byte jumbo link; a
    number caps that. Without a link (the core on its own) None means DEFAULT_MSS."""

    tso_max: int | None = None
    """Segmentation offload, like Linux's TSO: the most payload the sender puts in
    one segment, in whole MSS, for the link to cut into MSS-sized ones. None takes
    the link's GSO limit when the stack opens it; 0 sends one MSS per segment."""

    default_peer_mss: int = 536
    """Send MSS assumed when the peer's SYN carries no MSS option (RFC 9293 §3.7.1, MUST-15)."""

    receive_buffer: int = 1 << 20
    """Receive buffer in bytes: the most we advertise (scaled by window_shift) and hold,
    in order and out of order together."""

    send_buffer: int = 1 << 20
    """Bytes the application may queue (sent or not, unacknowledged) before send() blocks."""

    window_scaling: bool = True
    """Offer window scaling (RFC 7323 §2); used only if the peer offers it too."""

    window_shift: int = 7
    """The shift we offer; Linux offers 7 for its default buffers."""

    sack: bool = True
    """Offer SACK (RFC 2018): report out-of-order data, and use the peer's reports."""

    timestamps: bool = True
    """Offer timestamps (RFC 7323 §3): RTT measurement on every ACK and PAWS."""

    congestion: str = "cubic"
    """Congestion control, like Linux's TCP_CONGESTION: "cubic" (Linux's default) or "reno"."""

    nagle: bool = True
    """Nagle's algorithm (RFC 9293 §3.7.4); TCP_NODELAY turns it off per socket."""

    delayed_ack: float = 0.04
    """Delay before a lone ACK (Linux's minimum, 40 ms); every second full segment,
    out-of-order data and FIN are acknowledged at once. 0 ACKs every segment."""

    quick_acks: int = 16
    """ACK the first segments of a connection at once, as Linux's quickack mode does,
    so the peer's slow start is not held back by our delayed ACKs."""

    keepalive: bool = False
    """SO_KEEPALIVE default; off, as for kernel sockets."""

    keepalive_idle: float = 7200.0
    """TCP_KEEPIDLE: idle seconds before the first probe (Linux tcp_keepalive_time)."""

    keepalive_interval: float = 75.0
    """TCP_KEEPINTVL: seconds between unanswered probes (Linux tcp_keepalive_intvl)."""

    keepalive_probes: int = 9
    """TCP_KEEPCNT: unanswered probes before the connection is dropped (tcp_keepalive_probes)."""

    rto_initial: float = 1.0
    """RFC 6298 §2.1: initial RTO of one second (Linux uses the same for SYNs)."""

    rto_min: float = 0.2
    """Linux's TCP_RTO_MIN; RFC 6298 §2.4 says 1 s, Linux and we choose 200 ms."""

    rto_max: float = 120.0
    """Linux's TCP_RTO_MAX; RFC 6298 §2.5 allows an upper bound of at least 60 s."""

    msl: float = 30.0
    """Maximum segment lifetime; TIME-WAIT lasts 2*MSL, Linux's fixed 60 s."""

    fin_timeout: float = 60.0
    """How long an orphaned connection (socket closed) waits in FIN-WAIT-2 for the
    peer's FIN (Linux tcp_fin_timeout)."""

    invalid_ack_interval: float = 0.5
    """At most one challenge ACK, or one ACK for an out-of-window segment without
    data, per this many seconds per connection (Linux tcp_invalid_ratelimit)."""

    syn_retries: int = 6
    """SYN retransmissions before connect() gives up (Linux tcp_syn_retries)."""

    synack_retries: int = 5
    """SYN-ACK retransmissions before a half-open connection is dropped
    (Linux tcp_synack_retries)."""

    r1: int = 3
    """Data retransmissions after which the connection reports delivery trouble and
    the peer's link address is resolved again (RFC 9293 R1; Linux tcp_retries1). One
    not below max_retries never comes into play: R2 ends the connection first."""

    ecn: str = "accept"
    """Explicit Congestion Notification (RFC 3168), as Linux's tcp_ecn: "on" asks for
    it in our SYNs, "accept" (Linux's default) uses it when the peer asks, "off"
    never. In use, new data goes out ECT(0), congestion marks are echoed with ECE
    until the sender's CWR, and an ECE halves cwnd once per window of data."""

    max_retries: int = 15
    """Data retransmissions before the connection is aborted (Linux tcp_retries2, RFC 9293 R2)."""

    @property
    def announced_mss(self) -> int:
        """The MSS a SYN of ours carries (see `mss`)."""
        return DEFAULT_MSS if self.mss is None else self.mss

    def __post_init__(self) -> None:
        if self.mss is not None and not MIN_MSS <= self.mss <= MAX_MSS:
            raise ValueError(f"mss {self.mss} outside {MIN_MSS}..{MAX_MSS}")
        if self.receive_buffer < 1:
            raise ValueError("receive_buffer must be positive")
        if not 0 <= self.window_shift <= 14:
            raise ValueError("window_shift must be 0..14 (RFC 7323 §2.3)")
        if self.receive_buffer > 0xFFFF << (self.window_shift if self.window_scaling else 0):
            raise ValueError("receive_buffer exceeds what the window field can advertise")
        if self.congestion not in ("cubic", "reno"):
            raise ValueError(f"congestion must be 'cubic' or 'reno', not {self.congestion!r}")
        if self.send_buffer < 1:
            raise ValueError("send_buffer must be positive")
        if self.ecn not in ("on", "accept", "off"):
            raise ValueError(f"ecn must be 'on', 'accept' or 'off', not {self.ecn!r}")
        if self.r1 < 1:
            raise ValueError("r1 must be at least 1")
        if not 0 < self.rto_min <= self.rto_initial <= self.rto_max:
            raise ValueError("need 0 < rto_min <= rto_initial <= rto_max")
        if self.msl < 0:
            raise ValueError("msl must not be negative")


@dataclass(frozen=True, slots=True)
class StackConfig:
    """Limits that keep a stack's memory bounded whatever the network sends."""

    max_half_open: int = 256
    """Half-open connections per listener before SYN cookies take over (Linux
    tcp_max_syn_backlog is larger; a userspace endpoint has less to spare)."""

    syn_cookies: bool = True
    """Answer SYNs statelessly when the half-open queue is full (RFC 4987; Linux's
    tcp_syncookies=1). Off, excess SYNs are dropped."""

    max_time_wait: int = 4096
    """Connections held in TIME-WAIT at once; beyond this, a closing connection skips
    TIME-WAIT, as Linux does past tcp_max_tw_buckets."""

    challenge_acks_per_second: int = 1000
    """Challenge ACKs the whole stack sends per second (RFC 5961 §7), a fixed count;
    Linux's tcp_challenge_ack_limit defaulted to 1000, drawn at random around it
    from 4.7 on, and is off by default since 6.0."""

    max_arp_pending: int = 256
    """Addresses being resolved at once; frames for more are dropped."""
