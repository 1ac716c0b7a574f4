"""docs/conformance.md is exactly what the requirement data and the scenario catalogue
render, and the data keeps its own rules.

Whether each test named as evidence exists is checked here by reading the test files
(the file defines the function), which takes milliseconds. The exact check, against
what pytest collects, parameters included, is `scripts/conformance-matrix --check`:
collecting the whole suite takes several seconds, too long to repeat inside it.
"""

from __future__ import annotations

import argparse
import difflib
import re

import pytest

from tcpstack.testing import coverage, matrix, runner
from tcpstack.testing.catalogue import EXTENDED, SCRIPTS, Deviation, Scripted
from tcpstack.testing.coverage import Scenario
from tcpstack.testing.requirements import (
    BY_ID,
    GROUPS,
    MUST_COUNT,
    REQUIREMENTS,
    SHOULD_COUNT,
    UNTESTED,
    Requirement,
)

# A pipe that ends a table cell: not escaped with a backslash.
CELL_BORDER = re.compile(r"(?<!\\)\|")


def test_the_document_is_what_the_data_renders() -> None:
    rendered = matrix.render()
    written = matrix.DOC.read_text() if matrix.DOC.is_file() else ""
    if written != rendered:
        diff = difflib.unified_diff(
            written.splitlines(), rendered.splitlines(), "docs/conformance.md", "rendered", n=0
        )
        shown = "\n".join(list(diff)[:40])
        pytest.fail(f"docs/conformance.md is stale: run scripts/conformance-matrix\n{shown}")


def test_the_data_breaks_no_rule() -> None:
    assert matrix.data_problems() == []


def test_ids_are_unique_and_well_formed() -> None:
    ids = [r.id for r in REQUIREMENTS]
    assert len(ids) == len(set(ids)) == len(BY_ID)
    assert all(re.fullmatch(r"MUST-\d+|SHLD-\d+|RFC\d{4}-\d+(\.\d+)*[a-z]?", i) for i in ids)


def test_every_must_and_should_of_appendix_b_is_there_once() -> None:
    musts = sorted(int(r.id[5:]) for r in REQUIREMENTS if r.kind == "MUST")
    shoulds = sorted(int(r.id[5:]) for r in REQUIREMENTS if r.kind == "SHOULD")
    assert musts == list(range(1, MUST_COUNT + 1))
    assert shoulds == list(range(1, SHOULD_COUNT + 1))


def test_every_verdict_but_met_gives_a_reason() -> None:
    for r in REQUIREMENTS:
        if r.status == "met":
            assert not r.reason, f"{r.id}: a met row has a note, not a reason"
        else:
            assert r.reason.strip(), f"{r.id} is {r.status} without a reason"


def test_statements_are_one_short_line_each() -> None:
    for r in REQUIREMENTS:
        assert "\n" not in r.text and len(r.text) <= 120, r.id
        assert re.fullmatch(r"§\d+(\.\d+)*", r.section), r.id


def test_appendix_b_rows_sit_under_appendix_b_headings() -> None:
    appendix_b = {key for key, _ in GROUPS[:18]}
    for r in REQUIREMENTS:
        assert (r.group in appendix_b) == (r.kind != "companion"), r.id


def test_every_test_named_as_evidence_is_defined() -> None:
    assert matrix.static_evidence_problems() == []


def test_every_scenario_cites_known_requirements() -> None:
    assert matrix.reference_problems(matrix.load_scripts()) == []


# ------------------------------------------------ how scenarios change a row


def _row(req: Requirement, *scripts: Scripted) -> matrix.Row:
    (row,) = matrix.build_rows([req], {s.id: s for s in scripts})
    return row


def test_a_met_row_without_evidence_shows_as_untested_until_a_scenario_cites_it() -> None:
    req = Requirement("MUST-99", "§1", "Do it.", "met", awaiting=("W-04",), group="window")
    row = _row(req)
    assert (row.status, row.reason) == ("not met", f"{UNTESTED} awaiting scenario W-04")
    row = _row(req, Scripted("W-04", "does it", ("MUST-99",)))
    assert row.status == "met" and [s.id for s in row.scenarios] == ["W-04"]


def test_an_untested_row_turns_met_once_a_scenario_checks_it() -> None:
    req = Requirement("MUST-99", "§1", "Do it.", "not met", f"{UNTESTED} nobody looked")
    assert _row(req).status == "not met"
    assert _row(req, Scripted("A-01", "looks", ("MUST-99",))).status == "met"
    # Tests the row names itself are partial: they do not make it met.
    partial = Requirement(
        "MUST-99", "§1", "Do it.", "not met", f"{UNTESTED} half", evidence=("tests/a.py::t",)
    )
    assert _row(partial).status == "not met"
    broken = Requirement("MUST-99", "§1", "Do it.", "not met", "not implemented")
    assert _row(broken, Scripted("A-01", "looks", ("MUST-99",))).status == "not met"


def test_a_tcpstack_deviation_makes_the_row_deviated_and_a_linux_one_does_not() -> None:
    req = Requirement("MUST-99", "§1", "Do it.", "met", evidence=("tests/unit/x.py::t",))
    ours = Deviation("tcpstack", ("MUST-99",), "we do it later")
    theirs = Deviation("linux", ("MUST-99",), "Linux does it <sooner>", ">=6.10")
    row = _row(req, Scripted("M-07", "t", ("MUST-99",), deviations=(ours,)))
    assert (row.status, row.reason) == ("deviated", "we do it later (scenario M-07)")
    row = _row(req, Scripted("M-07", "t", ("MUST-99",), deviations=(theirs,)))
    assert row.status == "met"
    cell = matrix._evidence_cell(row)
    assert "scenario M-07 (tcpstack + Linux)" in cell and "&gt;=6.10" in cell
    assert "&lt;sooner&gt;" in cell
    declared = Requirement("MUST-99", "§1", "Do it.", "deviated", "our own reason")
    row = _row(declared, Scripted("M-07", "t", (), deviations=(ours,)))
    assert (row.status, row.reason) == ("deviated", "our own reason")


def test_unknown_references_are_reported() -> None:
    scripts = {
        "X-01": Scripted(
            "X-01", "t", ("MUST-1", "MUST-999"), deviations=(Deviation("bsd", ("SHLD-0",), "r"),)
        )
    }
    assert matrix.reference_problems(scripts) == [
        "scenario X-01: cites unknown requirement MUST-999",
        "scenario X-01: deviation by unknown device 'bsd'",
        "scenario X-01: bsd deviation names unknown requirement SHLD-0",
    ]


def test_evidence_matches_a_parametrized_test_by_its_name() -> None:
    req = Requirement(
        "MUST-99",
        "§1",
        "Do it.",
        "met",
        evidence=("tests/a.py::t", "tests/a.py::u[veth]", "tests/a.py::v[tap]"),
    )
    collected = {"tests/a.py::t[veth]", "tests/a.py::u[veth]", "tests/a.py::v[veth]"}
    assert matrix.evidence_problems(collected, [req]) == [
        "MUST-99: no such test tests/a.py::v[tap]"
    ]


def test_every_table_row_has_five_cells_and_nothing_reads_as_html() -> None:
    text, _, _ = matrix.render().partition("## Scenario coverage")
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == len(REQUIREMENTS) + sum(1 for key, _ in GROUPS)
    for line in rows:
        assert len(CELL_BORDER.findall(line)) == 6, line
        outside_code = "".join(line.split("`")[0::2])
        assert not re.search(r"<(?!br>)", outside_code), line


# The rule --check enforces: every MUST met with evidence, or deviated or n/a with a
# reason.
def test_every_must_is_met_with_evidence_or_deviated_or_na_with_a_reason() -> None:
    assert matrix.must_problems(matrix.build_rows()) == []


# ------------------------------------------------------ the scenario coverage map


def _places(
    *scenarios: Scenario, ci: tuple[str, ...] = (), more: tuple[str, ...] = ()
) -> list[coverage.Where]:
    return coverage.locate(ci, more, scenarios)


def test_the_map_names_the_126_scenarios_of_the_plan_once_each_in_order() -> None:
    ids = [s.id for s in coverage.SCENARIOS]
    assert len(ids) == coverage.TOTAL == 126
    assert ids == coverage.plan_ids()
    assert ids[0] == "E-01" and ids[-1] == "L-10"


def test_the_map_and_the_catalogue_break_no_rule() -> None:
    assert matrix.coverage_data_problems([*SCRIPTS, *EXTENDED]) == []


def test_every_test_the_map_names_is_defined() -> None:
    named = [(s.id, test) for s in coverage.SCENARIOS for test in s.tests]
    assert named  # the KP scenarios are mapped to tests
    assert matrix.static_missing_tests(named) == []


def test_the_gate_0_list_is_the_plans() -> None:
    gate0 = {s.id for s in coverage.SCENARIOS if s.gate == 0}
    assert {f"E-0{n}" for n in range(1, 8)} <= gate0
    assert {"H-01", "H-02", "D-01", "C-01", "C-02", "C-06"} <= gate0  # the KP smoke tests
    assert {"W-04", "W-05", "M-08", "O-12"} <= gate0 and "H-16" not in gate0
    assert len(gate0) == 45


def test_scripts_come_from_the_catalogue_and_win_over_tests_and_reasons() -> None:
    waiting = Scenario("W-10", "t", 1, missing="no script yet")
    tested = Scenario("H-01", "t", 0, ("tests/a.py::t",))
    (place,) = _places(waiting)
    assert (place.kind, place.scripted) == ("not yet", False)
    (place,) = _places(waiting, ci=("W-10",))
    assert place.kind == "scripted" and place.ci_scripts == ("W-10",)
    (place,) = _places(tested)
    assert place.kind == "tested" and place.in_ci
    # A variant key belongs to its scenario; one already in SCRIPTS is not repeated.
    (place,) = _places(Scenario("D-03", "t", 0), ci=("D-03",), more=("D-03-all",))
    assert (place.ci_scripts, place.more_scripts) == (("D-03",), ("D-03-all",))
    assert "scripted D-03-all (`--all`)" in matrix._where_cell(place)


def test_ids_outside_the_plan_and_bad_entries_are_reported() -> None:
    plan = [Scenario(sid, "t", 1, missing="r") for sid in coverage.plan_ids()]
    entries = [
        *plan[1:],  # E-01 is missing
        Scenario("E-02", "t", 1, missing="r"),  # twice
        Scenario("Z-01", "t", 1, missing="r"),
        Scenario("H-99", "t", 3, partial="half", missing=""),
    ]
    problems = matrix.coverage_data_problems(["D-03-all", "Q-99", "weird"], entries)
    assert problems == [
        "E-02: listed 2 times",
        "E-01: in the plan, missing from the map",
        "H-99: not a scenario of the plan",
        "Z-01: not a scenario of the plan",
        "catalogue Q-99: names no scenario of the plan",
        "catalogue weird: names no scenario of the plan",
        "H-99: gate 3, not 0, 1 or 2",
        "H-99: a partial note without a script or tests",
        "H-99: neither scripted nor mapped to tests, and no reason given",
    ]
    odd = Scenario("E-01", "t", 1, ("unit/x.py::t",), missing="why")
    assert matrix.coverage_data_problems([], [odd, *plan[1:]]) == [
        "E-01: 'unit/x.py::t' is not a pytest node id under tests/",
        "E-01: has tests, and a reason why it has none",
    ]


def test_tests_the_map_names_are_checked_against_pytests_collection() -> None:
    scenario = Scenario("H-01", "t", 1, ("tests/a.py::t", "tests/a.py::u[tap]"))
    collected = {"tests/a.py::t[veth]", "tests/a.py::u[veth]"}
    problems = matrix.coverage_problems((), (), collected, [scenario])
    assert "H-01: no such test tests/a.py::u[tap]" in problems
    assert "H-01: no such test tests/a.py::t" not in problems


def test_every_gate_0_scenario_must_be_fully_checked_in_ci() -> None:
    places = _places(
        Scenario("E-01", "t", 0, ("tests/a.py::t",)),  # tests: fine
        Scenario("E-02", "t", 0),  # scripted in CI: fine
        Scenario("E-03", "t", 0, ("tests/a.py::t",), partial="the easy half"),
        Scenario("E-04", "t", 0),  # only in EXTENDED
        Scenario("E-05", "t", 0, missing="nobody wrote it"),
        Scenario("E-06", "t", 1, missing="gate 1 may wait"),
        ci=("E-02",),
        more=("E-04",),
    )
    assert matrix.gate_zero_problems(places) == [
        "E-03: Gate 0, only partly checked in CI: the easy half",
        "E-04: Gate 0, scripted only for `--all` (E-04)",
        "E-05: Gate 0, not checked in CI: nobody wrote it",
    ]


def test_the_coverage_tables_have_four_cells_and_a_summary_per_group() -> None:
    text = matrix.render().partition("## Scenario coverage")[2]
    rows = [line for line in text.splitlines() if re.match(r"\| [A-Z]-\d\d ", line)]
    assert [row.split(" | ")[0][2:] for row in rows] == coverage.plan_ids()
    for line in rows:
        assert len(CELL_BORDER.findall(line)) == 5, line
    for letter, title, count in coverage.GROUPS:
        assert f"- {letter}, {title} ({count}): " in text


# Gate 0 asks for every scenario in it to be checked in full by CI.
def test_every_gate_0_scenario_is_fully_checked_in_ci() -> None:
    assert matrix.gate_zero_problems(coverage.locate(list(SCRIPTS), list(EXTENDED))) == []


# ------------------------------------------------ running a scenario by its id


def _args(*ids: str, **kw: object) -> argparse.Namespace:
    values: dict[str, object] = dict(
        ids=list(ids), dut="both", all=False, list=False, transcript=False, timeout=5.0
    )
    values.update(kw)
    return argparse.Namespace(**values)


def _l03_not_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make L-03 a scenario nothing checks yet, whatever the map says of it now."""
    original = coverage.locate

    def locate(
        ci: list[str], extended: list[str], scenarios: tuple[Scenario, ...] = coverage.SCENARIOS
    ) -> list[coverage.Where]:
        swapped = tuple(
            Scenario(s.id, s.title, s.gate, missing="nothing yet") if s.id == "L-03" else s
            for s in scenarios
        )
        return original(ci, extended, swapped)

    monkeypatch.setattr(coverage, "locate", locate)


def test_list_shows_every_scenario_with_where_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    _l03_not_yet(monkeypatch)
    lines: list[str] = []
    assert runner.main(_args(list=True), lines.append) == 0
    shown = [line.split()[0] for line in lines]
    assert shown[:126] == coverage.plan_ids()
    assert all(key in shown for key in EXTENDED)
    by_id = dict(zip(shown, lines, strict=True))
    assert "[script E-07]" in by_id["E-07"]
    assert "pytest, " in by_id["H-01"]
    assert "[not yet]" in by_id["L-03"]


def test_an_id_mapped_to_tests_runs_them_through_pytest(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tuple[str, tuple[str, ...], float]] = []

    def fake(scenario: str, tests: tuple[str, ...], timeout: float = 0) -> runner.TestRun:
        ran.append((scenario, tests, timeout))
        return runner.TestRun(scenario, tests, True, "pass", "", 0.0)

    monkeypatch.setattr(runner, "run_tests", fake)
    lines: list[str] = []
    assert runner.main(_args("H-01", "E-04"), lines.append) == 0
    assert ran == [
        ("H-01", coverage.BY_ID["H-01"].tests, 5.0),
        ("E-04", coverage.BY_ID["E-04"].tests, 5.0),
    ]
    assert lines[-1].startswith("2 of 2 ok")


def test_an_id_nothing_checks_yet_or_no_id_at_all_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _l03_not_yet(monkeypatch)
    lines: list[str] = []
    assert runner.main(_args("L-03"), lines.append) == 2
    assert "not yet" in lines[0] and "L-03" in lines[0]
    assert runner.main(_args("X-99"), lines.append) == 2


def test_run_tests_reports_a_failure_and_a_timeout() -> None:
    missing = runner.run_tests("H-01", ("tests/unit/test_no_such_file.py::t",), timeout=60)
    assert not missing.ok and missing.summary == "FAIL"
    slow = runner.run_tests("E-04", coverage.BY_ID["E-04"].tests, timeout=0.01)
    assert not slow.ok and slow.summary == "TIMEOUT"
