"""The control socket behind `tcpstack ss`, and the progress bar of long transfers."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpstack import TcpConfig, control, wire
from tcpstack.core.segment import Flags, Options, Segment
from tcpstack.isn import fixed_isn
from tcpstack.link import MemoryLink
from tcpstack.progress import ProgressBar
from tcpstack.stack import Stack
from tests.unit.peer import OUR_IP, OUR_MAC, PEER_IP, Peer, open_to_peer


@pytest.fixture
def watched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Stack, Peer]]:
    monkeypatch.setenv("TCPSTACK_RUN_DIR", str(tmp_path))
    ours, theirs = MemoryLink.pair()
    stack = Stack(
        ours, f"{OUR_IP}/24", mac=OUR_MAC, config=TcpConfig(msl=0.2), isn=fixed_isn(1000),
        control=True,
    )  # fmt: skip
    try:
        yield stack, Peer(theirs)
    finally:
        stack.close()
        theirs.close()


def test_ss_lists_a_running_stacks_sockets(watched: tuple[Stack, Peer], tmp_path: Path) -> None:
    stack, peer = watched
    listener = stack.socket()
    listener.bind(("", 80))
    listener.listen(5)
    s, syn, _ = open_to_peer(stack, peer, port=9000, options=Options(mss=1460))
    s.sendall(b"x" * 300)  # unacknowledged: Send-Q
    peer.send_tcp(Segment(9000, syn.src_port, 7001, syn.seq + 1, Flags.ACK, 65535, payload=b"hi"))
    peer.receive(
        lambda p: isinstance(p, wire.TcpPacket) and p.segment.ack == 7003, "our ACK of the data"
    )
    stack.sync()

    found = control.snapshots(tmp_path)
    assert len(found) == 1 and found[0]["pid"] == os.getpid()
    rows = {row["state"]: row for row in found[0]["connections"]}
    assert rows["LISTEN"]["send_q"] == 5  # the backlog, as ss shows it
    assert rows["ESTABLISHED"]["recv_q"] == 2 and rows["ESTABLISHED"]["send_q"] == 300
    lines = control.render(found)
    assert any(line.startswith("ESTAB") and f"{PEER_IP}:9000" in line for line in lines)
    details = next(line for line in lines if line.startswith("\t"))
    assert "cubic" in details and "mss:1460" in details and "bytes_sent:300" in details


def test_a_closed_stack_leaves_no_socket_behind(
    watched: tuple[Stack, Peer], tmp_path: Path
) -> None:
    stack, _ = watched
    assert list(tmp_path.glob("*.sock"))
    stack.close()
    assert not list(tmp_path.glob("*.sock"))
    assert control.snapshots(tmp_path) == []


def test_a_dead_processes_socket_is_cleaned_up(tmp_path: Path) -> None:
    stale = tmp_path / "999999999-1.sock"  # no such pid: nobody will ever answer
    stale.touch()
    assert control.snapshots(tmp_path) == []
    assert not stale.exists()


def test_progress_bar_draws_in_place_only_when_enabled() -> None:
    stream = io.StringIO()
    bar = ProgressBar("up", stream=stream, enabled=True)
    bar(50, 100)
    bar(100, 100)  # the end is always drawn, however soon after
    bar.finish()
    drawn = stream.getvalue()
    assert drawn.startswith("\rup [") and "100%" in drawn and drawn.endswith("\n")
    quiet = io.StringIO()
    ProgressBar("up", stream=quiet)(1, 2)  # not a terminal: nothing
    assert quiet.getvalue() == ""
