"""Retransmission timeout estimator (RFC 6298), pure arithmetic on seconds."""

from __future__ import annotations

# RFC 6298 §2: alpha = 1/8, beta = 1/4, K = 4.
_ALPHA = 0.125
_BETA = 0.25
_K = 4.0
# Clock granularity G of RFC 6298 §2.2; our clock is a float in seconds.
_GRANULARITY = 0.001


class RttEstimator:
    """SRTT, RTTVAR and RTO with exponential backoff.

    The caller applies Karn's rule (RFC 6298 §3): it never samples a segment that
    was retransmitted.
    """

    __slots__ = ("srtt", "rttvar", "rto", "_base_rto", "_min", "_max")

    def __init__(self, *, initial: float, minimum: float, maximum: float) -> None:
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self._min = minimum
        self._max = maximum
        self._base_rto = initial
        self.rto = initial

    def sample(self, rtt: float) -> None:
        """Fold one round-trip measurement in (RFC 6298 §2.2 and §2.3)."""
        rtt = max(rtt, 0.0)
        if self.srtt is None or self.rttvar is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = (1 - _BETA) * self.rttvar + _BETA * abs(self.srtt - rtt)
            self.srtt = (1 - _ALPHA) * self.srtt + _ALPHA * rtt
        base = self.srtt + max(_GRANULARITY, _K * self.rttvar)
        self._base_rto = min(max(base, self._min), self._max)
        self.rto = self._base_rto

    def back_off(self) -> None:
        """Double the RTO after a timeout (RFC 6298 §5.5), up to the maximum."""
        self.rto = min(self.rto * 2, self._max)

    def reset_backoff(self) -> None:
        """New data was acknowledged: drop the backoff and use the estimate again."""
        self.rto = self._base_rto
