"""The long runs' logic without the runs: `tcpstack bench --soak` and `--grid` option
parsing, the soak's verdict and data, the grid's comparison with a recorded run.
The runs themselves need root and minutes (scripts/soak, scripts/grid)."""

from __future__ import annotations

import hashlib

import pytest

from tcpstack import grid, soak
from tcpstack.bench import Figure, Report, parse_args, parse_size

GIB = 1 << 30


# ------------------------------------------------------------------- options


def test_the_standard_bench_keeps_its_options() -> None:
    args = parse_args(["--quick", "--check", "scripts/bench-baseline.json"])
    assert args.quick and not args.soak and not args.grid
    assert args.check == "scripts/bench-baseline.json"


def test_soak_defaults_to_4_gib_at_half_a_percent() -> None:
    args = parse_args(["--soak"])
    assert args.soak and args.size == 4 * GIB and args.loss == 0.5
    args = parse_args(["--soak", "--size", "1G", "--loss", "1%", "--json", "s.json"])
    assert (args.size, args.loss, args.json) == (GIB, 1.0, "s.json")


def test_grid_options() -> None:
    args = parse_args(["--grid", "--quick", "--check", "g.json", "--factor", "3"])
    assert args.grid and args.quick and args.factor == 3.0
    assert parse_args(["--grid"]).factor == grid.FACTOR


@pytest.mark.parametrize(
    "argv",
    [
        ["--soak", "--grid"],
        ["--size", "1G"],  # size means nothing without --soak
        ["--grid", "--loss", "1"],
        ["--soak", "--quick"],
        ["--soak", "--check", "x.json"],
        ["--grid", "--runs", "3"],
        ["--factor", "2"],  # only with --grid --check
        ["--grid", "--factor", "2"],
        ["--grid", "--check", "g.json", "--factor", "1"],
        ["--soak", "--size", "0"],
        ["--soak", "--size", "lots"],
        ["--soak", "--size", "infG"],
        ["--soak", "--size", "nanG"],
        ["--soak", "--loss", "nan"],
        ["--soak", "--loss", "100"],
        ["--soak", "--loss", "-1"],
        ["--runs", "0"],
    ],
)
def test_options_that_mean_nothing_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        parse_args(argv)
    assert exit.value.code == 2


def test_sizes() -> None:
    assert parse_size("4G") == parse_size("4GiB") == parse_size("4gb") == 4 * GIB
    assert parse_size("512M") == 512 << 20 and parse_size("1000") == 1000
    assert parse_size("1.5k") == 1536


# ------------------------------------------------------------------- the soak


def passing(**changes: object) -> soak.SoakResult:
    size = GIB
    result = soak.SoakResult(
        size=size,
        loss=0.5,
        seconds=10.0,
        up_ok=True,
        down_ok=True,
        up_received=size,
        down_received=size,
        our_start_seq=(1 << 32) - size // 2,
        kernel_start_seq=12345,
        our_retransmitted=size // 200,  # 0.5%
        kernel_retransmitted=size // 200,
        rss_start=40 << 20,
        rss_warm=50 << 20,
        rss_peak=60 << 20,
        rss_end=55 << 20,
    )
    for key, value in changes.items():
        setattr(result, key, value)
    return result


def test_a_good_soak_passes() -> None:
    assert soak.verdict(passing()) == []
    assert passing().goodput == pytest.approx(2 * GIB / 10 / 1e6)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"up_ok": False}, "upload not byte-exact"),
        ({"down_ok": False, "down_received": 10}, "download not byte-exact (10 of"),
        ({"stalled": "no upload progress for 10 s"}, "stall: no upload"),
        ({"our_start_seq": 1000}, "our sequence numbers did not wrap"),
        ({"our_retransmitted": GIB // 50}, "our retransmission ratio 2.0000%"),
        ({"kernel_retransmitted": GIB // 50}, "the kernel's retransmission ratio"),
        ({"rss_peak": (50 << 20) + soak.RSS_GROWTH + 1}, "RSS not flat"),
        ({"errors": ["our send: TimeoutError()"]}, "our send"),
    ],
)
def test_each_failure_is_named(changes: dict[str, object], reason: str) -> None:
    problems = soak.verdict(passing(**changes))
    assert len(problems) >= 1 and any(reason in p for p in problems), problems


def test_the_kernels_wrap_is_required_only_where_any_isn_wraps() -> None:
    # Below 4 GiB the kernel's ISN decides; we cannot place it, so it is reported only.
    assert soak.verdict(passing(kernel_start_seq=0)) == []
    big = passing(size=4 * GIB, up_received=4 * GIB, down_received=4 * GIB, kernel_start_seq=0)
    big.our_retransmitted = big.kernel_retransmitted = 0
    assert any("kernel's sequence numbers" in p for p in soak.verdict(big))
    big.kernel_start_seq = 1
    assert soak.verdict(big) == []


def test_a_wrap_counts_only_if_the_bytes_got_there() -> None:
    short = passing(up_ok=False, up_received=GIB // 4)  # stopped before 2^32
    assert any("our sequence numbers did not wrap" in p for p in soak.verdict(short))


def test_wrap_arithmetic() -> None:
    assert soak.wraps((1 << 32) - 10, 11) and not soak.wraps((1 << 32) - 10, 10)
    assert soak.wraps(0, 4 * GIB + 1) and not soak.wraps(0, 4 * GIB)
    assert all(soak.wraps(start, 4 * GIB + 1) for start in (0, 1, 1 << 31, (1 << 32) - 1))


def test_the_budget_scales_with_loss_above_a_floor() -> None:
    assert soak.budget(0.5) == pytest.approx(0.015)
    assert soak.budget(0.0) == soak.BUDGET_FLOOR
    assert soak.verdict(passing(loss=0.0, our_retransmitted=0, kernel_retransmitted=0)) == []


def test_rss_growth_before_the_warm_up_does_not_count() -> None:
    assert soak.verdict(passing(rss_start=10 << 20, rss_warm=200 << 20, rss_peak=210 << 20)) == []
    lines = soak.lines(passing())
    assert any("start 40.0 MiB" in line and "peak 60.0 MiB" in line for line in lines)


def test_the_data_is_reproducible_and_every_chunk_differs() -> None:
    size = 3 * soak.CHUNK + 5
    first = list(soak.chunks(size, "up"))
    assert sum(map(len, first)) == size and len(first[-1]) == 5
    assert b"".join(first) == b"".join(soak.chunks(size, "up"))
    assert len(set(first[:3])) == 3
    # A chunk moved by a whole chunk's length (or by the pool's) changes the hash.
    many = list(soak.chunks(8 * soak.CHUNK, "down"))
    swapped = many[:2] + [many[3], many[2]] + many[4:]
    digest = hashlib.sha256(b"".join(many)).digest()
    assert hashlib.sha256(b"".join(swapped)).digest() != digest
    assert b"".join(soak.chunks(soak.CHUNK, "up")) != b"".join(soak.chunks(soak.CHUNK, "down"))


# ------------------------------------------------------------------- the grid


def grid_report(*figures: Figure, seconds: float = 3.0) -> Report:
    settings = {"seconds": seconds, "latency_seconds": 3.0, "exchanges": 200}
    return Report(machine={}, settings=settings, figures=list(figures))


def goodput(value: float, delay: float = 0.0, loss: float = 0.0) -> Figure:
    return Figure(grid.cell_name("goodput down", delay, loss, 16 << 10), "MB/s", value, None)


def p50(value: float) -> Figure:
    return Figure(grid.cell_name("request/response p50", 50, 0), "ms", value, better="lower")


def test_cell_names() -> None:
    assert grid.cell_name("goodput up", 200, 1, 4 << 20) == (
        "goodput up, delay 200 ms, loss 1%, buffer 4 MiB"
    )
    assert grid.cell_name("request/response p99", 0, 0) == (
        "request/response p99, delay 0 ms, loss 0%"
    )


def test_grid_check_compares_raw_figures_within_the_factor() -> None:
    before = grid_report(goodput(10.0), p50(50.0)).to_json()
    assert grid.check(grid_report(goodput(5.1), p50(99.0)), before) == []
    # Faster never fails.
    assert grid.check(grid_report(goodput(100.0), p50(1.0)), before) == []
    slower = grid.check(grid_report(goodput(4.9)), before)
    assert len(slower) == 1 and "goodput down, delay 0 ms" in slower[0] and "2.0x" in slower[0]
    assert len(grid.check(grid_report(p50(101.0)), before)) == 1
    assert grid.check(grid_report(goodput(4.9)), before, factor=3.0) == []
    assert len(grid.check(grid_report(goodput(0.0)), before)) == 1


def test_cells_with_loss_get_more_slack() -> None:
    before = grid_report(goodput(10.0, loss=1.0)).to_json()
    allowed = grid.FACTOR * grid.LOSSY
    assert grid.check(grid_report(goodput(10.0 / allowed + 0.01, loss=1.0)), before) == []
    assert len(grid.check(grid_report(goodput(10.0 / allowed - 0.01, loss=1.0)), before)) == 1


def test_sub_millisecond_latency_noise_is_not_a_regression() -> None:
    fast = Figure(grid.cell_name("request/response p50", 0, 0), "ms", 0.16, better="lower")
    before = grid_report(fast).to_json()
    noisy = Figure(fast.name, "ms", 0.33, better="lower")
    assert grid.check(grid_report(noisy), before) == []
    slow = Figure(fast.name, "ms", 0.16 + grid.LATENCY_SLACK_MS + 0.01, better="lower")
    assert len(grid.check(grid_report(slow), before)) == 1


def test_grid_check_skips_unchecked_and_new_cells() -> None:
    p99 = Figure("request/response p99, delay 0 ms, loss 1%", "ms", 1.0, better="lower")
    p99.checked = False
    before = grid_report(p99).to_json()
    worse = Figure(p99.name, "ms", 500.0, better="lower", checked=False)
    assert grid.check(grid_report(worse, goodput(1.0, delay=10)), before) == []


def test_grid_check_refuses_a_baseline_with_other_settings() -> None:
    before = grid_report(goodput(10.0), seconds=1.0).to_json()
    problems = grid.check(grid_report(goodput(10.0), seconds=3.0), before)
    assert len(problems) == 1 and "seconds=1.0" in problems[0]


def test_grid_settings() -> None:
    full, quick = grid.GridSettings(), grid.GridSettings.quick()
    assert len(full.delays_ms) * len(full.losses) * len(full.buffers) == 24
    assert set(quick.delays_ms) < set(full.delays_ms) and quick.seconds < full.seconds
    # Latency exchanges fit the time at long delays, but never fewer than 20.
    assert grid._exchanges(full, 0) == full.exchanges
    assert grid._exchanges(full, 10) == 200 and grid._exchanges(full, 200) == 20
    assert grid._exchanges(full, 50) == 60


def test_a_lossy_cell_keeps_the_median_of_the_runs_that_worked() -> None:
    results = iter([(1.0, 10.0), (3.0, 30.0), (2.0, 20.0)])
    assert grid._median_cell(3, lambda: next(results)) == ([2.0, 20.0], "")

    def flaky(outcomes: list[object]) -> tuple[float, float]:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        assert isinstance(outcome, tuple)
        return outcome

    one_failed: list[object] = [TimeoutError("connect"), (4.0, 5.0), (6.0, 7.0)]
    assert grid._median_cell(3, flaky, one_failed) == ([5.0, 6.0], "")
    failed: list[object] = [TimeoutError("connect")] * 2
    values, error = grid._median_cell(2, flaky, failed)
    assert values == [None, None] and error.startswith(grid.FAILED)
