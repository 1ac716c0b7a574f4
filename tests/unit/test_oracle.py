"""The kernel oracle's bookkeeping, and the Lab teardown observers it relies on, with
fake counters and fake namespaces: no root, no kernel."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tcpstack import lab as lab_module
from tcpstack.testing import oracle
from tcpstack.testing.oracle import Reading, Watch


@dataclass
class FakeLab:
    name: str
    kind: str = "veth"

    @property
    def peer_netns(self) -> str:
        return f"{self.name}-peer"

    @property
    def endpoint_netns(self) -> str:
        return self.peer_netns if self.kind == "tap" else f"{self.name}-eut"


class FakeKernels:
    """Counters per namespace, as read_nstat would return them, and which exist."""

    def __init__(self) -> None:
        self.counters: dict[str, dict[str, int]] = {}
        self.broken: set[str] = set()

    def read(self, namespace: str) -> Mapping[str, int]:
        if namespace in self.broken:
            raise OSError("no such file")
        # Static values and unwatched counters come along, as from /proc.
        return {"TcpMaxConn": -1, "TcpOutRsts": 7, **self.counters[namespace]}

    def exists(self, namespace: str) -> bool:
        return namespace in self.counters or namespace in self.broken

    def watch(self) -> Watch:
        return Watch(read=self.read, exists=self.exists)


def test_watched_names_are_distinct_and_named_as_nstat_names_them() -> None:
    assert len(set(oracle.WATCHED)) == len(oracle.WATCHED)
    assert all(n.startswith(("Tcp", "TcpExt", "IpExt", "Ip")) for n in oracle.WATCHED)
    assert {"TcpInCsumErrors", "TcpExtBeyondWindow", "TcpExtPAWSEstab"} <= set(oracle.WATCHED)


def test_a_counter_the_kernel_lacks_reads_as_zero() -> None:
    found = oracle.watched({"TcpInCsumErrors": 2, "TcpOutRsts": 9})
    assert set(found) == set(oracle.WATCHED)
    assert found["TcpInCsumErrors"] == 2
    assert found["TcpExtBeyondWindow"] == 0


def test_unexpected_is_what_moved_and_is_not_allowed() -> None:
    reading = Reading(
        "tcps-000001",
        "tcps-000001-peer",
        {"TcpInCsumErrors": 3, "TcpExtTCPChallengeACK": 1, "TcpExtPAWSEstab": 0},
    )
    assert oracle.unexpected(reading, ()) == {"TcpInCsumErrors": 3, "TcpExtTCPChallengeACK": 1}
    assert oracle.unexpected(reading, {"TcpExtTCPChallengeACK"}) == {"TcpInCsumErrors": 3}
    assert oracle.unexpected(reading, {"TcpInCsumErrors", "TcpExtTCPChallengeACK"}) == {}


def test_unwatched_counters_never_count_against_a_test() -> None:
    reading = Reading("l", "l-peer", {"TcpOutRsts": 5, "TcpRetransSegs": 100})
    assert oracle.unexpected(reading, ()) == {}


def test_since_subtracts_an_earlier_reading() -> None:
    earlier = Reading("l", "l-peer", {"TcpEstabResets": 2, "TcpInCsumErrors": 0})
    later = Reading("l", "l-peer", {"TcpEstabResets": 2, "TcpInCsumErrors": 1})
    assert later.since(earlier).counters == {"TcpEstabResets": 0, "TcpInCsumErrors": 1}


def test_check_names_rejects_what_is_not_watched() -> None:
    oracle.check_names(["TcpExtTCPChallengeACK", "TcpEstabResets"])
    with pytest.raises(ValueError, match="TcpExtTCPChalengeACK"):
        oracle.check_names(["TcpExtTCPChalengeACK"])


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("veth", {"peer": "x-peer"}),
        ("tap", {"peer": "x-peer"}),
        ("kernel", {"peer": "x-peer", "eut": "x-eut"}),
    ],
)
def test_a_kernel_lab_has_two_kernels_to_ask(kind: str, expected: dict[str, str]) -> None:
    assert oracle.kernels(FakeLab("x", kind)) == expected
    assert set(expected) <= set(oracle.KERNELS)


def test_watch_reports_counter_value_lab_and_namespace() -> None:
    kernels = FakeKernels()
    kernels.counters["a-peer"] = {"TcpExtBeyondWindow": 4}
    kernels.counters["b-peer"] = {}
    kernels.counters["b-eut"] = {"TcpExtPAWSEstab": 1, "TcpExtTCPChallengeACK": 2}
    watch = kernels.watch()
    watch.observe(FakeLab("a"))
    watch.observe(FakeLab("b", "kernel"))
    findings = {(f.counter, f.value, f.lab, f.namespace) for f in watch.findings(())}
    assert findings == {
        ("TcpExtBeyondWindow", 4, "a", "a-peer"),
        ("TcpExtPAWSEstab", 1, "b", "b-eut"),
        ("TcpExtTCPChallengeACK", 2, "b", "b-eut"),
    }
    report = watch.report({"TcpExtTCPChallengeACK"})
    assert "TcpExtBeyondWindow = 4 in a-peer (lab a)" in report
    assert "TcpExtPAWSEstab = 1 in b-eut (lab b)" in report
    assert "TcpExtTCPChallengeACK = 2" not in report
    assert "allowed: TcpExtTCPChallengeACK" in report


def test_an_allowance_for_one_kernel_excuses_only_that_kernel() -> None:
    kernels = FakeKernels()
    kernels.counters["k-peer"] = {"TcpExtTCPSYNChallenge": 1}
    kernels.counters["k-eut"] = {"TcpExtTCPSYNChallenge": 2}
    watch = kernels.watch()
    watch.observe(FakeLab("k", "kernel"))
    assert [r.kernel for r in watch.readings()] == ["peer", "eut"]
    only_eut = {"eut": {"TcpExtTCPSYNChallenge"}}
    assert [(f.namespace, f.value) for f in watch.findings((), only_eut)] == [("k-peer", 1)]
    assert "allowed in the eut kernel: TcpExtTCPSYNChallenge" in watch.report((), only_eut)
    assert watch.findings({"TcpExtTCPSYNChallenge"}) == []


def test_a_reference_allowance_excuses_both_kernels_of_a_pair_and_no_other() -> None:
    # Our run's lab and the kernel-to-kernel reference run beside it in one test.
    kernels = FakeKernels()
    kernels.counters["ours-peer"] = {"TcpExtTCPSYNChallenge": 1}
    kernels.counters["ref-peer"] = {"TcpExtTCPSYNChallenge": 2}
    kernels.counters["ref-eut"] = {"TcpExtTCPSYNChallenge": 3}
    watch = kernels.watch()
    watch.observe(FakeLab("ours", "tap"))
    watch.observe(FakeLab("ref", "kernel"))
    allowed = {oracle.REFERENCE: {"TcpExtTCPSYNChallenge"}}
    assert [(f.namespace, f.value) for f in watch.findings((), allowed)] == [("ours-peer", 1)]


def test_a_clean_watch_reports_nothing() -> None:
    kernels = FakeKernels()
    kernels.counters["a-peer"] = {"TcpExtTCPAbortOnData": 1}
    watch = kernels.watch()
    assert watch.report(()) == ""  # nothing read yet
    watch.observe(FakeLab("a"))
    assert watch.report({"TcpExtTCPAbortOnData"}) == ""


def test_the_latest_reading_of_a_lab_wins() -> None:
    kernels = FakeKernels()
    kernels.counters["a-peer"] = {"TcpEstabResets": 1}
    watch = kernels.watch()
    watch.observe(FakeLab("a"))
    kernels.counters["a-peer"] = {"TcpEstabResets": 3}
    watch.observe(FakeLab("a"))
    (reading,) = watch.readings()
    assert reading.counters["TcpEstabResets"] == 3


def test_a_lab_up_before_the_watch_counts_only_what_moved_since() -> None:
    kernels = FakeKernels()
    kernels.counters["old-peer"] = {"TcpInCsumErrors": 5, "TcpExtTCPAbortOnClose": 1}
    watch = kernels.watch()
    watch.baseline([FakeLab("old")])
    kernels.counters["old-peer"] = {"TcpInCsumErrors": 5, "TcpExtTCPAbortOnClose": 2}
    watch.observe(FakeLab("old"))
    assert {f.counter: f.value for f in watch.findings(())} == {"TcpExtTCPAbortOnClose": 1}


def test_a_vanished_namespace_is_skipped_and_a_failed_read_is_reported() -> None:
    kernels = FakeKernels()
    kernels.broken.add("bad-peer")
    watch = kernels.watch()
    watch.observe(FakeLab("gone"))  # deleted before anyone could read it
    watch.observe(FakeLab("bad"))
    assert watch.readings() == []
    assert watch.findings(()) == []
    report = watch.report(())
    assert "could not read" in report and "bad-peer" in report


# -- the Lab side: teardown observers --------------------------------------------------


@pytest.fixture
def fake_namespaces(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[set[str], list[str]]:
    """A Lab whose namespaces are names in a set: down() removes them from it."""
    monkeypatch.setenv("TCPSTACK_LAB_DIR", str(tmp_path))
    present: set[str] = set()
    removed: list[str] = []

    def remove(name: str) -> None:
        present.discard(name)
        removed.append(name)

    monkeypatch.setattr(lab_module.netns, "exists", lambda name: name in present)
    monkeypatch.setattr(lab_module.netns, "remove", remove)
    return present, removed


def pretend_up(present: set[str], kind: str = "veth") -> lab_module.Lab:
    made = lab_module.Lab(kind)
    made._state = "up"
    present.update(made.namespaces)
    return made


def test_observers_run_before_the_namespaces_go(
    fake_namespaces: tuple[set[str], list[str]],
) -> None:
    present, removed = fake_namespaces
    made = pretend_up(present)
    seen: list[tuple[str, bool, bool]] = []
    stop = lab_module.add_teardown_observer(
        lambda lab: seen.append((lab.name, lab.is_up, lab.peer_netns in present))
    )
    try:
        made.down()
        made.down()
    finally:
        stop()
    assert seen == [(made.name, True, True)]  # once, while everything is still there
    assert sorted(removed) == sorted(made.namespaces) and not present


def test_a_failing_observer_cannot_stop_the_teardown(
    fake_namespaces: tuple[set[str], list[str]],
) -> None:
    present, removed = fake_namespaces
    made = pretend_up(present, "kernel")
    later: list[str] = []

    def broken(lab: lab_module.Lab) -> None:
        raise RuntimeError("reader failed")

    stops = [
        lab_module.add_teardown_observer(broken),
        lab_module.add_teardown_observer(lambda lab: later.append(lab.name)),
    ]
    try:
        made.down()
    finally:
        for stop in stops:
            stop()
    assert not present and len(removed) == 2
    assert later == [made.name]  # the next observer still ran
    ((observer, exc),) = made.teardown_errors
    assert observer is broken and isinstance(exc, RuntimeError)


def test_an_observer_may_take_the_lab_down_itself(
    fake_namespaces: tuple[set[str], list[str]],
) -> None:
    present, removed = fake_namespaces
    made = pretend_up(present)
    stop = lab_module.add_teardown_observer(lambda lab: lab.down())
    try:
        made.down()
    finally:
        stop()
    assert not present and sorted(removed) == sorted(made.namespaces)
    assert made.teardown_errors == []


def test_a_removed_observer_is_not_called(fake_namespaces: tuple[set[str], list[str]]) -> None:
    present, _ = fake_namespaces
    calls: list[str] = []
    stop = lab_module.add_teardown_observer(lambda lab: calls.append(lab.name))
    stop()
    stop()  # twice is harmless
    pretend_up(present).down()
    assert calls == []
