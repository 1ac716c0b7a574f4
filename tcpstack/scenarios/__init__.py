"""The scenario catalogue: the source documents' claims, reproduced against a real kernel.

    tcpstack scenario list
    tcpstack scenario handshake [--tap] [--pcap FILE] [--plot FILE] [--differential]

Each scenario builds a fresh lab, runs its script between the device under test and
the kernel peer, prints the ladder with both sides' states, its checks, the source
documents' claims it shows to be wrong, and a PASS or FAIL verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tcpstack.lab import Lab
from tcpstack.scenarios.catalogue import CATALOGUE, Scenario
from tcpstack.scenarios.harness import Check, Correction, NeedsHooks, Outcome, Run
from tcpstack.trace import TraceEvent

__all__ = [
    "CATALOGUE",
    "Check",
    "Correction",
    "Outcome",
    "Run",
    "Scenario",
    "run_scenario",
]

# TIME_WAIT is 2 MSL: one second keeps every scenario short and the timer visible.
DEFAULT_MSL = 0.5


def run_scenario(
    name: str,
    *,
    kind: str = "veth",
    msl: float = DEFAULT_MSL,
    absolute: bool = False,
    subscribers: Sequence[Callable[[TraceEvent], None]] = (),
) -> Outcome:
    """Run one scenario on a fresh lab of `kind` ("veth", "tap", or "kernel" for a
    kernel DUT); the outcome holds the ladder, checks, corrections and events."""
    scenario = CATALOGUE[name]
    dut = "kernel" if kind == "kernel" else "tcpstack"
    outcome = Outcome(name, dut, kind)
    outcome.ladder.absolute = absolute
    with Lab(kind) as lab:
        outcome.ladder.local_name = (
            f"{'kernel DUT' if dut == 'kernel' else 'us'} {lab.endpoint_address}"
        )
        outcome.ladder.remote_name = f"kernel {lab.peer_address}"
        run = Run(lab, outcome, msl=msl, subscribers=subscribers)
        try:
            scenario.body(run)
        except NeedsHooks as exc:
            outcome.error = f"not for a kernel DUT: {exc}"
        except Exception as exc:  # the verdict reports it; the lab still comes down
            outcome.error = f"{type(exc).__name__}: {exc}"
        finally:
            # What the closing of the lab sends (aborts, RSTs) is not the scenario's.
            run.freeze()
            run.close()
    return outcome
