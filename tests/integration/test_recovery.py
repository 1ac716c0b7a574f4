"""Bytes arrive intact while the network drops, duplicates, reorders and corrupts, and
while an application stops reading; each lost handshake or close segment is recovered.

Loss is made where packets arrive: nftables at the kernel's ingress, our impairment
layer at ours, and nftables at both ends of a kernel-to-kernel pair for comparison.
Duplication, reordering and corruption come from our impairment layer (this kernel
has no netem).
"""

from __future__ import annotations

import socket
import time

import pytest

from tcpstack import State, TcpConfig
from tcpstack.lab import Lab
from tcpstack.stack import Stack
from tcpstack.transfer import compare
from tests.integration.kernel import (
    PORT,
    TIMEOUT,
    connect,
    in_thread,
    kernel_socket,
    kernel_state,
    recv_all,
    wait_until,
)
from tests.integration.report import REPORT

pytestmark = pytest.mark.netns

SIZE = 8 << 20

CASES = {
    "5% loss each way": dict(loss=5.0),
    "2% duplication": dict(impairment="dup=2%,seed=11"),
    "10% reordered by 3": dict(impairment="reorder=10%:3,seed=12"),
    "1% corruption": dict(impairment="corrupt=1%,seed=13"),
    "all of them": dict(loss=5.0, impairment="dup=2%,reorder=10%:3,corrupt=1%,seed=14"),
}


# Our impairment corrupts frames we send, and the kernel's checksums catch them.
@pytest.mark.nstat_allows(
    "TcpInCsumErrors",
    "TcpInErrs",
    "IpExtInCsumErrors",
    "IpInHdrErrors",
    case=("1% corruption", "all of them"),
)
# A frame held back behind newer ones, or overtaken by its own retransmission, carries
# an older timestamp than the kernel last took: PAWS drops it (PAWSOldAck if a pure ACK).
@pytest.mark.nstat_allows(
    "TcpExtPAWSEstab", "TcpExtPAWSOldAck", case=("10% reordered by 3", "all of them")
)
# The kernel-to-kernel reference loses packets at random on both ends. When a SYN-ACK
# is lost, the client's SYN timer and the server's SYN-ACK timer both fire, and the
# spare SYN or SYN-ACK reaches a side already ESTABLISHED, which challenges it (or, if
# veth let a newer segment overtake it, drops it for PAWS: veth hands each frame to
# the backlog of the CPU that sent it). Both kernels of that pair are excused; the
# kernel our own run talks to is not.
@pytest.mark.nstat_allows(
    "TcpExtTCPSYNChallenge",
    "TcpExtTCPChallengeACK",
    "TcpInErrs",
    "TcpExtPAWSEstab",
    kernel="reference",
    case=("5% loss each way", "all of them"),
)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["veth", "tap"])
def test_eight_megabytes_each_way_under_impairment(kind: str, case: str) -> None:
    ours, kernel = compare(kind, size=SIZE, emit=REPORT.append, timeout=90, **CASES[case])
    assert ours.ok, ours.detail
    assert kernel is not None and kernel.ok, kernel.detail if kernel else ""
    counters = ours.ours
    if "loss" in CASES[case]:
        # Both senders really recovered from loss.
        assert counters["retransmissions"] > 0
        assert ours.kernel["TcpRetransSegs"] > 0
    if case == "1% corruption":
        # The checksums caught what the impairment flipped (nothing corrupt was taken).
        assert ours.info is not None


@pytest.mark.parametrize("kind", ["veth", "tap"])
def test_our_reader_stops_for_two_seconds(kind: str) -> None:
    # Our receive buffer fills, we advertise a zero window, the kernel probes it,
    # and the window update after the pause lets the transfer finish.
    ours, _ = compare(
        kind,
        size=SIZE,
        directions="down",
        reference=False,
        pause_ours=2.0,
        emit=REPORT.append,
        config=TcpConfig(receive_buffer=256 << 10),
    )
    assert ours.ok, ours.detail
    assert ours.seconds >= 2.0
    assert ours.info is not None and ours.info.counters.get("zero_windows_sent", 0) > 0


# Our zero-window probes carry one byte of new data (see README, Probes carry data);
# with its window shut and its queue full, the kernel drops each as BeyondWindow.
@pytest.mark.nstat_allows("TcpExtBeyondWindow")
@pytest.mark.parametrize("kind", ["veth", "tap"])
def test_kernel_reader_stops_for_two_seconds(kind: str) -> None:
    # The kernel's window closes; our persist timer probes it with one byte at a
    # time until the kernel reads again.
    ours, _ = compare(
        kind, size=SIZE, directions="up", reference=False, pause_kernel=2.0, emit=REPORT.append
    )
    assert ours.ok, ours.detail
    assert ours.seconds >= 2.0
    assert ours.ours["window_probes"] > 0


# ------------------------------------------------------ one segment lost on purpose


def test_lost_syn_is_retransmitted(stack: Stack, lab: Lab) -> None:
    lab.peer_loss(nth=1, tcp_flags="syn", direction="in")
    started = time.monotonic()
    s, peer = connect(stack, lab)
    assert time.monotonic() - started >= 0.9  # our initial RTO is one second
    assert lab.peer_loss_dropped() == 1
    assert stack.stats()["retransmissions"] >= 1
    with s, peer:
        s.sendall(b"after a lost SYN")
        assert peer.recv(100) == b"after a lost SYN"


# Our SYN-ACK timer and the kernel's SYN timer both fire at about 1 s. If the SYN
# comes first we answer it and then retransmit too, as Linux does; the second
# SYN-ACK reaches an ESTABLISHED kernel, which challenges it. A matter of timing.
@pytest.mark.nstat_allows("TcpExtTCPSYNChallenge", "TcpExtTCPChallengeACK", "TcpInErrs")
def test_lost_syn_ack_is_retransmitted(stack: Stack, lab: Lab) -> None:
    # The kernel connects to us and our SYN-ACK is lost on the way.
    lab.peer_loss(nth=1, tcp_flags="syn,ack", direction="in")
    listener = stack.socket()
    listener.bind(("", PORT))
    listener.listen()
    listener.settimeout(TIMEOUT)
    client = kernel_socket(lab)
    connecting = in_thread(client.connect, (lab.endpoint_address, PORT))
    conn, _ = listener.accept()
    connecting.result(TIMEOUT)
    assert lab.peer_loss_dropped() == 1
    with conn, client, listener:
        client.sendall(b"ok")
        assert conn.recv(10) == b"ok"


def test_our_lost_third_ack_is_recovered(stack: Stack, lab: Lab) -> None:
    # Our handshake ACK is lost: the kernel stays in SYN_RECV and resends its
    # SYN-ACK, or our first data segment (which carries the ACK) completes it.
    lab.peer_loss(nth=1, tcp_flags="ack", direction="in")
    s, peer = connect(stack, lab)
    with s, peer:
        s.sendall(b"data completes the handshake")
        assert peer.recv(100) == b"data completes the handshake"
    assert lab.peer_loss_dropped() == 1


# Our SYN-ACK retransmission reaches a kernel that is already ESTABLISHED, which
# counts a SYN in a synchronized state and answers with a challenge ACK.
@pytest.mark.nstat_allows("TcpExtTCPSYNChallenge", "TcpExtTCPChallengeACK", "TcpInErrs")
def test_kernels_lost_third_ack_is_recovered(stack: Stack, lab: Lab) -> None:
    # The kernel's ACK of our SYN-ACK is lost and it sends nothing else: only our
    # SYN-ACK retransmission (after our 1 s RTO) completes the handshake.
    lab.peer_loss(nth=1, tcp_flags="ack", direction="out")
    listener = stack.socket()
    listener.bind(("", PORT))
    listener.listen()
    listener.settimeout(TIMEOUT)
    client = kernel_socket(lab)
    started = time.monotonic()
    client.connect((lab.endpoint_address, PORT))
    conn, _ = listener.accept()
    assert time.monotonic() - started >= 0.9
    assert lab.peer_loss_dropped() == 1
    assert stack.stats()["retransmissions"] >= 1
    with conn, client, listener:
        assert conn.state is State.ESTABLISHED


def test_lost_first_fin_is_retransmitted(stack: Stack, lab: Lab) -> None:
    s, peer = connect(stack, lab)
    lab.peer_loss(nth=1, tcp_flags="fin,ack", direction="in")
    before = stack.stats().get("retransmissions", 0)
    s.shutdown(socket.SHUT_WR)
    assert recv_all(peer) == b""  # EOF arrives thanks to the retransmitted FIN
    assert lab.peer_loss_dropped() == 1
    assert stack.stats()["retransmissions"] > before
    peer.close()
    s.close()


def test_our_lost_last_ack_is_answered_from_time_wait(stack: Stack, lab: Lab) -> None:
    # We close first; the kernel closes; our final ACK is lost, so the kernel in
    # LAST_ACK retransmits its FIN and we ACK again from TIME_WAIT.
    s, peer = connect(stack, lab)
    ours = s.getsockname()
    s.shutdown(socket.SHUT_WR)
    assert recv_all(peer) == b""
    s.wait_for_state(State.FIN_WAIT_2, timeout=TIMEOUT)
    lab.peer_loss(nth=1, tcp_flags="ack", direction="in")
    peer.close()
    assert s.recv(10) == b""
    assert s.state is State.TIME_WAIT
    wait_until(
        lambda: kernel_state(lab, (lab.peer_address, PORT), ours) is None,
        "the kernel's LAST_ACK socket to go once our second ACK arrives",
    )
    assert lab.peer_loss_dropped() == 1
    assert s.connection is not None and s.connection.stats["fin_retransmits_seen"] >= 1
    s.close()


def test_kernels_lost_last_ack_makes_us_resend_our_fin(stack: Stack, lab: Lab) -> None:
    # The kernel closes first; we close; the kernel's final ACK is lost, so our FIN
    # goes again from LAST_ACK until the kernel (in TIME_WAIT) ACKs it once more.
    s, peer = connect(stack, lab)
    peer.close()
    assert s.recv(10) == b""
    assert s.state is State.CLOSE_WAIT
    lab.peer_loss(nth=1, tcp_flags="ack", direction="out")
    s.close()
    s.wait_for_state(State.CLOSED, timeout=TIMEOUT)
    assert lab.peer_loss_dropped() == 1
    assert s.connection is not None and s.connection.stats["retransmissions"] >= 1


def test_keepalive_is_answered_and_then_finds_a_dead_peer(stack: Stack, lab: Lab) -> None:
    s, peer = connect(stack, lab)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2)
    conn = s.connection
    assert conn is not None
    # The kernel ACKs our probe (SEQ = SND.UNA - 1, no data): the connection lives on.
    wait_until(lambda: conn.stats["keepalive_probes"] >= 1, "a first keep-alive probe")
    wait_until(lambda: lab.peer_nstat().get("TcpOutSegs", 0) > 0, "kernel output")
    assert s.state is State.ESTABLISHED
    # Now the peer goes silent: after two unanswered probes, ETIMEDOUT.
    lab.peer_loss(100, direction="in")
    s.settimeout(TIMEOUT)
    with pytest.raises(TimeoutError):
        s.recv(10)
    assert s.state is State.CLOSED
    assert conn.stats["keepalive_probes"] >= 3
    peer.close()
