"""Live attacks on a live transfer: the bytes stay intact, the connection survives,
and the stack keeps accepting connections (RFC 5961, RFC 4987)."""

from __future__ import annotations

import os
import socket

import pytest

from tcpstack import StackConfig, State
from tcpstack.lab import Lab
from tcpstack.transfer import PORT, exchange
from tests.integration.attacker import AttackProcess
from tests.integration.kernel import (
    TIMEOUT,
    in_thread,
    kernel_socket,
    open_stack,
    recv_all,
    wait_until,
)
from tests.integration.report import REPORT

pytestmark = pytest.mark.netns

OUR_PORT = 45000
LISTEN_PORT = 8080
SIZE = 4 << 20


def test_transfer_survives_a_barrage_of_forged_and_malformed_frames(lab: Lab) -> None:
    up, down = os.urandom(SIZE), os.urandom(SIZE)
    # A bandwidth cap on our link stretches the transfer to a few seconds with the
    # windows open, so the barrage meets a connection in full flow.
    with open_stack(lab, limits=StackConfig(max_half_open=16), impairment="rate=24mbit") as stack:
        listener = stack.socket()
        listener.bind(("", LISTEN_PORT))
        listener.listen(16)
        listener.settimeout(TIMEOUT)
        sock = stack.socket()
        sock.bind(("", OUR_PORT))
        attack = AttackProcess(
            lab,
            stack.mac,
            stack.address,
            kernel_port=PORT,
            our_port=OUR_PORT,
            listen_port=LISTEN_PORT,
            seconds=60,
            rate=3000,  # frames per second, of every kind in turn
        )
        try:
            elapsed, problems = exchange(
                lab,
                sock,
                up=up,
                down=down,
                pause_client=0,
                pause_server=0,
                timeout=60,
            )
            assert not problems, problems  # sha256 equal both ways, no reset, no error
            # A real client is still served while the flood goes on.
            client = kernel_socket(lab)
            connected = in_thread(client.connect, (stack.address, LISTEN_PORT))
            conn, _ = listener.accept()
            connected.result(TIMEOUT)
            with conn, client:
                client.sendall(b"still open for business")
                client.shutdown(socket.SHUT_WR)
                assert recv_all(conn) == b"still open for business"
        finally:
            sent = attack.finish()
        stats = stack.stats()
        info = sock.info()
        sock.close()
        listener.close()
    for kind in (
        "malformed",
        "blind rst",
        "in-window rst",
        "blind syn",
        "blind data",
        "spoofed syn",
    ):
        assert sent.get(kind, 0) > 0, f"the attacker never sent {kind!r}: {sent}"
    assert info is not None
    counters = info.counters
    # In-window RSTs and blind SYNs drew challenge ACKs, within the rate limit (RFC 5961
    # §7: those over the limit are suppressed, not turned into resets).
    assert counters.get("challenge_acks", 0) + counters.get("challenge_acks_suppressed", 0) > 0
    REPORT.append(
        f"attack on a live transfer ({lab.kind}, {elapsed:.1f} s): sent "
        + ", ".join(f"{k} {v}" for k, v in sorted(sent.items()))
        + "; tcpstack: "
        + ", ".join(
            f"{k} {stats.get(k, 0)}"
            for k in (
                "challenge_acks",
                "challenge_acks_suppressed",
                "oow_acks_suppressed",
                "drop_unacceptable",
                "syn_cookies_sent",
                "drop_bad_source",
            )
        )
    )
    assert stats["drop_unacceptable"] > 0
    assert stats["syn_cookies_sent"] > 0  # the spoofed SYNs filled the half-open queue
    assert stats.get("internal_errors", 0) == 0
    assert any(k.startswith("drop_ip") or k.startswith("drop_tcp") for k in stats)


# The kernel's socket is closed with our data in flight: unread in its queue it
# resets as TCPAbortOnClose (an established connection: EstabResets); arriving after
# the close it resets as TCPAbortOnData. Which, if any, depends on timing.
@pytest.mark.nstat_allows("TcpExtTCPAbortOnClose", "TcpExtTCPAbortOnData", "TcpEstabResets")
def test_peer_vanishing_mid_transfer_leaks_nothing(lab: Lab) -> None:
    # The kernel's namespace goes away with the transfer half done: the stack must
    # fail every call cleanly and let go of its thread and descriptors.
    before_fds = set(os.listdir("/proc/self/fd"))
    stack = open_stack(lab)
    server = None
    try:
        with lab.in_peer():
            server = socket.create_server((lab.peer_address, PORT))
        server.settimeout(TIMEOUT)
        accepted = in_thread(server.accept)
        sock = stack.socket()
        sock.settimeout(TIMEOUT)
        sock.connect((lab.peer_address, PORT))
        peer, _ = accepted.result(TIMEOUT)
        sock.sendall(os.urandom(256 << 10))
        peer.close()
        server.close()
        server = None
        lab.down()  # the namespace, the veth pair or the TAP: all of it, gone
        with pytest.raises(OSError):
            while True:
                sock.sendall(b"x" * 65536)
        sock.close()
    finally:
        if server is not None:
            server.close()
        stack.close()
    assert not stack._engine._thread.is_alive()
    leaked = set(os.listdir("/proc/self/fd")) - before_fds
    assert not [fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")]
    assert sock.state in (State.CLOSED, State.ESTABLISHED, State.FIN_WAIT_1)


# A real client whose SYN the flood delays sends it again and gets a SYN-ACK for each
# (we answer every SYN, statelessly under cookies); the later one reaches a client
# already ESTABLISHED, which counts a SYN in a synchronized state and challenges it.
@pytest.mark.nstat_allows("TcpExtTCPSYNChallenge", "TcpExtTCPChallengeACK", "TcpInErrs")
def test_syn_flood_does_not_stop_real_clients(lab: Lab) -> None:
    # Thousands of spoofed SYNs per second from on-link addresses that do not exist:
    # the half-open queue fills, SYN cookies take over, and real clients connect.
    with open_stack(lab, limits=StackConfig(max_half_open=64)) as stack:
        listener = stack.socket()
        listener.bind(("", LISTEN_PORT))
        listener.listen(64)
        # Real clients' SYNs and ARP requests compete with the flood for the link's
        # queue and may need their retransmissions (1 s, then 3 s): allow for them.
        listener.settimeout(3 * TIMEOUT)
        flood = AttackProcess(
            lab, stack.mac, stack.address,
            kernel_port=0, our_port=0, listen_port=LISTEN_PORT, seconds=3, flood=True,
        )  # fmt: skip
        try:
            wait_until(lambda: stack.stats().get("syn_cookies_sent", 0) > 100, "cookies")
            for i in range(10):
                # The client speaks first, as with HTTP: under SYN cookies that is
                # what survives the loss of its final ACK (the listener holds no state
                # until an ACK arrives; the client's data, retransmitted, carries one).
                client = kernel_socket(lab)

                def speak(client: socket.socket = client, i: int = i) -> None:
                    client.connect((stack.address, LISTEN_PORT))
                    client.sendall(b"real %d" % i)

                spoken = in_thread(speak)
                conn, _ = listener.accept()
                spoken.result(TIMEOUT)
                with conn, client:
                    assert conn.recv(100) == b"real %d" % i
        finally:
            sent = flood.finish()
        stats = stack.stats()
        listener.close()
    rate = sent["spoofed syn"] / sent["seconds"]
    REPORT.append(
        f"SYN flood ({lab.kind}): {sent['spoofed syn']:.0f} spoofed SYNs in {sent['seconds']:.1f} s"
        f" ({rate:.0f}/s); cookies sent {stats.get('syn_cookies_sent', 0)},"
        f" accepted {stats.get('syn_cookies_accepted', 0)}; 10 real clients served"
    )
    assert rate > 1000
    assert stats.get("internal_errors", 0) == 0
