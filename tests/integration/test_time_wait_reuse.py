"""Scenario C-13: a 4-tuple reused while one end is still in TIME-WAIT, both ways.

(a) We closed first and sit in TIME-WAIT; the kernel client connects again from the
    same port. RFC 9293 §3.6.1 (MAY-2) and RFC 6191 let us take the new SYN at once,
    with an ISS beyond everything the old connection used.
(b) The kernel closed first and sits in TIME-WAIT; we connect again from the same
    port, after sending more than our ISN clock has moved since, so only our
    timestamp can tell the kernel the SYN is new. Our TSval keeps rising between
    connections to one host (its offset is keyed on the addresses, as Linux's is),
    so the kernel takes it at once. Without timestamps the kernel answers the SYN
    with its old ACK; we reset that (RFC 9293 §3.10.7.3, <SEQ=SEG.ACK>), the RST
    ends its TIME-WAIT, and our retransmitted SYN connects.
"""

from __future__ import annotations

import socket

import pytest

from tcpstack import State, TcpConfig
from tcpstack.core.segment import Flags
from tcpstack.lab import Lab
from tcpstack.stack import Socket, Stack
from tcpstack.trace import Recorder, SegmentEvent
from tests.integration.kernel import (
    PORT,
    TIMEOUT,
    in_thread,
    kernel_server,
    kernel_socket,
    open_stack,
    wait_until,
)

pytestmark = pytest.mark.netns

CLIENT_PORT = 40_404
# Long enough that TIME-WAIT outlasts the test on our side.
LONG_MSL = TcpConfig(msl=30.0)
UPLOAD = 1 << 20


def _syns_out(recorder: Recorder, port: int) -> list[SegmentEvent]:
    return [
        e
        for e in recorder.segments
        if e.direction == "out" and e.segment.syn and port in (e.local[1], e.remote[1])
    ]


def _kernel_client(lab: Lab, stack: Stack) -> socket.socket:
    client = kernel_socket(lab)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    client.bind((lab.peer_address, CLIENT_PORT))
    client.connect((stack.address, PORT))
    return client


def test_a_kernel_client_reconnects_to_our_port_in_time_wait(lab: Lab) -> None:
    with open_stack(lab, config=LONG_MSL) as stack:
        recorder = stack.subscribe(Recorder())
        server = stack.socket()
        server.settimeout(TIMEOUT)
        server.bind((stack.address, PORT))
        server.listen()
        client = _kernel_client(lab, stack)
        ours, _ = server.accept()
        client.sendall(b"first")
        assert ours.recv(5) == b"first"
        info = ours.info()
        assert info is not None
        old_snd_nxt = info.snd_nxt
        ours.close()  # we close first: TIME-WAIT is ours
        assert client.recv(1) == b""
        client.close()
        four = ((stack.address, PORT), (lab.peer_address, CLIENT_PORT))
        wait_until(
            lambda: any(
                (c.local, c.remote, c.state) == (*four, State.TIME_WAIT)
                for c in stack.connections()
            ),
            "our side in TIME-WAIT",
        )

        again = _kernel_client(lab, stack)
        ours, _ = server.accept()
        again.sendall(b"second")
        assert ours.recv(6) == b"second"
        assert stack.stats()["time_wait_reopened"] == 1
        old_syn_ack, new_syn_ack = (e.segment for e in _syns_out(recorder, CLIENT_PORT))
        # Beyond our FIN, the old connection's last sequence number, by a window.
        assert new_syn_ack.seq == (old_snd_nxt + 1 + 0xFFFF + 2) & 0xFFFF_FFFF
        assert new_syn_ack.flags == Flags.SYN | Flags.ACK
        # Taken at once: the kernel never had to send its SYN again.
        assert lab.peer_nstat().get("TcpRetransSegs", 0) == 0
        ours.close()
        assert again.recv(1) == b""
        again.close()
        server.close()


def _connect_from_our_port(
    lab: Lab, stack: Stack, listener: socket.socket
) -> tuple[Socket, socket.socket]:
    """Our socket bound to CLIENT_PORT, connected to the kernel's listener."""
    accepted = in_thread(listener.accept)
    s = stack.socket()
    s.settimeout(TIMEOUT)
    s.bind((stack.address, CLIENT_PORT))
    s.connect((lab.peer_address, PORT))
    peer, _ = accepted.result(TIMEOUT)
    peer.settimeout(TIMEOUT)
    return s, peer


@pytest.mark.parametrize("timestamps", [True, False], ids=["timestamps", "no timestamps"])
def test_we_reconnect_to_a_kernel_server_in_time_wait(lab: Lab, timestamps: bool) -> None:
    listener = kernel_server(lab, PORT)
    with open_stack(lab, config=TcpConfig(msl=0.25, timestamps=timestamps)) as stack:
        recorder = stack.subscribe(Recorder())
        # The kernel must end in TIME-WAIT: it has to close first. We half-close to
        # send the upload's end, the kernel reads it all and closes, then we do.
        s, peer = _connect_from_our_port(lab, stack, listener)
        s.sendall(bytes(UPLOAD))
        received = 0
        while received < UPLOAD:
            chunk = peer.recv(1 << 16)
            assert chunk
            received += len(chunk)
        peer.close()  # the kernel closes first
        assert s.recv(1) == b""
        s.close()
        kernel_end, ours = (lab.peer_address, PORT), (stack.address, CLIENT_PORT)
        wait_until(
            lambda: lab.peer_tcp_state(kernel_end, ours) == "TIME_WAIT",
            "the kernel in TIME-WAIT",
        )
        wait_until(
            lambda: all(c.state is State.CLOSED for c in stack.connections() if c.local == ours),
            "our side closed",
        )
        old_iss, *_ = (e.segment.seq for e in _syns_out(recorder, CLIENT_PORT))

        again, peer = _connect_from_our_port(lab, stack, listener)
        again.sendall(b"again")
        assert peer.recv(5) == b"again"
        syns = _syns_out(recorder, CLIENT_PORT)[1:]
        # Our ISN clock moved less than the megabyte we sent: the sequence number
        # alone cannot tell the kernel this SYN is new.
        assert (syns[0].segment.seq - old_iss) & 0xFFFF_FFFF < UPLOAD
        resets = [
            e.segment
            for e in recorder.segments
            if e.direction == "out" and e.segment.rst and e.local == ours
        ]
        if timestamps:
            assert len(syns) == 1 and not resets
        else:
            # The kernel's TIME-WAIT answered with its old ACK; our RST carried that
            # ACK's number, and the SYN sent again got in.
            (stray,) = [
                e.segment
                for e in recorder.segments
                if e.direction == "in"
                and e.local == ours
                and e.state is State.SYN_SENT
                and e.segment.flags == Flags.ACK
            ]
            assert [r.seq for r in resets] == [stray.ack]
            assert len(syns) == 2
        again.close()
        assert peer.recv(1) == b""
        peer.close()
    listener.close()
