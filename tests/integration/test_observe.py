"""The observation tools as a user runs them: `tcpstack ss`, `tcpstack scenario` with
pcap and pictures, against a real kernel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tcpstack.lab import Lab
from tests.integration.kernel import connect, open_stack

pytestmark = pytest.mark.netns


def tcpstack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tcpstack", *args], capture_output=True, text=True, timeout=120
    )


def test_ss_shows_a_live_connection_with_its_counters(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TCPSTACK_RUN_DIR", str(tmp_path))  # only this test's stack
    with open_stack(lab) as stack:
        sock, kernel = connect(stack, lab)
        sock.sendall(b"x" * 5000)
        received = b""
        while len(received) < 5000:
            received += kernel.recv(5000)
        shown = tcpstack("ss")
        sock.close()
        kernel.close()
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert any(line.startswith("ESTAB") and f"{lab.peer_address}:9000" in line for line in lines), (
        shown.stdout
    )
    assert "bytes_acked:5000" in shown.stdout
    assert lines[0].startswith(f"tcpstack pid {os.getpid()} on ")


def test_scenario_cli_writes_a_pcap_tshark_reads_and_pictures(tmp_path: Path) -> None:
    pcap, picture = tmp_path / "close.pcapng", tmp_path / "close.svg"
    run = tcpstack("scenario", "close", "--pcap", str(pcap), "--plot", str(picture))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "\nPASS close (tcpstack on veth)\n" in run.stdout
    assert "seed 001 says" in run.stdout
    tshark = shutil.which("tshark")
    assert tshark, "scripts/setup installs tshark"
    fields = subprocess.run(
        [tshark, "-r", str(pcap), "-Y", "tcp", "-T", "fields", "-e", "tcp.flags.str",
         "-e", "frame.comment"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert len(fields) >= 9  # handshake, data and its ACKs, the four-way close
    assert any("state=TIME_WAIT" in f for f in fields)
    assert any("F" in f.split("\t")[0] and "state=FIN_WAIT_1" in f for f in fields)
    for name in ("close.svg", "close-states.svg", "close-tsg.svg", "close-cwnd.svg"):
        root = ET.parse(tmp_path / name).getroot()
        assert root.tag.endswith("svg")
    states = (tmp_path / "close-states.svg").read_text()
    assert 'id="state-TIME_WAIT-visited"' in states
    assert 'id="state-CLOSE_WAIT-unvisited"' in states  # that was the kernel, not us
