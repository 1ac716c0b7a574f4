"""The engine and socket facade over an in-memory link, with the test playing the peer.

No root and no kernel: frames are built and checked with the wire codec, so these
run in the unit tier and pin the engine's ARP, ICMP, demux and failure behaviour.
"""

from __future__ import annotations

import errno

import pytest

from tcpstack import State, wire
from tcpstack.core.segment import Flags, Options, Segment
from tcpstack.link import MemoryLink
from tcpstack.stack import Stack
from tests.unit.peer import (
    OUR_IP,
    OUR_MAC,
    PEER_IP,
    PEER_MAC,
    TIMEOUT,
    Peer,
    open_to_peer,
    pool,
    start_open_to_peer,
)


def test_arp_request_for_our_address_is_answered(pair: tuple[Stack, Peer]) -> None:
    stack, peer = pair
    # A request for somebody else first: it must go unanswered, so the first reply
    # that comes back is the one for our address.
    for target in ("198.18.0.99", OUR_IP):
        peer.send(
            wire.encode_arp(PEER_MAC, wire.BROADCAST_MAC, 1, PEER_MAC, PEER_IP, b"\0" * 6, target)
        )
    reply = peer.receive(lambda p: isinstance(p, wire.ArpPacket), "ARP reply")
    assert isinstance(reply, wire.ArpPacket)
    assert reply.op == 2 and reply.sender_ip == OUR_IP
    assert reply.sender_mac == wire.parse_mac(OUR_MAC) and reply.target_mac == PEER_MAC
    assert stack.arp_table() == {PEER_IP: wire.mac_str(PEER_MAC)}  # learnt from the request
    assert stack.stats()["arp_replies"] == 1


def test_echo_request_is_answered(pair: tuple[Stack, Peer]) -> None:
    stack, peer = pair
    # Answered straight to the requester's MAC: no ARP round trip first.
    peer.send(
        wire.encode_icmp_echo(
            PEER_MAC, peer.our_mac, PEER_IP, OUR_IP, type=8, ident=5, sequence=9, payload=b"x" * 56
        )
    )
    reply = peer.receive(lambda p: isinstance(p, wire.IcmpEcho), "echo reply")
    assert isinstance(reply, wire.IcmpEcho)
    assert (reply.type, reply.ident, reply.sequence, reply.payload) == (0, 5, 9, b"x" * 56)
    assert (reply.src_ip, reply.dst_ip) == (OUR_IP, PEER_IP)


def test_syn_to_a_closed_port_gets_rst_ack(pair: tuple[Stack, Peer]) -> None:
    stack, peer = pair
    peer.send_tcp(Segment(5555, 80, 4242, 0, Flags.SYN, 64240, Options(mss=1460)))
    peer.answer_arp()
    rst = peer.tcp()
    assert rst.describe() == "R. 0:0(0) ack 4243 win 0"
    assert (rst.src_port, rst.dst_port) == (80, 5555)


def test_malformed_frames_are_counted_not_fatal(pair: tuple[Stack, Peer]) -> None:
    stack, peer = pair
    good = wire.encode_tcp(PEER_MAC, peer.our_mac, PEER_IP, OUR_IP, Segment(1, 80, 1, 0, Flags.SYN))
    bad = bytearray(good)
    bad[-1] ^= 0xFF  # breaks the TCP checksum
    peer.send(bytes(bad))
    peer.send(good[:20])
    peer.send(b"\x00" * 5)
    peer.ping(1)  # the engine still answers, so it processed everything before
    stats = stack.stats()
    assert stats["drop_tcp_bad_checksum"] == 1
    assert stats["drop_ip_truncated"] == 1
    assert stats["drop_eth_truncated"] == 1


def test_connect_returns_on_the_syn_ack_and_data_flows(pair: tuple[Stack, Peer]) -> None:
    stack, peer = pair
    s, connecting, syn = start_open_to_peer(stack, peer)
    assert syn.flags == Flags.SYN and syn.seq == 1000 and syn.options.mss == 1460
    assert s.state is State.SYN_SENT and not connecting.done()
    peer.send_tcp(
        Segment(80, syn.src_port, 7000, 1001, Flags.SYN | Flags.ACK, 65535, Options(mss=1400))
    )
    connecting.result(TIMEOUT)
    ack = peer.tcp()
    assert ack.flags == Flags.ACK and (ack.seq, ack.ack) == (1001, 7001)
    assert s.state is State.ESTABLISHED
    s.sendall(b"hello")
    data = peer.tcp()
    assert data.payload == b"hello" and data.seq == 1001
    peer.send_tcp(
        Segment(80, syn.src_port, 7001, 1006, Flags.ACK | Flags.PSH, 65535, payload=b"hi")
    )
    assert s.recv(10) == b"hi"
    assert peer.tcp().ack == 7003
    assert [(c.remote, c.state) for c in stack.connections()] == [
        ((PEER_IP, 80), State.ESTABLISHED)
    ]


def test_engine_failure_reaches_blocked_calls(pair: tuple[Stack, Peer]) -> None:
    stack, peer = pair
    listener = stack.socket()
    listener.bind(("", 80))
    listener.listen()
    waiting = pool.submit(listener.accept)
    peer.link.close()  # the link vanishes under the engine
    with pytest.raises(OSError, match="engine failed"):
        waiting.result(TIMEOUT)
    with pytest.raises(OSError, match="engine failed"):
        stack.socket().connect((PEER_IP, 80))


def test_sockets_outliving_their_stack_close_quietly() -> None:
    ours, theirs = MemoryLink.pair()
    stack = Stack(ours, f"{OUR_IP}/24", mac=OUR_MAC)
    listener = stack.socket()
    listener.bind(("", 80))
    listener.listen()
    stack.close()
    stack.close()
    listener.close()  # no error, no frame sent into a closed link
    with pytest.raises(OSError):
        stack.socket().bind(("", 81))
    theirs.close()


def test_an_idle_stack_has_no_deadline(pair: tuple[Stack, Peer]) -> None:
    # No polling tick: with nothing to time, the I/O thread sleeps until a frame comes.
    stack, peer = pair
    listener = stack.socket()
    listener.bind(("", 80))
    listener.listen()
    with stack._engine.lock:
        assert stack._engine._next_deadline() is None


def test_reset_half_open_connection_leaves_no_zombie(pair: tuple[Stack, Peer]) -> None:
    # A client that gives up in SYN_SENT and reuses its port must be served afresh.
    stack, peer = pair
    listener = stack.socket()
    listener.bind(("", 80))
    listener.listen()
    listener.settimeout(TIMEOUT)
    peer.send_tcp(Segment(5555, 80, 4242, 0, Flags.SYN, 64240, Options(mss=1460)))
    peer.answer_arp()
    syn_ack = peer.tcp()
    peer.send_tcp(Segment(5555, 80, 4243, 0, Flags.RST, 0))
    peer.ping(1)  # the RST has been processed
    assert [c.state for c in stack.connections()] == [State.LISTEN]
    # The same 4-tuple again: a new handshake, and accept() hands it over.
    peer.send_tcp(Segment(5555, 80, 9000, 0, Flags.SYN, 64240, Options(mss=1460)))
    syn_ack = peer.tcp()
    assert syn_ack.ack == 9001
    peer.send_tcp(Segment(5555, 80, 9001, syn_ack.seq + 1, Flags.ACK, 64240))
    conn, address = listener.accept()
    assert address == (PEER_IP, 5555) and conn.state is State.ESTABLISHED


def test_listener_answers_a_stray_ack_with_rst_to_its_port(pair: tuple[Stack, Peer]) -> None:
    stack, peer = pair
    listener = stack.socket()
    listener.bind(("", 80))
    listener.listen()
    peer.send_tcp(Segment(5555, 80, 4242, 777, Flags.ACK, 64240))
    peer.answer_arp()
    rst = peer.tcp()
    assert (rst.src_port, rst.dst_port) == (80, 5555)
    assert rst.describe() == "R 777:777(0) win 0"


def test_full_accept_queue_drops_the_final_ack(pair: tuple[Stack, Peer]) -> None:
    stack, peer = pair
    listener = stack.socket()
    listener.bind(("", 80))
    listener.listen(1)
    listener.settimeout(TIMEOUT)
    acks = []
    for port in (5001, 5002):
        peer.send_tcp(Segment(port, 80, 100, 0, Flags.SYN, 64240, Options(mss=1460)))
        if port == 5001:
            peer.answer_arp()
        syn_ack = peer.tcp()
        acks.append(Segment(port, 80, 101, syn_ack.seq + 1, Flags.ACK, 64240))
    for ack in acks:
        peer.send_tcp(ack)
    peer.ping(2)
    # One fits the backlog of 1; the other's ACK was dropped and it waits half-open.
    assert stack.stats()["drop_listen_overflow"] == 1
    states = sorted(c.state.name for c in stack.connections())
    assert states == ["ESTABLISHED", "LISTEN", "SYN_RECEIVED"]
    listener.accept()
    peer.send_tcp(acks[1])  # the client's ACK again (after our SYN-ACK retransmission)
    conn, address = listener.accept()
    assert address == (PEER_IP, 5002)


def test_socket_options_reach_the_connection(pair: tuple[Stack, Peer]) -> None:
    import socket

    stack, peer = pair
    s = stack.socket()
    assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # Nagle on by default
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"reno")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 100_000)
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 200_000  # doubled, as Linux
    assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16) == b"reno".ljust(16, b"\0")
    with pytest.raises(OSError) as e:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 500)
    assert e.value.errno == errno.ENOPROTOOPT
    with pytest.raises(OSError) as e:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"bbr")
    open_to_peer(stack, peer, sock=s, options=Options(mss=1460))
    conn = s.connection
    assert conn is not None
    assert conn.nodelay and conn.keepalive and conn.cc.name == "reno"
    assert (conn.keepalive_idle, conn.keepalive_interval, conn.keepalive_probes) == (30, 5, 4)
    assert conn.config.receive_buffer == 200_000
    info = s.info()
    assert info is not None and info.congestion == "reno" and info.state is State.ESTABLISHED
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
    assert not conn.nodelay


def test_stack_counters_include_ended_connections(pair: tuple[Stack, Peer]) -> None:
    stack, peer = pair
    _, connecting, syn = start_open_to_peer(stack, peer)
    peer.send_tcp(Segment(80, syn.src_port, 7000, 0, Flags.RST | Flags.ACK, 0))
    peer.send_tcp(Segment(80, syn.src_port, 7000, syn.seq + 1, Flags.RST | Flags.ACK, 0))
    with pytest.raises(ConnectionRefusedError):
        connecting.result(TIMEOUT)
    stats = stack.stats()
    assert stats["segments_out"] >= 1 and stats["segments_in"] == 2
    assert stats["drop_syn_sent_bad_ack"] == 1


def test_reading_sends_no_useless_window_update_without_window_scaling(
    pair: tuple[Stack, Peer],
) -> None:
    # The peer offers no window scaling, so our window field tops out at 65535 while
    # our buffer is 1 MB: a read cannot open the window any further than it is.
    stack, peer = pair
    s, syn, _ = open_to_peer(stack, peer, options=Options(mss=1460))
    assert peer.tcp().window == 65535  # the handshake's ACK
    peer.send_tcp(Segment(80, syn.src_port, 7001, syn.seq + 1, Flags.ACK, 65535, payload=b"hi"))
    assert s.recv(10) == b"hi"
    peer.send(
        wire.encode_icmp_echo(
            PEER_MAC, peer.our_mac, PEER_IP, OUR_IP, type=8, ident=1, sequence=1, payload=b""
        )
    )
    # Everything the read made us send is out before the echo reply: one ACK for "hi".
    sent: list[Segment] = []

    def until_reply(p: wire.Decoded) -> bool:
        if isinstance(p, wire.TcpPacket):
            sent.append(p.segment)
        return isinstance(p, wire.IcmpEcho)

    peer.receive(until_reply, "echo reply")
    assert [(seg.ack, seg.window) for seg in sent] == [(7003, 65535)]


def test_frames_made_under_the_lock_leave_in_order_once_it_is_free(
    pair: tuple[Stack, Peer],
) -> None:
    # Sends are queued while the engine lock is held (a send on veth runs the kernel
    # peer's receive path) and go out, in order, when the last holder lets go.
    stack, peer = pair
    sock, syn, _ = open_to_peer(stack, peer)
    handshake_ack = peer.tcp()
    with stack._engine.lock:
        sock.sendall(b"x" * 4200)
        assert peer.link.recv_batch() == []
    sent = [peer.tcp() for _ in range(3)]
    assert [s.seq - handshake_ack.seq for s in sent] == [0, 1400, 2800]
    assert b"".join(s.payload for s in sent) == b"x" * 4200
