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

from tcpstack import lab, netns


def _lab_namespaces() -> set[str]:
    return {n for n in netns.listnetns() if n.startswith(lab.NAME_PREFIX)}


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
