"""The scripted conformance scenarios (filled in as they are written)."""

from __future__ import annotations

import ipaddress
import itertools
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tcpstack import wire
from tcpstack.core.segment import Flags
from tcpstack.lab import read_nstat
from tcpstack.stack import Socket
from tcpstack.testing.peer import Craft, Received, craft_text
from tcpstack.testing.script import pattern

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


def _drain(c: Conversation, first: int, end: int, seconds: float = 5.0) -> None:
    """ACK the device's data cumulatively as it comes, with a full window, until the
    stream from relative sequence number `first` up to `end` is in. How much goes per
    round trip is the device's congestion control, which two correct TCPs may set
    apart (after a timeout, say), so only the octets and their order are checked."""
    ends: dict[int, int] = {}
    have = first
    deadline = time.monotonic() + seconds
    while have < end and time.monotonic() < deadline:
        for seg in c.collect(0.05):
            start = (seg.seq - (c.conn.dut_isn or 0)) & 0xFFFFFFFF
            if seg.payload:
                if start + len(seg.payload) > end:
                    c.fail(f"data up to {start + len(seg.payload)}, past the {end} written")
                ends[start] = max(ends.get(start, start), start + len(seg.payload))
        before = have
        while have in ends or any(s < have < e for s, e in ends.items()):
            have = max(e for s, e in ends.items() if s <= have)
        if have != before:
            c.inject(f". 1:1(0) ack {have} win 65535")
    if have < end:
        c.fail(f"the device sent the stream up to {have} of {end} within {seconds:g} s")


def _shrinking_window(c: Conversation) -> None:
    c.run(
        PASSIVE
        + """
        +0     nodelay
        +0     write 4380 -> 4380
        +0     > P?. 1:1461(1460) ack 1
        +0     > P?. 1461:2921(1460) ack 1
        +0     > P?. 2921:4381(1460) ack 1
        +0     < . 1:1(0) ack 1461 win 1460              # right edge 65536 -> 2921
        # An old segment, ACKed at once: the device has taken the new edge in by the
        # time the answer comes (its ack field is not looked at).
        +0     < . 0:0(0) ack 1461 win 1460
        [tcpstack] +0 > . 4381:4381(0) ack 1
        [linux]    +0 > . 2921:2921(0) ack 1             # at the edge: see the deviation
        +0     write 2000 -> 2000                        # nothing new may go past 2921
        # The RTO: the data inside the window goes again, what lies past it does not.
        *      > P?. 1461:2921(1460) ack 1
        +0     < . 1:1(0) ack 2921 win 0                 # 2921:4381 is now past the edge
        # Retransmissions at SND.UNA probe the zero window (Linux sends the first at
        # once, still in loss recovery, then on the RTO); each one is answered, so
        # the connection must not time out.
        *      > P?. 2921:*(*) ack 1
        +0     < . 1:1(0) ack 2921 win 0
        *      > P?. 2921:*(*) ack 1
        +0     < . 1:1(0) ack 2921 win 0
        *      > P?. 2921:*(*) ack 1
        +0     < . 1:1(0) ack 2921 win 0
        +0     state ESTABLISHED
        # The window opens again: the data past the old edge and the new data go
        # (Linux waits for its RTO; resending at once is as correct).
        +0     < . 1:1(0) ack 2921 win 65535
        """
    )
    _drain(c, 2921, 6381)


scripted(
    Scripted(
        "W-04",
        "The peer pulls its right edge back, then to zero, with data in flight",
        ("MUST-34", "SHLD-15", "SHLD-16", "SHLD-17", "MUST-35"),
        body=_shrinking_window,
        deviations=(
            Deviation(
                "linux",
                ("RFC9293-3.10.7.4",),
                "while SND.NXT lies past a right edge the peer pulled back, Linux sends "
                "its ACKs with that edge as their sequence number (tcp_acceptable_seq), "
                "where RFC 9293 says SND.NXT",
            ),
        ),
        # One retry allowed, so that a device that counted the answered
        # retransmissions into the zero window towards its limit would give up
        # here, within a second, instead of after its usual fifteen. Linux does not
        # count them at all (the zero-window branch of tcp_retransmit_timer).
        settings={"max_retries": 1},
    )
)


scripted(
    Scripted(
        "W-05",
        "Sender SWS avoidance: a window that opens a few octets at a time gets no tinygrams",
        ("MUST-38",),
        script="""
        +0     listen 8080
        +0     < S 0:0(0) win 10000 <mss 1460>
        +0     > S. 0:0(0) ack 1 <mss 1460>
        +0     < . 1:1(0) ack 1 win 10000
        +0     accept
        +0     nodelay
        +0     write 40000 -> 40000
        +0     > P?. 1:1461(1460) ack 1
        +0     > P?. 1461:2921(1460) ack 1
        +0     > P?. 2921:4381(1460) ack 1
        +0     > P?. 4381:5841(1460) ack 1
        +0     > P?. 5841:7301(1460) ack 1
        +0     > P?. 7301:8761(1460) ack 1
        # 1240 octets of window are left: less than an MSS and than half the largest
        # window offered, with far more queued, so nothing goes as the edge creeps.
        +0     < . 1:1(0) ack 2 win 10000                # the edge moves right by 1
        +0     < . 1:1(0) ack 7 win 10000                # by 5
        +0     < . 1:1(0) ack 17 win 10000               # by 10
        +0     < . 1:1(0) ack 27 win 10000
        +0     < . 1:1(0) ack 111 win 10000
        +0     < . 1:1(0) ack 211 win 10000
        +0     < . 1:1(0) ack 220 win 10000              # 1459 usable: still short
        +0     < . 0:0(0) ack 220 win 10000              # an old segment, ACKed at once:
        +0     > . 8761:8761(0) ack 1                    # all the above was taken in
        # 1460 usable: a full segment goes. (Not within a millisecond of the last
        # thing sent: then Linux defers, waiting for the next ACK, tcp_tso_should_defer.)
        +0.01  < . 1:1(0) ack 221 win 10000
        +0     > P?. 8761:10221(1460) ack 1
        +0     < . 1:1(0) ack 230 win 10000              # 9 usable
        +0     < . 1:1(0) ack 1000 win 10000             # 779
        +0     < . 0:0(0) ack 1000 win 10000
        +0     > . 10221:10221(0) ack 1
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
        script=PASSIVE
        + """
        # Linux takes the urgent octet out of the stream unless asked not to; this
        # endpoint always leaves urgent data in line.
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


def _martians(c: Conversation) -> None:
    """SYNs to a broadcast or multicast address, or from one or from the device's own
    address, get no answer at all and leave no connection behind."""
    subnet = ipaddress.ip_network(f"{c.dut.address}/{c.dut.lab.prefixlen}", strict=False)
    broadcast = str(subnet.broadcast_address)
    group = "224.0.0.1"
    cases = (
        # MUST-57: the destination is a broadcast or multicast address.
        Craft(ip_destination=broadcast, mac_destination=wire.BROADCAST_MAC),
        Craft(ip_destination=broadcast),  # to the device's MAC: only the IP says so
        Craft(ip_destination="255.255.255.255", mac_destination=wire.BROADCAST_MAC),
        Craft(ip_destination=group, mac_destination=_multicast_mac(group)),
        Craft(ip_destination="239.1.2.3", mac_destination=_multicast_mac("239.1.2.3")),
        Craft(ip_destination=group),
        # MUST-63: the source is one no segment can come from.
        Craft(ip_source=broadcast),
        Craft(ip_source="255.255.255.255"),
        Craft(ip_source=group),
        Craft(ip_source=c.dut.address),  # the land attack: source and destination alike
    )
    # Linux checks a source only against its own addresses unless rp_filter is on,
    # so it answers the subnet's broadcast address (see the deviation).
    answered = {Craft(ip_source=broadcast)} if c.dut.name == "linux" else set()
    c.run("+0 listen 8080")
    first = 42000
    for number, craft in enumerate(cases):
        c.restart(first + number)
        c.inject("S 0:0(0) win 65535 <mss 1460>", craft=craft)
    c.quiet(0.3)
    for got in c.received:
        seg = got.packet.segment
        number = seg.dst_port - first
        if 0 <= number < len(cases):
            c.note(f"> {got.packet.src_ip} -> {got.packet.dst_ip}: {seg.flags!r}", got.time)
            if cases[number] not in answered or not seg.syn:
                c.fail(f"the device answered a SYN sent with {craft_text(cases[number])}")
    for number, craft in enumerate(cases):
        source = craft.ip_source or c.peer.address
        state = c.dut.state((c.dut.address, 8080), (source, first + number))
        if state != "CLOSED" and craft not in answered:
            c.fail(f"a SYN from {source}:{first + number} left a connection in {state}")
    c.restart(first + 999)  # and the listener was there all along
    c.run(
        """
        +0     < S 0:0(0) win 65535 <mss 1460>
        +0     > S. 0:0(0) ack 1 <mss 1460>
        """
    )


def _multicast_mac(group: str) -> bytes:
    """The Ethernet address of an IPv4 multicast group (RFC 1112 §6.4)."""
    low = int(ipaddress.IPv4Address(group)) & 0x7FFFFF
    return bytes((0x01, 0x00, 0x5E)) + low.to_bytes(3, "big")


scripted(
    Scripted(
        "A-12",
        "SYNs to broadcast or multicast addresses, or from martian sources, are ignored",
        ("MUST-57", "MUST-63"),
        body=_martians,
        deviations=(
            Deviation(
                "linux",
                ("MUST-63",),
                "Linux answers a SYN from its subnet's broadcast address with a SYN-ACK "
                "to that address: unless rp_filter is on, it checks a source only against "
                "its own addresses and the limited broadcast and multicast ranges",
            ),
        ),
    )
)


def _source_quench(c: Conversation) -> None:
    # A window of ten segments, the initial window of both devices, so that the
    # first flight is the same whatever either makes of the ACK of its SYN.
    c.run(
        """
        +0     listen 8080
        +0     < S 0:0(0) win 14600 <mss 1460>
        +0     > S. 0:0(0) ack 1 <mss 1460>
        +0     < . 1:1(0) ack 1 win 14600
        +0     accept
        +0     write 29200 -> 29200
        """
    )
    for n in range(10):
        c.expect(f"P?. {1 + 1460 * n}:{1461 + 1460 * n}(1460) ack 1", at=c.last)
    # Source quench (ICMP type 4) about the last of them, in flight: RFC 9293 says to
    # discard it (RFC 6633 retired it), so the pace stays as it was. An ACK of one
    # segment then opens the window by two: in slow start both go at once, where a
    # sender that had cut its congestion window for the quench would send nothing.
    # (The ACK comes 10 ms on, as a real one would: within a millisecond of its last
    # send Linux defers, waiting for the next ACK; see W-05.)
    c.run(
        """
        +0     icmp 4 0
        +0.01  < . 1:1(0) ack 1461 win 16060
        +0     > P?. 14601:16061(1460) ack 1
        +0     > P?. 16061:17521(1460) ack 1
        +0     quiet 0.05
        +0     state ESTABLISHED
        """
    )


scripted(
    Scripted(
        "A-11-quench",
        "An ICMP source quench about a segment in flight changes nothing",
        ("MUST-55",),
        body=_source_quench,
    )
)


scripted(
    Scripted(
        "C-09",
        "FIN-WAIT-2: a FIN carrying an older ACK is still taken, into TIME-WAIT",
        ("RFC9293-3.10.7.4",),
        script=PASSIVE
        + """
        +0     close
        +0     > F. 1:1(0) ack 1
        +0     < . 1:1(0) ack 2 win 65535                # our FIN is ACKed
        +0     state FIN_WAIT_2
        +0     < F. 1:1(0) ack 1 win 65535               # reordered: an older ACK
        +0     > . 2:2(0) ack 2
        +0     state TIME_WAIT
        """,
    )
)

scripted(
    Scripted(
        "C-12",
        "TIME-WAIT: a RST at RCV.NXT closes it (the RFC text, Linux's default)",
        ("RFC9293-3.10.7.4", "RFC5961-3.2"),
        script=PASSIVE
        + """
        +0     close
        +0     > F. 1:1(0) ack 1
        +0     < F. 1:1(0) ack 2 win 65535
        +0     > . 2:2(0) ack 2
        +0     state TIME_WAIT
        +0     < R 100:100(0) win 0                      # in the window, not RCV.NXT
        [tcpstack] +0 > . 2:2(0) ack 2                   # RFC 5961 §3.2: a challenge ACK
        +0     quiet 0.1
        +0     state TIME_WAIT
        +0     < R 2:2(0) win 0                          # exactly RCV.NXT
        +0     state CLOSED
        """,
        deviations=(
            Deviation(
                "linux",
                ("RFC5961-3.2",),
                "Linux's TIME-WAIT drops a RST that is in the window but not at RCV.NXT "
                "without the challenge ACK RFC 5961 §3.2 asks for (tcp_timewait_state_"
                "process() only ever answers non-RST segments)",
            ),
        ),
    )
)


def _handshake_windows(c: Conversation) -> None:
    c.run(
        """
        +0     connect 8080
        +0     > S 0:0(0) <mss 1460>
        +0     < S. 0:0(0) ack 1 win 0 <mss 1460>
        +0     > . 1:1(0) ack 1
        +0     write 1000 -> 1000
        +0     quiet 0.1                                 # well inside the first RTO
        +0     < . 1:1(0) ack 1 win 32768                # 0x8000: 32768, not negative
        +0     > P. 1:1001(1000) ack 1
        +0     < . 1:1(0) ack 1001 win 32768
        +0     write 40000 -> 40000
        """
    )
    # However much its congestion window lets go, all of it inside 32768 octets.
    sent = c.collect(0.1)
    ends = [(seg.seq - (c.conn.dut_isn or 0) + len(seg.payload)) & 0xFFFFFFFF for seg in sent]
    if not ends:
        c.fail("nothing sent into a window of 32768 (taken as negative?)")
    if max(ends) > 1001 + 32768:
        c.fail(f"data up to {max(ends)}, past the window's right edge at {1001 + 32768}")


scripted(
    Scripted(
        "H-16",
        "A zero window in the SYN-ACK holds data back until an ACK opens it; a window "
        "with its top bit set is unsigned",
        ("MUST-1", "RFC9293-3.10.7.4"),
        body=_handshake_windows,
    )
)


def _time_wait_input(c: Conversation) -> None:
    c.run(
        PASSIVE
        + """
        +0     close
        +0     > F. 1:1(0) ack 1
        +0     < F. 1:1(0) ack 2 win 65535
        +0     > . 2:2(0) ack 2
        +0     state TIME_WAIT
        """
    )
    w = c.dut_window  # RCV.WND: the peer offered no window scaling
    c.run(
        f"""
        +0     < F. 1:1(0) ack 2 win 65535               # the FIN again: our ACK was lost
        +0     > . 2:2(0) ack 2
        +0     < . 1:1(0) ack 2 win 65535                # RCV.NXT - 1: outside, ACKed
        +0     > . 2:2(0) ack 2
        +0     < . 2:2(0) ack 2 win 65535                # exactly RCV.NXT: nothing to say
        +0     < . {1 + w}:{1 + w}(0) ack 2 win 65535    # the window's last octet
        [linux] +0 > . 2:2(0) ack 2                      # see the deviation
        +0     < . {2 + w}:{2 + w}(0) ack 2 win 65535    # RCV.NXT + RCV.WND: outside
        +0     > . 2:2(0) ack 2
        +0     quiet 0.1
        +0     state TIME_WAIT
        """
    )


scripted(
    Scripted(
        "C-11",
        "TIME-WAIT: a retransmitted FIN and segments outside the window are ACKed, an "
        "acceptable ACK is not",
        ("RFC9293-3.10.7.4",),
        body=_time_wait_input,
        deviations=(
            Deviation(
                "linux",
                ("RFC9293-3.10.7.4",),
                "Linux's TIME-WAIT takes in silence only a bare ACK exactly at RCV.NXT and "
                "ACKs every other one, even inside the window (tcp_timewait_state_process)",
            ),
        ),
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


def _fill_window(c: Conversation) -> int:
    """Send data in order up to the right edge the device offers, reading none of it,
    until the device acknowledges everything with a zero window. Returns RCV.NXT."""
    nxt = 1
    edge = nxt + c.dut_window  # the peer offered no window scaling
    for _ in range(100):
        while nxt < edge:
            n = min(1460, edge - nxt)
            c.inject(f"P. {nxt}:{nxt + n}({n}) ack 1 win 65535")
            nxt += n
        # Linux may hold the ACK of the last segment for its delayed-ACK time.
        answers = c.collect(0.1) or c.collect(0.5)
        if not answers:
            c.fail(f"no ACK for the data up to {nxt}")
        last = answers[-1]
        ack = (last.ack - c.conn.peer_isn) & 0xFFFFFFFF
        if ack == nxt and last.window == 0:
            return nxt
        edge = max(edge, ack + last.window)
    c.fail("the device never advertised a zero window")
    raise AssertionError  # unreachable: fail() raises


def _zero_window_fin(c: Conversation) -> None:
    c.run(PASSIVE)
    n = _fill_window(c)
    c.run(
        f"""
        +0     < F. {n + 1}:{n + 1}(0) ack 1 win 65535     # beyond the empty window
        +0     > . 1:1(0) ack {n} win 0
        # Data has no room, and the FIN behind it cannot be taken without it.
        +0     < FP. {n}:{n + 10}(10) ack 1 win 65535
        +0     > . 1:1(0) ack {n} win 0
        +0     state ESTABLISHED
        +0     < F. {n}:{n}(0) ack 1 win 65535             # a bare FIN at RCV.NXT
        +0     > . 1:1(0) ack {n + 1} win 0
        +0     state CLOSE_WAIT
        +0     read {n - 1} -> {n - 1}
        +0     read 100 -> EOF
        +0     close
        +0     > F. 1:1(0) ack {n + 1}
        +0     < . {n + 1}:{n + 1}(0) ack 2 win 65535
        +0     state CLOSED
        """
    )


scripted(
    Scripted(
        "C-10",
        "A bare FIN at RCV.NXT is taken into a zero window; data or a FIN beyond it is not",
        ("RFC9293-3.10.7.4",),
        body=_zero_window_fin,
        deviations=(
            Deviation(
                "tcpstack",
                ("RFC9293-3.10.7.4",),
                "a FIN without data exactly at RCV.NXT is taken while the receive window "
                "is zero, as Linux takes it: it needs no buffer space, and a peer whose "
                "FIN is refused can only send it again; table 6 counts the FIN in SEG.LEN "
                "and so would refuse it",
            ),
            Deviation(
                "linux",
                ("RFC9293-3.10.7.4",),
                "Linux takes a FIN without data at RCV.NXT into a zero window (its "
                "zero-window check in tcp_data_queue() lets a bare FIN through); table 6 "
                "would refuse it",
            ),
        ),
        # A small buffer, so that a few segments close the window.
        settings={"receive_buffer": 16384},
    )
)


_GIB = 1 << 30
_SEQ_SPACE = 1 << 32


def _extreme_fields(c: Conversation) -> None:
    # Peak RSS of this process: for our endpoint, which runs in it, a buffer sized
    # from the ~1 GiB window or an ACK's jump would show here.
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    c.run("+0 listen 8080")
    # Port 0 is reserved, but neither device refuses it as a source: a SYN from it
    # gets a SYN-ACK like any other.
    c.restart(0)
    c.run(
        """
        +0     < S 0:0(0) win 65535 <mss 1460>
        +0     > S. 0:0(0) ack 1 <mss 1460>
        +0     < R 1:1(0) win 0
        +0     < P. 1:11(10) ack 7 win 65535             # no connection now
        +0     > R 7:7(0)
        """
    )
    # To port 0 nothing listens: reset, as for any closed port.
    c.restart(40000)
    c.run(
        """
        +0     port 0
        +0     < S 0:0(0) win 65535 <mss 1460>
        +0     > R. 0:0(0) ack 1
        +0     < P. 1:11(10) ack 7 win 65535
        +0     > R 7:7(0)
        """
    )
    c.restart(40001)
    c.run(
        """
        +0     port 8080
        +0     < S 0:0(0) win 65535 <mss 1460,nop,wscale 14>
        +0     > S. 0:0(0) ack 1 <mss 1460,wscale *>
        +0     < . 1:1(0) ack 1 win 65535                # 65535 << 14: almost 1 GiB
        +0     accept
        +0     write 30000 -> 30000
        """
    )
    # The window is no reason to send more than the initial congestion window.
    # (Keyed by sequence number: a retransmission is not more data in flight.)
    flight = {seg.seq: seg for seg in c.collect(0.1) or c.collect(0.5)}
    sent = sum(len(seg.payload) for seg in flight.values())
    if not 0 < sent <= 10 * 1460:
        c.fail(f"a first flight of {sent} octets into a 1 GiB window, not 1..{10 * 1460}")
    c.inject(f". 1:1(0) ack {1 + sent} win 65535")
    _drain(c, 1 + sent, 30001)
    una = 30001  # SND.UNA = SND.NXT: everything is acknowledged

    def ack(delta: int) -> int:
        return (una + delta) % _SEQ_SPACE

    c.run(
        f"""
        +0     < . 1:1(0) ack {ack(_GIB)} win 65535      # 1 GiB past SND.NXT
        +0     > . {una}:{una}(0) ack 1
        +0     < . 1:1(0) ack {ack(2**31 - 1)} win 65535  # as far ahead as there is
        +0     > . {una}:{una}(0) ack 1
        +0     < . 1:1(0) ack {ack(1 - 2**31)} win 65535  # as far behind
        +0     > . {una}:{una}(0) ack 1
        +0     < . 1:1(0) ack {ack(-_GIB - _GIB // 2)} win 65535   # past MAX.SND.WND
        +0     > . {una}:{una}(0) ack 1
        # Within MAX.SND.WND, but before the ISS: bytes never sent (see the deviation).
        +0     < . 1:1(0) ack {ack(-_GIB // 2)} win 65535
        [linux] +0 > . {una}:{una}(0) ack 1
        +0     < . 1:1(0) ack {ack(-1000)} win 65535      # an old duplicate
        +0     quiet 0.1
        # Data under an impossible ACK is dropped with it.
        +0     < P. 1:11(10) ack {ack(_GIB)} win 65535
        +0     > . {una}:{una}(0) ack 1
        +0     < P. 1:11(10) ack {una} win 65535
        +0     > . {una}:{una}(0) ack 11
        +0     read 100 -> 10
        +0     write 1000 -> 1000
        +0     > P?. {una}:{una + 1000}(1000) ack 11
        +0     < . 11:11(0) ack {una + 1000} win 65535
        +0     quiet 0.1
        +0     state ESTABLISHED
        """
    )
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    if grown > 64 * 1024:
        c.fail(f"the peak RSS grew by {grown // 1024} MiB over a few segments")


scripted(
    Scripted(
        "M-09",
        "A ~1 GiB window, port 0, and ACKs far ahead of SND.NXT or behind SND.UNA",
        ("MUST-1", "RFC5961-5.2"),
        body=_extreme_fields,
        deviations=(
            Deviation(
                "linux",
                ("RFC5961-5.2",),
                "Linux caps MAX.SND.WND at the data acknowledged so far, so an ACK of "
                "octets before its ISS gets a challenge ACK even within the largest "
                "window the peer offered, where RFC 5961 §5.2 takes it as a duplicate",
            ),
        ),
    )
)


def _send_octets(c: Conversation, start: int, length: int) -> None:
    """Inject `length` octets of the stream at relative `start`, with no transcript
    line: a flood of thousands would drown the transcript."""
    c.peer.send(
        c.peer.frame(
            src_port=c.conn.peer_port,
            dst_port=c.conn.dut_port or 0,
            seq=c.conn.peer_isn + start,
            ack=(c.conn.dut_isn or 0) + 1,
            flags=int(Flags.PSH | Flags.ACK),
            window=65535,
            payload=pattern(start - 1, length),
        )
    )


def _replies(
    c: Conversation,
    quiet: float,
    *,
    sack_from: int | None = None,
    ack_from: int | None = None,
) -> list[Received]:
    """The device's segments on the connection until one SACKs `sack_from` first or
    ACKs `ack_from` or beyond (relative), or until `quiet` seconds pass without any."""
    out = []
    while (got := c.peer.receive(quiet)) is not None:
        seg = got.packet.segment
        if seg.dst_port != c.conn.peer_port or seg.src_port != c.conn.dut_port:
            continue
        out.append(got)
        if sack_from is not None and seg.options.sack_blocks:
            if _rel(c, seg.options.sack_blocks[0][0]) == sack_from:
                break
        if ack_from is not None and _rel(c, seg.ack) >= ack_from:
            break
    return out


def _rel(c: Conversation, number: int) -> int:
    """A sequence number of the peer's, relative to its ISN."""
    return (number - c.conn.peer_isn) & 0xFFFFFFFF


def _ooo_flood(c: Conversation, count: int, batch: int = 100) -> None:
    """`count` one-octet segments, each with a hole before it, then the holes filled
    one by one from the device's ACKs, as a sender would: the device must keep its
    memory for them bounded, never SACK an octet it was not sent, and deliver the
    stream intact, the held octets included."""
    c.run(
        """
        +0     listen 8080
        +0     < S 0:0(0) win 65535 <mss 1460,sackOK,nop,wscale 7>
        """
    )
    shift = c.expect("S. 0:0(0) ack 1 <mss 1460,sackOK,wscale *>").options.wscale or 0
    c.run(
        """
        +0     < . 1:1(0) ack 1 win 65535
        +0     accept
        +0     < P. 2:3(1) ack 1 win 65535               # octet 1 is the first hole
        """
    )
    window = c.expect(". 1:1(0) ack 1 <sack 2:3>").window << shift
    end = 2 * count + 1
    if end > 1 + window:
        c.fail(f"{count} segments need a window of {end - 1} octets, not {window}")
    took: list[float] = []  # how long the device took over each batch
    replies = 0
    for low in range(2, count + 1, batch):
        high = min(count, low + batch - 1)
        began = time.monotonic()
        for k in range(low, high + 1):
            _send_octets(c, 2 * k, 1)
        # Ours SACKs each segment; Linux compresses its SACKs and may leave the last
        # one for later, so a short silence ends the batch as well.
        got = _replies(c, 0.03, sack_from=2 * high)
        replies += len(got)
        took.append(got[-1].time - began if got else 0.0)
        for answer in got:
            seg = answer.packet.segment
            if _rel(c, seg.ack) != 1:
                c.fail(f"ack {_rel(c, seg.ack)} while octet 1 is still missing")
            for left, right in seg.options.sack_blocks:
                left, right = _rel(c, left), _rel(c, right)
                if right != left + 1 or left % 2 or not 2 <= left <= 2 * high:
                    c.fail(f"SACK block {left}:{right}: not one octet that was sent")
        if len(took) >= 10:
            # Held segments must not make each new one dearer: a cost linear in what
            # is held makes the whole flood quadratic.
            first, recent = statistics.median(took[:5]), statistics.median(took[-5:])
            if recent > 10 * first and recent > first + 0.25:
                c.fail(
                    f"{batch} segments took {recent:.3f} s with {high} held, "
                    f"{first:.3f} s at the start"
                )
    _replies(c, 0.2)  # whatever is still on its way
    c.note(
        f"{count} one-octet segments sent, {replies} ACKs; a batch took "
        f"{took[0]:.3f} s first, {took[-1]:.3f} s last"
    )
    if isinstance(c.sock, Socket) and (conn := c.sock.connection) is not None:
        held = conn.ooo_segments  # blocks, each one octet here
        c.note(f"our endpoint holds {held} out-of-order blocks")
        bound = min(count, conn.config.receive_buffer)  # what was sent, what fits
        if held > bound:
            c.fail(f"{held} out-of-order octets held, more than {bound}")
    else:
        counters = read_nstat(c.dut.lab.endpoint_netns)
        names = ("TcpExtTCPOFOQueue", "TcpExtTCPOFODrop", "TcpExtOfoPruned", "TcpExtPruneCalled")
        c.note("Linux: " + ", ".join(f"{n[6:]} {counters.get(n, 0)}" for n in names))
    # Fill: the octet at RCV.NXT while the device still SACKs something above it,
    # then the rest in full segments.
    ack, held_more, steps = 1, True, 0
    while ack < end:
        if held_more:
            _send_octets(c, ack, 1)
            steps += 1
            target = ack + 1
        else:
            for start in range(ack, end, 1460):
                _send_octets(c, start, min(1460, end - start))
            target = end
        got = _replies(c, 1.0, ack_from=target)
        if not got or _rel(c, got[-1].packet.segment.ack) < target:
            c.fail(f"no ACK of {target} with the stream sent up to it")
        last = got[-1].packet.segment
        ack, held_more = _rel(c, last.ack), bool(last.options.sack_blocks)
        unread = ack - 1 - c.read_offset
        if unread >= 16384:
            c.run(f"+0 read {unread}")  # so that tiny segments never fill its buffer
    c.note(f"the holes filled in {steps} one-octet segments")
    left = end - 1 - c.read_offset
    c.run(f"+0 read {left} -> {left}")


scripted(
    Scripted(
        "L-05",
        "A thousand one-octet segments out of order: memory bounded, SACKs truthful, "
        "the stream intact once the holes fill",
        ("SHLD-31", "RFC2018-4"),
        body=lambda c: _ooo_flood(c, 1000),
    )
)

scripted(
    Scripted(
        "L-05-20k",
        "L-05 with 20,000 segments, and the cost of each new one must not grow",
        ("SHLD-31", "RFC2018-4"),
        body=lambda c: _ooo_flood(c, 20000),
    ),
    extended=True,
)


def _timestamps_missing(c: Conversation) -> None:
    c.run(
        """
        +0     listen 8080
        +0     < S 0:0(0) win 65535 <mss 1460,nop,nop,TS val 1000 ecr 0>
        """
    )
    synack = c.expect("S. 0:0(0) ack 1 <mss 1460,TS val * ecr 1000>")
    tsval = synack.options.timestamps[0] if synack.options.timestamps else 0
    c.run(
        f"""
        +0     < . 1:1(0) ack 1 win 65535 <nop,nop,TS val 1001 ecr {tsval}>
        +0     accept
        +0     < P. 1:101(100) ack 1 win 65535 <nop,nop,TS val 1002 ecr {tsval}>
        +0     > . 1:1(0) ack 101 <TS val * ecr 1002>
        # No TSopt: RFC 7323 §3.2 says drop it in silence; both take it (see the
        # deviations), and echo the last timestamp they had.
        +0     < P. 101:201(100) ack 1 win 65535
        +0     > . 1:1(0) ack 201 <TS val * ecr 1002>
        +0     read 1000 -> 200
        +0     < P. 201:301(100) ack 1 win 65535 <nop,nop,TS val 1003 ecr {tsval}>
        +0     > . 1:1(0) ack 301 <TS val * ecr 1003>
        +0     read 1000 -> 100
        +0     write 100 -> 100
        +0     > P. 1:101(100) ack 301 <TS val * ecr 1003>
        +0     < . 301:301(0) ack 101 win 65535 <nop,nop,TS val 1004 ecr {tsval}>
        # Our endpoint takes segments in on a thread of its own: let this ACK in
        # before the abort, or it finds no connection and is answered with a RST.
        +0     quiet 0.05
        # An abort: the RST carries TSopt on both (§3.2: SHOULD); Linux's has ACK too.
        +0     linger0
        +0     close
        [linux]    +0 > R. 101:101(0) ack 301 <TS val * ecr 1004>
        [tcpstack] +0 > R 101:101(0) <TS val * ecr 1004>
        +0     state CLOSED
        """
    )


scripted(
    Scripted(
        "O-08-missing-ts",
        "Timestamps agreed: a segment without TSopt is still taken; a RST and its TSopt",
        ("RFC7323-3.2", "RFC7323-3.2a"),
        body=_timestamps_missing,
        deviations=(
            Deviation(
                "tcpstack",
                ("RFC7323-3.2a",),
                "a non-RST segment without TSopt on a connection that agreed to "
                "timestamps is processed as usual, as Linux does, where §3.2 says SHOULD "
                "drop it silently: a middlebox that strips the option would otherwise "
                "stall the connection",
            ),
            Deviation(
                "linux",
                ("RFC7323-3.2a",),
                "Linux takes and ACKs a non-RST segment without TSopt on a connection "
                "that agreed to timestamps, where §3.2 says SHOULD drop it silently",
            ),
        ),
    )
)
