"""A one-line progress bar for long transfers, on stderr when it is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30
# Redraw at most this often: a terminal needs no more, and the transfer's
# threads should not spend time on it.
INTERVAL = 0.1


class ProgressBar:
    """`bar(done, total)` redraws `label [#####.....]  45%  12.3 MB/s` in place.

    enabled=None draws only when the stream is a terminal, so logs and pipes stay
    clean; finish() ends the line.
    """

    def __init__(
        self, label: str, *, stream: TextIO | None = None, enabled: bool | None = None
    ) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.started = time.monotonic()
        self._drawn = 0.0
        self._last = ""

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._drawn < INTERVAL and done < total):
            return
        self._drawn = now
        self._last = self.render(done, total, now - self.started)
        self.stream.write("\r" + self._last)
        self.stream.flush()

    def render(self, done: int, total: int, seconds: float) -> str:
        fraction = min(done / total, 1.0) if total else 1.0
        filled = int(fraction * WIDTH)
        rate = done / seconds / 1e6 if seconds > 0 else 0.0
        bar = "#" * filled + "." * (WIDTH - filled)
        amount = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB"
        return f"{self.label} [{bar}] {fraction * 100:3.0f}%  {amount}  {rate:.1f} MB/s"

    def finish(self) -> None:
        if self.enabled and self._last:
            self.stream.write("\n")
            self.stream.flush()
