"""The endpoint against the real Linux kernel, on a veth pair and on a TAP device."""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import time

import pytest

from tcpstack import State
from tcpstack.isn import fixed_isn
from tcpstack.lab import Lab
from tcpstack.stack import Stack
from tests.integration.kernel import (
    MSL,
    PORT,
    TIMEOUT,
    connect,
    in_thread,
    kernel_socket,
    kernel_state,
    open_stack,
    recv_all,
    sha256,
    wait_until,
)

pytestmark = pytest.mark.netns


# ------------------------------------------------------------------ opening


def test_active_open_to_a_kernel_listener(stack: Stack, lab: Lab) -> None:
    s, peer = connect(stack, lab)
    with s, peer:
        assert s.state is State.ESTABLISHED
        assert s.getpeername() == (lab.peer_address, PORT)
        local = s.getsockname()
        assert local[0] == lab.endpoint_address and 32768 <= local[1] < 61000
        assert peer.getpeername() == local
        assert kernel_state(lab, (lab.peer_address, PORT), local) == "ESTABLISHED"
        rows = [(c.local, c.remote, c.state) for c in stack.connections()]
        assert (local, (lab.peer_address, PORT), State.ESTABLISHED) in rows


def test_passive_open_from_a_kernel_client(stack: Stack, lab: Lab) -> None:
    listener = stack.socket()
    listener.bind(("", PORT))
    listener.listen(8)
    listener.settimeout(TIMEOUT)
    assert listener.state is State.LISTEN
    client = kernel_socket(lab)
    connecting = in_thread(client.connect, (lab.endpoint_address, PORT))
    s, address = listener.accept()
    connecting.result(TIMEOUT)
    with s, client, listener:
        assert address == client.getsockname()
        assert s.state is State.ESTABLISHED
        client.sendall(b"ping")
        assert s.recv(10) == b"ping"
        s.sendall(b"pong")
        assert client.recv(10) == b"pong"


def test_connect_to_a_closed_port_is_refused_at_once(stack: Stack, lab: Lab) -> None:
    s = stack.socket()
    s.settimeout(TIMEOUT)
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        s.connect((lab.peer_address, 1))
    assert time.monotonic() - started < 0.5
    assert s.state is State.CLOSED
    # Trying again sends a new SYN and is refused again, as on Linux.
    assert s.connect_ex((lab.peer_address, 1)) == errno.ECONNREFUSED


def test_kernel_connect_to_a_port_without_listener_is_refused(stack: Stack, lab: Lab) -> None:
    client = kernel_socket(lab)
    with client, pytest.raises(ConnectionRefusedError):
        client.connect((lab.endpoint_address, 4444))
    assert stack.stats()["resets_sent"] >= 1


def test_ping_is_answered(stack: Stack, lab: Lab) -> None:
    result = lab.peer_run(
        ["ping", "-c", "3", "-i", "0.2", "-W", "2", lab.endpoint_address],
        timeout=TIMEOUT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 received" in result.stdout
    assert stack.stats()["icmp_echo_replies"] == 3
    assert stack.arp_table() == {lab.peer_address: stack.arp_table()[lab.peer_address]}


# --------------------------------------------------------------------- data


# Without a trace subscriber the engine queues frames and sends them after releasing
# its lock; with one it sends each at once. Nearly every integration test now runs
# traced, so this bulk transfer keeps the untraced path (the one applications run)
# covered on a real link.
@pytest.mark.no_trace_check("covers the engine's untraced, queued send path")
def test_one_megabyte_each_way_arrives_intact(stack: Stack, lab: Lab) -> None:
    up = os.urandom(1 << 20)
    down = os.urandom(1 << 20)
    kernel_before = lab.peer_nstat()
    s, peer = connect(stack, lab)
    with s, peer:
        received_by_kernel = in_thread(recv_all, peer)
        s.sendall(up)
        s.shutdown(socket.SHUT_WR)
        assert sha256(received_by_kernel.result(TIMEOUT)) == sha256(up)

        def send_down() -> None:
            peer.sendall(down)
            peer.shutdown(socket.SHUT_WR)

        sending = in_thread(send_down)
        assert sha256(recv_all(s)) == sha256(down)
        sending.result(TIMEOUT)
    stats = stack.stats()
    if lab.kind == "veth":
        # With default offloads the kernel hands veth's raw socket GSO super-frames
        # whose checksums are not filled in; both must have been accepted.
        assert stats["gso_frames_in"] > 0
        assert stats["checksum_trusted_in"] > 0
    # Both links take our TSO segments (64 KiB GSO frames with a partial checksum)
    # and the kernel, having cut and checksummed them, found every checksum right.
    assert stats["gso_frames_out"] > 0
    kernel_after = lab.peer_nstat()
    assert kernel_after["TcpInCsumErrors"] == kernel_before["TcpInCsumErrors"]
    assert not any(k.startswith("drop_tcp") or k.startswith("drop_ip") for k in stats)


def test_sequence_numbers_wrap_past_2_32_with_the_kernel(lab: Lab) -> None:
    with open_stack(lab, isn=fixed_isn(0xFFFF_FF00)) as stack:
        s, peer = connect(stack, lab)
        with s, peer:
            data = os.urandom(200_000)
            got = in_thread(recv_all, peer)
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            assert got.result(TIMEOUT) == data
            assert s.connection.snd_una < 0xFFFF_FF00  # wrapped
            sending = in_thread(peer.sendall, data)
            received = b""
            while len(received) < len(data):
                received += s.recv(1 << 16)
            sending.result(TIMEOUT)
            assert received == data


# ---------------------------------------------------------------- half-close


def test_half_close_we_stop_sending_and_keep_receiving(stack: Stack, lab: Lab) -> None:
    s, peer = connect(stack, lab)
    with s, peer:
        s.sendall(b"question")
        s.shutdown(socket.SHUT_WR)
        assert recv_all(peer) == b"question"  # EOF reached the kernel
        wait_until(lambda: s.state is State.FIN_WAIT_2, "FIN_WAIT_2")
        answer = os.urandom(100_000)
        peer.sendall(answer)  # data still flows toward the side in FIN_WAIT_2
        got = b""
        while len(got) < len(answer):
            got += s.recv(65536)
        assert got == answer
        assert s.state is State.FIN_WAIT_2
        with pytest.raises(BrokenPipeError):
            s.send(b"late")
        peer.close()
        assert s.recv(10) == b""
        assert s.state is State.TIME_WAIT


def test_half_close_kernel_stops_and_we_keep_sending(stack: Stack, lab: Lab) -> None:
    s, peer = connect(stack, lab)
    with s, peer:
        peer.shutdown(socket.SHUT_WR)
        assert s.recv(10) == b""
        assert s.state is State.CLOSE_WAIT
        data = os.urandom(300_000)
        got = in_thread(recv_all, peer)
        s.sendall(data)  # data still flows from the side in CLOSE_WAIT
        s.close()
        assert got.result(TIMEOUT) == data
        s.wait_for_state(State.CLOSED, timeout=TIMEOUT)


# -------------------------------------------------------------------- close


def test_active_close_we_end_in_time_wait(stack: Stack, lab: Lab) -> None:
    s, peer = connect(stack, lab)
    kernel_end = (lab.peer_address, PORT)
    ours = s.getsockname()
    s.close()
    # Our FIN puts the kernel in CLOSE_WAIT, where it stays until its close().
    wait_until(lambda: kernel_state(lab, kernel_end, ours) == "CLOSE_WAIT", "kernel CLOSE_WAIT")
    wait_until(lambda: s.state is State.FIN_WAIT_2, "FIN_WAIT_2")
    assert peer.recv(10) == b""
    peer.close()
    assert s.wait_for_state(State.TIME_WAIT, timeout=TIMEOUT) is State.TIME_WAIT
    # TIME-WAIT is armed for 2*MSL from the moment we entered it.
    expires = s.connection.get_timer()
    assert expires is not None and expires - time.monotonic() > 2 * MSL - 0.1
    # The kernel's socket went LAST_ACK -> gone once our ACK arrived.
    wait_until(lambda: kernel_state(lab, kernel_end, ours) is None, "kernel socket gone")
    s.wait_for_state(State.CLOSED, timeout=TIMEOUT)
    assert time.monotonic() >= expires  # not a moment sooner
    assert not [c for c in stack.connections() if c.local == ours]


def test_passive_close_the_kernel_ends_in_time_wait(stack: Stack, lab: Lab) -> None:
    s, peer = connect(stack, lab)
    kernel_end = (lab.peer_address, PORT)
    ours = s.getsockname()
    peer.close()
    assert s.recv(10) == b""
    assert s.state is State.CLOSE_WAIT
    wait_until(lambda: kernel_state(lab, kernel_end, ours) == "FIN_WAIT_2", "kernel FIN_WAIT_2")
    s.close()
    s.wait_for_state(State.CLOSED, timeout=TIMEOUT)
    wait_until(lambda: kernel_state(lab, kernel_end, ours) == "TIME_WAIT", "kernel TIME_WAIT")


# Closing with SO_LINGER 0 is counted as TCPAbortOnData (Linux files a zero-linger
# abort there), and the established connection it resets as EstabResets.
@pytest.mark.nstat_allows("TcpExtTCPAbortOnData", "TcpEstabResets")
def test_kernel_reset_surfaces_as_connection_reset(stack: Stack, lab: Lab) -> None:
    s, peer = connect(stack, lab)
    # SO_LINGER with a zero timeout makes close() send RST.
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    with pytest.raises(ConnectionResetError):
        s.recv(10)
    assert s.state is State.CLOSED
    with pytest.raises(BrokenPipeError):
        s.send(b"x")
    s.close()


# Our close with unread data sends RST, which ends the kernel's established
# connection: EstabResets.
@pytest.mark.nstat_allows("TcpEstabResets")
def test_close_with_unread_data_resets(stack: Stack, lab: Lab) -> None:
    s, peer = connect(stack, lab)
    with peer:
        peer.sendall(b"unread")
        wait_until(lambda: s.connection.readable == 6, "data buffered")
        s.close()
        assert s.state is State.CLOSED
        with pytest.raises(ConnectionResetError):
            peer.recv(10)


# -------------------------------------------------------------------- load


# Untraced, like the megabyte above: fifty connections' threads contend for the
# engine's lock, which is where the queued send path's ordering matters.
@pytest.mark.no_trace_check("covers the engine's untraced, queued send path")
def test_fifty_concurrent_kernel_clients(stack: Stack, lab: Lab) -> None:
    listener = stack.socket()
    listener.bind(("", PORT))
    listener.listen(64)
    listener.settimeout(TIMEOUT)

    def client(i: int) -> bool:
        payload = os.urandom(1000 + i * 100)
        with kernel_socket(lab) as c:
            c.connect((lab.endpoint_address, PORT))
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
            return recv_all(c) == payload[::-1]

    results = [in_thread(client, i) for i in range(50)]
    servers = []

    def serve(conn):  # type: ignore[no-untyped-def]
        with conn:
            conn.settimeout(TIMEOUT)
            conn.sendall(recv_all(conn)[::-1])

    for _ in range(50):
        conn, _ = listener.accept()
        servers.append(in_thread(serve, conn))
    for f in servers:
        f.result(TIMEOUT)
    assert all(f.result(TIMEOUT) for f in results)
    listener.close()


# --------------------------------------------------------------- API errors


def test_socket_errors_are_the_builtin_ones(stack: Stack, lab: Lab) -> None:
    s = stack.socket()
    with pytest.raises(OSError) as e:
        s.send(b"x")
    assert e.value.errno == errno.ENOTCONN
    with pytest.raises(OSError) as e:
        s.recv(1)
    assert e.value.errno == errno.ENOTCONN
    with pytest.raises(OSError) as e:
        s.getpeername()
    assert e.value.errno == errno.ENOTCONN

    a = stack.socket()
    a.bind(("", 5555))
    b = stack.socket()
    with pytest.raises(OSError) as e:
        b.bind(("", 5555))
    assert e.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as e:
        b.bind(("198.18.0.77", 0))
    assert e.value.errno == errno.EADDRNOTAVAIL

    c, peer = connect(stack, lab)
    with peer:
        with pytest.raises(OSError) as e:
            c.connect((lab.peer_address, PORT))
        assert e.value.errno == errno.EISCONN
        with pytest.raises(OSError) as e:
            c.listen()
        assert e.value.errno == errno.EINVAL
        c.settimeout(0.2)
        with pytest.raises(TimeoutError):
            c.recv(10)
        c.setblocking(False)
        with pytest.raises(BlockingIOError):
            c.recv(10)
        c.setblocking(True)
        c.shutdown(socket.SHUT_WR)
        with pytest.raises(BrokenPipeError):
            c.send(b"after shutdown")
        c.close()
        c.close()  # twice is fine
        with pytest.raises(OSError) as e:
            c.recv(1)
        assert e.value.errno == errno.EBADF
    for sock in (a, b, s):
        sock.close()


def flip(frame: bytes, offset: int) -> bytes:
    damaged = bytearray(frame)
    damaged[offset] ^= 0xFF
    return bytes(damaged)


def test_malformed_frames_are_counted_and_harmless(stack: Stack, lab: Lab) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    s, peer = connect(stack, lab)
    ours = s.getsockname()
    mac = ":".join(f"{b:02x}" for b in stack.mac)
    base = Ether(dst=mac) / IP(src=lab.peer_address, dst=lab.endpoint_address)
    tcp = TCP(sport=PORT, dport=ours[1], flags="A", seq=1, ack=1)
    frames = {
        "drop_ip_bad_checksum": flip(bytes(base / tcp), 24),
        "drop_tcp_bad_checksum": bytes(
            Ether(dst=mac)
            / IP(src=lab.peer_address, dst=lab.endpoint_address)
            / TCP(sport=PORT, dport=ours[1], flags="A", chksum=0x1234)
        ),
        "drop_tcp_bad_offset": bytes(
            Ether(dst=mac)
            / IP(src=lab.peer_address, dst=lab.endpoint_address)
            / TCP(sport=PORT, dport=ours[1], flags="A", dataofs=3)
        ),
        "drop_tcp_bad_options": bytes(
            Ether(dst=mac)
            / IP(src=lab.peer_address, dst=lab.endpoint_address)
            / TCP(sport=PORT, dport=ours[1], flags="A", dataofs=6, options=[])
            / b"\x02\x09\x05\xb4"
        ),
        "drop_ip_fragment": bytes(
            Ether(dst=mac) / IP(src=lab.peer_address, dst=lab.endpoint_address, flags="MF") / tcp
        ),
        "drop_not_ipv4": bytes(Ether(dst=mac) / IPv6() / TCP()),
        "drop_ip_truncated": bytes(base / tcp)[:30],
    }
    before = stack.stats()
    with lab.in_peer():
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with raw:
        raw.bind((lab.peer_interface, 0))
        for frame in frames.values():
            raw.send(frame)
    wait_until(
        lambda: all(stack.stats().get(k, 0) > before.get(k, 0) for k in frames),
        "every malformed frame counted",
    )
    # The connection never noticed.
    with s, peer:
        peer.sendall(b"still fine")
        assert s.recv(100) == b"still fine"
        s.sendall(b"and back")
        assert peer.recv(100) == b"and back"
        assert s.state is State.ESTABLISHED


def test_engine_failure_reaches_a_blocked_call(stack: Stack, lab: Lab) -> None:
    s, peer = connect(stack, lab)
    s.settimeout(None)
    blocked = in_thread(s.recv, 10)

    def broken(max_frames: int = 64) -> list[tuple[bytes, bool]]:
        raise OSError(errno.ENETDOWN, "link went away")

    stack._engine.link.recv_batch = broken  # type: ignore[method-assign]
    peer.sendall(b"wake the engine")
    with pytest.raises(OSError) as e:
        blocked.result(TIMEOUT)
    assert "engine failed" in str(e.value)
    with pytest.raises(OSError):
        s.send(b"x")
    peer.close()


def test_lab_leaves_no_trace_in_the_root_namespace(lab: Lab) -> None:
    out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert "198.18." not in out
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    assert "198.18." not in routes
