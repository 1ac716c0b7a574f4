"""Memory per connection stays small and a SYN flood answered with cookies costs none."""

from tcpstack.measure import measure


def test_memory_per_connection_is_bounded() -> None:
    report = measure(200)
    print("\n".join(report.lines()))
    assert 0 < report.half_open_bytes < 16_384
    assert 0 < report.established_bytes < 16_384
    # SYN cookies keep no state: a flood of SYNs allocates nothing per SYN.
    assert report.cookie_bytes < 64
