"""The RFC requirement matrix: docs/conformance.md, rendered from data, and its checks.

The rows come from ``tcpstack.testing.requirements``; the scripted scenarios of
``tcpstack.testing.catalogue`` add their evidence and deviations. Nothing in the
document is typed by hand, so it cannot drift from the tests: ``scripts/
conformance-matrix`` writes it, ``scripts/conformance-matrix --check`` fails when it
is stale or when a rule below is broken, and tests/unit/test_matrix.py fails when the
file differs from what ``render()`` gives.

Rules (``problems()``): the data is well formed; every test named as evidence exists
(by pytest's collection, so a renamed test cannot leave a dangling claim); every
requirement a scenario or a deviation cites exists; every MUST ends up met with
evidence, or deviated or n/a with a reason.

The document ends with the scenario coverage map of ``tcpstack.testing.coverage``:
for each of the plan's 126 scenarios, the script or the tests that check it. Its
rules: the map names exactly the 126 ids, every catalogue key belongs to one of them,
every test it names exists, and every Gate 0 scenario is fully checked by what CI
runs (``coverage_problems()``).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from tcpstack.testing import coverage
from tcpstack.testing.coverage import Scenario, Where
from tcpstack.testing.requirements import (
    GROUPS,
    ID_PATTERN,
    MUST_COUNT,
    REQUIREMENTS,
    SCENARIO_PATTERN,
    SECTION_PATTERN,
    SHOULD_COUNT,
    STATUSES,
    UNTESTED,
    Requirement,
    Status,
)

ROOT: Final = Path(__file__).resolve().parents[2]
DOC: Final = ROOT / "docs" / "conformance.md"
COMMAND: Final = "scripts/conformance-matrix"
DUTS: Final = ("tcpstack", "linux")
KINDS: Final = (("MUST", "MUST"), ("SHOULD", "SHOULD"), ("companion", "Companion"))


class DeviationLike(Protocol):
    """What the matrix reads of a catalogue Deviation (kept structural, so the matrix
    does not depend on the rest of the catalogue's machinery)."""

    @property
    def dut(self) -> str: ...
    @property
    def refs(self) -> tuple[str, ...]: ...
    @property
    def reason(self) -> str: ...
    @property
    def kernels(self) -> str: ...


class ScriptedLike(Protocol):
    """What the matrix reads of a catalogue Scripted scenario."""

    @property
    def id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def refs(self) -> tuple[str, ...]: ...
    @property
    def deviations(self) -> tuple[DeviationLike, ...]: ...


Scripts = Mapping[str, ScriptedLike]


def load_scripts() -> Scripts:
    """The catalogue's scenarios. Imported here, not at module level: the catalogue
    pulls in the scripted peer (pyroute2, the lab), which the data checks do not need."""
    from tcpstack.testing.catalogue import SCRIPTS

    return SCRIPTS


@dataclass(frozen=True, slots=True)
class ScenarioEvidence:
    id: str
    title: str
    linux: tuple[DeviationLike, ...]  # Linux deviations that name this row


@dataclass(frozen=True, slots=True)
class Row:
    """A requirement as the document shows it: status after the scenarios had their say."""

    requirement: Requirement
    status: Status
    reason: str
    tests: tuple[str, ...]
    scenarios: tuple[ScenarioEvidence, ...]

    @property
    def has_evidence(self) -> bool:
        return bool(self.tests or self.scenarios)


def build_rows(
    requirements: Sequence[Requirement] = REQUIREMENTS, scripts: Scripts | None = None
) -> list[Row]:
    """Each requirement with its evidence and its effective status.

    Precedence: a row we declare deviated keeps its reason; otherwise a tcpstack
    deviation recorded by a scenario makes it deviated; n/a stays n/a; a row
    declared "not met" as untested becomes met once a scenario cites it (tests it
    already names are partial, or the row would say met); a row declared met is
    shown as untested until a test or scenario checks it.
    """
    scripts = load_scripts() if scripts is None else scripts
    ordered = [scripts[key] for key in sorted(scripts)]
    rows = []
    for req in requirements:
        scenarios = tuple(
            ScenarioEvidence(
                s.id,
                s.title,
                tuple(d for d in s.deviations if d.dut == "linux" and req.id in d.refs),
            )
            for s in ordered
            if req.id in s.refs
        )
        ours = [
            f"{d.reason} (scenario {s.id})"
            for s in ordered
            for d in s.deviations
            if d.dut == "tcpstack" and req.id in d.refs
        ]
        evidence = bool(req.evidence or scenarios)
        status: Status = req.status
        reason = req.reason
        if req.status == "deviated":
            pass
        elif ours:
            status, reason = "deviated", "; ".join(ours)
        elif req.status == "n/a":
            pass
        elif req.status == "not met":
            if reason.startswith(UNTESTED) and scenarios:
                status, reason = "met", ""
        elif not evidence:
            status = "not met"
            planned = ", ".join(req.awaiting)
            reason = (
                f"{UNTESTED} awaiting scenario {planned}"
                if planned
                else f"{UNTESTED} no test or scenario checks it yet"
            )
        rows.append(Row(req, status, reason, req.evidence, scenarios))
    return rows


# ------------------------------------------------------------------ rendering


def _cell(text: str) -> str:
    """Text for a table cell: pipes escaped everywhere, < and > escaped outside code
    spans (GitHub would read them as HTML), nothing else touched."""
    parts = text.replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _status_cell(row: Row) -> str:
    if row.status == "met":
        return "met"
    return f"**{row.status}**: {_cell(row.reason)}"


def _evidence_cell(row: Row) -> str:
    items = [f"`{test}`" for test in row.tests]
    for s in row.scenarios:
        item = f"scenario {s.id} (tcpstack + Linux)"
        for d in s.linux:
            kernels = f" {d.kernels}" if d.kernels else ""
            item += f"<br>Linux{_cell(kernels)} differs: {_cell(d.reason)}"
        items.append(item)
    return "<br>".join(items) if items else "—"


def _requirement_cell(req: Requirement) -> str:
    text = _cell(req.text)
    if req.note:
        text += f"<br>*Note: {_cell(req.note)}*"
    return text


def _counts(rows: Iterable[Row]) -> str:
    tally = Counter(row.status for row in rows)
    return ", ".join(f"{tally[s]} {s}" for s in STATUSES)


def summary(rows: Sequence[Row]) -> str:
    parts = []
    for kind, label in KINDS:
        mine = [r for r in rows if r.requirement.kind == kind]
        parts.append(f"**{label}** ({len(mine)}): {_counts(mine)}")
    return " · ".join(parts)


INTRO: Final = f"""\
# RFC requirement matrix

<!-- Generated by {COMMAND} from tcpstack/testing/requirements.py,
tcpstack/testing/catalogue.py and tcpstack/testing/coverage.py. Do not edit by hand:
change the data and run it. -->

Every requirement of RFC 9293's Appendix B (MUST-1 to MUST-69 and SHLD-1 to
SHLD-31), the clauses of RFC 9293 §3.1 and §3.10.7 that the scripted scenarios
check, and the clauses of RFC 5961, 6298, 5681, 7323, 2018 and 6528 that a TCP
endpoint talking to Linux is judged by: what each asks, in a line of our own
words (the RFC is the authority), whether this endpoint does it, and which tests
show it.

**How it is made.** The rows are data, in `tcpstack/testing/requirements.py`:
our verdict for each requirement, the reason for any other verdict than "met",
and the tests that check it. The scripted scenarios of
`tcpstack/testing/catalogue.py` add their own evidence: each names the
requirements it checks, and runs in `tests/integration/test_conformance.py`
twice, a scripted peer injecting exact segments once into this endpoint and once
into a Linux socket in a namespace of its own, with the same expectations for
both. Where a device knowingly differs, the scenario records a deviation: one by
tcpstack makes the row "deviated" with its reason; one by Linux is shown beside
the scenario and changes nothing here.

```sh
{COMMAND}            # rewrite docs/conformance.md
{COMMAND} --check    # check it, change nothing
```

The check fails if this file is stale, if a test named here is not one pytest
collects, if a scenario cites a requirement that is not here, if a MUST is
neither met (with evidence) nor deviated or n/a with a reason, or if a Gate 0
scenario of the [scenario coverage](#scenario-coverage) is not fully checked in CI.
`tests/unit/test_matrix.py` fails when this file differs from what the data
gives, so a change to the data, the tests or the scenarios shows up here.

**Statuses.** *met*: implemented, and the tests or scenarios listed check it.
*deviated*: we knowingly do otherwise, for the reason given. *not met*: not
implemented or broken, or implemented but not yet checked by any test
("untested"; such a row turns met once a scenario checks it). *n/a*:
cannot apply to a single-address IPv4 endpoint on one link. Test ids are pytest
node ids; one without a `[parameter]` stands for all its parametrizations. In the
summary, "Companion" counts the rows of the companion RFCs and of RFC 9293 §3.1
and §3.10.7.
"""


def render(rows: Sequence[Row] | None = None, places: Sequence[Where] | None = None) -> str:
    rows = build_rows() if rows is None else rows
    places = coverage.locate(*coverage.catalogue_keys()) if places is None else places
    lines = [INTRO, f"**Summary.** {summary(rows)}", ""]
    open_musts = sorted(
        (r.requirement.id for r in rows if r.requirement.kind == "MUST" and _violates(r)),
        key=lambda rid: int(rid[5:]),
    )
    if open_musts:
        lines += [f"MUST rows not met yet ({len(open_musts)}): {', '.join(open_musts)}.", ""]
    by_group: dict[str, list[Row]] = {}
    for row in rows:
        by_group.setdefault(row.requirement.group, []).append(row)
    for index, (key, title) in enumerate(GROUPS):
        if index == 0:
            lines += ["## RFC 9293 Appendix B: TCP requirement summary", ""]
        if key == "rfc9293":
            lines += ["## Other RFC 9293 clauses and the companion RFCs", ""]
        group = by_group.get(key, [])
        if not group:
            continue
        lines += [
            f"### {title}",
            "",
            "| Id | § | Requirement (our words) | Status | Checked by |",
            "|---|---|---|---|---|",
        ]
        for row in group:
            req = row.requirement
            lines.append(
                f"| {req.id} | {req.section} | {_requirement_cell(req)} "
                f"| {_status_cell(row)} | {_evidence_cell(row)} |"
            )
        lines.append("")
    lines += render_coverage(places)
    return "\n".join(lines)


# ------------------------------------------------------------------ scenario coverage

KINDS_SHOWN: Final = ("scripted", "tested", "partial", "not yet")

COVERAGE_INTRO: Final = """\
## Scenario coverage

Each of the 126 scenarios of the conformance plan (`conformance.md` §6 of the shared
reference), with where it is checked. *scripted*: a script of
`tcpstack/testing/catalogue.py` runs it against both devices, in CI
(`tests/integration/test_conformance.py`) unless marked `--all`. *tested*: the pytest
tests named check what it asks. *partial*: they check the part the note says. *not
yet*: nothing checks it, for the reason given. The map is
`tcpstack/testing/coverage.py`; whether a scenario is scripted is read from the
catalogue. The gate is the plan's (§8): 0 in every CI run, 1 before a merge, 2 nightly.

A scenario with a script or tests runs by its id: the script on both devices, the
tests through pytest:

```sh
sudo ./scripts/conformance R-08 H-01
sudo ./scripts/conformance --list      # every scenario and where it runs
```
"""


def _where_cell(place: Where) -> str:
    items: list[str] = []
    for key in place.ci_scripts:
        items.append(f"scripted {key}")
    for key in place.more_scripts:
        items.append(f"scripted {key} (`--all`)")
    s = place.scenario
    if not place.scripted and not s.tests:
        items.append(f"**not yet**: {_cell(s.missing)}")
    elif s.tests:
        if s.partial and not place.scripted:
            items.append(f"*partial*: {_cell(s.partial)}")
        items += [f"`{test}`" for test in s.tests]
    return "<br>".join(items)


def coverage_counts(places: Iterable[Where]) -> str:
    tally = Counter(p.kind for p in places)
    return ", ".join(f"{tally[k]} {k}" for k in KINDS_SHOWN)


def gate_zero_gaps(places: Iterable[Where]) -> list[Where]:
    return [p for p in places if p.scenario.gate == 0 and not p.in_ci]


def render_coverage(places: Sequence[Where]) -> list[str]:
    lines = [COVERAGE_INTRO]
    lines.append(f"**Summary** ({len(places)}): {coverage_counts(places)}.")
    lines.append("")
    for gate in (0, 1, 2):
        mine = [p for p in places if p.scenario.gate == gate]
        lines.append(f"- Gate {gate} ({len(mine)}): {coverage_counts(mine)}")
    for letter, title, _ in coverage.GROUPS:
        mine = [p for p in places if p.scenario.id.startswith(letter + "-")]
        lines.append(f"- {letter}, {title} ({len(mine)}): {coverage_counts(mine)}")
    lines.append("")
    gaps = gate_zero_gaps(places)
    if gaps:
        lines += [
            f"Gate 0 scenarios not fully checked in CI yet ({len(gaps)}): "
            + ", ".join(p.scenario.id for p in gaps)
            + ".",
            "",
        ]
    by_group: dict[str, list[Where]] = {}
    for place in places:
        by_group.setdefault(place.scenario.id[0], []).append(place)
    for letter, title, _ in coverage.GROUPS:
        lines += [
            f"### {letter}. {title}",
            "",
            "| Id | Scenario (our words) | Gate | Checked by |",
            "|---|---|---|---|",
        ]
        for place in by_group.get(letter, []):
            s = place.scenario
            lines.append(f"| {s.id} | {_cell(s.title)} | {s.gate} | {_where_cell(place)} |")
        lines.append("")
    return lines


# ------------------------------------------------------------------ checking


def _violates(row: Row) -> str | None:
    """Why a MUST row breaks the rule, or None."""
    if row.status == "met":
        return None if row.has_evidence else "met, but nothing checks it"
    if row.status in ("deviated", "n/a"):
        return None if row.reason.strip() else f"{row.status} without a reason"
    return f"not met: {row.reason}"


def data_problems(requirements: Sequence[Requirement] = REQUIREMENTS) -> list[str]:
    """What is wrong with the rows themselves, needing neither pytest nor the catalogue."""
    out: list[str] = []
    seen: Counter[str] = Counter(r.id for r in requirements)
    out += [f"{rid}: listed {n} times" for rid, n in sorted(seen.items()) if n > 1]
    ids = set(seen)
    for number in range(1, MUST_COUNT + 1):
        if f"MUST-{number}" not in ids:
            out.append(f"MUST-{number}: missing")
    for number in range(1, SHOULD_COUNT + 1):
        if f"SHLD-{number}" not in ids:
            out.append(f"SHLD-{number}: missing")
    groups = {key for key, _ in GROUPS}
    for r in requirements:
        if not ID_PATTERN.match(r.id):
            out.append(f"{r.id}: malformed id")
        if not SECTION_PATTERN.match(r.section):
            out.append(f"{r.id}: malformed section {r.section!r}")
        if r.status not in STATUSES:
            out.append(f"{r.id}: unknown status {r.status!r}")
        if r.group not in groups:
            out.append(f"{r.id}: unknown group {r.group!r}")
        for field, text in (("statement", r.text), ("reason", r.reason), ("note", r.note)):
            if "\n" in text:
                out.append(f"{r.id}: the {field} is more than one line")
        if not r.text.strip():
            out.append(f"{r.id}: no statement")
        if r.status != "met" and not r.reason.strip():
            out.append(f"{r.id}: {r.status} without a reason")
        if r.status == "met" and r.reason:
            out.append(f"{r.id}: met, yet has a reason (use note for a caveat)")
        for planned in r.awaiting:
            if not SCENARIO_PATTERN.match(planned):
                out.append(f"{r.id}: awaits {planned!r}, not a scenario id")
        for test in r.evidence:
            if not test.startswith("tests/") or "::" not in test:
                out.append(f"{r.id}: {test!r} is not a pytest node id")
    return out


def reference_problems(
    scripts: Scripts, requirements: Sequence[Requirement] = REQUIREMENTS
) -> list[str]:
    """Scenario refs and deviation refs that name no requirement."""
    known = {r.id for r in requirements}
    out: list[str] = []
    for key in sorted(scripts):
        s = scripts[key]
        out += [
            f"scenario {s.id}: cites unknown requirement {ref}"
            for ref in s.refs
            if ref not in known
        ]
        for d in s.deviations:
            if d.dut not in DUTS:
                out.append(f"scenario {s.id}: deviation by unknown device {d.dut!r}")
            out += [
                f"scenario {s.id}: {d.dut} deviation names unknown requirement {ref}"
                for ref in d.refs
                if ref not in known
            ]
    return out


def _base(node_id: str) -> str:
    return node_id.split("[", 1)[0]


Named = Iterable[tuple[str, str]]  # (who names it, pytest node id)


def _requirement_tests(requirements: Sequence[Requirement]) -> Named:
    return [(r.id, test) for r in requirements for test in r.evidence]


def _scenario_tests(scenarios: Iterable[Scenario]) -> Named:
    return [(s.id, test) for s in scenarios for test in s.tests]


def missing_tests(collected: Collection[str], named: Named) -> list[str]:
    """Named tests that pytest did not collect. An id with a [parameter] must match
    exactly; one without matches the test whatever its parametrization."""
    exact = set(collected)
    bases = {_base(c) for c in exact}
    return [
        f"{who}: no such test {test}"
        for who, test in named
        if not (test in exact if "[" in test else (test in exact or test in bases))
    ]


def evidence_problems(
    collected: Collection[str], requirements: Sequence[Requirement] = REQUIREMENTS
) -> list[str]:
    """Evidence naming no collected test."""
    return missing_tests(collected, _requirement_tests(requirements))


def static_missing_tests(named: Named, root: Path = ROOT) -> list[str]:
    """A quick approximation of missing_tests without running pytest: the file
    exists and defines the test function (its parameters are not checked)."""
    defined: dict[str, set[str]] = {}
    out = []
    for who, test in named:
        path, _, name = _base(test).partition("::")
        if path not in defined:
            file = root / path
            defined[path] = (
                {
                    node.name
                    for node in ast.parse(file.read_text()).body
                    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                }
                if file.is_file()
                else set()
            )
        if name not in defined[path]:
            out.append(f"{who}: no such test {test}")
    return out


def static_evidence_problems(
    requirements: Sequence[Requirement] = REQUIREMENTS, root: Path = ROOT
) -> list[str]:
    """static_missing_tests for the requirements' evidence."""
    return static_missing_tests(_requirement_tests(requirements), root)


def coverage_data_problems(
    catalogue: Collection[str], scenarios: Sequence[Scenario] = coverage.SCENARIOS
) -> list[str]:
    """What is wrong with the coverage map itself, and catalogue keys that name no
    scenario of the plan. `catalogue` is every key of SCRIPTS and EXTENDED."""
    out: list[str] = []
    ids = [s.id for s in scenarios]
    seen = Counter(ids)
    out += [f"{sid}: listed {n} times" for sid, n in sorted(seen.items()) if n > 1]
    plan = coverage.plan_ids()
    out += [f"{sid}: in the plan, missing from the map" for sid in plan if sid not in seen]
    out += [f"{sid}: not a scenario of the plan" for sid in sorted(set(ids) - set(plan))]
    known = set(plan)
    out += [
        f"catalogue {key}: names no scenario of the plan"
        for key in sorted(catalogue)
        if coverage.scenario_of(key) not in known
    ]
    scripted = {coverage.scenario_of(key) for key in catalogue}
    for s in scenarios:
        if s.gate not in (0, 1, 2):
            out.append(f"{s.id}: gate {s.gate}, not 0, 1 or 2")
        if not s.title.strip() or "\n" in s.title:
            out.append(f"{s.id}: the title is not one line")
        for test in s.tests:
            if not test.startswith("tests/") or "::" not in test:
                out.append(f"{s.id}: {test!r} is not a pytest node id under tests/")
        if s.partial and not s.tests and s.id not in scripted:
            out.append(f"{s.id}: a partial note without a script or tests")
        if s.tests and s.missing:
            out.append(f"{s.id}: has tests, and a reason why it has none")
        if not s.tests and not s.missing and s.id not in scripted:
            out.append(f"{s.id}: neither scripted nor mapped to tests, and no reason given")
    return out


def gate_zero_problems(places: Iterable[Where]) -> list[str]:
    """Gate 0 scenarios that CI does not fully check."""
    out = []
    for p in gate_zero_gaps(places):
        s = p.scenario
        if p.more_scripts:
            why = f"scripted only for `--all` ({', '.join(p.more_scripts)})"
        elif s.tests or p.ci_scripts:
            why = f"only partly checked in CI: {s.partial}"
        else:
            why = f"not checked in CI: {s.missing or 'no script or test'}"
        out.append(f"{s.id}: Gate 0, {why}")
    return out


def coverage_problems(
    ci: Collection[str],
    extended: Collection[str],
    collected: Collection[str] | None = None,
    scenarios: Sequence[Scenario] = coverage.SCENARIOS,
) -> list[str]:
    """Every rule of the coverage map. With `collected` (pytest's test ids), the
    tests it names are checked against them; without, against the test files."""
    named = _scenario_tests(scenarios)
    out = coverage_data_problems([*ci, *extended], scenarios)
    out += static_missing_tests(named) if collected is None else missing_tests(collected, named)
    out += gate_zero_problems(coverage.locate(ci, extended, scenarios))
    return out


def must_problems(rows: Sequence[Row]) -> list[str]:
    """MUST rows that break the rule, in MUST order."""
    musts = sorted(
        (row for row in rows if row.requirement.kind == "MUST"),
        key=lambda row: int(row.requirement.id[5:]),
    )
    return [f"{r.requirement.id}: {why}" for r in musts if (why := _violates(r)) is not None]


def collect_tests(root: Path = ROOT) -> set[str]:
    """Every test id pytest collects under tests/ (a few seconds: it imports them all)."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    ids = {line.strip() for line in done.stdout.splitlines() if "::" in line}
    if done.returncode != 0 or not ids:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"pytest could not collect the tests:\n{tail}")
    return ids


# ------------------------------------------------------------------ command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=COMMAND, description="Write docs/conformance.md, or check it and its rules."
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 if the file is stale or a rule is broken",
    )
    args = parser.parse_args(argv)
    scripts = load_scripts()
    ci, extended = coverage.catalogue_keys()
    rows = build_rows(REQUIREMENTS, scripts)
    places = coverage.locate(ci, extended)
    text = render(rows, places)
    if not args.check:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(text)
        print(f"wrote {DOC.relative_to(ROOT)}: {summary(rows).replace('**', '')}")
        print(f"scenarios: {coverage_counts(places)}")
        if gaps := gate_zero_gaps(places):
            print(f"{len(gaps)} Gate 0 scenarios not fully checked in CI; `{COMMAND} --check`")
        if musts := must_problems(rows):
            print(f"{len(musts)} MUST rows not met yet; `{COMMAND} --check` lists them")
        return 0

    sections: list[tuple[str, list[str]]] = []
    if not DOC.is_file() or DOC.read_text() != text:
        sections.append(("stale", [f"{DOC.relative_to(ROOT)} differs: run {COMMAND}"]))
    sections.append(("data", data_problems(REQUIREMENTS)))
    try:
        collected = collect_tests()
    except RuntimeError as exc:
        sections.append(("evidence", [str(exc)]))
        sections.append(("scenario coverage", coverage_problems(ci, extended)))
    else:
        sections.append(("evidence", evidence_problems(collected, REQUIREMENTS)))
        sections.append(("scenario coverage", coverage_problems(ci, extended, collected)))
    sections.append(("references", reference_problems(scripts, REQUIREMENTS)))
    sections.append(("MUST rows neither met nor deviated/n/a", must_problems(rows)))
    failed = False
    for title, problems in sections:
        if problems:
            failed = True
            print(f"{title} ({len(problems)}):")
            for problem in problems:
                print(f"  {problem}")
    if not failed:
        print(f"{DOC.relative_to(ROOT)} is up to date and every rule holds")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
