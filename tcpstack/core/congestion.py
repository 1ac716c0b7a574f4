"""Congestion control: Reno (RFC 5681) and CUBIC (RFC 9438), selectable like Linux's
TCP_CONGESTION.

Pure arithmetic in bytes with explicit time. The connection decides *when* a loss
happened (fast retransmit, RTO) and how recovery proceeds; these classes only say
how big the window is.
"""

from __future__ import annotations

from typing import Protocol

# RFC 6928 / Linux: an initial window of ten segments.
INITIAL_WINDOW_SEGMENTS = 10
_INFINITE = 1 << 62


class CongestionControl(Protocol):
    name: str
    cwnd: int
    ssthresh: int

    def on_ack(self, acked: int, now: float, srtt: float | None, largest: int = 0) -> None:
        """New data was cumulatively acknowledged outside recovery: grow cwnd.

        `largest` is the largest single transmission the ACK covered: slow start
        grows by at most two of those (or two SMSS, whichever is more)."""

    def on_congestion(self, now: float, flight: int) -> None:
        """A loss detected by duplicate ACKs or SACK: reduce, enter recovery."""

    def on_recovery_end(self) -> None:
        """Recovery completed: deflate to ssthresh."""

    def on_timeout(self, now: float, flight: int) -> None:
        """A retransmission timeout: ssthresh from the flight, cwnd to one segment."""

    def on_timeout_again(self) -> None:
        """Another timeout in the same recovery: cwnd back to one segment, keeping
        ssthresh and what undo() would restore (Linux's tcp_enter_loss likewise)."""

    def restart_after_idle(self) -> None:
        """RFC 5681 §4.1: after an idle period longer than the RTO, restart from IW."""

    def undo(self) -> None:
        """The last reduction was for a spurious retransmission: take it back
        (RFC 3522 Eifel response; Linux's tcp_undo_cwnd_reduction)."""


def _slow_start_growth(acked: int, mss: int, largest: int) -> int:
    """Appropriate byte counting with L = 2 (RFC 3465): an ACK that covers more
    than two segments (a stretch ACK, as after lost ACKs) grows cwnd by two only,
    lest it release a burst. The segments are counted as sent: an offload segment
    of many MSS is one, which the peer rightly acknowledges with one ACK."""
    return min(acked, 2 * max(mss, largest))


class Reno:
    """Slow start, congestion avoidance, halving on loss (RFC 5681)."""

    name = "reno"

    def __init__(self, mss: int) -> None:
        self.mss = mss
        self.initial = INITIAL_WINDOW_SEGMENTS * mss
        self.cwnd = self.initial
        self.ssthresh = _INFINITE
        self._avoidance_credit = 0
        self._saved = (self.cwnd, self.ssthresh)

    def on_ack(self, acked: int, now: float, srtt: float | None, largest: int = 0) -> None:
        if self.cwnd < self.ssthresh:
            self.cwnd += _slow_start_growth(acked, self.mss, largest)
            return
        # Congestion avoidance: one SMSS per cwnd of acknowledged bytes.
        self._avoidance_credit += acked
        if self._avoidance_credit >= self.cwnd:
            self._avoidance_credit -= self.cwnd
            self.cwnd += self.mss

    def on_congestion(self, now: float, flight: int) -> None:
        self._saved = (self.cwnd, self.ssthresh)
        # RFC 5681 equation (4).
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.ssthresh
        self._avoidance_credit = 0

    def on_recovery_end(self) -> None:
        self.cwnd = self.ssthresh

    def on_timeout(self, now: float, flight: int) -> None:
        self._saved = (self.cwnd, self.ssthresh)
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss  # the loss window, RFC 5681 §3.1
        self._avoidance_credit = 0

    def on_timeout_again(self) -> None:
        self.cwnd = self.mss
        self._avoidance_credit = 0

    def restart_after_idle(self) -> None:
        self.cwnd = min(self.cwnd, self.initial)

    def undo(self) -> None:
        cwnd, ssthresh = self._saved
        self.cwnd = max(self.cwnd, cwnd)
        self.ssthresh = max(self.ssthresh, ssthresh)


# RFC 9438 §5: C = 0.4, beta_cubic = 0.7.
_C = 0.4
_BETA = 0.7


class Cubic:
    """CUBIC (RFC 9438), Linux's default, with its Reno-friendly region."""

    name = "cubic"

    def __init__(self, mss: int) -> None:
        self.mss = mss
        self.initial = INITIAL_WINDOW_SEGMENTS * mss
        self.cwnd = self.initial
        self.ssthresh = _INFINITE
        self._w_max = 0.0  # segments, window before the last reduction
        self._k = 0.0
        self._epoch: float | None = None
        self._w_est = 0.0  # segments, the Reno-friendly estimate (RFC 9438 §4.3)
        self._cwnd_at_epoch = 0.0
        self._saved: tuple[int, int, float] = (self.cwnd, self.ssthresh, 0.0)

    def on_ack(self, acked: int, now: float, srtt: float | None, largest: int = 0) -> None:
        if self.cwnd < self.ssthresh:
            self.cwnd += _slow_start_growth(acked, self.mss, largest)
            return
        segments = self.cwnd / self.mss
        if self._epoch is None:
            self._epoch = now
            self._cwnd_at_epoch = segments
            if self._w_max < segments:
                # Grew past the old maximum (or no loss yet): start on the convex side.
                self._w_max = segments
                self._k = 0.0
            else:
                self._k = ((self._w_max - segments) / _C) ** (1 / 3)
            self._w_est = segments
        rtt = srtt or 0.0
        t = now - self._epoch + rtt
        target = _C * (t - self._k) ** 3 + self._w_max
        # RFC 9438 §4.3: W_est grows like Reno with alpha = 3(1-beta)/(1+beta).
        alpha = 3 * (1 - _BETA) / (1 + _BETA)
        self._w_est += alpha * (acked / self.mss) / max(segments, 1.0)
        target = max(target, self._w_est)
        if target > segments:
            # §4.4: grow by (target - cwnd) / cwnd per acknowledged segment, capped
            # at 1.5x per RTT as RFC 9438 recommends.
            target = min(target, 1.5 * segments)
            increase = (target - segments) / segments * (acked / self.mss)
        else:
            increase = 0.01 / segments * (acked / self.mss)  # very slow probing
        self.cwnd = max(int((segments + increase) * self.mss), self.mss)

    def on_congestion(self, now: float, flight: int) -> None:
        self._saved = (self.cwnd, self.ssthresh, self._w_max)
        segments = self.cwnd / self.mss
        # §4.7 fast convergence: release bandwidth if the maximum is shrinking.
        if segments < self._w_max:
            self._w_max = segments * (1 + _BETA) / 2
        else:
            self._w_max = segments
        # Linux (bictcp_recalc_ssthresh) scales cwnd; RFC 9438 §4.6 says flight size.
        self.ssthresh = max(int(self.cwnd * _BETA), 2 * self.mss)
        self.cwnd = self.ssthresh
        self._epoch = None

    def on_recovery_end(self) -> None:
        self.cwnd = self.ssthresh

    def on_timeout(self, now: float, flight: int) -> None:
        self.on_congestion(now, flight)
        self.cwnd = self.mss
        self._epoch = None

    def on_timeout_again(self) -> None:
        self.cwnd = self.mss
        self._epoch = None

    def restart_after_idle(self) -> None:
        self.cwnd = min(self.cwnd, self.initial)
        self._epoch = None

    def undo(self) -> None:
        cwnd, ssthresh, w_max = self._saved
        self.cwnd = max(self.cwnd, cwnd)
        self.ssthresh = max(self.ssthresh, ssthresh)
        self._w_max = max(self._w_max, w_max)
        self._epoch = None


ALGORITHMS: dict[str, type[Reno] | type[Cubic]] = {"reno": Reno, "cubic": Cubic}


def create(name: str, mss: int) -> CongestionControl:
    try:
        return ALGORITHMS[name](mss)
    except KeyError:
        raise ValueError(
            f"unknown congestion control {name!r}; have {sorted(ALGORITHMS)}"
        ) from None
