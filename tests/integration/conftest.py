"""Integration tests build real network namespaces: they need root, and they must leave
nothing behind.

Every lab this run makes, in this process or in a child, records itself in a directory
private to the run (TCPSTACK_LAB_DIR), before it creates anything. At the end a new
`tcps-` namespace fails the run if this run's records name it; new namespaces that no
record of ours names belong to a parallel run and are left alone.

After every test the kernel is asked what it saw (tcpstack.testing.oracle): the
watched counters of every lab the test used, read as each lab is removed, must not
have moved unless the test allows them with `@pytest.mark.nstat_allows(...)`. Labs
made by a child process (the CLI, examples) are not seen.
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
from tcpstack.testing import oracle
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


def _allowed_counters(node: pytest.Item) -> tuple[set[str], dict[str, set[str]]]:
    """The counters the test's nstat_allows markers name: those allowed in every
    kernel, and those allowed in one kernel only.

    `kernel="eut"` (or "peer") limits a marker to that kernel of a lab (see
    oracle.kernels). Other keyword arguments limit it to some parametrizations:
    `nstat_allows("TcpInCsumErrors", case=("a", "b"))` applies only where the
    parameter `case` is "a" or "b"."""
    callspec = getattr(node, "callspec", None)
    params = callspec.params if callspec is not None else {}
    allowed: set[str] = set()
    allowed_in: dict[str, set[str]] = {}
    named: set[str] = set()
    for marker in node.iter_markers("nstat_allows"):
        named.update(marker.args)
        conditions = dict(marker.kwargs)
        kernel = conditions.pop("kernel", None)
        if kernel is not None and kernel not in oracle.KERNELS:
            pytest.fail(f"nstat_allows: kernel must be one of {oracle.KERNELS}", pytrace=False)
        applies = True
        for name, wanted in conditions.items():
            if name not in params:
                pytest.fail(f"nstat_allows: the test has no parameter {name!r}", pytrace=False)
            values = wanted if isinstance(wanted, tuple | list | set | frozenset) else (wanted,)
            applies = applies and params[name] in values
        if applies:
            target = allowed if kernel is None else allowed_in.setdefault(kernel, set())
            target.update(marker.args)
    try:
        oracle.check_names(named)
    except ValueError as exc:
        problem = str(exc)
    else:
        return allowed, allowed_in
    pytest.fail(f"nstat_allows: {problem}", pytrace=False)


@pytest.fixture(autouse=True)
def kernel_oracle(request: pytest.FixtureRequest, _needs_root: None) -> Iterator[oracle.Watch]:
    """Fails the test if a watched kernel counter moved that its nstat_allows
    markers do not name. Autouse fixtures are set up first, so this one is torn down
    last: by then the test's own lab fixtures have been removed and read."""
    allowed, allowed_in = _allowed_counters(request.node)
    watch = oracle.Watch()
    # Labs from wider-scoped fixtures carry earlier tests' counts.
    watch.baseline(lab_module.live_labs())
    stop = lab_module.add_teardown_observer(watch.observe)
    try:
        yield watch
    finally:
        stop()
    # Whatever is still up (a module's lab, a lab the test never took down) is read
    # now; everything else was read as it went down.
    for made in lab_module.live_labs():
        if made.is_up:
            watch.observe(made)
    report = watch.report(allowed, allowed_in)
    if report:
        # The fixture's own frames say nothing; the report says it all.
        __tracebackhide__ = True
        raise AssertionError(report)


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
