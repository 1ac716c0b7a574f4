"""The soak (conformance plan L-03): gigabytes each way under loss, past a sequence wrap.

`tcpstack bench --soak [--size 4G] [--loss 0.5]` connects our endpoint to a kernel
peer that runs in its own process in the lab's peer namespace (so that its CPU and
memory are not ours), and streams SIZE bytes each way at once. Loss is applied
where packets arrive, as in `tcpstack transfer`: nftables at the kernel's ingress,
our impairment layer (seeded) at ours.

The verdict needs every one of:

- byte-exact both ways: each receiver's sha256 equals its sender's;
- no stall: neither direction goes STALL seconds without progress, and the whole run
  ends before its deadline;
- sequence wrap: our send sequence crosses 2^32 (below 4 GiB our ISN is placed so
  that it does, halfway through); the kernel's must too when SIZE >= 4 GiB, where
  any ISN wraps;
- retransmission budget: bytes retransmitted / SIZE, ours and the kernel's (what it
  resends depends on our ACKs and SACK blocks), at most BUDGET_FACTOR times the loss
  rate (see `budget`);
- flat memory: our process's RSS after the warm-up grows by at most RSS_GROWTH.

The data is streamed, never held whole: a 4 GiB run needs no 8 GiB of payload.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

PORT = 9200
CHUNK = 1 << 18
_POOL = 1 << 20
GIB = 1 << 30
SEQ_SPACE = 1 << 32

# To hold a direction still for 10 s, one segment must be lost six times running
# (backed-off RTOs of 0.2, 0.4, ... 6.4 s, tail-loss probes aside): at 0.5% loss,
# about 1e-14 per loss. A gap that long is a stall, not bad luck.
STALL = 10.0
# Each byte lost (fraction p of the bytes, since a drop takes a frame whatever its
# size) must be sent again at least once, and a resend is lost with p too: p/(1-p).
# Above that, a SACK sender pays for a retransmission timeout (everything outstanding
# goes again) and for tail-loss probes. Three times p leaves room for those and
# still catches a sender that resends whole windows on every loss, which costs
# tens of times p.
BUDGET_FACTOR = 3.0
# Without loss some retransmission is still fair: tail-loss probes resend a segment
# on purpose, and a 2-vCPU machine under load can delay an ACK past the RTO.
BUDGET_FLOOR = 0.001
# Growth of our RSS after the warm-up (10% of the bytes) that still counts as flat.
# Buffers are bounded (1 MiB each way in the stack, a few chunks in flight), so any
# growth that scales with the bytes moved is a leak. 64 MiB is far above what the
# runs here grew by (under 1 MiB) and catches a leak of 512 bytes per 64 KiB moved
# over the default 8 GiB.
RSS_GROWTH = 64 << 20
WARMUP = 0.10
SAMPLE_EVERY = 0.5


# ------------------------------------------------------------------- the data


def chunks(size: int, seed: str) -> Iterator[bytes]:
    """SIZE bytes of pseudo-random data in CHUNK pieces, the same for the same seed.

    Each chunk starts with its own index and takes its body from a different offset
    of a 1 MiB random pool, so a chunk delivered in the wrong place changes the hash
    (a plain repeated block would not show a shift by a multiple of its length)."""
    pool = b"".join(
        hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range((_POOL + CHUNK) // 32)
    )
    sent = 0
    index = 0
    while sent < size:
        n = min(CHUNK, size - sent)
        offset = (index * 40_503) % _POOL
        piece = index.to_bytes(8, "big") + pool[offset : offset + CHUNK - 8]
        yield piece[:n]
        sent += n
        index += 1


# The kernel side, run in the peer namespace by the same interpreter: accept one
# connection, send SIZE bytes of `chunks(size, "down")` while hashing what arrives,
# and print one JSON line with both digests and the kernel's TCP_INFO byte counts.
_PEER = r"""
import hashlib, json, socket, struct, sys, threading
sys.path.insert(0, sys.argv[1])
from tcpstack.soak import chunks
host, port, size, stall = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
server = socket.create_server((host, port))
print("listening", flush=True)
server.settimeout(stall * 3)
conn, _ = server.accept()
conn.settimeout(stall)
result = {"sent": 0, "received": 0, "error": None}
sent_digest, received_digest = hashlib.sha256(), hashlib.sha256()
def send():
    try:
        for piece in chunks(size, "down"):
            conn.sendall(piece)
            sent_digest.update(piece)
            result["sent"] += len(piece)
        conn.shutdown(socket.SHUT_WR)
    except BaseException as exc:
        result["error"] = "send: " + repr(exc)
sender = threading.Thread(target=send, daemon=True)
sender.start()
try:
    while data := conn.recv(1 << 18):
        received_digest.update(data)
        result["received"] += len(data)
except BaseException as exc:
    result["error"] = "receive: " + repr(exc)
sender.join(stall)
# struct tcp_info: tcpi_bytes_sent at 200 and tcpi_bytes_retrans at 208 (Linux >= 4.19).
info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
bytes_sent, bytes_retrans = struct.unpack_from("=QQ", info, 200)
result.update(sent_sha256=sent_digest.hexdigest(), received_sha256=received_digest.hexdigest(),
              bytes_sent=bytes_sent, bytes_retrans=bytes_retrans)
conn.close()
print(json.dumps(result), flush=True)
"""


# ------------------------------------------------------------------- the verdict


@dataclass
class SoakResult:
    size: int
    loss: float
    seconds: float = 0.0
    up_ok: bool = False  # the kernel received exactly what we sent
    down_ok: bool = False
    up_received: int = 0
    down_received: int = 0
    our_start_seq: int = 0  # our first data byte's sequence number
    kernel_start_seq: int = 0
    stall: float = STALL  # seconds without progress that count as a stall
    stalled: str = ""  # what stalled, if anything
    longest_gap_up: float = 0.0  # longest time without progress, seconds
    longest_gap_down: float = 0.0
    our_retransmitted: int = 0  # bytes
    kernel_retransmitted: int = 0
    rss_start: int = 0  # bytes: before the stack, after the warm-up, highest, at the end
    rss_warm: int = 0
    rss_peak: int = 0
    rss_end: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def goodput(self) -> float:
        """MB/s of application data, both directions together."""
        moved = self.up_received + self.down_received
        return moved / self.seconds / 1e6 if self.seconds > 0 else 0.0


def wraps(start: int, size: int) -> bool:
    """Whether SIZE bytes from sequence number START cross 2^32."""
    return start % SEQ_SPACE + size > SEQ_SPACE


def budget(loss_percent: float) -> float:
    """The most bytes retransmitted per byte sent that a sender may spend at this loss."""
    return max(BUDGET_FLOOR, BUDGET_FACTOR * loss_percent / 100)


def verdict(r: SoakResult, rss_growth: int = RSS_GROWTH) -> list[str]:
    """Every reason the soak failed; empty if it passed."""
    problems = list(r.errors)
    if r.stalled:
        problems.append(f"stall: {r.stalled}")
    if not r.up_ok:
        problems.append(f"upload not byte-exact ({r.up_received} of {r.size} bytes)")
    if not r.down_ok:
        problems.append(f"download not byte-exact ({r.down_received} of {r.size} bytes)")
    # From what arrived, not what was meant to: a run that stops short may stop before 0.
    if not wraps(r.our_start_seq, r.up_received):
        problems.append("our sequence numbers did not wrap")
    if r.size >= SEQ_SPACE and not wraps(r.kernel_start_seq, r.down_received):
        problems.append("the kernel's sequence numbers did not wrap")
    allowed = budget(r.loss)
    for who, resent in (("our", r.our_retransmitted), ("the kernel's", r.kernel_retransmitted)):
        ratio = resent / r.size if r.size else 0.0
        if ratio > allowed:
            problems.append(
                f"{who} retransmission ratio {ratio:.4%} over the budget {allowed:.4%}"
                f" ({BUDGET_FACTOR:g} x {r.loss:g}% loss, at least {BUDGET_FLOOR:.1%})"
            )
    if r.rss_peak - r.rss_warm > rss_growth:
        problems.append(
            f"RSS not flat: {_mib(r.rss_warm)} after the warm-up, peak {_mib(r.rss_peak)}"
            f" (more than {_mib(rss_growth)} of growth)"
        )
    return problems


def lines(r: SoakResult) -> list[str]:
    ours = r.our_retransmitted / r.size if r.size else 0.0
    theirs = r.kernel_retransmitted / r.size if r.size else 0.0
    return [
        f"moved     {r.up_received / GIB:.3f} GiB up, {r.down_received / GIB:.3f} GiB down"
        f" in {r.seconds:.1f} s: {r.goodput:.1f} MB/s both ways together",
        f"exact     upload {'sha256 ok' if r.up_ok else 'MISMATCH'},"
        f" download {'sha256 ok' if r.down_ok else 'MISMATCH'}",
        f"wrap      ours from {r.our_start_seq:#010x}:"
        f" {_yes(wraps(r.our_start_seq, r.up_received))},"
        f" kernel's from {r.kernel_start_seq:#010x}:"
        f" {_yes(wraps(r.kernel_start_seq, r.down_received))}",
        f"progress  longest gap {r.longest_gap_up:.2f} s up, {r.longest_gap_down:.2f} s down"
        f" (stall at {r.stall:g} s)",
        f"retrans   ours {ours:.4%}, kernel's {theirs:.4%} of the bytes"
        f" (budget {budget(r.loss):.4%})",
        f"RSS       start {_mib(r.rss_start)}, after warm-up {_mib(r.rss_warm)},"
        f" peak {_mib(r.rss_peak)}, end {_mib(r.rss_end)}",
        "counters  " + ", ".join(f"{k} {v}" for k, v in sorted(r.counters.items()) if v),
    ]


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _yes(flag: bool) -> str:
    return "wrapped" if flag else "no wrap"


# ------------------------------------------------------------------- the run


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def deadline_for(size: int) -> float:
    """Seconds the whole soak may take: generous (2 MB/s each way), but finite."""
    return 120.0 + size / 2e6


def run(
    size: int,
    loss: float,
    *,
    stall: float = STALL,
    deadline: float | None = None,
    emit: Callable[[str], None] = print,
    on_stack: Callable[[Any], None] | None = None,
) -> SoakResult:
    """The soak; `on_stack(stack)` may set up the stack before it connects (hooks)."""
    from tcpstack import transfer
    from tcpstack.isn import fixed_isn
    from tcpstack.lab import Lab

    result = SoakResult(size=size, loss=loss, stall=stall)
    limit = deadline if deadline is not None else deadline_for(size)
    result.rss_start = _rss()
    # Below 4 GiB a random ISN may not wrap: start ours so that it wraps halfway.
    isn = fixed_isn(SEQ_SPACE - size // 2) if size < SEQ_SPACE else None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with Lab("veth") as lab:
        if loss:
            lab.peer_loss(loss, direction="in")
        impairment = transfer.with_inbound_loss(f"seed={size % 1000}", loss) if loss else None
        peer = lab.peer_popen(
            [sys.executable, "-c", _PEER, root, lab.peer_address, str(PORT), str(size), str(stall)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            _soak(lab, peer, result, isn, impairment, stall, limit, emit, on_stack)
        finally:
            if peer.poll() is None:
                peer.kill()
            peer.wait(10)
    return result


def _soak(
    lab: Any,
    peer: subprocess.Popen[str],
    result: SoakResult,
    isn: Any,
    impairment: Any,
    stall: float,
    limit: float,
    emit: Callable[[str], None],
    on_stack: Callable[[Any], None] | None,
) -> None:
    from tcpstack.stack import Stack

    assert peer.stdout is not None
    # A line from the peer with a deadline: a reader thread, joined with a timeout.
    peer_lines: list[str] = []

    def read_peer() -> None:
        assert peer.stdout is not None
        for line in peer.stdout:
            peer_lines.append(line.strip())

    reader = threading.Thread(target=read_peer, daemon=True)
    reader.start()
    if not _wait(lambda: bool(peer_lines), 30.0):
        raise TimeoutError("the kernel peer did not start listening")
    size = result.size
    with Stack(
        lab.endpoint_interface,
        lab.endpoint_cidr,
        netns=lab.endpoint_netns,
        isn=isn,
        impairment=impairment,
    ) as stack:
        if on_stack is not None:
            on_stack(stack)
        sock = stack.socket()
        sock.settimeout(stall)
        sock.connect((lab.peer_address, PORT))
        info = sock.info()
        assert info is not None
        result.our_start_seq, result.kernel_start_seq = info.snd_nxt, info.rcv_nxt
        progress = {"up": 0, "down": 0}
        digests = {"up": hashlib.sha256(), "down": hashlib.sha256()}
        errors: list[str] = []
        # When each direction's worker ended: the watcher only notices at its next sample.
        ended: list[float] = []

        def send() -> None:
            try:
                for piece in chunks(size, "up"):
                    sock.sendall(piece)
                    digests["up"].update(piece)
                    progress["up"] += len(piece)
                sock.shutdown(socket.SHUT_WR)
            except Exception as exc:
                errors.append(f"our send: {exc!r}")
            ended.append(time.monotonic())

        def receive() -> None:
            try:
                while data := sock.recv(CHUNK):
                    digests["down"].update(data)
                    progress["down"] += len(data)
            except Exception as exc:
                errors.append(f"our receive: {exc!r}")
            ended.append(time.monotonic())

        workers = [threading.Thread(target=f, daemon=True) for f in (send, receive)]
        started = time.monotonic()
        for worker in workers:
            worker.start()
        samples = _watch(result, progress, workers, started, stall, limit, emit)
        if result.stalled:
            # Abort: the workers and the peer see the connection go, instead of
            # running on (or waiting out their timeouts) past the verdict.
            sock.close()
        for worker in workers:
            worker.join(stall)
        result.seconds = (max(ended) if len(ended) == 2 else time.monotonic()) - started
        # The peer reports once it has read our FIN: only then has the last of our
        # data arrived, so our stack must keep running until it does.
        reported = _wait(lambda: len(peer_lines) >= 2, stall * 2)
        result.errors += errors
        result.down_received = progress["down"]
        totals = stack.stats()
        result.our_retransmitted = totals.get("bytes_retransmitted", 0)
        result.counters = {
            k: v for k, v in totals.items() if k in _SHOWN or k.startswith("impair_")
        }
        result.rss_end = _rss()
        result.rss_peak = max(samples)
        sock.close()
    if not reported:
        result.errors.append("no report from the kernel peer")
        return
    report = json.loads(peer_lines[1])
    if report["error"]:
        result.errors.append(f"kernel side: {report['error']}")
    result.up_received = report["received"]
    result.up_ok = report["received"] == size and (
        report["received_sha256"] == digests["up"].hexdigest()
    )
    result.down_ok = progress["down"] == size and (
        report["sent_sha256"] == digests["down"].hexdigest()
    )
    result.kernel_retransmitted = report["bytes_retrans"]


_SHOWN = (
    "retransmissions",
    "bytes_retransmitted",
    "fast_retransmits",
    "timeouts",
    "tail_loss_probes",
    "spurious_recoveries_undone",
    "sack_blocks_sent",
    "ooo_segments_queued",
)


def _watch(
    result: SoakResult,
    progress: dict[str, int],
    workers: list[threading.Thread],
    started: float,
    stall: float,
    limit: float,
    emit: Callable[[str], None],
) -> list[int]:
    """Sample RSS and progress until both workers end, a stall, or the deadline."""
    samples = [_rss()]
    last = dict(progress)
    moved_at = {"up": started, "down": started}
    gaps = {"up": 0.0, "down": 0.0}
    next_line = started + 10.0
    total = 2 * result.size
    while any(w.is_alive() for w in workers):
        time.sleep(SAMPLE_EVERY)
        now = time.monotonic()
        samples.append(rss := _rss())
        if not result.rss_warm and progress["up"] + progress["down"] >= WARMUP * total:
            result.rss_warm = rss
        for way in ("up", "down"):
            if progress[way] != last[way] or progress[way] >= result.size:
                last[way] = progress[way]
                moved_at[way] = now
            gaps[way] = max(gaps[way], now - moved_at[way])
            if now - moved_at[way] > stall and not result.stalled:
                result.stalled = f"no {way}load progress for {stall:g} s at {progress[way]} bytes"
        if now - started > limit and not result.stalled:
            result.stalled = f"not finished within the deadline of {limit:.0f} s"
        if result.stalled:
            break  # the sockets' own timeouts (stall seconds) end the workers
        if now >= next_line:
            done = progress["up"] + progress["down"]
            emit(
                f"  {now - started:6.0f} s  {done / GIB:6.2f} of {total / GIB:.2f} GiB"
                f"  RSS {_mib(rss)}"
            )
            next_line = now + 10.0
    result.longest_gap_up, result.longest_gap_down = gaps["up"], gaps["down"]
    if not result.rss_warm:
        result.rss_warm = samples[-1]
    return samples


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    """Whether `condition` became true within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def main(size: int, loss: float, json_path: str | None = None, **kw: Any) -> int:
    """Run, print, judge; `kw` go to `run` (a shorter stall, a deadline, a hook)."""
    print(
        f"soak: {size / GIB:g} GiB each way at {loss:g}% loss each way"
        f" (deadline {kw.get('deadline') or deadline_for(size):.0f} s,"
        f" stall at {kw.get('stall', STALL):g} s)"
    )
    try:
        result = run(size, loss, **kw)
    except (OSError, RuntimeError) as exc:
        # Connect refused, a lab that would not build, a peer that never reported.
        print(f"soak: FAIL: {exc!r}")
        return 1
    for line in lines(result):
        print(line)
    problems = verdict(result)
    if json_path:
        with open(json_path, "w") as out:
            json.dump({**asdict(result), "problems": problems}, out, indent=2)
            out.write("\n")
    for problem in problems:
        print(f"FAIL: {problem}")
    print("soak: PASS" if not problems else "soak: FAIL")
    return 0 if not problems else 1
