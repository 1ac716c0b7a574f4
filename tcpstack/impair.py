"""Impaired links: loss, duplication, reordering, delay, corruption and a rate cap.

`ImpairedLink(link, Impairment(...))` wraps any Link and is a Link itself, so the
engine runs over it unchanged. Each direction has its own settings and its own random
stream, seeded from `Impairment.seed`: the same seed and the same calls (with the same
clock readings) give the same decisions, so a lossy run can be replayed.

A frame meets the stages in this order: loss, corruption, duplication, the rate cap,
delay plus jitter, reordering. Frames that must wait are kept with a release time;
`next_deadline()` tells the owner when to call `flush(now)` (outbound) or
`recv_batch()` (inbound, which returns due frames even when the inner link is quiet).
Frames due at the same time leave in the order they came, so only jitter and
deliberate reordering change the order.

Limits: impairment happens in this process, after the kernel has delivered or before
it has sent, so the kernel's own counters never see it. A frame is the unit: a veth
GSO super-frame is lost, delayed or corrupted whole. The rate cap is a pacer with a
one-frame bucket (an idle link sends at once, a busy one queues) and counts Ethernet
bytes only. Corruption may land in Ethernet padding, which no checksum covers, so a few
corrupted frames are legitimately accepted. An outbound frame the inner link refuses
with a full queue is counted (`out_tx_queue_full`) and lost, as the engine would treat
it. Nothing here runs on its own: without the owner's calls at `next_deadline()`, held
frames wait for the next send or receive.
"""

from __future__ import annotations

import collections
import errno
import heapq
import math
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tcpstack.link import Link

ETHERNET_HEADER = 14
# A frame held back "until N later frames have passed" must not wait forever on a
# quiet link; 200 ms is Linux's minimum RTO, so a lone held segment costs at most that.
REORDER_HOLD_MAX = 0.2

Counter = collections.Counter[str]


@dataclass(frozen=True)
class Direction:
    """Impairment of one direction. Probabilities are in [0, 1]; times in ms."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_by: int = 3
    reorder_ms: float | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    corrupt: float = 0.0
    rate_bps: float | None = None
    queue_limit: int = 1_000_000

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder", "corrupt"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], not {value!r}")
        for name in ("delay_ms", "jitter_ms", "reorder_ms"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite time >= 0, not {value!r}")
        if self.reorder_by < 1:
            raise ValueError(f"reorder_by must be at least 1, not {self.reorder_by!r}")
        if self.rate_bps is not None and not (math.isfinite(self.rate_bps) and self.rate_bps > 0):
            raise ValueError(f"rate_bps must be positive, not {self.rate_bps!r}")
        if self.queue_limit < 1:
            raise ValueError(f"queue_limit must be positive, not {self.queue_limit!r}")

    @property
    def is_identity(self) -> bool:
        """True if frames pass untouched and at once."""
        return (
            self.loss == self.duplicate == self.reorder == self.corrupt == 0.0
            and self.delay_ms == self.jitter_ms == 0.0
            and self.rate_bps is None
        )


_NO_IMPAIRMENT = Direction()


@dataclass(frozen=True)
class Impairment:
    """Both directions of a link: inbound is network -> endpoint, outbound the reverse."""

    inbound: Direction = field(default_factory=Direction)
    outbound: Direction = field(default_factory=Direction)
    seed: int = 0

    @classmethod
    def parse(cls, spec: str) -> Impairment:
        """Parse e.g. "loss=5%,dup=2%,reorder=10%:3,delay=10ms,rate=100mbit,seed=7".

        Keys apply to both directions unless prefixed with "in:" or "out:". Keys:
        loss, dup, corrupt (percent, "%" optional), reorder (percent, then ":N" frames
        or ":Tms"), delay, jitter (ms, or with a unit of us/ms/s), rate (with
        bit/kbit/mbit/gbit), queue (bytes), seed (an integer, no prefix)."""
        settings: dict[str, dict[str, object]] = {"in": {}, "out": {}}
        seed = 0
        seen: set[tuple[str, str]] = set()
        for raw_item in spec.split(","):
            item = raw_item.strip()
            if not item:
                if spec.strip():
                    raise ValueError(f"empty item in impairment spec {spec!r}")
                continue
            key, sep, value = item.partition("=")
            if not sep or not value.strip():
                raise ValueError(f"expected key=value, not {item!r}")
            key, value = key.strip().lower(), value.strip()
            where: tuple[str, ...] = ("in", "out")
            for prefix in ("in:", "out:"):
                if key.startswith(prefix):
                    where, key = (prefix[:-1],), key[len(prefix) :]
            if key == "seed":
                if len(where) != 2:
                    raise ValueError("seed applies to both directions; it takes no prefix")
                if ("both", "seed") in seen:
                    raise ValueError("seed given twice")
                seen.add(("both", "seed"))
                try:
                    seed = int(value)
                except ValueError:
                    raise ValueError(f"seed must be an integer, not {value!r}") from None
                continue
            if key not in _PARSERS:
                known = ", ".join([*_PARSERS, "seed"])
                raise ValueError(f"unknown impairment {key!r} (known: {known})")
            parsed = _PARSERS[key](value)
            for side in where:
                if (side, key) in seen:
                    raise ValueError(f"{key} given twice for {side}bound frames")
                seen.add((side, key))
                settings[side].update(parsed)
        for side, chosen in settings.items():
            if "queue_limit" in chosen and "rate_bps" not in chosen:
                raise ValueError(f"queue bounds the rate cap's queue: give rate for {side}bound")
        try:
            inbound = Direction(**settings["in"])  # type: ignore[arg-type]
            outbound = Direction(**settings["out"])  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"invalid impairment {spec!r}: {exc}") from None
        return cls(inbound=inbound, outbound=outbound, seed=seed)

    def describe(self) -> str:
        """The settings in `parse()` syntax ("none" if nothing is impaired)."""
        if self.inbound == self.outbound:
            items = _describe(self.inbound, "")
        else:
            items = _describe(self.inbound, "in:") + _describe(self.outbound, "out:")
        if not items:
            return "none"
        return ",".join([*items, f"seed={self.seed}"])


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what}: not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{what}: not a finite number: {text!r}")
    return value


def _percent(text: str, what: str) -> float:
    value = _number(text.removesuffix("%").strip(), what)
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"{what}: percentage must be in 0..100, not {text!r}")
    return value / 100.0


_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
_RATE_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
_UNIT_RE = re.compile(r"^([0-9.eE+-]+)\s*([a-zA-Z]*)$")


def _milliseconds(text: str, what: str) -> float:
    match = _UNIT_RE.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or (unit and unit not in _TIME_UNITS):
        raise ValueError(f"{what}: expected a time such as 10ms, not {text!r}")
    value = _number(match.group(1), what) * _TIME_UNITS[unit or "ms"]
    if value < 0:
        raise ValueError(f"{what}: must not be negative: {text!r}")
    return value


def _parse_rate(text: str) -> dict[str, object]:
    match = _UNIT_RE.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _RATE_UNITS:
        raise ValueError(f"rate: expected e.g. 100mbit (bit, kbit, mbit, gbit), not {text!r}")
    value = _number(match.group(1), "rate") * _RATE_UNITS[unit]
    if value <= 0:
        raise ValueError(f"rate: must be positive: {text!r}")
    return {"rate_bps": value}


def _parse_reorder(text: str) -> dict[str, object]:
    chance, sep, after = text.partition(":")
    result: dict[str, object] = {"reorder": _percent(chance, "reorder")}
    after = after.strip()
    if sep and not after:
        raise ValueError(f"reorder: nothing after ':' in {text!r}")
    if after.isdigit():
        result["reorder_by"] = int(after)
        if int(after) < 1:
            raise ValueError(f"reorder: hold for at least 1 frame, not {after!r}")
    elif after:
        if not after.lower().endswith(tuple(_TIME_UNITS)):
            raise ValueError(f"reorder: expected ':N' frames or ':Tms', not {text!r}")
        result["reorder_ms"] = _milliseconds(after, "reorder")
    return result


def _parse_queue(text: str) -> dict[str, object]:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"queue: expected a positive number of bytes, not {text!r}")
    return {"queue_limit": int(text)}


_PARSERS: dict[str, Callable[[str], dict[str, object]]] = {
    "loss": lambda v: {"loss": _percent(v, "loss")},
    "dup": lambda v: {"duplicate": _percent(v, "dup")},
    "duplicate": lambda v: {"duplicate": _percent(v, "duplicate")},
    "corrupt": lambda v: {"corrupt": _percent(v, "corrupt")},
    "reorder": _parse_reorder,
    "delay": lambda v: {"delay_ms": _milliseconds(v, "delay")},
    "jitter": lambda v: {"jitter_ms": _milliseconds(v, "jitter")},
    "rate": _parse_rate,
    "queue": _parse_queue,
}


def _g(value: float) -> str:
    return f"{value:.10g}"


def _describe(d: Direction, prefix: str) -> list[str]:
    items = []
    if d.loss:
        items.append(f"loss={_g(d.loss * 100)}%")
    if d.duplicate:
        items.append(f"dup={_g(d.duplicate * 100)}%")
    if d.reorder:
        hold = f"{_g(d.reorder_ms)}ms" if d.reorder_ms is not None else str(d.reorder_by)
        items.append(f"reorder={_g(d.reorder * 100)}%:{hold}")
    if d.corrupt:
        items.append(f"corrupt={_g(d.corrupt * 100)}%")
    if d.delay_ms:
        items.append(f"delay={_g(d.delay_ms)}ms")
    if d.jitter_ms:
        items.append(f"jitter={_g(d.jitter_ms)}ms")
    if d.rate_bps is not None:
        units = ("gbit", "mbit", "kbit")
        unit = next((u for u in units if d.rate_bps % _RATE_UNITS[u] == 0), "bit")
        items.append(f"rate={_g(d.rate_bps / _RATE_UNITS[unit])}{unit}")
    if d.rate_bps is not None and d.queue_limit != _NO_IMPAIRMENT.queue_limit:
        items.append(f"queue={d.queue_limit}")
    return [prefix + item for item in items]


@dataclass
class _Frame:
    data: bytes
    trusted: bool
    copies: int
    hold_by_count: bool


class _Pipe:
    """One direction's impairment: frames in with a time, due frames out in order."""

    def __init__(self, config: Direction, rng: random.Random, prefix: str, stats: Counter) -> None:
        self.config = config
        self.rng = rng
        self.prefix = prefix
        self.stats = stats
        self.identity = config.is_identity
        self._seq = 0
        self._scheduled: list[tuple[float, int, _Frame]] = []
        # Frames waiting for later frames to pass: [target release count, deadline, seq, frame].
        self._held: list[tuple[int, float, int, _Frame]] = []
        self._released = 0
        self._busy_until = float("-inf")
        self._rate_queue: collections.deque[tuple[float, int]] = collections.deque()
        self._rate_queued = 0

    def push(self, data: bytes, trusted: bool, now: float) -> None:
        cfg, rng, stats, p = self.config, self.rng, self.stats, self.prefix
        # Draws are made only for enabled impairments: an unimpaired stage costs
        # nothing and leaves the stream to the others.
        if cfg.loss and rng.random() < cfg.loss:
            stats[p + "dropped"] += 1
            return
        if cfg.corrupt and len(data) > ETHERNET_HEADER and rng.random() < cfg.corrupt:
            offset = rng.randrange(ETHERNET_HEADER, len(data))
            flipped = data[offset] ^ rng.randrange(1, 256)
            data = data[:offset] + bytes((flipped,)) + data[offset + 1 :]
            # The kernel's "checksum verified" no longer describes these bytes.
            trusted = False
            stats[p + "corrupted"] += 1
        copies = 1
        if cfg.duplicate and rng.random() < cfg.duplicate:
            copies = 2
            stats[p + "duplicated"] += 1
        release = now
        if cfg.rate_bps is not None:
            while self._rate_queue and self._rate_queue[0][0] <= now:
                self._rate_queued -= self._rate_queue.popleft()[1]
            size = len(data) * copies
            if self._rate_queued + size > cfg.queue_limit:
                stats[p + "rate_dropped"] += 1
                return
            release = max(now, self._busy_until)
            self._busy_until = release + size * 8 / cfg.rate_bps
            if release > now:
                self._rate_queue.append((release, size))
                self._rate_queued += size
                stats[p + "rate_queued"] += 1
        if cfg.delay_ms or cfg.jitter_ms:
            extra = cfg.delay_ms + (rng.uniform(0.0, cfg.jitter_ms) if cfg.jitter_ms else 0.0)
            release += extra / 1000.0
            stats[p + "delayed"] += 1
        hold = False
        if cfg.reorder and rng.random() < cfg.reorder:
            stats[p + "reordered"] += 1
            if cfg.reorder_ms is not None:
                release += cfg.reorder_ms / 1000.0
            else:
                hold = True
        self._seq += 1
        heapq.heappush(self._scheduled, (release, self._seq, _Frame(data, trusted, copies, hold)))

    def next_deadline(self) -> float | None:
        times = [self._scheduled[0][0]] if self._scheduled else []
        times.extend(deadline for _, deadline, _, _ in self._held)
        return min(times, default=None)

    def pop_due(self, now: float) -> list[tuple[float, bytes, bool]]:
        """Every frame due at NOW, with its release time, in release order."""
        out: list[tuple[float, bytes, bool]] = []
        while True:
            expiring = min(self._held, key=lambda h: (h[1], h[2]), default=None)
            if expiring is not None and expiring[1] > now:
                expiring = None
            if self._scheduled and self._scheduled[0][0] <= now:
                if expiring is None or self._scheduled[0][0] <= expiring[1]:
                    at, seq, frame = heapq.heappop(self._scheduled)
                    if frame.hold_by_count:
                        target = self._released + self.config.reorder_by
                        self._held.append((target, at + REORDER_HOLD_MAX, seq, frame))
                    else:
                        self._emit(at, frame, out)
                    continue
            if expiring is None:
                return out
            self._held.remove(expiring)
            self._emit(expiring[1], expiring[3], out)

    def _emit(self, at: float, frame: _Frame, out: list[tuple[float, bytes, bool]]) -> None:
        out.extend([(at, frame.data, frame.trusted)] * frame.copies)
        self._released += frame.copies
        # A held frame goes right after the frame that completes its count; releasing
        # it counts too, which may complete another's.
        while True:
            ready = [h for h in self._held if h[0] <= self._released]
            if not ready:
                return
            first = min(ready, key=lambda h: h[2])
            self._held.remove(first)
            out.extend([(at, first[3].data, first[3].trusted)] * first[3].copies)
            self._released += first[3].copies


class ImpairedLink:
    """A Link that impairs another; see the module docstring.

    The owner must call `flush(now)` (outbound) and `recv_batch()` (inbound) once
    `next_deadline()` has passed, even if the inner link's descriptor is quiet."""

    def __init__(
        self,
        link: Link,
        impairment: Impairment,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = link
        self.name = link.name
        self.mtu = link.mtu
        self.kind = link.kind
        self.impairment = impairment
        self.stats: Counter = collections.Counter()
        self._clock = clock
        # Distinct streams per direction, so inbound and outbound decisions are not
        # the same coin flips mirrored.
        seed = impairment.seed
        self._in = _Pipe(
            impairment.inbound, random.Random(f"tcpstack.impair:{seed}:in"), "in_", self.stats
        )
        self._out = _Pipe(
            impairment.outbound, random.Random(f"tcpstack.impair:{seed}:out"), "out_", self.stats
        )
        # Outbound impairment acts per frame, so the sender must not hand over 64 KiB
        # GSO frames that stand for dozens of segments: offload only if it is idle.
        self.gso_max = link.gso_max if self._out.identity else 0
        self._ready: collections.deque[tuple[float, bytes, bool]] = collections.deque()
        # The engine sends from application threads and receives on its own.
        self._lock = threading.RLock()

    def fileno(self) -> int:
        return self.inner.fileno()

    def recv_batch(self, max_frames: int = 64) -> list[tuple[bytes, bool]]:
        with self._lock:
            if self._in.identity:
                frames = self.inner.recv_batch(max_frames)
                self.stats["in_passed"] += len(frames)
                return frames
            room = max_frames - len(self._ready)
            now = self._clock()
            if room > 0:
                for data, trusted in self.inner.recv_batch(room):
                    self._in.push(data, trusted, now)
            self._ready.extend(self._in.pop_due(now))
            batch: list[tuple[bytes, bool]] = []
            while self._ready and len(batch) < max_frames:
                _, data, trusted = self._ready.popleft()
                batch.append((data, trusted))
            self.stats["in_passed"] += len(batch)
            return batch

    def send(self, frame: bytes, gso_size: int = 0) -> None:
        with self._lock:
            if self._out.identity:
                self.inner.send(frame, gso_size)
                self.stats["out_passed"] += 1
                return
            now = self._clock()
            self._out.push(frame, False, now)
            self._transmit_due(now)

    def flush(self, now: float) -> None:
        """Send every outbound frame whose release time has passed."""
        with self._lock:
            self._transmit_due(now)

    def next_deadline(self) -> float | None:
        """When a held or delayed frame (either direction) is next due; None if none."""
        with self._lock:
            times = [self._ready[0][0]] if self._ready else []
            for pipe in (self._in, self._out):
                deadline = pipe.next_deadline()
                if deadline is not None:
                    times.append(deadline)
            return min(times, default=None)

    def _transmit_due(self, now: float) -> None:
        for _, data, _ in self._out.pop_due(now):
            try:
                self.inner.send(data)
            except (BlockingIOError, InterruptedError):
                self.stats["out_tx_queue_full"] += 1
                continue
            except OSError as exc:
                if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    raise
                self.stats["out_tx_queue_full"] += 1
                continue
            self.stats["out_passed"] += 1

    def close(self) -> None:
        with self._lock:
            self._ready.clear()
        self.inner.close()

    def __enter__(self) -> ImpairedLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
