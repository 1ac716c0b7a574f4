"""Real programs on the kernel's side of a lab: started in the peer namespace, waited
for until they listen, and ended by pid when the test is done."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from types import TracebackType
from typing import IO

import pytest

from tcpstack.lab import Lab
from tests.integration.kernel import TIMEOUT, wait_until


def need(program: str, *, optional: bool = False) -> str:
    """The program's path. scripts/setup installs every program the tests use, so a
    missing one fails the test, unless it is optional (Debian may not offer it)."""
    path = shutil.which(program)
    if path is None:
        if optional:
            pytest.skip(f"{program} is not installed (scripts/setup tries to install it)")
        raise AssertionError(f"{program} is not installed: run scripts/setup")
    return path


class PeerProgram:
    """`with PeerProgram(lab, argv, listens_on=port) as prog:` runs argv in the peer
    namespace; entering waits for its listener (when listens_on is given)."""

    def __init__(
        self,
        lab: Lab,
        argv: Sequence[str],
        *,
        listens_on: int | None = None,
        stdout: IO[bytes] | int = subprocess.PIPE,
    ) -> None:
        """stdout: where the program's output goes (a pipe that stop() reads, unless
        a file is given)."""
        self.lab = lab
        self.argv = list(argv)
        self.port = listens_on
        self.stdout = stdout
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PeerProgram:
        self.process = self.lab.peer_popen(self.argv, stdout=self.stdout, stderr=subprocess.STDOUT)
        if self.port is not None:
            wait_until(self._listening, f"{self.argv[0]} listening on {self.port}", TIMEOUT)
        return self

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            out = self.process.stdout.read().decode(errors="replace") if self.process.stdout else ""
            raise AssertionError(f"{self.argv} exited with {self.process.returncode}: {out}")
        assert self.port is not None
        return self.lab.peer_listening(self.port)

    def wait(self, timeout: float = TIMEOUT) -> tuple[int, str]:
        """Wait for the program to exit by itself: (exit status, its output)."""
        assert self.process is not None
        out, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode, (out or b"").decode(errors="replace")

    def stop(self) -> str:
        """End the program (by its pid) and return its output."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.terminate()
        deadline = time.monotonic() + TIMEOUT
        try:
            out, _ = self.process.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate(timeout=TIMEOUT)
        return (out or b"").decode(errors="replace")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
