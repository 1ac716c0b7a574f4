"""The scenario catalogue against the real kernel, on veth and TAP, and in differential mode.

Each scenario carries its own checks; a test here fails with the scenario's report
(the ladder, every check, the corrections) so a failure explains itself.
"""

from __future__ import annotations

import pytest

from tcpstack.core.state import State
from tcpstack.scenarios import CATALOGUE, Outcome, run_scenario
from tcpstack.scenarios.differential import compare

pytestmark = pytest.mark.netns

MSL = 0.25
_outcomes: dict[tuple[str, str], Outcome] = {}


def outcome(name: str, kind: str) -> Outcome:
    """Each scenario runs once per lab kind per session; later tests reuse it."""
    key = (name, kind)
    if key not in _outcomes:
        _outcomes[key] = run_scenario(name, kind=kind, msl=MSL)
    return _outcomes[key]


def explain(o: Outcome) -> str:
    return "\n".join(o.report())


# The reset scenario has the kernel abort with SO_LINGER 0 (TCPAbortOnData), twice
# from ESTABLISHED or CLOSE_WAIT (EstabResets).
@pytest.mark.nstat_allows("TcpExtTCPAbortOnData", "TcpEstabResets", name="reset")
# In lost-syn-ack, if the kernel's SYN retransmission beats our SYN-ACK timer, both
# send a SYN-ACK and the kernel, ESTABLISHED by the first, challenges the second.
@pytest.mark.nstat_allows(
    "TcpExtTCPSYNChallenge", "TcpExtTCPChallengeACK", "TcpInErrs", name="lost-syn-ack"
)
@pytest.mark.parametrize("kind", ["veth", "tap"])
@pytest.mark.parametrize("name", list(CATALOGUE))
def test_scenario_passes_against_the_kernel(name: str, kind: str) -> None:
    o = outcome(name, kind)
    assert o.passed, explain(o)
    assert o.ladder.rows, "a scenario that saw no segment proves nothing"


# Run on its own it runs every scenario itself: reset and lost-syn-ack as above.
@pytest.mark.nstat_allows(
    "TcpExtTCPAbortOnData",
    "TcpEstabResets",
    "TcpExtTCPSYNChallenge",
    "TcpExtTCPChallengeACK",
    "TcpInErrs",
)
def test_the_catalogue_visits_all_eleven_states() -> None:
    ours: set[str] = set()
    for name in CATALOGUE:
        ours |= outcome(name, "veth").dut_states
    assert ours == {s.name for s in State}


def test_scenarios_show_where_the_source_documents_are_wrong() -> None:
    corrected = {
        (c.source, name)
        for name in ("handshake", "close", "simultaneous-close", "time-wait")
        for c in outcome(name, "veth").corrections
    }
    assert ("seed 001", "close") in corrected  # the active closer does not end in CLOSE_WAIT
    assert ("seed 002", "handshake") in corrected  # the third segment has no SYN
    assert ("seed 002", "close") in corrected  # FIN sequence numbers are not random
    assert ("seed 004", "time-wait") in corrected  # 2 MSL, not one


@pytest.mark.parametrize("name", [n for n, s in CATALOGUE.items() if s.differential])
def test_differential_mode_runs_the_script_with_a_linux_dut(name: str) -> None:
    reference = run_scenario(name, kind="kernel", msl=MSL)
    assert reference.passed, explain(reference)
    assert reference.dut == "kernel" and reference.segments
    comparison = compare(reference, outcome(name, "veth"))
    assert comparison.lines[-1].endswith("or states")
    if name in ("handshake", "closed-port"):
        # Nothing here depends on timing: the two DUTs must put the same segments on
        # the wire, flag for flag and number for number.
        assert comparison.differences == 0, "\n".join(comparison.lines)
