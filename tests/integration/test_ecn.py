"""Scenario O-13: Explicit Congestion Notification with the kernel (RFC 3168, SHLD-8).

The kernel asks for ECN when its namespace has tcp_ecn = 1, and accepts it at the
default 2. `ss -ti` says "ecn" for a connection that uses it. nftables marks
congestion (sets CE) on ECN-capable packets at the kernel's interface: on ours as
they arrive, so the kernel echoes ECE and we must reduce and say CWR; or on the
kernel's as they leave, so we must echo ECE until the kernel says CWR.
"""

from __future__ import annotations

import socket

import pytest

from tcpstack import TcpConfig
from tcpstack.core.segment import CE, ECT_0, NOT_ECT, Flags
from tcpstack.lab import Lab
from tcpstack.stack import Socket, Stack
from tcpstack.trace import Recorder, SegmentEvent
from tests.integration.kernel import (
    MSL,
    PORT,
    TIMEOUT,
    connect,
    in_thread,
    kernel_socket,
    open_stack,
    recv_all,
)

pytestmark = pytest.mark.netns

SIZE = 2 << 20
MARK_TABLE = "tcpstack_ce"
TCPI_OPT_ECN = 8


def _kernel_ecn(lab: Lab, value: int) -> None:
    with lab.in_peer(), open("/proc/sys/net/ipv4/tcp_ecn", "w") as f:
        f.write(str(value))


def _kernel_uses_ecn(sock: socket.socket) -> bool:
    """TCP_INFO's tcpi_options has TCPI_OPT_ECN: the kernel's socket negotiated ECN.
    (This machine's ss, older than its kernel, no longer prints the option flags.)"""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    return bool(info[5] & TCPI_OPT_ECN)


def _segments(recorder: Recorder, direction: str) -> list[SegmentEvent]:
    return [e for e in recorder.segments if e.direction == direction]


def _after_handshake(recorder: Recorder, direction: str) -> list[SegmentEvent]:
    # SYNs carry ECE and CWR to set ECN up; only later ones signal congestion.
    return [e for e in _segments(recorder, direction) if not e.segment.syn]


def _mark_ce(lab: Lab, hook: str, every: int) -> None:
    """Set CE on every `every`-th ECN-capable TCP packet at the kernel's `hook`."""
    lab.nft(
        f"""table netdev {MARK_TABLE} {{
    chain ce {{
        type filter hook {hook} device "{lab.peer_interface}" priority filter; policy accept;
        meta protocol ip ip protocol tcp ip ecn ect0 numgen inc mod {every} == 0 ip ecn set ce
    }}
}}
"""
    )


def _accepted_from_kernel_client(lab: Lab, stack: Stack) -> tuple[Socket, socket.socket]:
    server = stack.socket()
    server.settimeout(TIMEOUT)
    server.bind((stack.address, PORT))
    server.listen()
    client = kernel_socket(lab)
    client.connect((stack.address, PORT))
    ours, _ = server.accept()
    server.close()
    return ours, client


@pytest.mark.parametrize("ecn", ["accept", "off"])
def test_a_kernel_that_asks_for_ecn_gets_it_unless_we_refuse(lab: Lab, ecn: str) -> None:
    _kernel_ecn(lab, 1)
    with open_stack(lab, config=TcpConfig(msl=MSL, ecn=ecn)) as stack:
        recorder = stack.subscribe(Recorder())
        ours, client = _accepted_from_kernel_client(lab, stack)
        client.sendall(b"k" * 20_000)
        got = b""
        while len(got) < 20_000:
            got += ours.recv(1 << 16)
        ours.sendall(b"u" * 20_000)
        received = 0
        while received < 20_000:
            received += len(client.recv(1 << 16))
        syn, syn_ack = _segments(recorder, "in")[0].segment, _segments(recorder, "out")[0].segment
        assert syn.flags & (Flags.ECE | Flags.CWR) == Flags.ECE | Flags.CWR
        theirs = [e.segment.ecn for e in _segments(recorder, "in") if e.segment.payload]
        mine = [e.segment.ecn for e in _segments(recorder, "out") if e.segment.payload]
        if ecn == "accept":
            assert syn_ack.flags & (Flags.ECE | Flags.CWR) == Flags.ECE
            assert _kernel_uses_ecn(client)
            assert set(theirs) == {ECT_0} and set(mine) == {ECT_0}
        else:
            assert not syn_ack.flags & (Flags.ECE | Flags.CWR)
            assert not _kernel_uses_ecn(client)
            assert set(theirs) == {NOT_ECT} and set(mine) == {NOT_ECT}
        ours.close()
        client.close()


def test_we_ask_a_kernel_for_ecn_and_it_accepts(lab: Lab) -> None:
    with open_stack(lab, config=TcpConfig(msl=MSL, ecn="on")) as stack:
        recorder = stack.subscribe(Recorder())
        s, peer = connect(stack, lab)
        s.sendall(b"x" * 10_000)
        received = 0
        while received < 10_000:
            received += len(peer.recv(1 << 16))
        syn = _segments(recorder, "out")[0].segment
        syn_ack = _segments(recorder, "in")[0].segment
        assert syn.flags & (Flags.ECE | Flags.CWR) == Flags.ECE | Flags.CWR
        assert syn_ack.flags & (Flags.ECE | Flags.CWR) == Flags.ECE
        assert _kernel_uses_ecn(peer)
        s.close()
        peer.close()


def _marked_transfer(lab: Lab, stack: Stack, hook: str) -> tuple[Recorder, bytes]:
    """SIZE bytes, CE set on one ECN-capable packet in 100 at the kernel's `hook`:
    "ingress" marks ours (we send), "egress" the kernel's (it sends)."""
    recorder = stack.subscribe(Recorder())
    s, peer = connect(stack, lab)
    _mark_ce(lab, hook, every=100)
    data = bytes(range(256)) * (SIZE // 256)
    sender, receiver = (s, peer) if hook == "ingress" else (peer, s)
    received = in_thread(recv_all, receiver)
    sender.sendall(data)
    sender.shutdown(socket.SHUT_WR)
    got = received.result(TIMEOUT)
    s.close()
    peer.close()
    return recorder, got


def test_marks_on_our_data_make_us_reduce_and_say_cwr(lab: Lab) -> None:
    with open_stack(lab, config=TcpConfig(msl=MSL, ecn="on")) as stack:
        recorder, got = _marked_transfer(lab, stack, "ingress")
        assert got == bytes(range(256)) * (SIZE // 256)
        stats = stack.stats()
        assert stats["ecn_reductions"] >= 1
        echoes = [e for e in _after_handshake(recorder, "in") if e.segment.flags & Flags.ECE]
        cwrs = [e for e in _after_handshake(recorder, "out") if e.segment.flags & Flags.CWR]
        assert echoes and cwrs
        # Each CWR follows an echo, and the kernel stops echoing after one.
        assert cwrs[0].time >= echoes[0].time
        assert stats.get("retransmissions", 0) == 0  # a mark is not a loss


def test_marks_on_the_kernels_data_are_echoed_until_it_says_cwr(lab: Lab) -> None:
    with open_stack(lab, config=TcpConfig(msl=MSL, ecn="on")) as stack:
        recorder, got = _marked_transfer(lab, stack, "egress")
        assert got == bytes(range(256)) * (SIZE // 256)
        marked = [e for e in _segments(recorder, "in") if e.segment.ecn == CE]
        assert marked and stack.stats()["ce_received"] == len(marked)
        echoed = [e for e in _after_handshake(recorder, "out") if e.segment.flags & Flags.ECE]
        their_cwr = [e for e in _after_handshake(recorder, "in") if e.segment.flags & Flags.CWR]
        assert echoed and their_cwr
        # After the first mark, our very next segment echoes it.
        first = marked[0]
        after = [e for e in _segments(recorder, "out") if e.time >= first.time]
        assert after and after[0].segment.flags & Flags.ECE
        # The kernel's CWR ends the echo, until the next mark (one on the CWR segment
        # itself would start it again at once).
        cwr_at = next(e.time for e in their_cwr if e.segment.ecn != CE)
        nxt = [e.time for e in marked if e.time > cwr_at]
        quiet = [
            e
            for e in _segments(recorder, "out")
            if e.time > cwr_at and (not nxt or e.time < nxt[0])
        ]
        assert quiet and not any(e.segment.flags & Flags.ECE for e in quiet)
