"""What a test against a real kernel leaves behind when it fails.

An assertion says what went wrong, rarely why. `Evidence` watches every Stack and
Lab a test makes and, if the test fails, keeps in one directory what is needed to
read the failure afterwards:

- `<lab>-peer.pcap`: every frame on the kernel's lab interface, from tcpdump in
  the peer namespace (headers and options; payload cut at the snap length);
- `<lab>-ss-<when>.txt` and `<lab>-nstat-<when>.json`: `ss -tanoi` and the non-zero
  kernel counters of each kernel of the lab, at its removal or at the failure;
- `<stack>.pcapng` and `<stack>-trace.txt`: our side, from the stack's own trace
  (each segment with the connection's variables as pcapng comments): the first
  events and the latest ones, a bounded ring in memory that costs no disk unless
  kept;
- `<stack>-tcb-<when>.json`: `Stack.snapshot()`, every socket with its variables,
  before the stack closed or at the failure.

Nothing is written for a test that passes, except the peer captures, which go to a
scratch directory and are deleted with their lab. The pytest wiring (which test is
running, whether it failed) is the caller's: see tests/integration/conftest.py.
"""

from __future__ import annotations

import collections
import itertools
import json
import shutil
import subprocess
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcpstack import netns
from tcpstack.capture import FileCapture
from tcpstack.lab import Lab, read_nstat
from tcpstack.pcap import write_pcapng
from tcpstack.stack import Stack
from tcpstack.trace import TraceEvent

# Trace events kept per stack: the first HEAD (the handshake and what set the
# connection up) and the latest TAIL (what led to the failure).
HEAD = 2_000
TAIL = 20_000
_SS_TIMEOUT = 5.0


class _Ring:
    """A trace subscriber keeping the first `head` events and the last `tail`."""

    def __init__(self, head: int, tail: int) -> None:
        self.head: list[TraceEvent] = []
        self.tail: collections.deque[TraceEvent] = collections.deque(maxlen=tail)
        self._head_size = head
        self.dropped = 0

    def __call__(self, event: TraceEvent) -> None:
        if len(self.head) < self._head_size:
            self.head.append(event)
            return
        if len(self.tail) == self.tail.maxlen:
            self.dropped += 1
        self.tail.append(event)

    def events(self) -> list[TraceEvent]:
        return [*self.head, *self.tail]


@dataclass
class _Watched:
    label: str
    stack: weakref.ReferenceType[Stack]
    ring: _Ring
    closed: bool = False
    tcbs: dict[str, dict[str, Any]] = field(default_factory=dict)


class Evidence:
    """Watches stacks and labs for one test at a time; see the module docstring.

    `begin()` starts a test, `end(keep_in)` finishes it: with a directory the
    evidence is written there, with None it is thrown away. Stacks and labs that
    outlive a test (a module's) stay watched, and a later failure keeps what they
    saw since they were made (up to the ring's bounds)."""

    def __init__(self, scratch: Path, *, head: int = HEAD, tail: int = TAIL) -> None:
        self._scratch = scratch
        self._head, self._tail = head, tail
        self._lock = threading.Lock()
        self._stacks: list[_Watched] = []
        self._labs: dict[str, tuple[Lab, FileCapture]] = {}
        # Files of labs removed during the current test, moved out of scratch.
        self._current = scratch / "current"
        self._numbers = itertools.count(1)
        self._current.mkdir(parents=True, exist_ok=True)

    # -- what the caller reports ----------------------------------------------------

    def watch_stack(self, stack: Stack) -> None:
        """Keep `stack`'s trace from now on (call it as soon as the stack exists)."""
        ring = _Ring(self._head, self._tail)
        stack.subscribe(ring)
        label = f"stack{next(self._numbers)}-{stack.interface}"
        with self._lock:
            self._stacks.append(_Watched(label, weakref.ref(stack), ring))

    def stack_closing(self, stack: Stack) -> None:
        """Take `stack`'s TCB dump while it still has its connections."""
        for watched in self._watched_stacks():
            if watched.stack() is stack and not watched.closed:
                watched.tcbs["at-close"] = stack.snapshot()
                watched.closed = True

    def watch_lab(self, lab: Lab) -> None:
        """Capture the kernel's side of `lab` until it is removed."""
        capture = lab.capture_peer(self._scratch / f"{lab.name}-peer.pcap")
        with self._lock:
            self._labs[lab.name] = (lab, capture)

    def lab_down(self, lab: Lab) -> None:
        """A lab teardown observer: the kernel's last view, and its capture, become
        part of the current test's evidence."""
        with self._lock:
            watched = self._labs.pop(lab.name, None)
        if watched is None:
            return
        self._kernel_view(lab, "at-removal", self._current)
        capture = watched[1]
        capture.stop()
        if capture.path.exists():
            shutil.move(capture.path, self._current / capture.path.name)

    # -- a test ---------------------------------------------------------------------

    def begin(self) -> None:
        with self._lock:
            self._stacks = [w for w in self._stacks if not w.closed and w.stack() is not None]
        shutil.rmtree(self._current, ignore_errors=True)
        self._current.mkdir(parents=True, exist_ok=True)

    def failed_now(self) -> None:
        """Record the moment of a failure: TCB dumps of the stacks still open and the
        kernels' view of the labs still up."""
        for watched in self._watched_stacks():
            stack = watched.stack()
            if stack is not None and not watched.closed:
                watched.tcbs["at-failure"] = stack.snapshot()
        with self._lock:
            labs = list(self._labs.values())
        for lab, _ in labs:
            if lab.is_up:
                self._kernel_view(lab, "at-failure", self._current)

    def end(self, keep_in: Path | None) -> Path | None:
        """Finish the test: write its evidence into `keep_in` (replacing what an
        earlier run left there) and return it, or discard it with None."""
        if keep_in is None:
            self.begin()
            return None
        shutil.rmtree(keep_in, ignore_errors=True)
        keep_in.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(self._current, keep_in)
        for watched in self._watched_stacks():
            self._write_stack(watched, keep_in)
        with self._lock:
            labs = list(self._labs.values())
        for _, capture in labs:
            # Its lab is still up (a module's): what it has captured so far.
            if capture.path.exists():
                shutil.copyfile(capture.path, keep_in / capture.path.name)
        self.begin()
        return keep_in

    def close(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)

    # -- writing --------------------------------------------------------------------

    def _watched_stacks(self) -> list[_Watched]:
        with self._lock:
            return list(self._stacks)

    def _write_stack(self, watched: _Watched, directory: Path) -> None:
        events = watched.ring.events()
        base = directory / watched.label
        write_pcapng(f"{base}.pcapng", events, include_dropped=True)
        lines = [str(event) for event in events]
        if watched.ring.dropped:
            gap = len(watched.ring.head)
            lines.insert(gap, f"... {watched.ring.dropped} events not kept ...")
        Path(f"{base}-trace.txt").write_text("\n".join(lines) + "\n")
        for when, tcb in watched.tcbs.items():
            text = json.dumps(tcb, indent=1, default=str)
            Path(f"{base}-tcb-{when}.json").write_text(text)

    def _kernel_view(self, lab: Lab, when: str, directory: Path) -> None:
        kernels = {"peer": lab.peer_netns}
        if lab.kind == "kernel":
            kernels["eut"] = lab.endpoint_netns
        for name, namespace in kernels.items():
            base = directory / f"{lab.name}-{name}"
            ss = shutil.which("ss") or "/usr/bin/ss"
            try:
                shown = netns.run(
                    namespace, [ss, "-tanoi"], _SS_TIMEOUT, capture_output=True, text=True
                ).stdout
            except (OSError, subprocess.SubprocessError) as exc:
                shown = f"ss failed: {exc!r}\n"
            Path(f"{base}-ss-{when}.txt").write_text(shown)
            counters = {k: v for k, v in read_nstat(namespace).items() if v}
            Path(f"{base}-nstat-{when}.json").write_text(json.dumps(counters, indent=1))
