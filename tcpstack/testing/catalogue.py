"""The scripted conformance scenarios (filled in as they are written)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tcpstack.testing.peer import Craft

if TYPE_CHECKING:
    from tcpstack.testing.script import Conversation


@dataclass(frozen=True, slots=True)
class Deviation:
    """Where a device under test knowingly differs from a script's expectation."""

    dut: str  # "tcpstack" or "linux"
    refs: tuple[str, ...]  # the requirement ids it departs from, e.g. ("MUST-13",)
    reason: str  # one line: what differs and why that is acceptable
    kernels: str = ""  # for "linux": a uname -r range such as ">=6.10"; "" for all
    # True: the script's [device] lines already say what this device does, so it
    # passes. False: the device fails the script, and must (an expected failure).
    scripted: bool = True


@dataclass(frozen=True, slots=True)
class Scripted:
    id: str  # the conformance plan's id, e.g. "H-03"
    title: str
    refs: tuple[str, ...]  # requirement ids this scenario checks
    script: str = ""  # lines for Conversation.run
    body: Callable[[Conversation], None] | None = None  # for what a script cannot say
    deviations: tuple[Deviation, ...] = field(default=())
    settings: dict[str, Any] = field(default_factory=dict)  # TcpConfig fields for ours


SCRIPTS: dict[str, Scripted] = {}  # run in CI against both devices
EXTENDED: dict[str, Scripted] = {}  # longer: `scripts/conformance --all`


def scripted(scenario: Scripted, *, extended: bool = False) -> Scripted:
    (EXTENDED if extended else SCRIPTS)[scenario.id] = scenario
    return scenario


scripted(
    Scripted(
        "E-07",
        "Smoke: handshake, data both ways, close, against the reference first",
        ("MUST-10",),
        script="""
        +0     listen 8080
        +0     < S 0:0(0) win 65535 <mss 1460>
        +0     > S. 0:0(0) ack 1 <mss 1460,!TS,!wscale,!sackOK>
        +0     < . 1:1(0) ack 1 win 65535
        +0     accept
        +0     < P. 1:101(100) ack 1 win 65535
        +0     > . 1:1(0) ack 101
        +0     read 100 -> 100
        +0     write 50 -> 50
        +0     > P. 1:51(50) ack 101
        +0     < . 101:101(0) ack 51 win 65535
        +0     < F. 101:101(0) ack 51 win 65535
        +0     > . 51:51(0) ack 102
        +0     read 100 -> EOF
        +0     close
        +0     > F. 51:51(0) ack 102
        +0     < . 102:102(0) ack 52 win 65535
        +0     state CLOSED
        """,
    )
)


LINUX_RIGHT_EDGE = Deviation(
    "linux",
    ("RFC9293-3.10.7.4",),
    "Linux takes a segment that starts exactly at RCV.NXT+RCV.WND as inside the window "
    "(tcp_sequence() tests !after(seq, right edge)); RFC 9293's table 6 puts it outside",
)
LINUX_NO_ACK_FIRST = Deviation(
    "linux",
    ("RFC9293-3.10.7.4",),
    "Linux drops a segment without the ACK bit before checking its sequence number, so "
    "an out-of-window one gets no ACK; RFC 9293 checks the sequence number first and ACKs",
)

# The two ways into ESTABLISHED. The peer offers only an MSS, so neither device
# uses timestamps, SACK or window scaling unless a script asks for them: the
# numbers on the wire are then the same for both.
PASSIVE = """
    +0     listen 8080
    +0     < S 0:0(0) win 65535 <mss 1460>
    +0     > S. 0:0(0) ack 1 <mss 1460>
    +0     < . 1:1(0) ack 1 win 65535
    +0     accept
"""
ACTIVE = """
    +0     connect 8080
    +0     > S 0:0(0) <mss 1460>
    +0     < S. 0:0(0) ack 1 win 65535 <mss 1460>
    +0     > . 1:1(0) ack 1
    +0     state ESTABLISHED
"""


scripted(
    Scripted(
        "H-03",
        "An unacceptable ACK in SYN-RECEIVED gets a RST and the handshake goes on",
        ("RFC9293-3.10.7.4", "MUST-11"),
        script="""
        +0     listen 8080
        +0     < S 0:0(0) win 65535 <mss 1460>
        +0     > S. 0:0(0) ack 1 <mss 1460>
        +0     < . 1:1(0) ack 0 win 65535       # acknowledges the ISS itself
        +0     > R 0:0(0)
        +0     < . 1:1(0) ack 2 win 65535       # beyond SND.NXT
        +0     > R 2:2(0)
        +0     < . 1:1(0) ack 1 win 65535
        +0     accept
        +0     state ESTABLISHED
        """,
    )
)

scripted(
    Scripted(
        "H-04",
        "SYN-SENT: a SYN-ACK with a bad ack gets a RST; a bare ACK or a FIN is dropped",
        ("RFC9293-3.10.7.3",),
        script="""
        +0     connect 8080
        +0     > S 0:0(0) <mss 1460>
        +0     < S. 0:0(0) ack 0 win 65535 <mss 1460>    # ack = ISS
        +0     > R 0:0(0)
        # Linux suspects its SYN's answer was lost and sends the SYN again at once.
        [linux] * > S 0:0(0) <mss 1460>
        +0     < S. 0:0(0) ack 2 win 65535 <mss 1460>    # ack = SND.NXT + 1
        +0     > R 2:2(0)
        +0     < . 0:0(0) ack 1 win 65535                # an ACK with no SYN
        +0     < F 0:0(0) win 65535                      # a FIN with no SYN
        +0     quiet 0.2
        +0     state SYN_SENT
        +0     < S. 0:0(0) ack 1 win 65535 <mss 1460>
        +0     > . 1:1(0) ack 1
        +0     state ESTABLISHED
        """,
    )
)

scripted(
    Scripted(
        "H-05",
        "SYN-SENT: a RST counts only with an acceptable ACK, and then refuses the connect",
        ("RFC9293-3.10.7.3", "MUST-12"),
        script="""
        +0     connect 8080 -> ECONNREFUSED
        +0     > S 0:0(0) <mss 1460>
        +0     < R 0:0(0) win 0                          # no ACK bit: not acceptable
        +0     < R. 0:0(0) ack 5 win 0                   # an ACK that is not SND.NXT
        # Linux suspects its SYN's answer was lost and sends the SYN again at once.
        [linux] * > S 0:0(0) <mss 1460>
        +0     quiet 0.2
        +0     state SYN_SENT
        +0     < R. 0:0(0) ack 1 win 0
        +0     state CLOSED
        """,
    )
)

scripted(
    Scripted(
        "H-07",
        "Simultaneous open, then a RST in SYN-RECEIVED: the connection is refused, not "
        "returned to LISTEN",
        ("MUST-10", "MUST-11", "MUST-12"),
        script="""
        [tcpstack] +0  connect 8080 -> ECONNREFUSED
        [linux]    +0  connect 8080 -> ECONNRESET
        +0     > S 0:0(0) <mss 1460>
        +0     < S 0:0(0) win 65535 <mss 1460>           # their SYN crosses ours
        +0     > S. 0:0(0) ack 1 <mss 1460>
        +0     state SYN_RECEIVED
        +0     < R 1:1(0) win 0
        +0     state CLOSED
        """,
        deviations=(
            Deviation(
                "linux",
                ("MUST-12",),
                "Linux reports a reset in SYN-RECEIVED as ECONNRESET; RFC 9293 §3.10.7.4 "
                "says 'connection refused' for an active open",
            ),
        ),
    )
)

scripted(
    Scripted(
        "H-12",
        "Segments to a closed port: RST built from the segment; a RST gets nothing",
        ("RFC9293-3.10.7.1",),
        script="""
        +0     port 8080
        +0     < S 0:0(0) win 65535 <mss 1460>
        +0     > R. 0:0(0) ack 1
        +0     < . 1:1(0) ack 100 win 65535
        +0     > R 100:100(0)
        +0     < P. 1:11(10) ack 200 win 65535
        +0     > R 200:200(0)
        +0     < F. 11:11(0) ack 300 win 65535
        +0     > R 300:300(0)
        +0     < F 11:11(0) win 65535
        +0     > R. 0:0(0) ack 12
        +0     < P 1:11(10) win 65535
        +0     > R. 0:0(0) ack 11
        +0     < R 11:11(0) win 0
        +0     < R. 11:11(0) ack 5 win 0
        +0     quiet 0.3
        """,
    )
)

scripted(
    Scripted(
        "H-13",
        "LISTEN: RST ignored, anything with ACK gets a RST, FIN and bare data dropped",
        ("RFC9293-3.10.7.2", "MUST-41"),
        script="""
        +0     listen 8080
        +0     < R 0:0(0) win 0
        +0     < . 0:0(0) ack 100 win 65535
        +0     > R 100:100(0)
        +0     < S. 0:0(0) ack 200 win 65535 <mss 1460>
        +0     > R 200:200(0)
        +0     < F. 0:0(0) ack 300 win 65535
        +0     > R 300:300(0)
        +0     < F 0:0(0) win 65535
        +0     < P 1:11(10) win 65535
        +0     < SF 0:0(0) win 65535 <mss 1460>
        +0     quiet 0.3
        +0     < S 0:0(0) win 65535 <mss 1460>
        +0     > S. 0:0(0) ack 1 <mss 1460>
        +0     < . 1:1(0) ack 1 win 65535
        +0     accept
        +0     state ESTABLISHED
        """,
    )
)

scripted(
    Scripted(
        "D-05",
        "A segment that starts below RCV.NXT: only its new part is taken",
        ("RFC9293-3.10.7.4",),
        script=PASSIVE
        + """
        +0     < P. 1:201(200) ack 1 win 65535
        +0     > . 1:1(0) ack 201
        +0     < P. 101:301(200) ack 1 win 65535
        +0     > . 1:1(0) ack 301
        +0     read 1000 -> 300
        """,
    )
)

scripted(
    Scripted(
        "D-06",
        "Data at or past the right edge of the window is not accepted, and is ACKed",
        ("RFC9293-3.10.7.4", "MUST-59"),
        body=lambda c: _beyond_window(c),
    )
)


def _beyond_window(c: Conversation) -> None:
    c.run(PASSIVE)
    window = c.dut_window  # RCV.WND: the peer offered no window scaling
    c.run(
        f"""
        +0     < P. {1 + window}:{101 + window}(100) ack 1 win 65535
        +0     > . 1:1(0) ack 1
        +0     < P. {1 + window + 5000}:{101 + window + 5000}(100) ack 1 win 65535
        +0     > . 1:1(0) ack 1
        +0     < P. 1:101(100) ack 1 win 65535
        +0     > . 1:1(0) ack 101
        +0     read 1000 -> 100
        """
    )


scripted(
    Scripted(
        "C-08",
        "A FIN that arrives before the data ahead of it waits for the gap to fill",
        ("RFC9293-3.10.7.4", "SHLD-31"),
        script=PASSIVE
        + """
        +0     < F. 101:101(0) ack 1 win 65535          # FIN after a hole of 100
        +0     > . 1:1(0) ack 1
        +0     state ESTABLISHED
        +0     < P. 1:101(100) ack 1 win 65535
        +0     > . 1:1(0) ack 102
        +0     state CLOSE_WAIT
        +0     read 1000 -> 100
        +0     read 1000 -> EOF
        """,
    )
)

scripted(
    Scripted(
        "C-15",
        "LAST-ACK: an ACK short of the FIN changes nothing; the ACK of the FIN closes",
        ("RFC9293-3.10.7.4",),
        script=PASSIVE
        + """
        +0     write 100 -> 100
        +0     > P. 1:101(100) ack 1
        +0     < F. 1:1(0) ack 1 win 65535             # acknowledges none of the data
        +0     > . 101:101(0) ack 2
        +0     read 100 -> EOF
        +0     close
        +0     > F. 101:101(0) ack 2
        +0     state LAST_ACK
        +0     < . 2:2(0) ack 101 win 65535             # the data, not the FIN
        +0     state LAST_ACK
        +0     < . 2:2(0) ack 101 win 65535             # a duplicate
        +0     state LAST_ACK
        +0     < . 2:2(0) ack 102 win 65535
        +0     state CLOSED
        +0     < . 2:2(0) ack 102 win 65535
        +0     > R 102:102(0)
        """,
    )
)


def _rst_validation(c: Conversation) -> None:
    c.run(PASSIVE)
    w = c.dut_window
    c.run(
        f"""
        +0     < R 0:0(0) win 0                          # RCV.NXT - 1: outside
        +0     < R {2 + w}:{2 + w}(0) win 0              # past RCV.NXT + RCV.WND
        +0     < R. {2 + w}:{2 + w}(0) ack 1 win 0
        +0     quiet 0.2
        +0     < R {1 + w}:{1 + w}(0) win 0              # RCV.NXT + RCV.WND: outside
        [linux] +0 > . 1:1(0) ack 1                      # Linux: inside (see deviation)
        +0     quiet 0.2
        +0     < R 2:2(0) win 0                          # in the window, not RCV.NXT
        +0     > . 1:1(0) ack 1                          # a challenge ACK
        +0     < R. {w}:{w}(0) ack 1 win 0               # the window's last octet
        +0     > . 1:1(0) ack 1
        +0     state ESTABLISHED
        +0     < R. 1:1(0) ack 1 win 0                   # exactly RCV.NXT
        +0     state CLOSED
        +0     read 10 -> ECONNRESET
        """
    )


scripted(
    Scripted(
        "A-01",
        "RST in ESTABLISHED: out of window dropped, in window challenged, exact resets",
        ("RFC5961-3.2", "MUST-12", "RFC9293-3.10.7.4"),
        body=_rst_validation,
        deviations=(LINUX_RIGHT_EDGE,),
    )
)

scripted(
    Scripted(
        "A-03",
        "A SYN on an established connection gets a challenge ACK and changes nothing",
        ("RFC5961-4.2", "RFC9293-3.10.7.4"),
        script=PASSIVE
        + """
        +0     < S 0:0(0) win 65535 <mss 1460>           # the first SYN again
        +0     > . 1:1(0) ack 1
        +0     < S 1:1(0) win 65535 <mss 1460>           # at RCV.NXT
        +0     > . 1:1(0) ack 1
        +0     < S 1000:1000(0) win 65535 <mss 1460>     # elsewhere in the window
        +0     > . 1:1(0) ack 1
        +0     < S 1:11(10) win 65535 <mss 1460>         # carrying data
        +0     > . 1:1(0) ack 1
        +0     state ESTABLISHED
        +0     < P. 1:11(10) ack 1 win 65535
        +0     > . 1:1(0) ack 11
        +0     read 100 -> 10
        """,
    )
)


def _outside_window(c: Conversation) -> None:
    c.run(PASSIVE)
    w = c.dut_window
    c.run(
        f"""
        +0     < P. {1 + w}:{11 + w}(10) ack 1 win 65535    # data at the right edge
        +0     > . 1:1(0) ack 1
        +0     < P. {2 + w}:{12 + w}(10) ack 1 win 65535
        +0     > . 1:1(0) ack 1
        +0     < . {2 + w}:{2 + w}(0) ack 1 win 65535       # a bare ACK out of window
        +0     > . 1:1(0) ack 1
        +0     < . {1 + w}:{1 + w}(0) ack 1 win 65535       # a bare ACK at the edge
        [tcpstack] +0 > . 1:1(0) ack 1
        +0     < F {2 + w}:{2 + w}(0) win 65535              # out of window, no ACK bit
        [tcpstack] +0 > . 1:1(0) ack 1
        +0     quiet 0.2
        +0     state ESTABLISHED
        """
    )


scripted(
    Scripted(
        "A-06",
        "Segments outside the window are answered with an ACK; one without ACK is dropped",
        ("RFC9293-3.10.7.4",),
        body=_outside_window,
        deviations=(LINUX_RIGHT_EDGE, LINUX_NO_ACK_FIRST),
    )
)

scripted(
    Scripted(
        "A-07",
        "Old segments below RCV.NXT (keep-alive and probe forms, retransmissions) get an ACK",
        ("RFC9293-3.10.7.4", "MUST-29"),
        script=PASSIVE
        + """
        +0     < P. 1:101(100) ack 1 win 65535
        +0     > . 1:1(0) ack 101
        +0     read 100 -> 100
        +0     < . 100:100(0) ack 1 win 65535            # keep-alive: RCV.NXT - 1, empty
        +0     > . 1:1(0) ack 101
        +0     < P. 100:101(1) ack 1 win 65535           # keep-alive with one octet
        +0     > . 1:1(0) ack 101
        +0     < P. 1:101(100) ack 1 win 65535           # all of it again
        +0     > . 1:1(0) ack 101
        +0     quiet 0.1
        """,
    )
)

scripted(
    Scripted(
        "O-03",
        "No MSS option in the SYN: send at most 536 octets per segment",
        ("MUST-15",),
        body=lambda c: _segment_sizes(c, "", 536, 2000),
    )
)


def _take(c: Conversation, total: int, seconds: float = 5.0) -> list[int]:
    """ACK the device's data as it comes until `total` octets are in; their sizes,
    each counted once (a retransmission is not a new segment)."""
    sizes: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    have = 0
    while have < total and time.monotonic() < deadline:
        for seg in c.collect(0.05):
            if seg.payload:
                start = (seg.seq - (c.conn.dut_isn or 0)) & 0xFFFFFFFF
                sizes.setdefault(start, len(seg.payload))
        have = 0
        while have + 1 in sizes:
            have += sizes[have + 1]
        c.inject(f". 1:1(0) ack {have + 1} win 65535")
    return list(sizes.values())


def _segment_sizes(c: Conversation, options: str, largest: int, total: int) -> None:
    c.run(
        f"""
        +0     listen 8080
        +0     < S 0:0(0) win 65535 {options}
        +0     > S. 0:0(0) ack 1 <mss 1460>
        +0     < . 1:1(0) ack 1 win 65535
        +0     accept
        +0     write {total} -> {total}
        """
    )
    sizes = _take(c, total)
    if sum(sizes) != total or max(sizes) > largest:
        c.fail(f"segments of {sizes} octets: {total} in all, none above {largest}, expected")


scripted(
    Scripted(
        "O-04",
        "A tiny MSS is raised to a floor (Linux's 48), a huge one cut to the link",
        ("MUST-16",),
        body=lambda c: _tiny_mss(c),
    )
)


def _tiny_mss(c: Conversation) -> None:
    for port, mss, low, high in ((40001, 1, 8, 48), (40002, 0, 8, 536), (40003, 65535, 1, 1460)):
        c.restart(port)
        if port == 40001:
            c.run("+0 listen 8080")
        c.run(
            f"""
            +0     < S 0:0(0) win 65535 <mss {mss}>
            +0     > S. 0:0(0) ack 1 <mss 1460>
            +0     < . 1:1(0) ack 1 win 65535
            +0     accept
            +0     write 3000 -> 3000
            """
        )
        sizes = _take(c, 3000)
        if not sizes or max(sizes) > high or min(sizes[:-1] or [low]) < low:
            c.fail(f"MSS {mss}: segments of {sizes} octets, expected {low}..{high} each")
        c.run(
            """
            +0 close
            +0 > F. 3001:3001(0) ack 1
            +0 < F. 1:1(0) ack 3002
            +0 > . 3002:3002(0) ack 2
            """
        )


scripted(
    Scripted(
        "O-05",
        "An MSS option outside the SYN is ignored, and never sent",
        ("MUST-65", "MUST-5"),
        script=PASSIVE
        + """
        +0     < P. 1:11(10) ack 1 win 65535 <mss 100>
        +0     > . 1:1(0) ack 11 <!mss>
        +0     read 100 -> 10
        +0     write 1000 -> 1000
        +0     > P?. 1:1001(1000) ack 11 <!mss>
        """,
    )
)


def _window_scale_clamp(c: Conversation) -> None:
    c.run(
        """
        +0     listen 8080
        +0     < S 0:0(0) win 65535 <mss 1000,nop,wscale 15>
        +0     > S. 0:0(0) ack 1 <mss 1460,wscale *>
        +0     < . 1:1(0) ack 1 win 1                    # 16384 octets, shifted by 14
        +0     accept
        +0     write 60000 -> 60000
        """
    )
    acked = 1
    for _ in range(3):
        segments = c.collect(0.1)  # ACK well inside the RTO: no loss recovery here
        ends = [seg.seq - c.conn.dut_isn + len(seg.payload) for seg in segments if seg.payload]  # type: ignore[operator]
        if not ends:
            c.fail("nothing sent into a window of 16384")
        top = max(e & 0xFFFFFFFF for e in ends)
        if top > acked + 16384:
            c.fail(f"sent up to {top}: past {acked + 16384}, as if the shift were above 14")
        acked = top
        if _ < 2:
            c.inject(f". 1:1(0) ack {acked} win 1")


scripted(
    Scripted(
        "O-07",
        "A window scale above 14 is taken as 14",
        ("RFC7323-2.3",),
        body=_window_scale_clamp,
    )
)


def _bad_checksums(c: Conversation) -> None:
    c.run(PASSIVE)
    bad = Craft(bad_tcp_checksum=True)
    for spec in ("P. 1:11(10) ack 1", "F. 1:1(0) ack 1", "R. 1:1(0) ack 1", "S 5:5(0)"):
        c.inject(spec + " win 65535", craft=bad)
    c.inject("P. 1:11(10) ack 1 win 65535", craft=Craft(tcp_checksum=0))
    c.run(
        """
        +0     quiet 0.3
        +0     state ESTABLISHED
        +0     < P. 1:11(10) ack 1 win 65535
        +0     > . 1:1(0) ack 11
        +0     read 100 -> 10
        """
    )


scripted(
    Scripted(
        "M-01",
        "Segments with a bad checksum are dropped without a trace",
        ("MUST-3", "MUST-2"),
        body=_bad_checksums,
    )
)


def _padding(c: Conversation) -> None:
    c.run(PASSIVE)
    c.inject("P. 1:2(1) ack 1 win 65535", craft=Craft(trailing=b"\xaa" * 19))
    c.run(
        """
        +0     > . 1:1(0) ack 2
        +0     read 100 -> 1
        """
    )


scripted(
    Scripted(
        "M-03",
        "Bytes after the IP packet in the frame are not payload",
        ("MUST-3",),
        body=_padding,
    )
)

scripted(
    Scripted(
        "M-05",
        "Illegal flag combinations on an established connection",
        ("RFC9293-3.10.7.4",),
        script=PASSIVE
        + """
        +0     < SF 5:5(0) win 65535                     # SYN+FIN: a SYN, so challenged
        +0     > . 1:1(0) ack 1
        +0     < SR 5:5(0) win 65535                     # SYN+RST not at RCV.NXT
        +0     > . 1:1(0) ack 1
        +0     < none 1:11(10) win 65535                 # data with no flags: no ACK bit
        +0     < F 1:1(0) win 65535                      # FIN with no ACK bit
        +0     quiet 0.2
        +0     state ESTABLISHED
        +0     < P. 1:11(10) ack 1 win 65535
        +0     > . 1:1(0) ack 11
        +0     read 100 -> 10
        """,
    )
)


def _reserved_bits(c: Conversation) -> None:
    c.run(
        """
        +0     listen 8080
        +0     < S 0:0(0) win 65535 <mss 1460>
        """
    )
    c.run("+0 > S. 0:0(0) ack 1 <mss 1460>")
    c.inject(". 1:1(0) ack 1 win 65535", craft=Craft(reserved=0xE))
    c.run("+0 accept")
    c.inject("P. 1:11(10) ack 1 win 65535", craft=Craft(reserved=0xE))
    c.run(
        """
        +0     > . 1:1(0) ack 11
        +0     < PEW. 11:21(10) ack 1 win 65535          # ECE and CWR with no ECN agreed
        +0     > . 1:1(0) ack 21
        +0     read 100 -> 20
        """
    )
    for got in c.received:
        if got.frame[14 + 20 + 12] & 0x0F:
            c.fail("the device set reserved bits in a segment it sent")


scripted(
    Scripted(
        "M-06",
        "Reserved bits and unasked-for ECN bits are ignored, and sent as zero",
        ("RFC9293-3.1",),
        body=_reserved_bits,
    )
)

scripted(
    Scripted(
        "M-08",
        "A RST carrying data resets the connection; the data is not delivered",
        ("SHLD-2",),
        script=PASSIVE
        + """
        +0     < R. 1:101(100) ack 1 win 0
        +0     state CLOSED
        +0     read 100 -> ECONNRESET
        """,
    )
)

scripted(
    Scripted(
        "D-04",
        "Overlapping segments: each octet is delivered once, in order",
        ("RFC9293-3.10.7.4", "SHLD-31"),
        script=PASSIVE
        + """
        +0     < P. 11:21(10) ack 1 win 65535            # out of order
        +0     > . 1:1(0) ack 1
        +0     < P. 6:16(10) ack 1 win 65535             # overlaps the start of it
        +0     > . 1:1(0) ack 1
        +0     < P. 1:11(10) ack 1 win 65535             # fills the hole
        +0     > . 1:1(0) ack 21
        +0     read 100 -> 20
        +0     < P. 16:31(15) ack 1 win 65535            # straddles RCV.NXT
        +0     > . 1:1(0) ack 31
        +0     read 100 -> 10
        """,
    )
)

scripted(
    Scripted(
        "W-09",
        "An old ACK that closes the window does not update it (SND.WL1/SND.WL2)",
        ("RFC9293-3.10.7.4",),
        script=PASSIVE
        + """
        +0     nodelay
        +0     write 1000 -> 1000
        +0     > P?. 1:1001(1000) ack 1
        +0     < . 1:1(0) ack 1001 win 65535
        +0     < . 1:1(0) ack 501 win 0                  # older: its window is stale
        +0     write 1000 -> 1000
        +0     > P?. 1001:2001(1000) ack 1
        """,
    )
)


# Five segments of 1, 2, 4, 8 and 16 octets (31 in all), as in FreeBSD's reordering
# tests; CI runs these orders, scripts/conformance --all every one of the 120.
PIECES = ((1, 1), (2, 2), (4, 4), (8, 8), (16, 16))
ORDERS = ((4, 3, 2, 1, 0), (0, 2, 4, 1, 3), (1, 0, 3, 2, 4), (2, 4, 0, 3, 1))


def _reassembly(c: Conversation, orders: tuple[tuple[int, ...], ...] = ORDERS) -> None:
    c.run(PASSIVE)
    base = 0
    for order in orders:
        have: set[int] = set()
        nxt = base + 1
        for index in order:
            start, length = PIECES[index]
            start += base
            c.inject(f"P. {start}:{start + length}({length}) ack 1 win 65535")
            have.update(range(start, start + length))
            while nxt in have:
                nxt += 1
            if nxt <= start or any(o > nxt for o in have):
                # Out of order, or part of a hole filled: an ACK at once.
                c.expect(f". 1:1(0) ack {nxt}", at=c.last)
            else:
                # In order with nothing held: the ACK may wait for the delayed-ACK timer.
                c.expect(f". 1:1(0) ack {nxt}", at=None)
        c.run("+0 read 100 -> 31")
        base += 31


scripted(
    Scripted(
        "D-03",
        "Out-of-order segments: a duplicate ACK for each, one cumulative ACK when the "
        "hole fills, the stream read in order",
        ("SHLD-31", "MUST-59", "RFC5681-4.2"),
        body=_reassembly,
    )
)


def _still_alive(c: Conversation, at: int) -> None:
    """After a hostile segment: the connection still takes data and ACKs it."""
    c.run(
        f"""
        +0     quiet 0.1
        +0     state ESTABLISHED
        +0     < P. {at}:{at + 10}(10) ack 1 win 65535
        +0     > . 1:1(0) ack {at + 10}
        +0     read 100 -> 10
        """
    )


def _broken_ip(c: Conversation) -> None:
    c.run(PASSIVE)
    at = 1
    for craft in (
        Craft(bad_ip_checksum=True),
        Craft(ihl=4),
        Craft(ip_total_length=2000),  # longer than the frame
        Craft(ip_total_length=30),  # shorter than its own headers
        Craft(ip_version=6),
        Craft(ip_flags_fragment=0x2000),  # more fragments: a first fragment
        Craft(ip_flags_fragment=0x0010),  # a later fragment
    ):
        c.inject(f"P. {at}:{at + 10}(10) ack 1 win 65535", craft=craft)
        _still_alive(c, at)
        at += 10
    # Unknown IP options are ignored (MUST-50): the segment counts.
    c.inject(f"P. {at}:{at + 10}(10) ack 1 win 65535", craft=Craft(ip_options=b"\x88\x04\x00\x00"))
    c.run(f"+0 > . 1:1(0) ack {at + 10}\n+0 read 100 -> 10")


scripted(
    Scripted(
        "M-02",
        "A broken IP layer is dropped; unknown IP options are ignored",
        ("MUST-50",),
        body=_broken_ip,
    )
)


def _data_offset(c: Conversation) -> None:
    c.run(PASSIVE)
    at = 1
    for craft in (Craft(data_offset=4), Craft(data_offset=15), Craft(data_offset=0)):
        c.inject(f"P. {at}:{at + 10}(10) ack 1 win 65535", craft=craft)
        _still_alive(c, at)
        at += 10


scripted(
    Scripted(
        "M-04",
        "A data offset below 5 words or past the segment is dropped",
        ("RFC9293-3.1", "MUST-7"),
        body=_data_offset,
    )
)

scripted(
    Scripted(
        "M-07",
        "URG with odd pointers does not disturb the stream",
        ("MUST-62", "MUST-66"),
        deviations=(
            Deviation(
                "tcpstack",
                ("MUST-30", "MUST-31", "MUST-32", "MUST-33"),
                "urgent data is delivered in line, as with SO_OOBINLINE, and the "
                "application is not told of it; RFC 9293 §3.8.5 asks applications not "
                "to use it (SHLD-13)",
            ),
        ),
        script=PASSIVE
        + """
        # Linux takes the urgent octet out of the stream unless asked not to; this
        # endpoint leaves urgent data in line (see the deviation).
        [linux] +0 oobinline
        +0     < PU. 1:11(10) ack 1 win 65535 urg 0
        +0     > . 1:1(0) ack 11
        +0     < PU. 11:21(10) ack 1 win 65535 urg 65535
        +0     > . 1:1(0) ack 21
        +0     read 100 -> 20
        """,
    )
)


def _option_parsing(c: Conversation) -> None:
    cases = (
        ("<nop,mss 1000,nop,nop,nop,wscale 7>", True),  # misaligned, but well formed
        ("<mss 1000,eol,raw 4142>", True),  # garbage after EOL is not read
        ("<mss 1000,mss 500>", True),  # duplicated
        ("<raw 0a02,mss 1000>", True),  # unknown kind
        ("<raw 0200>", False),  # length 0
        ("<raw 0201>", False),  # length 1
        ("<mss 1000,raw 0810aaaa>", False),  # runs past the header
    )
    for number, (options, wanted) in enumerate(cases):
        c.restart(41000 + number)
        if number == 0:
            c.run("+0 listen 8080")
        c.inject(f"S 0:0(0) win 65535 {options}")
        answer = c.collect(0.2)
        synack = [s for s in answer if s.syn]
        if wanted and not synack:
            c.fail(f"no SYN-ACK to a SYN with {options}")
        if synack:
            c.inject(". 1:1(0) ack 1 win 65535")
            c.run(
                """
                +0 accept
                +0 close
                +0 > F. 1:1(0) ack 1
                +0 < F. 1:1(0) ack 2
                +0 > . 2:2(0) ack 2
                """
            )
    c.restart(41999)
    c.run(
        """
        +0     < S 0:0(0) win 65535 <mss 1460>
        +0     > S. 0:0(0) ack 1 <mss 1460>
        """
    )


scripted(
    Scripted(
        "O-12",
        "Options: misaligned, after EOL, duplicated, unknown and illegal lengths",
        ("MUST-4", "MUST-5", "MUST-6", "MUST-7", "MUST-64", "MUST-68"),
        body=_option_parsing,
    )
)


scripted(
    Scripted(
        "D-03-all",
        "D-03 in all 120 orders of the five segments",
        ("SHLD-31", "MUST-59", "RFC5681-4.2"),
        body=lambda c: _reassembly(c, tuple(itertools.permutations(range(5)))),
    ),
    extended=True,
)
