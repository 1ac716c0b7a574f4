"""The benchmark: this endpoint against the kernel, on the same machine in the same run.

Machines like this one are noisy, so every figure is printed beside the same
measurement between two kernels over an identical veth pair, and as the ratio of
the two. Figures:

- bulk receive and bulk send: one direction, sha256-checked, MB/s (veth and TAP);
- CPU seconds per MB moved, from the process's CPU time (both ends of a transfer
  run in this process, for us and for the kernel pair alike);
- connect latency: median and p99 of sequential connects to a kernel listener;
- accepts per second: a kernel client (another process) opening connections to us;
- the cost of one segment with 1, 100 and 1000 connections open: a kernel sender in
  another process spreads small messages over them, and our process's CPU time is
  divided by the segments we received and sent;
- loss recovery: from the transmission of a segment that is dropped once to the ACK
  that covers it, in a bulk send;
- peak RSS, and the CPU an idle stack uses (no polling tick: it should be none).

`python -m tcpstack bench` prints them; `--json FILE` writes them; `--check FILE`
compares the ratios with a recorded run and fails on a slowdown of more than 3x.

Two longer modes, for scripts/ rather than CI: `--soak` (tcpstack.soak, gigabytes
each way under loss) and `--grid` (tcpstack.grid, goodput and latency over delay x
loss x buffer).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from tcpstack import transfer
from tcpstack.capture import Capture
from tcpstack.hooks import DROP, Hook, HookContext
from tcpstack.lab import Lab
from tcpstack.stack import Stack
from tcpstack.trace import SegmentEvent, TraceEvent

PORT = 9100
TIMEOUT = 60.0
# A slowdown beyond this factor, against the ratio recorded in the repo, fails --check.
TOLERANCE = 3.0


@dataclass
class Figure:
    name: str
    unit: str
    ours: float
    kernel: float | None = None  # the kernel pair's figure, where there is one
    better: str = "higher"  # or "lower"
    note: str = ""
    # Compared by --check: the figures whose ratio is steady enough between runs here
    # (tail latencies and a sub-millisecond kernel recovery time are not).
    checked: bool = True

    @property
    def ratio(self) -> float | None:
        """ours / kernel: for "higher" figures 1.0 is parity, below is slower;
        for "lower" ones (times, costs) above 1.0 is slower."""
        if self.kernel is None or self.kernel == 0:
            return None
        return self.ours / self.kernel

    def line(self) -> str:
        kernel = f"{self.kernel:12.3f}" if self.kernel is not None else f"{'-':>12}"
        ratio = f"{self.ratio:8.3f}" if self.ratio is not None else f"{'-':>8}"
        return f"{self.name:<34} {self.ours:12.3f} {kernel} {ratio}  {self.unit:<8} {self.note}"


@dataclass
class Settings:
    """What to measure, and how much: `quick()` for CI, the defaults for the README."""

    bulk_bytes: int = 50 << 20
    connects: int = 500
    accepts: int = 1000
    segment_messages: int = 10_000
    fanouts: tuple[int, ...] = (1, 100, 1000)
    recovery_bytes: int = 8 << 20
    idle_seconds: float = 2.0
    runs: int = 1  # bulk and latency figures are the median of this many runs
    tap: bool = True

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            bulk_bytes=10 << 20,
            connects=100,
            accepts=200,
            segment_messages=2000,
            fanouts=(1, 100),
            recovery_bytes=4 << 20,
            idle_seconds=1.0,
            tap=False,
        )


@dataclass
class Report:
    machine: dict[str, Any]
    settings: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"machine: {self.machine['cpus']} CPUs, {self.machine['cpu']}, "
            f"Linux {self.machine['kernel']}, Python {self.machine['python']}",
            f"{'figure':<34} {'tcpstack':>12} {'kernel':>12} {'ratio':>8}  unit",
        ]
        out += [f.line() for f in self.figures]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "figures": [{**asdict(f), "ratio": f.ratio} for f in self.figures],
        }


def machine() -> dict[str, Any]:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def run(settings: Settings, emit: Callable[[str], None] = print) -> Report:
    report = Report(machine(), asdict(settings))

    def add(figure: Figure) -> None:
        report.figures.append(figure)
        emit(figure.line())

    emit(report.lines()[0])
    emit(report.lines()[1])
    for direction, name in (("down", "bulk receive"), ("up", "bulk send")):
        ours = [_bulk("veth", direction, settings.bulk_bytes) for _ in range(settings.runs)]
        theirs = [_bulk("kernel", direction, settings.bulk_bytes) for _ in range(settings.runs)]
        add(Figure(f"{name} (veth)", "MB/s", _median(o[0] for o in ours),
                   _median(k[0] for k in theirs)))  # fmt: skip
        add(Figure(f"{name}: CPU per MB", "ms/MB", _median(o[1] for o in ours),
                   _median(k[1] for k in theirs), better="lower"))  # fmt: skip
        if settings.tap:
            tap = [_bulk("tap", direction, settings.bulk_bytes) for _ in range(settings.runs)]
            add(Figure(f"{name} (TAP)", "MB/s", _median(t[0] for t in tap),
                       _median(k[0] for k in theirs), note="kernel: veth"))  # fmt: skip
    latencies = [_connect_latencies("veth", settings.connects) for _ in range(settings.runs)]
    reference = [_connect_latencies("kernel", settings.connects) for _ in range(settings.runs)]
    add(Figure("connect latency, median", "ms", _median(_pct(x, 50) for x in latencies),
               _median(_pct(x, 50) for x in reference), better="lower"))  # fmt: skip
    add(Figure("connect latency, p99", "ms", _median(_pct(x, 99) for x in latencies),
               _median(_pct(x, 99) for x in reference), better="lower", checked=False))  # fmt: skip
    add(Figure("accepts per second", "conn/s", _accept_rate("veth", settings.accepts),
               _accept_rate("kernel", settings.accepts)))  # fmt: skip
    costs = {n: _segment_cost(n, settings.segment_messages) for n in settings.fanouts}
    for n, cost in costs.items():
        add(Figure(f"per-segment cost, {n} connections", "µs", cost, better="lower",
                   note=f"x{cost / costs[settings.fanouts[0]]:.2f} of 1 connection"))  # fmt: skip
    add(Figure("loss recovery, one drop", "ms", _recovery("veth", settings.recovery_bytes),
               _recovery("kernel", settings.recovery_bytes), better="lower",
               checked=False))  # fmt: skip
    add(Figure("idle stack CPU", "% core", _idle_cpu(settings.idle_seconds), better="lower"))
    add(Figure("peak RSS", "MB", _peak_rss_mb(), better="lower"))
    return report


# ----------------------------------------------------------------- measurements


@contextmanager
def _cpu() -> Iterator[list[float]]:
    """CPU seconds this process used inside the block (all threads, user and system)."""
    box: list[float] = []
    before = time.process_time()
    yield box
    box.append(time.process_time() - before)


def _bulk(kind: str, direction: str, size: int) -> tuple[float, float]:
    """(MB/s, CPU ms per MB) for one direction: ours on veth/TAP, or the kernel pair."""
    megabytes = size / 1e6
    with Lab(kind) as lab, _cpu() as cpu:
        if kind == "kernel":
            result = transfer.run_kernel(lab, size=size, directions=direction, timeout=TIMEOUT)
        else:
            result = transfer.run_ours(lab, size=size, directions=direction, timeout=TIMEOUT)
    if not result.ok:
        raise RuntimeError(f"bulk transfer failed: {result.detail}")
    return result.goodput, cpu[0] * 1000 / megabytes


def _connect_latencies(kind: str, count: int) -> list[float]:
    """Milliseconds per connect() to a kernel listener, one after another."""
    with Lab(kind) as lab:
        with lab.in_peer():
            server = socket.create_server((lab.peer_address, PORT), backlog=count)
        accepted: list[socket.socket] = []

        def accept_all() -> None:
            server.settimeout(TIMEOUT)
            for _ in range(count):
                accepted.append(server.accept()[0])

        acceptor = threading.Thread(target=accept_all, daemon=True)
        acceptor.start()
        times: list[float] = []
        stack = None
        try:
            if kind == "kernel":

                def make() -> Any:
                    with lab.in_endpoint():
                        return socket.socket()

            else:
                stack = Stack(lab.endpoint_interface, lab.endpoint_cidr, netns=lab.endpoint_netns)
                make = stack.socket
            clients = []
            for _ in range(count):
                client = make()
                client.settimeout(TIMEOUT)
                started = time.perf_counter()
                client.connect((lab.peer_address, PORT))
                times.append((time.perf_counter() - started) * 1000)
                clients.append(client)
            acceptor.join(TIMEOUT)
            for client in clients:
                client.close()
        finally:
            for conn in accepted:
                conn.close()
            server.close()
            if stack is not None:
                stack.close()
    return times


# A kernel client in the peer namespace, in its own process so that its CPU is not
# ours: opens COUNT connections one after another and keeps them until stdin closes.
_CLIENT = """
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conns = []
for _ in range(count):
    s = socket.create_connection((host, port), timeout=60)
    conns.append(s)
print("done", flush=True)
sys.stdin.read()
"""

# A kernel sender in the peer namespace: COUNT connections, then on a line from
# stdin, MESSAGES messages of 100 bytes spread round-robin over them.
_SENDER = """
import socket, sys
host, port, count, messages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
conns = []
for _ in range(count):
    s = socket.create_connection((host, port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conns.append(s)
print("connected", flush=True)
sys.stdin.readline()
payload = b"m" * 100
for i in range(messages):
    conns[i % count].sendall(payload)
print("sent", flush=True)
sys.stdin.read()
"""


def _peer_process(lab: Lab, code: str, *args: object) -> subprocess.Popen[str]:
    return lab.peer_popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _expect(process: subprocess.Popen[str], word: str) -> None:
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if line != word:
        raise RuntimeError(f"the kernel side said {line!r}, not {word!r}")


def _finish(process: subprocess.Popen[str]) -> None:
    if process.stdin is not None:
        process.stdin.close()
    try:
        process.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(TIMEOUT)


def _accept_rate(kind: str, count: int) -> float:
    """Connections per second a kernel client gets accepted, from first to last."""
    with Lab(kind) as lab:
        stack = None
        if kind == "kernel":
            with lab.in_endpoint():
                listener: Any = socket.create_server((lab.endpoint_address, PORT), backlog=count)
        else:
            stack = Stack(lab.endpoint_interface, lab.endpoint_cidr, netns=lab.endpoint_netns)
            listener = stack.socket()
            listener.bind(("", PORT))
            listener.listen(count)
        listener.settimeout(TIMEOUT)
        accepted = []
        try:
            client = _peer_process(lab, _CLIENT, lab.endpoint_address, PORT, count)
            try:
                accepted.append(listener.accept()[0])
                started = time.perf_counter()
                for _ in range(count - 1):
                    accepted.append(listener.accept()[0])
                elapsed = time.perf_counter() - started
                _expect(client, "done")
            finally:
                _finish(client)
        finally:
            for conn in accepted:
                conn.close()
            listener.close()
            if stack is not None:
                stack.close()
    return (count - 1) / elapsed


def _segment_cost(connections: int, messages: int) -> float:
    """Our CPU microseconds per segment received or sent, with `connections` open."""
    with (
        Lab("veth") as lab,
        Stack(lab.endpoint_interface, lab.endpoint_cidr, netns=lab.endpoint_netns) as stack,
    ):
        listener = stack.socket()
        listener.bind(("", PORT))
        listener.listen(connections)
        listener.settimeout(TIMEOUT)
        sender = _peer_process(lab, _SENDER, lab.endpoint_address, PORT, connections, messages)
        accepted = []
        try:
            for _ in range(connections):
                accepted.append(listener.accept()[0])
            _expect(sender, "connected")
            before = _segments(stack)
            wanted = messages * 100
            with _cpu() as cpu:
                assert sender.stdin is not None
                sender.stdin.write("go\n")
                sender.stdin.flush()
                _expect(sender, "sent")
                deadline = time.monotonic() + TIMEOUT
                # Every byte has arrived when the connections' counters say so. Summing
                # them costs O(connections), which at 1000 connections every 10 ms was
                # a fifth of what we measured: sum them only once the engine's own
                # segment counter has stood still for 10 ms.
                while _bytes_received(stack) < wanted:
                    last = -1
                    while (count := stack._engine.stats["tcp_in"]) != last:
                        if time.monotonic() > deadline:
                            raise TimeoutError("the kernel's messages did not all arrive")
                        last = count
                        time.sleep(0.01)
            segments = _segments(stack) - before
        finally:
            _finish(sender)
            for conn in accepted:
                conn.close()
    return cpu[0] * 1e6 / max(segments, 1)


def _segments(stack: Stack) -> int:
    """Segments received and sent: each connection's own first messages are ACKed
    one by one (quick ACKs, as Linux does), so with 1000 connections of 10 messages
    there is an ACK per segment received and with one connection few. Both count as
    work, so both count as segments."""
    stats = stack.stats()
    return stats.get("segments_in", 0) + stats.get("segments_out", 0)


def _bytes_received(stack: Stack) -> int:
    return int(stack.stats().get("bytes_received", 0))


def _recovery(kind: str, size: int) -> float:
    """Milliseconds from sending a segment that is lost once to the ACK covering it."""
    drop_at = 20  # the 20th data packet of a bulk send (a GSO super-packet, for Linux)
    segments: list[tuple[float, str, int, int, int]] = []  # time, dir, seq, len, ack
    with Lab(kind) as lab:
        if kind == "kernel":
            lab.peer_loss(100, direction="in", tcp_flags="ack", nth=drop_at)

            def captured(frame: Any) -> None:
                _record_frame(segments, frame.time, frame.outgoing, frame.frame)

            capture = Capture(lab.endpoint_interface, lab.endpoint_netns, captured).start()
            try:
                result = transfer.run_kernel(lab, size=size, directions="up", timeout=TIMEOUT)
            finally:
                capture.stop()
        else:
            seen = 0

            def nth_data(ctx: HookContext) -> bool:
                nonlocal seen
                if ctx.segment.payload:
                    seen += 1
                return seen == drop_at and bool(ctx.segment.payload)

            def observe(event: TraceEvent) -> None:
                if isinstance(event, SegmentEvent):
                    s = event.segment
                    segments.append((event.time, event.direction, s.seq, len(s.payload), s.ack))

            def setup(stack: Stack) -> None:
                stack.add_hook(Hook("out", DROP, where=nth_data, name="one loss"))
                stack.subscribe(observe)

            result = transfer.run_ours(
                lab, size=size, directions="up", timeout=TIMEOUT, on_stack=setup
            )
    if not result.ok:
        raise RuntimeError(f"transfer under one loss failed: {result.detail}")
    return _recovery_ms(segments)


def _record_frame(
    segments: list[tuple[float, str, int, int, int]], when: float, outgoing: bool, frame: bytes
) -> None:
    from tcpstack import wire

    try:
        packet = wire.decode_frame(frame, checksum_trusted=True)
    except wire.DecodeError:
        return
    if isinstance(packet, wire.TcpPacket):
        s = packet.segment
        segments.append((when, "out" if outgoing else "in", s.seq, len(s.payload), s.ack))


def _recovery_ms(segments: list[tuple[float, str, int, int, int]]) -> float:
    """The first data sent again: from the first transmission of the bytes it covers
    to the first ACK past them."""
    from tcpstack.core import seq

    sent: list[tuple[int, int, float]] = []  # start, end, when first sent
    highest: int | None = None
    for when, direction, start, length, _ in segments:
        if direction != "out" or not length:
            continue
        end = seq.add(start, length)
        if highest is not None and seq.lt(start, highest):
            original = next((t for s, e, t in sent if seq.le(s, start) and seq.lt(start, e)), None)
            acked = next(
                (t for t, d, _, _, ack in segments if d == "in" and t >= when and seq.ge(ack, end)),
                None,
            )
            if original is None or acked is None:
                break
            return (acked - original) * 1000
        sent.append((start, end, when))
        highest = end
    raise RuntimeError("no retransmission found: the drop did not happen")


def _idle_cpu(seconds: float) -> float:
    """Percent of one core an idle stack with an open connection uses."""
    with (
        Lab("veth") as lab,
        Stack(lab.endpoint_interface, lab.endpoint_cidr, netns=lab.endpoint_netns) as stack,
    ):
        with lab.in_peer():
            server = socket.create_server((lab.peer_address, PORT))
        with server:
            client = stack.socket()
            client.connect((lab.peer_address, PORT))
            conn, _ = server.accept()
            with conn, _cpu() as cpu:
                started = time.monotonic()
                # Idle on purpose: this sleep is the measurement, not a synchronisation.
                time.sleep(seconds)
                elapsed = time.monotonic() - started
            client.close()
    return cpu[0] / elapsed * 100


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pct(values: list[float], percent: int) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(percent / 100 * len(ordered)) - 1))
    return ordered[index]


def _median(values: Iterator[float] | Any) -> float:
    return float(statistics.median(list(values)))


# ----------------------------------------------------------------- the CI check


def check(report: Report, recorded: dict[str, Any]) -> list[str]:
    """Figures whose ratio to the kernel is more than TOLERANCE times worse than the
    recorded one's; empty if none."""
    before = {f["name"]: f for f in recorded["figures"]}
    problems = []
    for figure in report.figures:
        old = before.get(figure.name)
        if not figure.checked or old is None or old.get("ratio") is None or figure.ratio is None:
            continue
        if figure.better == "higher":
            slower = old["ratio"] / figure.ratio if figure.ratio > 0 else float("inf")
        else:
            slower = figure.ratio / old["ratio"] if old["ratio"] > 0 else float("inf")
        if slower > TOLERANCE:
            problems.append(
                f"{figure.name}: ratio {figure.ratio:.3f} against {old['ratio']:.3f} recorded"
                f" ({slower:.1f}x slower relative to the kernel)"
            )
    return problems


def parse_size(text: str) -> int:
    """Bytes from e.g. "4G", "512M", "64k" or "1000" (binary units, as `--size` elsewhere)."""
    import argparse

    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    cleaned = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if cleaned and cleaned[-1] in units:
            value = int(float(cleaned[:-1]) * units[cleaned[-1]])
        else:
            value = int(cleaned)
    except (ValueError, OverflowError):  # "lots", "nanG", "infG"
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4G, 512M)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a size must be positive, not {text!r}")
    return value


def _loss(text: str) -> float:
    import argparse

    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r}") from None
    if not 0 <= value < 100:
        raise argparse.ArgumentTypeError(f"loss must be in [0, 100), not {text!r}")
    return value


def _factor(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 1:
        raise argparse.ArgumentTypeError(f"the factor must be above 1, not {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> Any:
    """The options of all three modes; an option that means nothing in the chosen
    mode is an error rather than silently ignored."""
    import argparse

    from tcpstack import grid, soak

    parser = argparse.ArgumentParser(
        prog="tcpstack bench",
        description=__doc__.split("\n")[0],
        epilog="--soak: conformance plan L-03, gigabytes each way under loss (see"
        " tcpstack/soak.py). --grid: L-10, goodput and latency over delay x loss x buffer"
        " (see tcpstack/grid.py). Both are too long for CI: scripts/soak, scripts/grid.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--soak", action="store_true", help="the long soak under loss (L-03)")
    mode.add_argument("--grid", action="store_true", help="the delay x loss x buffer grid (L-10)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, for CI (~1 minute); with --grid, a subset",
    )
    parser.add_argument("--runs", type=int, help="median of this many runs (default 1)")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    parser.add_argument(
        "--check",
        metavar="FILE",
        help="fail on a >3x slowdown against the ratios in FILE (with --grid: on a cell"
        f" more than --factor times worse than in FILE, default {grid.FACTOR:g})",
    )
    parser.add_argument(
        "--factor",
        type=_factor,
        metavar="F",
        help=f"with --grid --check: the regression that fails (default {grid.FACTOR:g};"
        f" {grid.LOSSY:g} times that for cells with loss)",
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        metavar="BYTES",
        help="with --soak: bytes each way (default 4G; from 4G both sides' sequence"
        " numbers wrap whatever the ISNs)",
    )
    parser.add_argument(
        "--loss",
        type=_loss,
        metavar="PCT",
        help="with --soak: percent of packets dropped each way where they arrive (default 0.5)",
    )
    args = parser.parse_args(argv)
    if not args.soak and (args.size is not None or args.loss is not None):
        parser.error("--size and --loss go with --soak")
    if args.soak and (args.quick or args.check or args.runs):
        parser.error("--soak takes --size, --loss and --json only")
    if args.grid and args.runs:
        parser.error("--grid runs each cell once; --runs is for the standard bench")
    if args.factor is not None and not (args.grid and args.check):
        parser.error("--factor goes with --grid --check")
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.soak:
        args.size = soak.SEQ_SPACE if args.size is None else args.size
        args.loss = 0.5 if args.loss is None else args.loss
    if args.factor is None:
        args.factor = grid.FACTOR
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.soak:
        from tcpstack import soak

        return soak.main(args.size, args.loss, args.json)
    if args.grid:
        return _grid(args)
    settings = Settings.quick() if args.quick else Settings()
    if args.runs:
        settings.runs = args.runs
    report = run(settings)
    if args.json:
        _write(args.json, report)
    if args.check:
        with open(args.check) as recorded:
            problems = check(report, json.load(recorded))
        for problem in problems:
            print(f"SLOWER: {problem}")
        if problems:
            return 1
        print(f"no figure more than {TOLERANCE:g}x slower against the kernel than recorded")
    return 0


def _write(path: str, report: Report) -> None:
    with open(path, "w") as out:
        json.dump(report.to_json(), out, indent=2)
        out.write("\n")


def _grid(args: Any) -> int:
    from tcpstack import grid

    # Read the baseline first: a missing or broken file should fail before minutes of work.
    recorded = None
    if args.check:
        with open(args.check) as f:
            recorded = json.load(f)
    report = grid.run(grid.GridSettings.quick() if args.quick else grid.GridSettings())
    if args.json:
        _write(args.json, report)
    problems = grid.failures(report)
    for problem in problems:
        print(f"NOT MEASURED: {problem}")
    if recorded is not None:
        worse = grid.check(report, recorded, args.factor)
        for problem in worse:
            print(f"CHECK: {problem}")
        problems += worse
    if problems:
        print("grid: FAIL")
        return 1
    if recorded is not None:
        print(
            f"grid: PASS (no cell more than {args.factor:g}x worse than recorded,"
            f" {args.factor * grid.LOSSY:g}x with loss)"
        )
    else:
        print("grid: PASS (every cell measured)")
    return 0
