"""Run a catalogue scenario against one device under test and judge it.

A scenario is trusted once it passes against Linux. Where a device knowingly departs
from the RFC, the scenario carries a Deviation for that device (and kernel release),
with the requirement and the reason. Usually the script's [device] lines say what
that device does, and it passes; a Deviation that is not `scripted` marks an
expected failure instead: the run must fail, and should it pass the deviation is
stale and the verdict says so, as packetimpact's expected-failure markers do.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tcpstack.testing.catalogue import EXTENDED, SCRIPTS, Deviation, Scripted
from tcpstack.testing.dut import DUTS, kernel_release, open_dut, release_matches
from tcpstack.testing.invariants import TraceChecker
from tcpstack.testing.peer import ScriptedPeer
from tcpstack.testing.script import Conversation, ScriptFailure


@dataclass
class Verdict:
    scenario: str
    dut: str
    kernel: str
    ok: bool  # passed, or failed exactly as a recorded deviation says it will
    summary: str  # "pass", "deviation", "FAIL" or "STALE DEVIATION"
    failure: str = ""
    deviation: Deviation | None = None
    transcript: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def report(self) -> str:
        lines = [f"{self.summary} {self.scenario} on {self.dut} (Linux {self.kernel})"]
        if self.deviation is not None:
            lines.append(f"  deviation ({', '.join(self.deviation.refs)}): {self.deviation.reason}")
        if self.failure:
            lines.append("  " + self.failure.replace("\n", "\n  "))
        elif self.transcript:
            lines += ["  transcript:", *("    " + t for t in self.transcript)]
        return "\n".join(lines)


def deviation_for(scenario: Scripted, dut: str, release: str | None = None) -> Deviation | None:
    for deviation in scenario.deviations:
        if deviation.dut == dut and (dut != "linux" or release_matches(deviation.kernels, release)):
            return deviation
    return None


def run(scenario: Scripted, dut_name: str) -> Verdict:
    """Run `scenario` on a fresh lab with device `dut_name`."""
    started = time.monotonic()
    failure = ""
    checker = TraceChecker()
    with open_dut(dut_name, settings=scenario.settings) as dut:
        if dut.stack is not None:
            dut.stack.subscribe(checker)
        peer = ScriptedPeer(dut.lab)
        conversation = Conversation(dut, peer)
        try:
            if scenario.body is not None:
                scenario.body(conversation)
            if scenario.script:
                conversation.run(scenario.script)
            conversation.finish()
        except ScriptFailure as exc:
            failure = str(exc)
        finally:
            conversation.close()
            peer.close()
            if dut.stack is not None:
                dut.stack.sync()
    if checker.violations and not failure:
        # What the device put on the wire broke an invariant the script did not test.
        failure = "wire-trace invariants broken:\n" + "\n".join(checker.report())
    deviation = deviation_for(scenario, dut_name)
    if deviation is None or deviation.scripted:
        ok, summary = not failure, "FAIL" if failure else "pass"
    else:
        ok, summary = bool(failure), "deviation" if failure else "STALE DEVIATION"
    return Verdict(
        scenario.id,
        dut_name,
        kernel_release(),
        ok,
        summary,
        failure,
        deviation,
        list(conversation.transcript),
        time.monotonic() - started,
    )


def main(args: argparse.Namespace, emit: Callable[[str], None] = print) -> int:
    """`tcpstack conformance`: run scenarios, one line each (and the report of each
    failure), then a summary; exit status 1 if any verdict is not ok."""
    table = {**SCRIPTS, **(EXTENDED if args.all or args.ids else {})}
    unknown = [i for i in args.ids if i not in table]
    if unknown:
        emit(f"tcpstack: no scenario {', '.join(unknown)}; `tcpstack conformance --list`")
        return 2
    chosen = [table[i] for i in args.ids] if args.ids else list(table.values())
    if args.list:
        for scenario in chosen:
            tier = "" if scenario.id in SCRIPTS else "  (--all)"
            emit(f"{scenario.id:<9} {scenario.title}{tier}")
        return 0
    duts = DUTS if args.dut == "both" else (args.dut,)
    verdicts = []
    for scenario in chosen:
        for dut in duts:
            verdict = run(scenario, dut)
            verdicts.append(verdict)
            emit(f"{verdict.summary:<15} {scenario.id:<9} {dut:<9} {verdict.seconds:5.2f} s")
            if not verdict.ok or args.transcript:
                emit(verdict.report())
    bad = [v for v in verdicts if not v.ok]
    emit(f"{len(verdicts) - len(bad)} of {len(verdicts)} ok on Linux {kernel_release()}")
    return 1 if bad else 0
