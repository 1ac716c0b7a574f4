"""The impairment layer over an in-memory link, with a fake clock: nothing here sleeps."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import pytest

from tcpstack.impair import REORDER_HOLD_MAX, Direction, ImpairedLink, Impairment
from tcpstack.link import MemoryLink


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class StubLink:
    """A link whose inbound frames the test queues, with any checksum_trusted flag."""

    name = "stub"
    mtu = 1500
    kind = "memory"
    gso_max = 0

    def __init__(self) -> None:
        self.inbound: collections.deque[tuple[bytes, bool]] = collections.deque()
        self.sent: list[bytes] = []

    def fileno(self) -> int:
        return -1

    def recv_batch(self, max_frames: int = 64) -> list[tuple[bytes, bool]]:
        out: list[tuple[bytes, bool]] = []
        while self.inbound and len(out) < max_frames:
            out.append(self.inbound.popleft())
        return out

    def send(self, frame: bytes, gso_size: int = 0) -> None:
        self.sent.append(frame)

    def close(self) -> None:
        pass


def frame(i: int, size: int = 60) -> bytes:
    """An Ethernet-shaped frame numbered I (the number sits right after the header)."""
    return bytes(12) + b"\x08\x00" + i.to_bytes(4, "big") + bytes(size - 18)


def number(data: bytes) -> int:
    return int.from_bytes(data[14:18], "big")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pair() -> Iterator[tuple[MemoryLink, MemoryLink]]:
    a, b = MemoryLink.pair()
    yield a, b
    a.close()
    b.close()


def outbound(
    pair: tuple[MemoryLink, MemoryLink], clock: FakeClock, seed: int = 0, **settings: Any
) -> tuple[ImpairedLink, MemoryLink]:
    """Our end of PAIR impaired outbound with SETTINGS, and the far end to read."""
    impairment = Impairment(outbound=Direction(**settings), seed=seed)
    return ImpairedLink(pair[0], impairment, clock=clock), pair[1]


def received(link: MemoryLink) -> list[int]:
    return [number(f) for f, _ in link.recv_batch(100_000)]


# -- pass-through --------------------------------------------------------------------


def test_no_impairment_passes_frames_untouched(
    pair: tuple[MemoryLink, MemoryLink], clock: FakeClock
) -> None:
    link = ImpairedLink(pair[0], Impairment(), clock=clock)
    assert (link.name, link.mtu, link.kind) == ("mem-a", 1500, "memory")
    assert link.fileno() == pair[0].fileno()
    sent = [frame(i, 60 + i) for i in range(20)]
    for f in sent:
        link.send(f)
    assert [f for f, _ in pair[1].recv_batch(100)] == sent
    for f in sent:
        pair[1].send(f)
    assert link.recv_batch(100) == [(f, False) for f in sent]
    assert link.next_deadline() is None
    assert link.stats == {"in_passed": 20, "out_passed": 20}

    stub = StubLink()
    stub.inbound.extend([(frame(1), True), (frame(2), False)])
    assert ImpairedLink(stub, Impairment(), clock=clock).recv_batch() == [
        (frame(1), True),
        (frame(2), False),
    ]


# -- loss and duplication -----------------------------------------------------------------


def test_loss_rate_over_ten_thousand_frames(
    pair: tuple[MemoryLink, MemoryLink], clock: FakeClock
) -> None:
    link, far = outbound(pair, clock, loss=0.1, seed=42)
    got: list[int] = []
    for i in range(10_000):
        link.send(frame(i))
        if i % 500 == 499:
            got.extend(received(far))  # keep the socketpair's buffer from filling
    got.extend(received(far))
    dropped = 10_000 - len(got)
    # Deterministic for the seed; the bounds say what any seed should give (±3.3 sigma).
    assert 900 <= dropped <= 1100
    assert link.stats["out_dropped"] == dropped
    assert link.stats["out_passed"] == len(got)
    assert got == sorted(got), "loss never reorders"
    assert link.next_deadline() is None


def test_inbound_loss_leaves_outbound_alone(
    pair: tuple[MemoryLink, MemoryLink], clock: FakeClock
) -> None:
    link = ImpairedLink(pair[0], Impairment(inbound=Direction(loss=1.0)), clock=clock)
    pair[1].send(frame(1))
    link.send(frame(2))
    assert link.recv_batch() == []
    assert received(pair[1]) == [2]
    assert link.stats["in_dropped"] == 1 and link.stats["out_dropped"] == 0


def test_duplicates_follow_their_original(
    pair: tuple[MemoryLink, MemoryLink], clock: FakeClock
) -> None:
    link, far = outbound(pair, clock, duplicate=1.0)
    for i in range(5):
        link.send(frame(i))
    assert received(far) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]

    link, far = outbound(pair, clock, duplicate=0.3, seed=3)
    for i in range(1000):
        link.send(frame(i))
    got = received(far)
    counts = collections.Counter(got)
    assert len(got) == 1000 + link.stats["out_duplicated"]
    assert 230 <= link.stats["out_duplicated"] <= 370
    assert set(counts.values()) == {1, 2}
    assert got == sorted(got), "a copy comes right after its original"


# -- reordering -------------------------------------------------------------------------


def expected_by_count(count: int, held: set[int], by: int) -> list[int]:
    """Reference model: a held frame goes right after `by` later frames have gone."""
    out: list[int] = []
    waiting: list[tuple[int, int]] = []  # (frames out when it may go, frame)
    for i in range(count):
        if i in held:
            waiting.append((len(out) + by, i))
            continue
        out.append(i)
        while ready := [w for w in waiting if w[0] <= len(out)]:
            first = min(ready, key=lambda w: w[1])
            waiting.remove(first)
            out.append(first[1])
    return out + [i for _, i in sorted(waiting, key=lambda w: w[1])]


def test_reorder_by_count_permutes_as_specified(
    pair: tuple[MemoryLink, MemoryLink], clock: FakeClock
) -> None:
    link, far = outbound(pair, clock, reorder=0.1, reorder_by=3)
    held: set[int] = set()
    for i in range(200):
        before = link.stats["out_reordered"]
        link.send(frame(i))
        if link.stats["out_reordered"] > before:
            held.add(i)
        clock.now += 0.001
    assert 10 <= len(held) <= 30
    clock.now += REORDER_HOLD_MAX
    link.flush(clock.now)
    got = received(far)
    assert got == expected_by_count(200, held, 3)
    assert sorted(got) == list(range(200))
    # With seed 0 the first holds are 24 and 26: 24 waits for 25, 27, 28; 26 was
    # held after 25 went, so it waits for 27, 28 and 24.
    assert min(held) == 24 and 26 in held
    assert got[24:30] == [25, 27, 28, 24, 26, 29]


def test_held_frame_is_released_on_a_quiet_link(
    pair: tuple[MemoryLink, MemoryLink], clock: FakeClock
) -> None:
    link, far = outbound(pair, clock, reorder=1.0, reorder_by=3)
    start = clock.now
    link.send(frame(7))
    assert received(far) == []
    assert link.next_deadline() == pytest.approx(start + REORDER_HOLD_MAX)
    link.flush(start + REORDER_HOLD_MAX - 1e-6)
    assert received(far) == []
    link.flush(start + REORDER_HOLD_MAX)
    assert received(far) == [7]
    assert link.next_deadline() is None


def test_reorder_by_time(pair: tuple[MemoryLink, MemoryLink], clock: FakeClock) -> None:
    link, far = outbound(pair, clock, reorder=0.3, reorder_ms=5.0, seed=1)
    start = clock.now
    held: set[int] = set()
    arrivals: list[tuple[int, int]] = []  # (frame, step at which it came out)
    for step in range(20):
        clock.now = start + 0.002 * step  # one frame every 2 ms
        link.send(frame(step))
        if link.stats["out_reordered"] > len(held):
            held.add(step)
            if len(held) == 1:
                assert link.next_deadline() == pytest.approx(clock.now + 0.005)
        arrivals.extend((i, step) for i in received(far))
    link.flush(start + 1.0)
    arrivals.extend((i, 99) for i in received(far))
    assert 3 <= len(held) <= 10
    # A frame held at 2i ms leaves at 2i + 5 ms: just before frame i + 3, sent at 2i + 6.
    release = {i: 2 * i + (5 if i in held else 0) for i in range(20)}
    assert [i for i, _ in arrivals] == sorted(range(20), key=release.__getitem__)
    for i, step in arrivals:
        expected_step = i + 3 if i in held else i
        assert step == (expected_step if expected_step < 20 else 99)
    assert link.next_deadline() is None


# -- delay, jitter and the rate cap ------------------------------------------------------


def test_fixed_delay_release_time(pair: tuple[MemoryLink, MemoryLink], clock: FakeClock) -> None:
    link, far = outbound(pair, clock, delay_ms=10.0)
    start = clock.now
    link.send(frame(1))
    clock.now += 0.004
    link.send(frame(2))
    assert received(far) == []
    assert link.next_deadline() == pytest.approx(start + 0.010)
    link.flush(start + 0.0099)
    assert received(far) == []
    link.flush(start + 0.010)
    assert received(far) == [1]
    assert link.next_deadline() == pytest.approx(start + 0.014)
    link.flush(start + 0.014)
    assert received(far) == [2]
    assert link.next_deadline() is None
    assert link.stats["out_delayed"] == 2


def test_jitter_stays_in_bounds(pair: tuple[MemoryLink, MemoryLink], clock: FakeClock) -> None:
    link, far = outbound(pair, clock, delay_ms=10.0, jitter_ms=5.0, seed=9)
    start = clock.now
    for i in range(50):
        link.send(frame(i))
    releases: list[tuple[float, int]] = []
    while (due := link.next_deadline()) is not None:
        link.flush(due)
        releases.extend((due, i) for i in received(far))
    assert sorted(i for _, i in releases) == list(range(50))
    delays = [due - start for due, _ in releases]
    assert all(0.010 <= d <= 0.015 for d in delays)
    assert max(delays) - min(delays) > 0.004, "jitter spreads the frames"
    assert [i for _, i in releases] != list(range(50)), "jitter may reorder"


def test_inbound_delay_is_released_by_recv_batch_alone(
    pair: tuple[MemoryLink, MemoryLink], clock: FakeClock
) -> None:
    link = ImpairedLink(pair[0], Impairment(inbound=Direction(delay_ms=20.0)), clock=clock)
    start = clock.now
    pair[1].send(frame(1))
    pair[1].send(frame(2))
    assert link.recv_batch() == []
    assert link.next_deadline() == pytest.approx(start + 0.020)
    clock.now = start + 0.020
    assert link.recv_batch(1) == [(frame(1), False)]  # the inner link is empty by now
    assert link.next_deadline() == pytest.approx(start + 0.020)  # one more is due
    assert link.recv_batch() == [(frame(2), False)]
    assert link.next_deadline() is None


def test_rate_cap_spaces_frames(pair: tuple[MemoryLink, MemoryLink], clock: FakeClock) -> None:
    link, far = outbound(pair, clock, rate_bps=1.2e6)
    start = clock.now
    for i in range(5):
        link.send(frame(i, 1500))  # 12,000 bits: 10 ms each at 1.2 Mbit/s
    assert received(far) == [0], "an idle link sends at once"
    times = []
    while (due := link.next_deadline()) is not None:
        link.flush(due)
        assert len(received(far)) == 1
        times.append(due - start)
    assert times == pytest.approx([0.010, 0.020, 0.030, 0.040])
    assert link.stats["out_rate_queued"] == 4


def test_rate_cap_tail_drops_beyond_queue_limit(
    pair: tuple[MemoryLink, MemoryLink], clock: FakeClock
) -> None:
    link, far = outbound(pair, clock, rate_bps=1.2e6, queue_limit=3000)
    for i in range(6):
        link.send(frame(i, 1500))
    # Frame 0 is on the wire, 1 and 2 fill the 3000-byte queue, the rest are dropped.
    assert link.stats["out_rate_dropped"] == 3
    clock.now += 0.010
    link.flush(clock.now)  # frame 1 leaves the queue, making room for one more
    link.send(frame(6, 1500))
    link.send(frame(7, 1500))
    assert link.stats["out_rate_dropped"] == 4
    link.flush(clock.now + 1.0)
    assert received(far) == [0, 1, 2, 6]


# -- corruption ------------------------------------------------------------------------------


def test_corruption_flips_one_byte_past_the_ethernet_header(
    pair: tuple[MemoryLink, MemoryLink], clock: FakeClock
) -> None:
    link, far = outbound(pair, clock, corrupt=1.0, seed=5)
    originals = [frame(i, 60 + i) for i in range(200)]
    for f in originals:
        link.send(f)
    offsets = set()
    for original, (got, _) in zip(originals, far.recv_batch(1000), strict=True):
        diff = [k for k in range(len(original)) if original[k] != got[k]]
        assert len(diff) == 1 and len(got) == len(original)
        assert diff[0] >= 14
        offsets.add(diff[0])
    assert min(offsets) == 14 and len(offsets) > 50
    assert link.stats["out_corrupted"] == 200


def test_corrupted_inbound_frame_is_no_longer_trusted(clock: FakeClock) -> None:
    stub = StubLink()
    link = ImpairedLink(stub, Impairment(inbound=Direction(corrupt=0.5)), clock=clock)
    originals = [frame(i) for i in range(100)]
    stub.inbound.extend((f, True) for f in originals)
    got = link.recv_batch(100)
    assert len(got) == 100
    corrupted = [(o, g) for o, (g, trusted) in zip(originals, got, strict=True) if o != g]
    assert len(corrupted) == link.stats["in_corrupted"] > 20
    for original, (data, trusted) in zip(originals, got, strict=True):
        assert trusted is (data == original)


# -- determinism and parsing -------------------------------------------------------------


def run(seed: int) -> tuple[list[bytes], list[bytes], collections.Counter[str]]:
    clock = FakeClock()
    stub = StubLink()
    direction = Direction(loss=0.1, duplicate=0.05, reorder=0.1, corrupt=0.05, jitter_ms=2.0)
    link = ImpairedLink(stub, Impairment(direction, direction, seed=seed), clock=clock)
    inbound: list[bytes] = []
    for i in range(300):
        link.send(frame(i))
        stub.inbound.append((frame(i), False))
        inbound.extend(f for f, _ in link.recv_batch())
        clock.now += 0.0005
    clock.now += 1.0
    link.flush(clock.now)
    inbound.extend(f for f, _ in link.recv_batch())
    return stub.sent, inbound, link.stats


def test_same_seed_same_decisions() -> None:
    first, second = run(7), run(7)
    assert first == second
    sent, inbound, stats = first
    assert sent != inbound, "each direction draws from its own stream"
    assert all(stats[f"{d}_{what}"] for d in ("in", "out") for what in ("dropped", "reordered"))
    other = run(8)
    assert other[0] != sent and other[1] != inbound


def test_parse_documented_syntax() -> None:
    spec = "loss=5%,dup=2%,reorder=10%:3,corrupt=1%,delay=10ms,jitter=5ms,rate=100mbit,seed=7"
    imp = Impairment.parse(spec)
    both = Direction(
        loss=0.05,
        duplicate=0.02,
        reorder=0.10,
        reorder_by=3,
        corrupt=0.01,
        delay_ms=10.0,
        jitter_ms=5.0,
        rate_bps=100e6,
    )
    assert imp == Impairment(both, both, seed=7)
    assert Impairment.parse(imp.describe()) == imp

    imp = Impairment.parse("in:loss=5%, out:loss=1")
    assert imp.inbound == Direction(loss=0.05) and imp.outbound == Direction(loss=0.01)
    assert imp.seed == 0
    assert imp.describe() == "in:loss=5%,out:loss=1%,seed=0"
    assert Impairment.parse(imp.describe()) == imp

    imp = Impairment.parse("reorder=25:4ms,delay=1.5,jitter=500us,rate=64kbit,queue=3000")
    assert imp.outbound == Direction(
        reorder=0.25, reorder_ms=4.0, delay_ms=1.5, jitter_ms=0.5, rate_bps=64e3, queue_limit=3000
    )
    assert Impairment.parse(imp.describe()) == imp
    assert Impairment.parse("out:rate=1gbit").outbound.rate_bps == 1e9
    assert Impairment.parse("in:delay=1s").inbound.delay_ms == 1000.0
    assert Impairment.parse("") == Impairment()
    assert Impairment().describe() == "none"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("loss", "key=value"),
        ("loss=", "key=value"),
        ("loss=abc", "not a number"),
        ("loss=120%", "0..100"),
        ("loss=-1%", "0..100"),
        ("loss=nan", "finite"),
        ("drop=5%", "unknown impairment"),
        ("side:loss=5%", "unknown impairment"),
        ("delay=10parsecs", "time"),
        ("delay=-5ms", "negative"),
        ("rate=100", "mbit"),
        ("rate=100mbps", "mbit"),
        ("rate=0mbit", "positive"),
        ("reorder=10%:", "nothing after"),
        ("reorder=10%:0", "at least 1"),
        ("reorder=10%:x", "frames"),
        ("queue=lots", "bytes"),
        ("out:rate=1mbit,in:queue=3000", "rate for inbound"),
        ("seed=abc", "integer"),
        ("in:seed=3", "no prefix"),
        ("loss=1%,loss=2%", "twice"),
        ("loss=1%,in:loss=2%", "twice"),
        ("loss=1%,,dup=1%", "empty item"),
    ],
)
def test_parse_rejects_malformed(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Impairment.parse(spec)


def test_direction_validates() -> None:
    with pytest.raises(ValueError, match="probability"):
        Direction(loss=1.5)
    with pytest.raises(ValueError, match="reorder_by"):
        Direction(reorder_by=0)
    with pytest.raises(ValueError, match="rate_bps"):
        Direction(rate_bps=0)
    with pytest.raises(ValueError, match="delay_ms"):
        Direction(delay_ms=float("nan"))
    with pytest.raises(ValueError, match="reorder_ms"):
        Direction(reorder_ms=float("inf"))
    assert Direction().is_identity and not Direction(jitter_ms=1).is_identity
