"""Every script in examples/ runs as the README tells users to run it, and succeeds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "http_client.py": "body matches the served file",
    "echo_server.py": "20 of 20 kernel clients got every line back",
    "banner_grab.py": "22/tcp  open: SSH-2.0-",
    "half_close.py": "read the answer in FIN_WAIT_2",
    "what_if.py": "retransmit seq",
}


def test_every_example_is_covered() -> None:
    assert {p.name for p in (ROOT / "examples").glob("*.py")} == set(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert EXPECTED[script] in result.stdout
