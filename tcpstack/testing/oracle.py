"""The kernel as an oracle: counters that a correct peer should never make Linux move.

A lab's namespaces are new, so every kernel counter in them starts at zero. Linux
counts, per namespace, each segment it found broken (bad checksum, outside the
window, failing PAWS) and each connection it had to abort. When our endpoint is the
only thing talking to that kernel, such a count is evidence against the endpoint even
if the test passed, because TCP's recovery hides a bad segment behind a
retransmission. A test that provokes the kernel on purpose (spoofed RSTs, a socket
closed with unread data) says which counters it moves, and only those, with the
pytest marker `nstat_allows` (see tests/integration/conftest.py).

WATCHED, as `read_nstat` names them. All of them exist on the 6.18 kernel this was
written on; a name a kernel lacks reads as 0, so the set also works on older ones
(BeyondWindow appeared in 6.17 and PAWSOldAck in 6.15; PAWSPassive is long gone
from Linux and not listed):

* TcpInCsumErrors, IpExtInCsumErrors: a TCP or IPv4 header checksum that was wrong.
* TcpInErrs, IpInHdrErrors: a segment or IPv4 header the kernel found malformed.
  TcpInErrs also moves with every TcpInCsumErrors and TcpExtTCPSYNChallenge, so
  allowing one of those usually means allowing TcpInErrs too.
* TcpExtBeyondWindow: data beyond the window the kernel offered.
* TcpExtPAWSEstab, TcpExtPAWSOldAck, TcpExtPAWSActive: a timestamp older than the
  last one seen, on a connection (OldAck is the pure-ACK case that kernels before
  6.15 counted under PAWSEstab) or on a SYN-ACK.
* TcpExtTCPChallengeACK, TcpExtTCPSYNChallenge: RFC 5961 challenge ACKs, sent for
  an RST or SYN that is plausible but not exact.
* TcpExtTCPAbortOnData, TcpExtTCPAbortOnClose, TcpExtTCPAbortOnMemory,
  TcpExtTCPAbortOnTimeout, TcpExtTCPAbortOnLinger, TcpExtTCPAbortFailed: the kernel
  reset a connection itself: closed with unread data or by the application before
  the peer was done, out of memory, after its retries ran out, on a linger timeout,
  or failed to send the reset.
* TcpEstabResets: a connection went from ESTABLISHED or CLOSE_WAIT straight to
  CLOSED, by a reset either way. It is the only counter here that moves when our
  endpoint sends a reset the kernel accepts, so it catches an RST we should not have
  sent (a wrongly demultiplexed segment, a port we think is closed). Tests that
  reset on purpose say so. Its companion TcpOutRsts is not watched: the kernel
  answers every segment to a closed port with a reset, which many tests do on
  purpose and which says nothing about us.

Not watched, because a correct peer moves them: TcpExtTCPZeroWindowDrop (our
zero-window probes carry one byte of new data, which Linux counts there),
TcpExtPAWSTimewait (a new connection's timestamps need not follow an old one's),
TcpExtTCPOFODrop and TcpExtTCPRcvQDrop (the kernel's own memory limits).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from tcpstack import netns
from tcpstack.lab import read_nstat

WATCHED: tuple[str, ...] = (
    "TcpInCsumErrors",
    "TcpInErrs",
    "IpExtInCsumErrors",
    "IpInHdrErrors",
    "TcpExtBeyondWindow",
    "TcpExtPAWSEstab",
    "TcpExtPAWSOldAck",
    "TcpExtPAWSActive",
    "TcpExtTCPChallengeACK",
    "TcpExtTCPSYNChallenge",
    "TcpExtTCPAbortOnData",
    "TcpExtTCPAbortOnClose",
    "TcpExtTCPAbortOnMemory",
    "TcpExtTCPAbortOnTimeout",
    "TcpExtTCPAbortOnLinger",
    "TcpExtTCPAbortFailed",
    "TcpEstabResets",
)


class LabLike(Protocol):
    """What the oracle needs of a Lab: its name, kind and namespaces."""

    name: str
    kind: str
    peer_netns: str
    endpoint_netns: str


@dataclass(frozen=True)
class Reading:
    """The watched counters of one kernel (one namespace of one lab)."""

    lab: str
    namespace: str
    counters: dict[str, int]
    # Which of the lab's kernels: "peer", or "eut" for a kernel lab's second one.
    kernel: str = "peer"
    # Whether the lab is a kernel-to-kernel reference pair (kind "kernel"): our
    # endpoint has no part in what its kernels count.
    reference: bool = False

    def since(self, earlier: Reading) -> Reading:
        """What moved after EARLIER, a reading of the same namespace."""
        return Reading(
            self.lab,
            self.namespace,
            {k: v - earlier.counters.get(k, 0) for k, v in self.counters.items()},
            self.kernel,
            self.reference,
        )


@dataclass(frozen=True)
class Finding:
    """A watched counter that moved and was not allowed."""

    counter: str
    value: int
    lab: str
    namespace: str

    def __str__(self) -> str:
        return f"{self.counter} = {self.value} in {self.namespace} (lab {self.lab})"


def watched(counters: Mapping[str, int]) -> dict[str, int]:
    """The watched subset of COUNTERS, a name this kernel lacks read as 0."""
    return {name: counters.get(name, 0) for name in WATCHED}


KERNELS = ("peer", "eut")
# What an allowance may name besides KERNELS: both kernels of a reference pair.
REFERENCE = "reference"


def kernels(lab: LabLike) -> dict[str, str]:
    """The namespaces of LAB where a kernel speaks TCP, by KERNELS name: the peer's,
    and in a "kernel" lab also the eut's. A veth lab's eut kernel has no address, so
    nothing reaches its TCP; in a TAP lab the endpoint lives in the peer namespace."""
    if lab.kind == "kernel":
        return {"peer": lab.peer_netns, "eut": lab.endpoint_netns}
    return {"peer": lab.peer_netns}


def check_names(names: Iterable[str]) -> None:
    """Raise ValueError for a name that is not watched: allowing it would do nothing,
    and is most likely a misspelling."""
    unknown = sorted(set(names) - set(WATCHED))
    if unknown:
        raise ValueError(f"not watched by the kernel oracle: {', '.join(unknown)}")


def unexpected(reading: Reading, allowed: Collection[str]) -> dict[str, int]:
    """The watched counters of READING that moved and are not in ALLOWED."""
    return {
        name: value
        for name, value in reading.counters.items()
        if name in WATCHED and value != 0 and name not in allowed
    }


class Watch:
    """Collects readings of labs while a test runs.

    `observe` is meant as a Lab teardown observer (tcpstack.lab.add_teardown_observer)
    and may also be called directly on a lab that is still up; a lab read twice keeps
    its latest reading, which counts everything the earlier one did. Labs that were
    already up before the watch began are given to `baseline`, and only what moved
    after that counts against them. Observers run on whichever thread removes a lab,
    so everything here is guarded by a lock.
    """

    def __init__(
        self,
        read: Callable[[str], Mapping[str, int]] = read_nstat,
        exists: Callable[[str], bool] = netns.exists,
    ) -> None:
        self._read = read
        self._exists = exists
        self._lock = threading.Lock()
        self._readings: dict[tuple[str, str], Reading] = {}
        self._baselines: dict[tuple[str, str], Reading] = {}
        self.errors: list[str] = []

    def _take(self, lab: LabLike) -> list[Reading]:
        taken = []
        for kernel, namespace in kernels(lab).items():
            # Gone already: removed part-way through up(), or deleted by a test on
            # purpose. Nothing can be read from it any more.
            if not self._exists(namespace):
                continue
            try:
                counters = watched(self._read(namespace))
            except Exception as exc:
                with self._lock:
                    self.errors.append(f"cannot read {namespace} (lab {lab.name}): {exc!r}")
                continue
            taken.append(Reading(lab.name, namespace, counters, kernel, lab.kind == "kernel"))
        return taken

    def baseline(self, labs: Iterable[LabLike]) -> None:
        for lab in labs:
            for reading in self._take(lab):
                with self._lock:
                    self._baselines[(reading.lab, reading.namespace)] = reading

    def observe(self, lab: LabLike) -> None:
        for reading in self._take(lab):
            with self._lock:
                self._readings[(reading.lab, reading.namespace)] = reading

    def readings(self) -> list[Reading]:
        """What each kernel counted while watched, in the order first read."""
        with self._lock:
            found = []
            for key, reading in self._readings.items():
                earlier = self._baselines.get(key)
                found.append(reading if earlier is None else reading.since(earlier))
            return found

    def findings(
        self, allowed: Collection[str], allowed_in: Mapping[str, Collection[str]] | None = None
    ) -> list[Finding]:
        """Moved counters not in ALLOWED, nor in ALLOWED_IN[kernel] for the kernel
        ("peer" or "eut") that counted them, nor, for a kernel of a reference pair, in
        ALLOWED_IN["reference"]."""
        found = []
        by_kernel = allowed_in or {}
        for reading in self.readings():
            here = set(allowed) | set(by_kernel.get(reading.kernel, ()))
            if reading.reference:
                here |= set(by_kernel.get(REFERENCE, ()))
            for name, value in unexpected(reading, here).items():
                found.append(Finding(name, value, reading.lab, reading.namespace))
        return found

    def report(
        self, allowed: Collection[str], allowed_in: Mapping[str, Collection[str]] | None = None
    ) -> str:
        """Empty if nothing is wrong; otherwise what to show when failing the test."""
        lines = []
        findings = self.findings(allowed, allowed_in)
        if findings:
            lines.append("the kernel counted what this test does not allow:")
            lines += [f"  {f}" for f in findings]
            if allowed:
                lines.append(f"  (allowed: {', '.join(sorted(allowed))})")
            for kernel, names in sorted((allowed_in or {}).items()):
                if names:
                    lines.append(f"  (allowed in the {kernel} kernel: {', '.join(sorted(names))})")
        if self.errors:
            lines.append("the kernel oracle could not read every lab:")
            lines += [f"  {e}" for e in self.errors]
        return "\n".join(lines)
