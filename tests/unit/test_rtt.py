import pytest

from tcpstack.core.rtt import RttEstimator


def make() -> RttEstimator:
    return RttEstimator(initial=1.0, minimum=0.2, maximum=120.0)


def test_initial_rto_is_one_second() -> None:
    assert make().rto == 1.0


def test_first_sample_sets_srtt_and_half_rttvar() -> None:
    r = make()
    r.sample(0.1)
    assert r.srtt == pytest.approx(0.1)
    assert r.rttvar == pytest.approx(0.05)
    assert r.rto == pytest.approx(0.3)  # 0.1 + 4 * 0.05


def test_later_samples_smooth_per_rfc_6298() -> None:
    r = make()
    r.sample(0.1)
    r.sample(0.3)
    assert r.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.2)
    assert r.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.3)


def test_minimum_applies_to_tiny_rtts() -> None:
    r = make()
    r.sample(0.00005)
    assert r.rto == 0.2


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    r = make()
    for _ in range(10):
        r.back_off()
    assert r.rto == 120.0
    r.reset_backoff()
    assert r.rto == 1.0
