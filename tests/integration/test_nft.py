"""Loss on the kernel's side with nftables, and the kernel's counters, in real labs.

These use a "kernel" lab: both ends are kernel sockets, so the rules and counters can be
checked against the kernel's own behaviour (SYN retransmission after 1 s) before they
are pointed at the userspace endpoint.
"""

from __future__ import annotations

import contextlib
import errno
import select
import shutil
import socket
import time
from collections.abc import Iterator

import pytest

from tcpstack.lab import Lab, NftError, loss_ruleset

pytestmark = pytest.mark.netns

PORT = 7100


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab("kernel") as made:
        yield made


@pytest.fixture
def listener(lab: Lab) -> Iterator[socket.socket]:
    with lab.in_peer():
        server = socket.create_server((lab.peer_address, PORT), backlog=512)
    with server:
        server.settimeout(5)
        yield server


def connect_from_eut(lab: Lab, timeout: float) -> tuple[socket.socket, float]:
    """A kernel client in the eut namespace, connected to the peer; and how long it took."""
    with lab.in_endpoint():
        client = socket.socket()
    client.settimeout(timeout)
    started = time.monotonic()
    try:
        client.connect((lab.peer_address, PORT))
    except BaseException:
        client.close()
        raise
    return client, time.monotonic() - started


def accept_one(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    conn.close()


def delta(before: dict[str, int], after: dict[str, int], key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


# -- the ruleset ----------------------------------------------------------------------


def test_ruleset_text() -> None:
    text = loss_ruleset("tcps-abc123-p", nth=2, tcp_flags="ack,syn", direction="out")
    assert "tcp flags & (fin | syn | rst | ack) == syn | ack" in text
    assert "numgen inc mod 4294967295 == 1" in text
    assert 'hook egress device "tcps-abc123-p"' in text and "hook ingress" not in text
    text = loss_ruleset("tcps-abc123-p", 5, direction="in")
    assert "numgen random mod 100 < 5 " in text and "hook egress" not in text
    assert "numgen random mod 10000 < 1250 " in loss_ruleset("x", 12.5)
    both = loss_ruleset("x")
    assert "hook ingress" in both and "hook egress" in both and "numgen" not in both


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"direction": "sideways"}, "direction"),
        ({"percent": 101}, "0..100"),
        ({"percent": -1}, "0..100"),
        ({"percent": 0.001}, "resolution"),
        ({"percent": 1.234}, "resolution"),
        ({"tcp_flags": "syn,psh"}, "tcp_flags"),
        ({"tcp_flags": "syn,syn"}, "tcp_flags"),
        ({"tcp_flags": ""}, "tcp_flags"),
        ({"nth": 0}, "nth"),
        ({"nth": 1, "percent": 50}, "percent"),
    ],
)
def test_ruleset_rejects(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        loss_ruleset("tcps-abc123-p", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interface"):
        loss_ruleset('x" drop; #')


def test_nft_reports_errors_and_needs_the_lab_up(monkeypatch: pytest.MonkeyPatch) -> None:
    with Lab("veth") as made:
        with pytest.raises(NftError, match="syntax error"):
            made.nft("table inet broken { chain c { bogus } }")
        made.nft("table inet tcpstack_probe { }")
        shown = made.peer_run(["nft", "list", "tables"], timeout=10, capture_output=True, text=True)
        assert "tcpstack_probe" in shown.stdout
        monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
        with pytest.raises(NftError, match="nftables"):
            made.nft("")
    with pytest.raises(RuntimeError, match="not up"):
        made.peer_loss(100)


# -- loss against the kernel -------------------------------------------------------------


def test_total_inbound_loss_times_connect_out(lab: Lab, listener: socket.socket) -> None:
    lab.peer_loss(100, direction="in")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        connect_from_eut(lab, timeout=0.5)
    assert time.monotonic() - started < 2
    assert lab.peer_loss_dropped() >= 1
    lab.peer_loss_clear()
    lab.peer_loss_clear()  # idempotent
    client, took = connect_from_eut(lab, timeout=5)
    with client:
        accept_one(listener)
    assert took < 0.5
    with pytest.raises(NftError, match="No such file"):
        lab.peer_loss_dropped()


def test_nth_drops_exactly_the_first_syn(lab: Lab, listener: socket.socket) -> None:
    lab.peer_loss(nth=1, tcp_flags="syn", direction="in")
    eut_before, peer_before = lab.endpoint_nstat(), lab.peer_nstat()
    client, took = connect_from_eut(lab, timeout=5)
    with client:
        accept_one(listener)
    # Linux's initial RTO is 1 s: the second SYN gets through.
    assert took >= 0.9, f"connect took {took:.3f}s"
    assert took < 3
    eut_after, peer_after = lab.endpoint_nstat(), lab.peer_nstat()
    assert delta(eut_before, eut_after, "TcpExtTCPSynRetrans") == 1
    assert delta(eut_before, eut_after, "TcpRetransSegs") == 1
    assert delta(eut_before, eut_after, "TcpActiveOpens") == 1
    assert delta(peer_before, peer_after, "TcpPassiveOpens") == 1
    assert delta(peer_before, peer_after, "TcpRetransSegs") == 0
    for _ in range(3):
        client, took = connect_from_eut(lab, timeout=5)
        with client:
            accept_one(listener)
        assert took < 0.5, "only the first SYN is dropped"
    assert lab.peer_loss_dropped() == 1


# Kernel to kernel: with the first SYN-ACK lost, the server's SYN-ACK timer and its
# answer to the client's retransmitted SYN both send one; the second reaches an
# established client, which counts a SYN in a synchronized state and challenges it.
@pytest.mark.nstat_allows("TcpExtTCPSYNChallenge", "TcpExtTCPChallengeACK", "TcpInErrs")
def test_nth_drops_the_first_syn_ack_the_kernel_sends(lab: Lab, listener: socket.socket) -> None:
    lab.peer_loss(nth=1, tcp_flags="syn,ack", direction="out")
    before = lab.peer_nstat()
    client, took = connect_from_eut(lab, timeout=5)
    with client:
        accept_one(listener)
    assert took >= 0.9, f"connect took {took:.3f}s"
    after = lab.peer_nstat()
    assert delta(before, after, "TcpExtTCPSynRetrans") >= 1
    assert lab.peer_loss_dropped() == 1
    client, took = connect_from_eut(lab, timeout=5)
    with client:
        accept_one(listener)
    assert took < 0.5


def test_nth_counts_matching_packets_only(lab: Lab, listener: socket.socket) -> None:
    # The second SYN, counting both directions: the eut's first connect passes (its
    # SYN is match 1; the SYN-ACK and ACKs are not SYN-only), the second is delayed.
    lab.peer_loss(nth=2, tcp_flags="syn")
    for expect_delay in (False, True, False):
        client, took = connect_from_eut(lab, timeout=5)
        with client:
            accept_one(listener)
        assert (took >= 0.9) is expect_delay, f"connect took {took:.3f}s"
    assert lab.peer_loss_dropped() == 1


@pytest.mark.parametrize(("percent", "low", "high"), [(50, 60, 140), (12.5, 5, 50)])
def test_random_loss_rate(
    lab: Lab, listener: socket.socket, percent: float, low: int, high: int
) -> None:
    """200 SYNs at once; the ones dropped are counted before any is retransmitted."""
    lab.peer_loss(percent, direction="in", tcp_flags="syn")
    count = 200
    with contextlib.ExitStack() as stack:
        with lab.in_endpoint():
            clients = [stack.enter_context(socket.socket()) for _ in range(count)]
        started = time.monotonic()
        for client in clients:
            client.setblocking(False)
            code = client.connect_ex((lab.peer_address, PORT))
            assert code == errno.EINPROGRESS
        listener.setblocking(False)
        accepted = 0
        dropped = -1
        # SYNs are retransmitted after 1 s; count well before that.
        deadline = started + 0.8
        while time.monotonic() < deadline:
            select.select([listener], [], [], 0.02)
            with contextlib.suppress(BlockingIOError):
                while True:
                    conn, _ = listener.accept()
                    conn.close()
                    accepted += 1
            dropped = lab.peer_loss_dropped()
            if accepted + dropped == count:
                break
        assert accepted + dropped == count, (accepted, dropped)
        assert low <= dropped <= high, dropped


def test_peer_nstat_counts_opens(lab: Lab, listener: socket.socket) -> None:
    before = lab.peer_nstat()
    assert {"TcpActiveOpens", "TcpPassiveOpens", "TcpRetransSegs", "TcpInCsumErrors"} <= set(before)
    # The kernel spells it TCPSackRecovery (nstat: TcpExtTCPSackRecovery).
    assert "TcpExtTCPSackRecovery" in before and "TcpExtTCPSynRetrans" in before
    client, _ = connect_from_eut(lab, timeout=5)
    with client:
        accept_one(listener)
    with lab.in_endpoint():
        server = socket.create_server((lab.endpoint_address, 0))
    with server:
        server.settimeout(5)
        with lab.in_peer():
            outgoing = socket.create_connection(server.getsockname(), timeout=5)
        with outgoing:
            accept_one(server)
    after = lab.peer_nstat()
    assert delta(before, after, "TcpPassiveOpens") == 1
    assert delta(before, after, "TcpActiveOpens") == 1
    assert delta(before, after, "TcpInCsumErrors") == 0
