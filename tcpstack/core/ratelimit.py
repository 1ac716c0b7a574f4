"""A budget of events per second, shared by many connections (pure, explicit time).

RFC 5961 §7 asks for challenge ACKs to be rate-limited so that an attacker cannot
turn them into an amplifier or a side channel; Linux keeps a per-namespace count
per second (tcp_challenge_ack_limit) on top of a per-socket interval.
"""

from __future__ import annotations


class PerSecondLimit:
    __slots__ = ("rate", "_second", "_count", "suppressed")

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._second = -1
        self._count = 0
        self.suppressed = 0

    def allow(self, now: float) -> bool:
        second = int(now)
        if second != self._second:
            self._second = second
            self._count = 0
        if self._count >= self.rate:
            self.suppressed += 1
            return False
        self._count += 1
        return True
