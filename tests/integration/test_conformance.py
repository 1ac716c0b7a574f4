"""The scripted conformance scenarios, each against both devices under test.

Every scenario of tcpstack.testing.catalogue runs twice: against this endpoint and
against a Linux socket in its own namespace, the reference. A scenario passes when
the device does what the script says, or fails exactly as a recorded deviation
says it will (see tcpstack.testing.runner). Our endpoint's run is also checked by
the wire-trace invariants.
"""

from __future__ import annotations

import pytest

from tcpstack.testing import runner
from tcpstack.testing.catalogue import SCRIPTS
from tcpstack.testing.dut import DUTS
from tcpstack.testing.oracle import WATCHED

pytestmark = pytest.mark.netns


# The Linux device under test is provoked on purpose (challenge ACKs, resets,
# segments past its window) and counts it; the scripted peer's own kernel sees no
# TCP at all. For our endpoint the wire-trace checker is the oracle.
@pytest.mark.nstat_allows(*WATCHED, dut=("linux",))
@pytest.mark.parametrize("dut", DUTS)
@pytest.mark.parametrize("scenario", list(SCRIPTS))
def test_scripted_scenario(scenario: str, dut: str) -> None:
    verdict = runner.run(SCRIPTS[scenario], dut)
    assert verdict.ok, verdict.report()


def test_an_expected_failure_that_passes_is_reported_stale() -> None:
    from tcpstack.testing.catalogue import Deviation, Scripted

    smoke = SCRIPTS["E-07"]
    marked = Scripted(
        smoke.id,
        smoke.title,
        smoke.refs,
        script=smoke.script,
        deviations=(Deviation("tcpstack", ("MUST-10",), "pretend", scripted=False),),
    )
    verdict = runner.run(marked, "tcpstack")
    assert not verdict.ok and verdict.summary == "STALE DEVIATION", verdict.report()


def test_a_script_that_expects_the_wrong_reply_fails() -> None:
    from tcpstack.testing.catalogue import Scripted

    wrong = Scripted(
        "X-01",
        "a SYN-ACK expected where a RST comes",
        (),
        script="""
        +0     port 8080
        +0     < S 0:0(0) win 65535 <mss 1460>
        +0     > S. 0:0(0) ack 1
        """,
    )
    verdict = runner.run(wrong, "linux")
    assert not verdict.ok
    assert "flags R., not S." in verdict.failure
