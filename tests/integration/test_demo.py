"""The demo, end to end: it must pass and show both sides walk the RFC 9293 states."""

from __future__ import annotations

import pytest

from tcpstack import demo

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("kind", ["veth", "tap"])
def test_active_demo_shows_the_handshake_and_four_way_close(kind: str) -> None:
    lines: list[str] = []
    result = demo.run(kind=kind, msl=0.1, emit=lines.append)
    assert result.ok
    assert result.reply == b"HELLO, KERNEL"
    ours = set(result.our_states)
    assert {"SYN_SENT", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT"} <= ours
    # The kernel, the passive closer, sits in CLOSE_WAIT until its close(), then LAST_ACK.
    kernel = result.kernel_states
    assert {"SYN_RECEIVED", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"} <= set(kernel)
    assert kernel.index("CLOSE_WAIT") < kernel.index("LAST_ACK")
    assert kernel[-1] == "CLOSED"
    assert any("─▶" in line for line in lines) and any("◀─" in line for line in lines)
    assert any("TIME_WAIT -> CLOSED" in line for line in lines)


@pytest.mark.parametrize("kind", ["veth", "tap"])
def test_passive_demo_leaves_the_kernel_in_time_wait(kind: str) -> None:
    lines: list[str] = []
    result = demo.run(kind=kind, passive=True, msl=0.1, emit=lines.append)
    assert result.ok
    assert {"SYN_RECEIVED", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"} <= set(
        result.our_states
    )
    assert result.kernel_states[0] == "SYN_SENT"
    assert "TIME_WAIT" in result.kernel_states
    assert any("ss: TIME_WAIT" in line for line in lines)
