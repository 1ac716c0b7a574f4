"""The benchmark's arithmetic: ratios, the CI check against recorded ratios, and the
recovery time read from a segment log. The measurements themselves run in
scripts/bench (no timed assertions in tests)."""

from __future__ import annotations

import pytest

from tcpstack.bench import Figure, Report, _pct, _recovery_ms, check


def report(*figures: Figure) -> Report:
    return Report(machine={}, settings={}, figures=list(figures))


def recorded(*figures: Figure) -> dict[str, object]:
    return report(*figures).to_json()


def test_ratio_is_ours_over_the_kernels() -> None:
    assert Figure("send", "MB/s", 50.0, 500.0).ratio == pytest.approx(0.1)
    assert Figure("idle", "%", 0.1).ratio is None


def test_check_fails_only_beyond_three_times_slower_relative_to_the_kernel() -> None:
    before = recorded(Figure("send", "MB/s", 60.0, 600.0), Figure("lat", "ms", 1.0, 0.1, "lower"))
    # Both machines slower: the same ratio, no complaint.
    assert check(report(Figure("send", "MB/s", 20.0, 200.0)), before) == []
    # 2.5x worse against the kernel: within the tolerance.
    assert check(report(Figure("send", "MB/s", 24.0, 600.0)), before) == []
    worse = check(report(Figure("send", "MB/s", 15.0, 600.0)), before)
    assert len(worse) == 1 and worse[0].startswith("send:")
    # For "lower" figures a larger ratio is the slowdown.
    assert check(report(Figure("lat", "ms", 2.9, 0.1, "lower")), before) == []
    assert len(check(report(Figure("lat", "ms", 3.5, 0.1, "lower")), before)) == 1


def test_unchecked_and_new_figures_are_not_compared() -> None:
    before = recorded(Figure("p99", "ms", 1.0, 0.1, "lower"))
    assert check(report(Figure("p99", "ms", 50.0, 0.1, "lower", checked=False)), before) == []
    assert check(report(Figure("brand new", "MB/s", 1.0, 1000.0)), before) == []


def test_recovery_runs_from_the_first_transmission_to_the_ack_past_the_resend() -> None:
    log = [
        (0.000, "out", 1000, 100, 0),
        (0.001, "out", 1100, 100, 0),  # lost
        (0.002, "out", 1200, 100, 0),
        (0.003, "in", 0, 0, 1100),
        (0.004, "in", 0, 0, 1100),  # SACKs 1200-1300
        (0.010, "out", 1100, 100, 0),  # the retransmission
        (0.012, "in", 0, 0, 1300),
    ]
    assert _recovery_ms(log) == pytest.approx(11.0)


def test_recovery_finds_the_original_inside_a_larger_segment() -> None:
    # A GSO super-segment went first; the resend is one MSS from inside it.
    log = [(0.0, "out", 0, 3000, 0), (0.004, "out", 1000, 1000, 0), (0.006, "in", 0, 0, 3000)]
    assert _recovery_ms(log) == pytest.approx(6.0)


def test_recovery_without_a_resend_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no retransmission"):
        _recovery_ms([(0.0, "out", 0, 100, 0), (0.001, "in", 0, 0, 100)])


def test_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert _pct(values, 50) == 50.0 and _pct(values, 99) == 99.0 and _pct([3.0], 99) == 3.0
