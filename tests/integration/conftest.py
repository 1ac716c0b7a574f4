"""Integration tests build real network namespaces: they need root, and they must leave
nothing behind.

Every lab this run makes, in this process or in a child, records itself in a directory
private to the run (TCPSTACK_LAB_DIR), before it creates anything. At the end a new
`tcps-` namespace fails the run if this run's records name it; new namespaces that no
record of ours names belong to a parallel run and are left alone.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpstack import lab as lab_module
from tcpstack import netns
from tcpstack.stack import Stack
from tests.integration.kernel import open_stack
from tests.integration.report import REPORT


def _lab_namespaces() -> set[str]:
    return {n for n in netns.listnetns() if n.startswith(lab_module.NAME_PREFIX)}


@pytest.fixture(scope="session", autouse=True)
def lab_records() -> Iterator[Path]:
    directory = Path("/run/tcpstack") / f"test-{os.getpid()}-{secrets.token_hex(3)}"
    patch = pytest.MonkeyPatch()
    patch.setenv("TCPSTACK_LAB_DIR", str(directory))
    before = _lab_namespaces()
    try:
        yield directory
    finally:
        patch.undo()
    records = []
    for file in directory.rglob("tcps-*.json"):
        records.append(json.loads(file.read_text()))
    ours = {n for rec in records for n in rec["namespaces"]}
    leftover = (_lab_namespaces() - before) & ours
    # Fail, but leave the machine clean for whoever runs next.
    for name in leftover:
        netns.remove(name)
    shutil.rmtree(directory, ignore_errors=True)
    assert not leftover, f"namespaces left behind by this test run: {sorted(leftover)}"
    assert not records, f"labs never taken down: {[r['name'] for r in records]}"


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespace tests need root")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("transfers under impairment: tcpstack beside kernel<->kernel")
        for line in REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(params=["veth", "tap"])
def lab(request: pytest.FixtureRequest) -> Iterator[lab_module.Lab]:
    """A fresh lab of each link kind: every test that takes it runs on veth and on TAP."""
    with lab_module.Lab(request.param) as made:
        yield made


@pytest.fixture
def stack(lab: lab_module.Lab) -> Iterator[Stack]:
    """Our endpoint in that lab; the test fails if the engine hit an internal error."""
    s = open_stack(lab)
    try:
        yield s
    finally:
        stats = s.stats()
        s.close()
    assert stats.get("internal_errors", 0) == 0
