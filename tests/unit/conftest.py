"""Fixtures of a stack and the scripted peer (tests/unit/peer.py) at the far end of its link."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tcpstack import TcpConfig
from tcpstack.stack import Stack
from tcpstack.trace import Recorder
from tests.unit.peer import MakeRecordedPair, Peer, make_pair


@pytest.fixture
def pair() -> Iterator[tuple[Stack, Peer]]:
    stack, peer = make_pair()
    try:
        yield stack, peer
    finally:
        stack.close()
        peer.link.close()


@pytest.fixture
def make_recorded_pair() -> Iterator[MakeRecordedPair]:
    """A factory of (stack, peer, recorder subscribed from the start); all closed after."""
    made: list[tuple[Stack, Peer]] = []

    def factory(config: TcpConfig | None = None) -> tuple[Stack, Peer, Recorder]:
        stack, peer = make_pair(config)
        made.append((stack, peer))
        recorder = Recorder()
        stack.subscribe(recorder)
        return stack, peer, recorder

    yield factory
    for stack, peer in made:
        stack.close()
        peer.link.close()
