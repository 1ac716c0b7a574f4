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

Every Stack the test makes in this process, whichever way (Lab.stack(), Stack(...)
in a helper, a transfer or a scenario), also has what it puts on the wire checked by
a TraceChecker (tcpstack.testing.invariants) from its creation on; a stack that
outlives a test (a module's) is checked by each test for what happened during it.
An invariant the test breaks on purpose is allowed with
`@pytest.mark.trace_allows(...)`. Stacks made by a child process are not seen.

And when a test fails, whatever the phase, its evidence is kept in
test-artifacts/<test id>/ (TCPSTACK_EVIDENCE_DIR overrides): a pcap of the kernel's
side of every lab it used (tcpdump runs for each), `ss` and nstat of their kernels,
our stacks' traces as pcap and text, and their TCB dumps (tcpstack.testing.evidence).
The paths are listed at the end of the run.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import weakref
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tcpstack import lab as lab_module
from tcpstack import netns
from tcpstack.stack import Stack
from tcpstack.testing import oracle
from tcpstack.testing.evidence import Evidence
from tcpstack.testing.invariants import INVARIANTS, TraceChecker
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


def _marker_applies(node: pytest.Item, marker: pytest.Mark, conditions: dict[str, Any]) -> bool:
    """Whether MARKER's CONDITIONS (its keyword arguments other than the ones the
    marker itself uses) match the test's parametrization: `case=("a", "b")` applies
    only where the parameter `case` is "a" or "b"."""
    callspec = getattr(node, "callspec", None)
    params = callspec.params if callspec is not None else {}
    applies = True
    for name, wanted in conditions.items():
        if name not in params:
            pytest.fail(f"{marker.name}: the test has no parameter {name!r}", pytrace=False)
        values = wanted if isinstance(wanted, tuple | list | set | frozenset) else (wanted,)
        applies = applies and params[name] in values
    return applies


def _allowed_counters(node: pytest.Item) -> tuple[set[str], dict[str, set[str]]]:
    """The counters the test's nstat_allows markers name: those allowed in every
    kernel, and those allowed in one kernel only.

    `kernel="eut"` (or "peer") limits a marker to that kernel of a lab (see
    oracle.kernels), `kernel="reference"` to both kernels of a kernel-to-kernel
    reference pair (a "kernel" lab). Other keyword arguments limit it to some parametrizations:
    `nstat_allows("TcpInCsumErrors", case=("a", "b"))` applies only where the
    parameter `case` is "a" or "b"."""
    allowed: set[str] = set()
    allowed_in: dict[str, set[str]] = {}
    named: set[str] = set()
    for marker in node.iter_markers("nstat_allows"):
        named.update(marker.args)
        conditions = dict(marker.kwargs)
        kernel = conditions.pop("kernel", None)
        names = (*oracle.KERNELS, oracle.REFERENCE)
        if kernel is not None and kernel not in names:
            pytest.fail(f"nstat_allows: kernel must be one of {names}", pytrace=False)
        if _marker_applies(node, marker, conditions):
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


# -- evidence of a failure ------------------------------------------------------------

# Where a failing test's evidence goes (tcpstack.testing.evidence), a directory per test.
EVIDENCE_DIR = Path(
    os.environ.get("TCPSTACK_EVIDENCE_DIR", Path(__file__).parents[2] / "test-artifacts")
)
EVIDENCE = Evidence(Path(tempfile.mkdtemp(prefix="tcpstack-evidence-")))
lab_module.add_teardown_observer(EVIDENCE.lab_down)
_FAILED = pytest.StashKey[bool]()
_KEPT: list[tuple[str, Path]] = []


def _watch_for_evidence(patch: pytest.MonkeyPatch) -> None:
    """Have every lab the test brings up captured, and every stack's TCBs dumped
    before it closes (the stacks' traces are kept by _StackWatch._new)."""
    up, close = lab_module.Lab.up, Stack.close

    @functools.wraps(up)
    def lab_up(lab: lab_module.Lab, *args: Any, **kwargs: Any) -> lab_module.Lab:
        up(lab, *args, **kwargs)
        try:
            EVIDENCE.watch_lab(lab)
        except BaseException:
            lab.down()
            raise
        return lab

    @functools.wraps(close)
    def stack_close(stack: Stack) -> None:
        EVIDENCE.stack_closing(stack)
        close(stack)

    patch.setattr(lab_module.Lab, "up", lab_up)
    patch.setattr(Stack, "close", stack_close)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
        if report.when == "call":
            EVIDENCE.failed_now()
    if report.when == "teardown":
        keep = None
        if item.stash.get(_FAILED, False):
            keep = EVIDENCE_DIR / re.sub(r"[^\w.-]+", "_", item.nodeid).strip("_")[:180]
        kept = EVIDENCE.end(keep)
        if kept is not None:
            _KEPT.append((item.nodeid, kept))
    return report


def pytest_sessionfinish() -> None:
    EVIDENCE.close()


# -- the wire-trace checker on every stack --------------------------------------------


# A checker's counts by invariant, and how many violations it had kept, at some moment.
_Counts = tuple[dict[str, int], int]


class _StackWatch:
    """Gives every Stack made while an integration test runs a TraceChecker.

    Stack.__init__ is wrapped from the setup of each test of this directory to the
    end of its teardown (so a module's stack, made in the setup of its first test,
    is seen too, and unit tests running in the same session are not touched). The
    wrapper subscribes the checker as soon as the stack exists, before it can have a
    connection. Checkers of stacks still alive are kept (weakly, by stack) so that a
    later test checks only the violations that came after it began."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: weakref.WeakKeyDictionary[Stack, TraceChecker] = weakref.WeakKeyDictionary()
        # Stacks alive when the test began, with their checkers' counts then; and
        # the checkers of stacks made during the test, kept even once their stack is
        # gone. None between tests.
        self._before: list[tuple[Stack, TraceChecker, _Counts]] | None = None
        self._made: list[tuple[str, TraceChecker]] = []
        self._patch: pytest.MonkeyPatch | None = None
        self._check_new = True

    def begin(self, check_new: bool = True) -> None:
        """Start a test; with check_new False the stacks it makes get no checker."""
        with self._lock:
            self._check_new = check_new
            self._before = [
                (s, c, (dict(c.counts), len(c.violations))) for s, c in self._live.items()
            ]
            self._made = []
        if self._patch is None:
            self._patch = pytest.MonkeyPatch()
            original = Stack.__init__

            @functools.wraps(original)
            def init(stack: Stack, *args: Any, **kwargs: Any) -> None:
                original(stack, *args, **kwargs)
                self._new(stack)

            self._patch.setattr(Stack, "__init__", init)
            _watch_for_evidence(self._patch)

    def _new(self, stack: Stack) -> None:
        EVIDENCE.watch_stack(stack)
        if not self._check_new:
            return
        checker = TraceChecker()
        stack.subscribe(checker)
        with self._lock:
            if self._before is None:
                stack.unsubscribe(checker)  # made after the test ended
                return
            self._live[stack] = checker
            self._made.append((f"{stack.interface} ({stack.address})", checker))

    def end(self) -> list[tuple[str, TraceChecker, _Counts]]:
        """Each checker that ran during the test, with its counts before the test.
        Stacks still open are synced first, so every frame they sent is checked."""
        with self._lock:
            before, made = self._before or [], self._made
            self._before, self._made = None, []
        for stack, _, _ in before:
            stack.sync()
        seen = [(f"{s.interface} ({s.address}, made before this test)", c, n) for s, c, n in before]
        return seen + [(name, c, ({}, 0)) for name, c in made]

    def stop(self) -> None:
        """Unwrap Stack.__init__ (after the test's teardown)."""
        if self._patch is not None:
            self._patch.undo()
            self._patch = None


_WATCH = _StackWatch()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _WATCH.begin(check_new=item.get_closest_marker("no_trace_check") is None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    __tracebackhide__ = True
    try:
        return (yield)
    finally:
        _WATCH.stop()


# Violations shown per stack when a test fails; the rest are only counted.
_SHOWN = 20


def _allowed_invariants(node: pytest.Item) -> set[str]:
    """The invariants the test's trace_allows markers name, for its parametrization
    (keyword arguments as for nstat_allows)."""
    allowed: set[str] = set()
    for marker in node.iter_markers("trace_allows"):
        unknown = sorted(set(marker.args) - set(INVARIANTS))
        if unknown:
            pytest.fail(
                f"trace_allows: not checked by TraceChecker: {', '.join(unknown)}", pytrace=False
            )
        if _marker_applies(node, marker, dict(marker.kwargs)):
            allowed.update(marker.args)
    return allowed


@pytest.fixture(autouse=True)
def trace_invariants(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails the test if a Stack it used put on the wire a segment breaking an
    invariant of tcpstack.testing.invariants that its trace_allows markers do not
    name. Torn down after the test's own fixtures, whose stacks are closed by then."""
    allowed = _allowed_invariants(request.node)
    yield
    lines = []
    for name, checker, (counts, kept) in _WATCH.end():
        broken = {
            inv: n - counts.get(inv, 0)
            for inv, n in checker.counts.items()
            if inv not in allowed and n > counts.get(inv, 0)
        }
        if not broken:
            continue
        shown = [v for v in checker.violations[kept:] if v.invariant in broken]
        lines.append(
            f"  stack on {name}: " + ", ".join(f"{inv} x{n}" for inv, n in sorted(broken.items()))
        )
        lines += [f"    {v}" for v in shown[:_SHOWN]]
        more = sum(broken.values()) - min(len(shown), _SHOWN)
        if more:
            lines.append(f"    ... and {more} more")
    if lines:
        __tracebackhide__ = True
        note = f" (allowed: {', '.join(sorted(allowed))})" if allowed else ""
        raise AssertionError("wire-trace invariants broken" + note + ":\n" + "\n".join(lines))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _KEPT:
        terminalreporter.section("evidence of the failures (pcaps, ss, nstat, TCB dumps)")
        for nodeid, path in _KEPT:
            terminalreporter.write_line(f"{nodeid}: {path}")
    if REPORT:
        terminalreporter.section("transfers under impairment: tcpstack beside kernel<->kernel")
        for line in REPORT:
            terminalreporter.write_line(line)


@pytest.fixture
def veth() -> Iterator[lab_module.Lab]:
    """A fresh veth lab, for tests where the link kind plays no part."""
    with lab_module.Lab("veth") as made:
        yield made


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
