"""docs/conformance.md is exactly what the requirement data and the scenario catalogue
render, and the data keeps its own rules.

Whether each test named as evidence exists is checked here by reading the test files
(the file defines the function), which takes milliseconds. The exact check, against
what pytest collects, parameters included, is `scripts/conformance-matrix --check`:
collecting the whole suite takes several seconds, too long to repeat inside it.
"""

from __future__ import annotations

import difflib
import re

import pytest

from tcpstack.testing import matrix
from tcpstack.testing.catalogue import Deviation, Scripted
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
    text = matrix.render()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == len(REQUIREMENTS) + sum(1 for key, _ in GROUPS)
    for line in rows:
        assert len(CELL_BORDER.findall(line)) == 6, line
        outside_code = "".join(line.split("`")[0::2])
        assert not re.search(r"<(?!br>)", outside_code), line


# The rule --check enforces. It cannot hold yet: some MUSTs wait for scenarios still
# being written, others are not implemented (see the report of scripts/conformance-
# matrix --check). strict=False, so it turns into an XPASS, not a failure, the day it
# holds; then drop the mark so it guards the rule from there on.
@pytest.mark.xfail(strict=False, reason="MUST rows not met yet; see conformance-matrix --check")
def test_every_must_is_met_with_evidence_or_deviated_or_na_with_a_reason() -> None:
    assert matrix.must_problems(matrix.build_rows()) == []
