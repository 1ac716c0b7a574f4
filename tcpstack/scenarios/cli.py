"""`tcpstack scenario list|all|NAME`: run scenarios and print their ladders and verdicts."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from tcpstack.core.state import State
from tcpstack.scenarios import CATALOGUE, Outcome, run_scenario
from tcpstack.scenarios.differential import compare


def main(args: argparse.Namespace, emit: Callable[[str], None] = print) -> int:
    if args.name == "list":
        width = max(len(n) for n in CATALOGUE)
        for scenario in CATALOGUE.values():
            diff = " [differential]" if scenario.differential else ""
            emit(f"{scenario.name:<{width}}  {scenario.title}{diff}")
        return 0
    names = list(CATALOGUE) if args.name == "all" else [args.name]
    if names[0] not in CATALOGUE:
        emit(f"tcpstack: no scenario {args.name!r}; `tcpstack scenario list` shows them")
        return 2
    outcomes = []
    for name in names:
        outcome = _run_one(name, args, emit, several=len(names) > 1)
        outcomes.append(outcome)
    if len(outcomes) > 1:
        return 0 if summarize(outcomes, emit) else 1
    return 0 if outcomes[0].passed else 1


def _run_one(
    name: str, args: argparse.Namespace, emit: Callable[[str], None], *, several: bool
) -> Outcome:
    scenario = CATALOGUE[name]
    emit(f"== {name}: {scenario.title}")
    emit(f"   claim: {scenario.claim}")
    emit("")
    outcome = run_scenario(name, kind=args.kind, msl=args.msl, absolute=args.absolute)
    for line in outcome.report():
        emit(line)
    if args.pcap:
        from tcpstack.pcap import write_pcapng

        path = _named(args.pcap, name, several)
        count = write_pcapng(path, outcome.events)
        emit(f"   pcapng: {count} packets with our state in each comment -> {path}")
    if args.plot:
        for path in draw(outcome, _named(args.plot, name, several)):
            emit(f"   picture: {path}")
    if args.differential:
        if not scenario.differential:
            emit(f"   {name} scripts segments with hooks, which a Linux DUT cannot run")
        else:
            emit("")
            emit(f"== {name} with Linux as the DUT (the reference)")
            reference = run_scenario(name, kind="kernel", msl=args.msl, absolute=args.absolute)
            for line in reference.report():
                emit(line)
            emit("")
            emit(f"== {name}: Linux and tcpstack side by side")
            for line in compare(reference, outcome).lines:
                emit(line)
    emit("")
    return outcome


def draw(outcome: Outcome, path: Path) -> list[Path]:
    """The ladder at `path`; beside it the state diagram, the time-sequence graph and
    cwnd/RTT/RTO, each of the scenario's first connection."""
    from tcpstack import plots

    states = path.with_name(f"{path.stem}-states{path.suffix}")
    tsg = path.with_name(f"{path.stem}-tsg{path.suffix}")
    cwnd = path.with_name(f"{path.stem}-cwnd{path.suffix}")
    plots.ladder_picture(outcome.ladder, path)
    plots.state_diagram(outcome.events, states)
    plots.time_sequence(outcome.events, tsg)
    plots.congestion(outcome.events, cwnd)
    return [path, states, tsg, cwnd]


def _named(target: str, name: str, several: bool) -> Path:
    path = Path(target)
    return path.with_name(f"{path.stem}-{name}{path.suffix}") if several else path


def summarize(outcomes: list[Outcome], emit: Callable[[str], None]) -> bool:
    """A line per scenario, and whether the catalogue visited all 11 states."""
    emit("== summary")
    for o in outcomes:
        emit(f"   {'PASS' if o.passed else 'FAIL'}  {o.name}")
    ours = set().union(*(o.dut_states for o in outcomes))
    kernel = set().union(*(o.peer_states for o in outcomes))
    every = {s.name for s in State}
    emit(f"   states we visited: {len(ours & every)} of 11" + _missing(every - ours))
    emit(
        f"   states the kernel was seen in: {len(kernel & every)} of 11" + _missing(every - kernel)
    )
    passed = all(o.passed for o in outcomes)
    all_states = every <= ours
    emit(f"{'PASS' if passed and all_states else 'FAIL'} the catalogue")
    return passed and all_states


def _missing(states: set[str]) -> str:
    return f" (never: {', '.join(sorted(states))})" if states else ""
