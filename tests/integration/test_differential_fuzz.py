"""Differential stateful fuzzing (M-12): a few fixed seeds of tcpstack.testing.fuzz,
each sequence replayed against this endpoint and against Linux. Every difference in
their normalised replies, call results and states must be one the allow-list
explains. `scripts/fuzz-diff` runs many more seeds.
"""

from __future__ import annotations

import pytest

from tcpstack.testing import fuzz
from tcpstack.testing.oracle import WATCHED

pytestmark = pytest.mark.netns

# Chosen from `scripts/fuzz-diff` runs to cover the states and the allowances:
# data both ways, Nagle, the peer's FIN and ours (CLOSE-WAIT, FIN-WAIT, TIME-WAIT),
# resets, a new connection on the four-tuple (SYN-RECEIVED), and the right edge,
# left edge, old ACK, after-FIN, SYN-RECEIVED and RST-before-FIN allowances. About
# 23 s in all. None meets a known bug of ours ("BUG:" entries), and the test makes
# sure of it, so that a fix changes nothing here. Seeds 15 and 125 found two bugs,
# now fixed (shutdown after a reset returned 0; a FIN below data queued out of order
# was taken after it): they stay as guards.
SEEDS = (3, 12, 15, 27, 42, 70, 85, 125, 131, 140)


# Linux is provoked on purpose (challenge ACKs, resets, segments past its window)
# and counts it; the scripted peer's kernel sees no TCP at all.
@pytest.mark.nstat_allows(*WATCHED)
@pytest.mark.parametrize("seed", SEEDS)
def test_no_unexplained_difference_from_linux(seed: int) -> None:
    outcome = fuzz.run_seed(seed)
    assert not outcome.ours.error and not outcome.linux.error, "\n".join(fuzz.report(outcome))
    assert not outcome.unexplained, "\n".join(fuzz.report(outcome, show=True))
    assert not outcome.known_bugs, "\n".join(fuzz.report(outcome, show=True))
