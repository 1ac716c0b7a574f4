"""Run a catalogue scenario against one device under test and judge it.

A scenario is trusted once it passes against Linux. Where a device knowingly departs
from the RFC, the scenario carries a Deviation for that device (and kernel release),
with the requirement and the reason. Usually the script's [device] lines say what
that device does, and it passes; a Deviation that is not `scripted` marks an
expected failure instead: the run must fail, and should it pass the deviation is
stale and the verdict says so, as packetimpact's expected-failure markers do.

`tcpstack conformance` also runs the plan's scenarios that are not scripted but
checked by ordinary pytest tests (tcpstack.testing.coverage maps them): naming such
an id runs those tests in a pytest subprocess.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tcpstack.testing import coverage
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


PYTEST_TIMEOUT = 1800.0  # seconds for one scenario's tests; the 8 MiB transfers are long


@dataclass
class TestRun:
    """A scenario's pytest tests, run in a subprocess."""

    scenario: str
    tests: tuple[str, ...]
    ok: bool
    summary: str  # "pass", "FAIL" or "TIMEOUT"
    output: str
    seconds: float


def run_tests(scenario: str, tests: tuple[str, ...], timeout: float = PYTEST_TIMEOUT) -> TestRun:
    """Run `tests` (pytest node ids) with this interpreter's pytest, from the project
    root, so a scenario checked by ordinary tests runs by its id like a script."""
    started = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(
            command,
            cwd=coverage.ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return TestRun(scenario, tests, False, "TIMEOUT", out, time.monotonic() - started)
    # Exit status 5 (nothing collected) is a failure too: the map names missing tests.
    ok = done.returncode == 0
    return TestRun(
        scenario,
        tests,
        ok,
        "pass" if ok else "FAIL",
        done.stdout + done.stderr,
        time.monotonic() - started,
    )


def _listing(places: list[coverage.Where], emit: Callable[[str], None]) -> None:
    for place in places:
        s = place.scenario
        where = []
        where += [f"script {k}" for k in place.ci_scripts]
        where += [f"script {k} (--all)" for k in place.more_scripts]
        if s.tests:
            count = f"{len(s.tests)} test{'s' if len(s.tests) > 1 else ''}"
            where.append(f"pytest, {count}" + (" (partial)" if s.partial else ""))
        if not where:
            where.append("not yet")
        emit(f"{s.id:<6} gate {s.gate}  {s.title}  [{'; '.join(where)}]")


def main(args: argparse.Namespace, emit: Callable[[str], None] = print) -> int:
    """`tcpstack conformance`: run scenarios, one line each (and the report of each
    failure), then a summary; exit status 1 if any verdict is not ok.

    Without ids: the catalogue's CI scripts (and with --all the longer ones). With
    ids: each id's scripts on the devices chosen, and the pytest tests the coverage
    map names for it. A catalogue key such as D-03-all runs that script alone."""
    places = coverage.locate(list(SCRIPTS), list(EXTENDED))
    by_id = {p.scenario.id: p for p in places}
    table = {**SCRIPTS, **EXTENDED}
    unknown = [i for i in args.ids if i not in table and i not in by_id]
    if unknown:
        emit(f"tcpstack: no scenario {', '.join(unknown)}; `tcpstack conformance --list`")
        return 2
    if args.list:
        _listing([by_id[i] for i in args.ids if i in by_id] if args.ids else places, emit)
        for key in args.ids if args.ids else sorted(table):
            if key not in by_id:  # a variant such as D-03-all
                tier = "" if key in SCRIPTS else " (--all)"
                emit(f"{key:<9} {table[key].title}  [script {key}{tier}]")
        return 0
    scripts: list[Scripted] = []
    waiting: list[str] = []
    pytest_runs: list[tuple[str, tuple[str, ...]]] = []
    if not args.ids:
        scripts = list((table if args.all else SCRIPTS).values())
    for key in args.ids:
        place = by_id.get(key)
        if place is None:
            scripts.append(table[key])
            continue
        keys = place.ci_scripts + (place.more_scripts if args.all else ())
        # The scenario itself, not each variant, unless --all asks for the long ones.
        keys = keys or place.more_scripts[:1]
        scripts += [table[k] for k in keys]
        if place.scenario.tests:
            pytest_runs.append((key, place.scenario.tests))
        if not keys and not place.scenario.tests:
            waiting.append(key)
            emit(f"{'not yet':<15} {key:<9} {place.scenario.missing}")
    duts = DUTS if args.dut == "both" else (args.dut,)
    results: list[bool] = []
    for scenario in scripts:
        for dut in duts:
            verdict = run(scenario, dut)
            results.append(verdict.ok)
            emit(f"{verdict.summary:<15} {scenario.id:<9} {dut:<9} {verdict.seconds:5.2f} s")
            if not verdict.ok or args.transcript:
                emit(verdict.report())
    for key, tests in pytest_runs:
        done = run_tests(key, tests, timeout=args.timeout)
        results.append(done.ok)
        ids = f"{len(tests)} test id{'s' if len(tests) > 1 else ''}"
        emit(f"{done.summary:<15} {key:<9} {'pytest':<9} {done.seconds:5.2f} s  ({ids})")
        if not done.ok or args.transcript:
            tail = done.output.strip().splitlines()[-40:]
            emit("\n".join("  " + line for line in tail))
    if waiting and not results:
        return 2  # nothing named can run yet
    bad = results.count(False)
    emit(f"{len(results) - bad} of {len(results)} ok on Linux {kernel_release()}")
    return 1 if bad else 0
