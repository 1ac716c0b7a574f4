"""Differential stateful fuzzing (conformance plan M-12): one generated sequence of
peer segments and socket calls, replayed against this endpoint and against Linux.

A seed gives a sequence of steps on a connection the peer opens with an MSS option
alone, so neither device uses timestamps, SACK or window scaling and the numbers on
the wire mean the same for both. A step is a segment the scripted peer injects or a
call on the device's socket. Segment numbers are not absolute: a sequence number is
an offset from what the device expects next (its last ACK), an acknowledgment
number an offset from the device's SND.NXT (the end of what it has sent), and the
window edges are the device's own advertised window. So the same step means the
same thing to both devices, whatever their ISNs and buffer sizes.

Each step is judged by what the device sends in reply within a short collection
window, normalised to flags (PSH dropped), relative numbers and payload length,
with the call's result and the connection's state after it. `compare` lists where
two transcripts differ, and `ALLOWED` explains the differences that two correct
TCPs may show, each with the RFC clause or Linux behaviour behind it (and names
our known bugs, "BUG: ..."); what is left is unexplained. Retransmission timers
are held off on both devices (`RTO_MIN`): timer-driven retransmission has
scenarios of its own, and here it would only add noise.

    python -m tcpstack.testing.fuzz --seeds 200        # as root
    python -m tcpstack.testing.fuzz --seed 17 --show   # one seed, both transcripts
"""

from __future__ import annotations

import argparse
import errno
import random
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from tcpstack import netns
from tcpstack.core.segment import Flags, Segment, flags_str, parse_flags
from tcpstack.testing.dut import DUTS, open_dut
from tcpstack.testing.peer import ScriptedPeer
from tcpstack.testing.script import Conversation, ScriptFailure, pattern

SEQ_SPACE = 1 << 32
PEER_WINDOW = 65535
# Long enough for a delayed ACK (40 ms on both devices) and Python's scheduling on
# two cores; each step costs this on each device, so CI can afford a few seeds.
COLLECT = 0.15
READ_SIZE = 65536

# Where a peer segment's sequence number lies, from the device's RCV.NXT; the
# window kinds are resolved against the window the device last advertised.
SEQ_KINDS = ("nxt", "nxt-1", "nxt+1", "inside", "last", "edge", "beyond", "far")
# Where its acknowledgment number lies, from the device's SND.NXT. "una" repeats
# the highest acknowledgment the peer has sent so far (a duplicate ACK).
ACK_KINDS = ("nxt", "nxt-1", "nxt+1", "una", "behind", "ahead")
FLAG_CHOICES = (".", "P.", "F.", "FP.", "R", "R.", "S", "S.", "none")
CALLS = ("write", "read", "shutdown")

_SEQ_WEIGHTS = (40, 8, 8, 8, 6, 6, 6, 4)
_ACK_WEIGHTS = (50, 8, 8, 14, 6, 6)
_FLAG_WEIGHTS = (16, 26, 8, 4, 4, 4, 4, 3, 3)
_CALL_WEIGHTS = (5, 4, 1)


# ---------------------------------------------------------------- the steps


@dataclass(frozen=True, slots=True)
class Inject:
    """A segment from the peer, its numbers relative to the device's state."""

    flags: str  # notation letters, "none" for no flag at all
    seq: str  # one of SEQ_KINDS
    ack: str  # one of ACK_KINDS; ignored without the ACK bit
    length: int  # payload octets

    def __str__(self) -> str:
        ack = f" ack {self.ack}" if "." in self.flags else ""
        return f"< {self.flags} seq {self.seq} ({self.length}){ack}"


@dataclass(frozen=True, slots=True)
class Call:
    """A call on the device's socket: write N, read, or shutdown of the write side."""

    verb: str  # one of CALLS
    size: int = 0  # for write

    def __str__(self) -> str:
        return f"write {self.size}" if self.verb == "write" else self.verb


Step = Inject | Call


def generate(seed: int, steps: int = 8) -> list[Step]:
    """The sequence of `steps` steps for `seed`, the same on every machine."""
    rng = random.Random(seed)
    out: list[Step] = []
    for _ in range(steps):
        if rng.random() < 0.25:
            verb = rng.choices(CALLS, _CALL_WEIGHTS)[0]
            size = rng.choice((1, 100, 1000)) if verb == "write" else 0
            out.append(Call(verb, size))
            continue
        flags = rng.choices(FLAG_CHOICES, _FLAG_WEIGHTS)[0]
        if flags == "P.":
            length = rng.choice((1, 300))
        elif flags in (".", "F.", "R", "R.", "S", "S.", "none"):
            length = rng.choices((0, 1, 300), (6, 1, 1))[0]
        else:
            length = rng.choice((1, 300))
        seq = rng.choices(SEQ_KINDS, _SEQ_WEIGHTS)[0]
        ack = rng.choices(ACK_KINDS, _ACK_WEIGHTS)[0] if "." in flags else "nxt"
        out.append(Inject(flags, seq, ack, length))
    return out


# ---------------------------------------------------------------- one device


@dataclass(frozen=True, slots=True)
class Model:
    """What the peer knows of the device before a step, from what it has seen."""

    rcv_nxt: int  # the device's last acknowledgment, relative to the peer's ISN
    snd_nxt: int  # the end of what the device sent, relative to its ISN
    window: int  # the device's last advertised window (no scaling agreed)
    peer_ack: int  # the highest acknowledgment the peer has sent
    state: str  # the connection's state before the step


@dataclass(frozen=True, slots=True)
class Observed:
    """One step on one device, normalised."""

    step: Step
    model: Model
    sent: str  # the injected segment in relative numbers ("" for a call)
    replies: tuple[str, ...]  # the device's segments: "flags seq:end(len) ack N"
    result: str  # the call's result ("" for a segment)
    state: str  # the connection's state after the step

    def line(self) -> str:
        what = self.sent or str(self.step)
        result = f" -> {self.result}" if self.result else ""
        replies = "; ".join(self.replies) or "-"
        return f"{what}{result}  => {replies}  [{self.state}]"


@dataclass
class Transcript:
    device: str
    seed: int
    steps: list[Observed] = field(default_factory=list)
    end_state: str = ""  # the connection's state after the last step
    end_read: str = ""  # a last read's result: what is left, EOF or the error
    error: str = ""  # the handshake failed, or the harness did
    raw: list[str] = field(default_factory=list)  # the conversation's own transcript

    def text(self) -> str:
        lines = [f"{self.device} (seed {self.seed}):"]
        if self.error:
            lines.append(f"  ERROR {self.error}")
        lines += [f"  {i:2d} {o.line()}" for i, o in enumerate(self.steps)]
        lines.append(f"  end: state {self.end_state}, read -> {self.end_read}")
        return "\n".join(lines)


def _signed(value: int) -> int:
    value %= SEQ_SPACE
    return value - SEQ_SPACE if value >= SEQ_SPACE // 2 else value


def _seq_offset(kind: str, window: int) -> int:
    return {
        "nxt": 0,
        "nxt-1": -1,
        "nxt+1": 1,
        "inside": max(window // 2, 1),
        "last": window - 1,
        "edge": window,
        "beyond": window + 1000,
        "far": 1 << 30,
    }[kind]


def _ack_value(kind: str, model: Model) -> int:
    if kind == "una":
        return model.peer_ack
    offset = {"nxt": 0, "nxt-1": -1, "nxt+1": 1, "behind": -100_000, "ahead": 1000}[kind]
    return model.snd_nxt + offset


class _Driver:
    """Runs steps on one device through a Conversation and keeps the model."""

    def __init__(self, c: Conversation) -> None:
        self.c = c
        self.rcv_nxt = 1
        self.snd_nxt = 1
        self.window = 0
        self.peer_ack = 1
        self.read_offset = 0
        self.write_offset = 0

    def model(self) -> Model:
        return Model(self.rcv_nxt, self.snd_nxt, self.window, self.peer_ack, self.state())

    def state(self) -> str:
        c = self.c
        local = (c.dut.address, c.conn.dut_port or 0)
        return c.dut.state(local, (c.peer.address, c.conn.peer_port))

    def see(self, seg: Segment) -> str:
        """Take in a segment the device sent; its normalised text."""
        c = self.c
        if seg.syn and seg.seq != c.conn.dut_isn:
            # A new connection on the same four-tuple (a SYN after a reset or in
            # TIME-WAIT), with an ISN of its own: numbered from it, as the first was.
            c.conn.dut_isn = seg.seq
            self.snd_nxt, self.peer_ack = 0, 0
            if seg.has_ack:
                c.conn.peer_isn = seg.ack - 1  # the peer's SYN it answers
        seq = _signed(seg.seq - (c.conn.dut_isn or 0))
        n = len(seg.payload)
        end = seq + n + (1 if seg.syn else 0) + (1 if seg.fin else 0)
        if end - self.snd_nxt > 0 and not seg.rst:
            self.snd_nxt = end
        text = f"{flags_str(seg.flags & ~Flags.PSH)} {seq}:{seq + n}({n})"
        if seg.has_ack:
            ack = _signed(seg.ack - c.conn.peer_isn)
            text += f" ack {ack}"
            if not seg.rst:
                self.rcv_nxt = ack
                self.window = seg.window
        return text

    def inject(self, step: Inject, model: Model) -> str:
        c = self.c
        flags = parse_flags(step.flags)
        seq = _signed(model.rcv_nxt + _seq_offset(step.seq, model.window))
        ack = _signed(_ack_value(step.ack, model)) if flags & Flags.ACK else 0
        if _moves_una(step, ack, model):
            self.peer_ack = ack
        c.peer.send(
            c.peer.frame(
                src_port=c.conn.peer_port,
                dst_port=c.conn.dut_port or 0,
                seq=c.conn.peer_isn + seq,
                ack=(c.conn.dut_isn or 0) + ack if flags & Flags.ACK else 0,
                flags=int(flags),
                window=PEER_WINDOW,
                payload=pattern((seq - 1) % SEQ_SPACE, step.length),
            )
        )
        text = f"< {step.flags} {seq}:{seq + step.length}({step.length})"
        if flags & Flags.ACK:
            text += f" ack {ack}"
        c.note(text)
        return text

    def call(self, step: Call) -> str:
        sock = self.c.sock
        if sock is None:
            return "no socket"
        try:
            if step.verb == "write":
                sent = sock.send(pattern(self.write_offset, step.size))
                self.write_offset += sent
                result = str(sent)
            elif step.verb == "read":
                data = sock.recv(READ_SIZE)
                if not data:
                    result = "EOF"
                elif data != pattern(self.read_offset, len(data)):
                    result = f"CORRUPT {len(data)}"
                else:
                    self.read_offset += len(data)
                    result = str(len(data))
            else:
                sock.shutdown(socket.SHUT_WR)
                result = "0"
        except OSError as exc:
            result = _errno_name(exc)
        self.c.note(f"{step} -> {result}")
        return result

    def step(self, step: Step) -> Observed:
        model = self.model()
        sent, result = "", ""
        if isinstance(step, Inject):
            sent = self.inject(step, model)
        else:
            result = self.call(step)
        replies = tuple(self.see(seg) for seg in self.c.collect(COLLECT))
        return Observed(step, model, sent, replies, result, self.state())


def _moves_una(step: Inject, ack: int, model: Model) -> bool:
    """Whether the device takes this segment's ACK, and so moves SND.UNA to it: it
    must be in the window (the edge is not, for us), neither RST nor SYN, and
    acknowledge something sent but not yet acknowledged."""
    flags = parse_flags(step.flags)
    if not flags & Flags.ACK or flags & (Flags.RST | Flags.SYN):
        return False
    return not _outside(step) and 0 < ack - model.peer_ack and ack - model.snd_nxt <= 0


def _errno_name(exc: OSError) -> str:
    if exc.errno is not None and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno]
    if isinstance(exc, TimeoutError):
        return "EAGAIN"  # a zero timeout: nothing there
    return type(exc).__name__


# Both devices' retransmission timers held off for longer than a sequence lasts:
# when a 200 ms timer fires (Linux also counts from the first unacknowledged
# segment's send, not from the last ACK) would decide in which step a retransmission
# lands, and its order among the replies, which says nothing about either state
# machine. Retransmission on duplicate ACKs still happens, and is compared.
RTO_MIN = 3.0
OUR_SETTINGS = {"rto_min": RTO_MIN, "rto_initial": RTO_MIN}

# Only an MSS, so the two devices' segments carry no option worth normalising away.
HANDSHAKE = """
    +0     listen 8080
    +0     < S 0:0(0) win 65535 <mss 1460>
    +0     > S. 0:0(0) ack 1 <mss 1460>
    +0     < . 1:1(0) ack 1 win 65535
    +0     accept
"""


def run_sequence(device: str, seed: int, steps: Sequence[Step]) -> Transcript:
    """Replay `steps` on a fresh lab with device `device`; its normalised transcript."""
    out = Transcript(device, seed)
    with open_dut(device, settings=OUR_SETTINGS) as dut:
        if dut.stack is None:
            with netns.enter(dut.lab.endpoint_netns):
                with open("/proc/sys/net/ipv4/tcp_rto_min_us", "w") as f:
                    f.write(str(int(RTO_MIN * 1_000_000)))
        peer = ScriptedPeer(dut.lab)
        c = Conversation(dut, peer)
        try:
            c.run(HANDSHAKE)
            c.finish()
            if c.sock is None:
                raise ScriptFailure("accept returned no socket")
            c.sock.setblocking(False)
            driver = _Driver(c)
            last = c.last_segment
            if last is not None:
                driver.see(last)
            for step in steps:
                out.steps.append(driver.step(step))
            out.end_read = driver.call(Call("read"))
            out.end_state = driver.state()
        except ScriptFailure as exc:
            out.error = str(exc).splitlines()[0]
        finally:
            out.raw = list(c.transcript)
            c.close()
            peer.close()
            if dut.stack is not None:
                dut.stack.sync()
    return out


# ---------------------------------------------------------------- comparison


@dataclass(frozen=True, slots=True)
class Difference:
    """Where the two devices' transcripts part, at one step (or at the end)."""

    index: int  # the step, or -1 for the end of the sequence
    what: str  # "replies", "result", "state", "end" or "error"
    ours: Observed | None
    linux: Observed | None
    ours_text: str
    linux_text: str

    @property
    def step(self) -> Step | None:
        seen = self.ours or self.linux
        return seen.step if seen is not None else None

    def __str__(self) -> str:
        where = "end" if self.index < 0 else f"step {self.index} ({self.step})"
        return f"{where}: {self.what}: tcpstack {self.ours_text!r}, linux {self.linux_text!r}"


@dataclass(frozen=True, slots=True)
class Allowance:
    """A difference two correct TCPs may show (or a known bug of ours, "BUG: ...")."""

    name: str
    applies: Callable[[Difference], bool]
    reason: str
    # The two devices took the segment differently (one took data, a FIN or an ACK
    # the other dropped), so what they do next is no longer comparable.
    diverges: bool = False

    @property
    def bug(self) -> bool:
        """A known bug of ours, not a legitimate difference: kept out of CI's seeds."""
        return self.reason.startswith("BUG:")


def compare(
    ours: Transcript, linux: Transcript, allowed: Sequence[Allowance] | None = None
) -> list[Difference]:
    """Every difference between two transcripts of one sequence.

    Once the devices are in different places, later steps say nothing new, and the
    comparison stops: after a step whose states differ, or whose difference an
    allowance says makes them diverge, or that one of them took and the other
    dropped though their replies look alike (`_hidden_divergence`), and before a
    step that their numbers already make mean different things."""
    diffs: list[Difference] = []
    if ours.error or linux.error:
        if ours.error != linux.error:
            diffs.append(Difference(-1, "error", None, None, ours.error, linux.error))
        return diffs
    for i, (a, b) in enumerate(zip(ours.steps, linux.steps, strict=True)):
        if _numbers(a.model) != _numbers(b.model):
            # An earlier, allowed difference (data one took and the other did not)
            # put the two in different places: "nxt" no longer means the same.
            return diffs
        found = []
        if a.replies != b.replies:
            found.append(Difference(i, "replies", a, b, "; ".join(a.replies), "; ".join(b.replies)))
        if a.result != b.result:
            found.append(Difference(i, "result", a, b, a.result, b.result))
        if a.state != b.state:
            found.append(Difference(i, "state", a, b, a.state, b.state))
        diffs += found
        entries = [explain(d, allowed) for d in found]
        if (
            a.state != b.state
            or any(e is not None and e.diverges for e in entries)
            or _hidden_divergence(b)
        ):
            return diffs
    if ours.end_state != linux.end_state:
        diffs.append(Difference(-1, "end-state", None, None, ours.end_state, linux.end_state))
    if ours.end_read != linux.end_read:
        diffs.append(Difference(-1, "end-read", None, None, ours.end_read, linux.end_read))
    return diffs


def _numbers(model: Model) -> tuple[int, int, int]:
    return model.rcv_nxt, model.snd_nxt, model.peer_ack


def _hidden_divergence(linux: Observed) -> bool:
    """Whether Linux took or dropped this segment where we did the opposite, though
    the replies need not show it: data or a FIN under an ACK Linux finds too old
    (see "linux-old-ack-challenge"), or an ACK of new data on a segment at either
    edge of the window, which Linux takes and we ignore ("linux-right-edge",
    "linux-left-edge")."""
    step, m = linux.step, linux.model
    if not isinstance(step, Inject):
        return False
    flags = parse_flags(step.flags)
    if not flags & Flags.ACK or flags & (Flags.RST | Flags.SYN):
        return False
    ack = _ack_value(step.ack, m)
    if _edge(step):
        return 0 < ack - m.peer_ack and ack - m.snd_nxt <= 0
    return not _outside(step) and _seg_len(step) > 0 and _too_old_for_linux(ack, m)


def _too_old_for_linux(ack: int, m: Model) -> bool:
    behind = m.peer_ack - ack  # how far before SND.UNA
    acked = m.peer_ack - 1  # the octets the peer has acknowledged (the SYN is not one)
    return acked < behind <= PEER_WINDOW


def explain(diff: Difference, allowed: Sequence[Allowance] | None = None) -> Allowance | None:
    """The allow-list entry that explains `diff`, if any."""
    for entry in ALLOWED if allowed is None else allowed:
        if entry.applies(diff):
            return entry
    return None


def unexplained(
    ours: Transcript, linux: Transcript, allowed: Sequence[Allowance] | None = None
) -> list[Difference]:
    return [d for d in compare(ours, linux) if explain(d, allowed) is None]


# ---------------------------------------------------------------- the allow-list


def _ignored(seen: Observed) -> bool:
    """Whether the device dropped the segment: at most an ACK, the state unchanged.
    What Linux did instead (a challenge ACK to a RST, or data the ACK let go)
    follows from taking it."""
    return all(_is_pure_ack(r) for r in seen.replies) and seen.state == seen.model.state


def _took(seen: Observed) -> bool:
    """Whether what the device did can follow from taking the segment as in the
    window: no RST of its own, whatever its ACK let go or moved the state to."""
    return not any("R" in r.partition(" ")[0] for r in seen.replies) and seen.state != "CLOSED"


def _is_pure_ack(reply: str) -> bool:
    flags, _, rest = reply.partition(" ")
    return flags == "." and "(0)" in rest


def _but_pure_acks(replies: Sequence[str]) -> list[str]:
    return [r for r in replies if not _is_pure_ack(r)]


def _only_pure_acks(replies: Sequence[str]) -> bool:
    return bool(replies) and all(_is_pure_ack(r) for r in replies)


def _injected(d: Difference) -> tuple[Inject, Observed, Observed] | None:
    if d.ours is None or d.linux is None or not isinstance(d.ours.step, Inject):
        return None
    return d.ours.step, d.ours, d.linux


def _seg_len(step: Inject) -> int:
    """SEG.LEN: the payload, and one for each of SYN and FIN."""
    flags = parse_flags(step.flags)
    return step.length + (1 if flags & Flags.SYN else 0) + (1 if flags & Flags.FIN else 0)


def _outside(step: Inject) -> bool:
    """Whether the segment lies outside the receive window by RFC 9293's table 6."""
    return step.seq in ("edge", "beyond", "far") or (step.seq == "nxt-1" and _seg_len(step) <= 1)


def _edge(step: Inject) -> bool:
    """Whether Linux takes the segment as in the window where table 6 does not: it
    starts at the right edge, or its only octet is the one before RCV.NXT."""
    return step.seq == "edge" or (step.seq == "nxt-1" and _seg_len(step) == 1)


def _right_edge(d: Difference) -> bool:
    got = _injected(d)
    if got is None:
        return False
    step, ours, linux = got
    return step.seq == "edge" and _ignored(ours) and _took(linux)


def _left_edge(d: Difference) -> bool:
    got = _injected(d)
    if got is None:
        return False
    step, ours, linux = got
    return step.seq == "nxt-1" and _seg_len(step) == 1 and _ignored(ours) and _took(linux)


def _fast_path_old_ack(d: Difference) -> bool:
    got = _injected(d)
    if got is None or d.what != "replies":
        return False
    step, ours, linux = got
    m = ours.model
    took = f". {m.snd_nxt}:{m.snd_nxt}(0) ack {m.rcv_nxt + step.length}"
    refused = f". {m.snd_nxt}:{m.snd_nxt}(0) ack {m.rcv_nxt}"
    return (
        step.flags in ("P.", ".")
        and step.seq == "nxt"
        and step.ack == "behind"
        and step.length > 0
        and ours.replies == (refused,)
        and linux.replies == (took,)
    )


def _no_ack_bit(d: Difference) -> bool:
    got = _injected(d)
    if got is None or d.what != "replies":
        return False
    step, ours, linux = got
    flags = parse_flags(step.flags)
    return (
        not flags & (Flags.ACK | Flags.RST | Flags.SYN)
        and _outside(step)
        and not linux.replies
        and _only_pure_acks(ours.replies)
    )


def _old_ack(d: Difference) -> bool:
    got = _injected(d)
    if got is None:
        return False
    step, _, linux = got
    flags = parse_flags(step.flags)
    if not flags & Flags.ACK or flags & (Flags.RST | Flags.SYN) or _outside(step):
        return False
    m = linux.model
    challenge = f". {m.snd_nxt}:{m.snd_nxt}(0) ack {m.rcv_nxt}"
    return _too_old_for_linux(_ack_value(step.ack, m), m) and linux.replies == (challenge,)


def _after_fin(d: Difference) -> bool:
    got = _injected(d)
    if got is None or d.what != "replies":
        return False
    step, ours, linux = got
    flags = parse_flags(step.flags)
    return (
        linux.model.state in ("CLOSE_WAIT", "CLOSING", "LAST_ACK")
        and not flags & (Flags.RST | Flags.SYN)
        and step.seq in ("nxt", "nxt+1", "inside", "last")
        and not linux.replies
        and _only_pure_acks(ours.replies)
    )


def _time_wait(d: Difference) -> bool:
    got = _injected(d)
    if got is None or d.what != "replies" or got[1].model.state != "TIME_WAIT":
        return False
    step, ours, linux = got
    if "R" in step.flags:
        return _only_pure_acks(ours.replies) and not linux.replies
    return _only_pure_acks(linux.replies) and not ours.replies


def _syn_received_ack_first(d: Difference) -> bool:
    got = _injected(d)
    if got is None or d.what != "replies" or got[2].model.state != "SYN_RECEIVED":
        return False
    step, ours, linux = got
    flags = parse_flags(step.flags)
    if not flags & Flags.ACK or flags & (Flags.RST | Flags.SYN) or not _outside(step):
        return False
    ack = _ack_value(step.ack, linux.model)
    return (
        ack != linux.model.snd_nxt
        and linux.replies == (f"R {ack}:{ack}(0)",)
        and _only_pure_acks(ours.replies)
    )


def _rst_before_fin(d: Difference) -> bool:
    got = _injected(d)
    if got is None or d.what not in ("state", "replies"):
        return False
    step, ours, linux = got
    return (
        "R" in step.flags
        and step.seq == "nxt-1"
        and linux.model.state in ("CLOSE_WAIT", "CLOSING", "LAST_ACK")
        and linux.state == "CLOSED"
        and _ignored(ours)
    )


def _straddles_right_edge(d: Difference) -> bool:
    got = _injected(d)
    if got is None:
        return False
    step, ours, linux = got
    m = linux.model
    start = _seq_offset(step.seq, m.window)
    flags = parse_flags(step.flags)
    return (
        step.seq in ("nxt", "nxt+1", "inside", "last")
        and start < m.window < start + _seg_len(step)
        and not flags & Flags.SYN
        and _ignored(linux)
        and not any("R" in r.partition(" ")[0] for r in ours.replies)
    )


def _second_fin(d: Difference) -> bool:
    got = _injected(d)
    if got is None or d.what != "replies":
        return False
    step, ours, linux = got
    m = linux.model
    if "F" not in step.flags or m.state not in ("CLOSE_WAIT", "CLOSING", "LAST_ACK"):
        return False
    fin_at = m.rcv_nxt + _seq_offset(step.seq, m.window) + step.length
    return (
        fin_at == m.rcv_nxt
        and linux.replies == (f". {m.snd_nxt}:{m.snd_nxt}(0) ack {m.rcv_nxt + 1}",)
        and all(_is_pure_ack(r) and r.endswith(f" ack {m.rcv_nxt}") for r in ours.replies)
    )


def _data_after_fin(d: Difference) -> bool:
    got = _injected(d)
    if got is None or d.what not in ("replies", "state"):
        return False
    step, ours, linux = got
    m = linux.model
    start = m.rcv_nxt + _seq_offset(step.seq, m.window)
    flags = parse_flags(step.flags)
    return (
        m.state in ("CLOSE_WAIT", "CLOSING", "LAST_ACK")
        and not flags & (Flags.RST | Flags.SYN)
        and start < m.rcv_nxt < start + step.length
        and len(linux.replies) == 1
        and linux.replies[0].startswith("R ")
        and linux.state == "CLOSED"
        and _ignored(ours)
    )


def _syn_ack_timer(d: Difference) -> bool:
    if d.what != "replies" or d.ours is None or d.linux is None:
        return False

    def others(replies: Sequence[str]) -> list[str]:
        return [r for r in replies if not r.startswith("S. 0:0(0) ")]

    return others(d.ours.replies) == others(d.linux.replies)


ALLOWED: list[Allowance] = [
    Allowance(
        "linux-right-edge",
        _right_edge,
        "Linux's tcp_sequence() takes a segment that starts exactly at RCV.NXT+RCV.WND "
        "as inside the window, where RFC 9293 §3.10.7.4 table 6 finds it unacceptable "
        "(the catalogue's LINUX_RIGHT_EDGE, A-01/A-06): we ACK a bare ACK there and "
        "ignore a RST, Linux takes the ACK and challenges the RST (RFC 5961 §3.2)",
    ),
    Allowance(
        "linux-left-edge",
        _left_edge,
        "Linux's tcp_sequence() takes a segment whose last octet is RCV.NXT-1 as in "
        "the window (it tests SEG.SEQ+SEG.LEN against RCV.NXT), where RFC 9293 "
        "§3.10.7.4 table 6 needs RCV.NXT =< SEG.SEQ+SEG.LEN-1: a RST carrying that "
        "one old octet gets a challenge ACK from Linux (RFC 5961 §3.2), where we drop "
        "it as an unacceptable RST, in silence; and Linux takes the ACK of such a "
        "segment (of our FIN, say), which we ignore with the rest of it",
    ),
    Allowance(
        "linux-fast-path-old-ack",
        _fast_path_old_ack,
        "Linux's header-prediction fast path (tcp_rcv_established()) queues in-order "
        "data before tcp_ack() judges the ACK, so data under an ACK older than "
        "SND.UNA-MAX.SND.WND is taken; RFC 5961 §5.2 (and RFC 9293 §3.10.7.4) drop "
        "the segment with a challenge ACK, as we do and as Linux's slow path does",
        diverges=True,
    ),
    Allowance(
        "linux-beyond-window-end",
        _straddles_right_edge,
        "recent Linux's tcp_sequence() drops a segment that starts in the window but "
        "ends beyond it while its receive queue holds unread data (the BeyondWindow "
        "drop), ACKing it (a RST it drops in silence); RFC 9293 §3.10.7.4 table 6 "
        "accepts a segment whose first octet is in the window, trims it to the window "
        "and processes it, as we do: its ACK (in LAST-ACK, of our FIN, closing the "
        "connection), or a RST not at RCV.NXT with a challenge ACK (RFC 5961 §3.2)",
        diverges=True,
    ),
    Allowance(
        "linux-second-fin",
        _second_fin,
        "a FIN at RCV.NXT after the peer's FIN has been taken, at a later sequence "
        "number than the first: input no conforming peer sends. Linux's "
        "tcp_data_queue() advances RCV.NXT over it again and ACKs; we keep the first "
        "FIN as the end of the stream and, as RFC 9293 §3.10.7.4 says for a FIN in "
        "CLOSE-WAIT, CLOSING and LAST-ACK, only remain in the state",
        diverges=True,
    ),
    Allowance(
        "linux-resets-data-after-fin",
        _data_after_fin,
        "data beyond the peer's FIN, in a segment that starts before RCV.NXT: input "
        "no conforming peer sends. Linux's tcp_rcv_state_process() resets the "
        "connection (TCPAbortOnData, after RFC 1122 §4.2.2.13's reset for data that "
        "cannot be delivered); RFC 9293 §3.10.7.4 says to ignore segment text in "
        "CLOSE-WAIT, CLOSING and LAST-ACK, which we do",
        diverges=True,
    ),
    Allowance(
        "linux-no-ack-first",
        _no_ack_bit,
        "Linux's tcp_rcv_established() drops a segment with none of ACK, RST and SYN "
        "before it checks the sequence number, so one outside the window gets no ACK; "
        "RFC 9293 §3.10.7.4 checks the sequence number first and ACKs an unacceptable "
        "segment, as we do (the catalogue's LINUX_NO_ACK_FIRST, A-06)",
    ),
    Allowance(
        "linux-old-ack-challenge",
        _old_ack,
        "Linux's tcp_ack() bounds RFC 5961 §5.2's acceptable range SND.UNA-MAX.SND.WND "
        "by the octets acknowledged so far, so an ACK below SND.UNA but within the "
        "peer's largest window gets a challenge ACK and the segment is dropped (its "
        "data and FIN with it); RFC 5961 §5.2 and RFC 9293 §3.10.7.4 take it as a "
        "duplicate and process the segment, as we do (the catalogue's M-09 deviation)",
        diverges=True,
    ),
    Allowance(
        "linux-syn-received-ack-first",
        _syn_received_ack_first,
        "in SYN-RECEIVED Linux's tcp_check_req() tests the ACK number before the "
        "sequence number, so a segment outside the window with a bad ACK gets a RST "
        "<SEQ=SEG.ACK>; RFC 9293 §3.10.7.4 checks the sequence number first and "
        "answers an unacceptable segment with an ACK, as we do",
    ),
    Allowance(
        "linux-rst-before-fin",
        _rst_before_fin,
        "Linux's tcp_reset_check() takes a RST at RCV.NXT-1 in CLOSE-WAIT, CLOSING "
        "and LAST-ACK (for peers whose RST does not count their FIN); RFC 9293 "
        "§3.10.7.4 and RFC 5961 §3.2 find it outside the window and drop it, as we do",
        diverges=True,
    ),
    Allowance(
        "linux-silent-after-fin",
        _after_fin,
        "after the peer's FIN, RFC 9293 §3.10.7.4 ignores segment text in CLOSE-WAIT, "
        "CLOSING and LAST-ACK and keeps the state for another FIN, asking for no ACK: "
        "Linux's tcp_rcv_state_process() drops a segment at or beyond RCV.NXT there "
        "in silence; we answer one beyond RCV.NXT as any out-of-order segment, with an "
        "immediate duplicate ACK (RFC 5681 §4.2, RFC 9293 MUST-58's SHOULD)",
    ),
    Allowance(
        "linux-time-wait",
        _time_wait,
        "Linux's tcp_timewait_state_process() takes in silence only a bare ACK at "
        "RCV.NXT and ACKs any other non-RST segment, even an acceptable one whose "
        "text RFC 9293 §3.10.7.4 ignores without an ACK; and it drops a RST in the "
        "window but not at RCV.NXT without the challenge ACK of RFC 5961 §3.2, which "
        "we send (the catalogue's C-11 and C-12 deviations)",
    ),
    Allowance(
        "timer-syn-ack-retransmission",
        _syn_ack_timer,
        "a SYN-ACK sent again by its retransmission timer, which is not what the "
        "step is about: Linux's starts at 1 s (TCP_TIMEOUT_INIT, RFC 6298 §2.1) "
        "whatever tcp_rto_min_us says, ours at rto_initial, which the fuzzer sets to "
        "RTO_MIN to hold timers off",
    ),
]


# ---------------------------------------------------------------- many seeds


@dataclass
class Outcome:
    seed: int
    ours: Transcript
    linux: Transcript
    differences: list[Difference]
    seconds: float

    @property
    def unexplained(self) -> list[Difference]:
        return [d for d in self.differences if explain(d) is None]

    @property
    def known_bugs(self) -> list[Difference]:
        return [d for d in self.differences if (e := explain(d)) is not None and e.bug]


def run_seed(seed: int, steps: int = 8) -> Outcome:
    started = time.monotonic()
    sequence = generate(seed, steps)
    by_device = {name: run_sequence(name, seed, sequence) for name in DUTS}
    ours, linux = by_device["tcpstack"], by_device["linux"]
    return Outcome(seed, ours, linux, compare(ours, linux), time.monotonic() - started)


def report(outcome: Outcome, *, show: bool = False) -> Iterator[str]:
    bad = outcome.unexplained
    verdict = "DIFF" if bad else "same"
    explained = len(outcome.differences) - len(bad)
    extra = f", {explained} allowed" if explained else ""
    yield f"{verdict:<5} seed {outcome.seed:<6} {outcome.seconds:5.2f} s{extra}"
    for diff in outcome.differences:
        entry = explain(diff)
        tag = "UNEXPLAINED" if entry is None else f"allowed ({entry.name})"
        if entry is not None and entry.bug:
            tag = f"known bug ({entry.name})"
        yield f"  {tag}: {diff}"
    if bad or show:
        yield "  " + outcome.ours.text().replace("\n", "\n  ")
        yield "  " + outcome.linux.text().replace("\n", "\n  ")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tcpstack.testing.fuzz",
        description="Differential fuzzing of this endpoint against Linux (needs root).",
    )
    parser.add_argument("--seeds", type=int, default=50, help="how many seeds (from --first)")
    parser.add_argument("--first", type=int, default=0, help="the first seed")
    parser.add_argument("--seed", type=int, action="append", help="just these seeds")
    parser.add_argument("--steps", type=int, default=8, help="steps per sequence")
    parser.add_argument("--show", action="store_true", help="both transcripts of every seed")
    args = parser.parse_args(argv)
    seeds = args.seed or range(args.first, args.first + args.seeds)
    failed = bugs = 0
    for seed in seeds:
        outcome = run_seed(seed, args.steps)
        failed += bool(outcome.unexplained)
        bugs += bool(outcome.known_bugs)
        for line in report(outcome, show=args.show):
            print(line, flush=True)
    print(
        f"{failed} of {len(seeds)} seeds with unexplained differences, "
        f"{bugs} meeting a known bug of ours"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
