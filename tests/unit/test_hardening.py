"""RFC 5961 rate limits, SYN cookies, bounded tables and forged sources."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tcpstack import StackConfig, State, TcpConfig, wire
from tcpstack.core.ratelimit import PerSecondLimit
from tcpstack.core.segment import Flags, Options, Segment
from tcpstack.stack import Stack
from tcpstack.syncookies import MSS_TABLE, SynCookies
from tests.unit.helpers import FACTORIES, seg
from tests.unit.peer import OUR_IP, PEER_IP, TIMEOUT, Peer, make_pair

# ------------------------------------------------------------- challenge ACKs


def test_challenge_acks_are_limited_per_connection() -> None:
    d = FACTORIES[State.ESTABLISHED]()
    sent = [d.push(seg("R", d.conn.rcv_nxt + 10 + i), at=d.now + 0.01) for i in range(5)]
    assert [len(s) for s in sent] == [1, 0, 0, 0, 0]
    assert d.conn.stats["challenge_acks_suppressed"] == 4
    assert len(d.push(seg("R", d.conn.rcv_nxt + 99), at=d.now + 0.5)) == 1


def test_challenge_acks_share_a_stack_wide_budget() -> None:
    budget = PerSecondLimit(2)
    answered = 0
    for _ in range(3):
        d = FACTORIES[State.ESTABLISHED]()
        d.conn._challenge_limit = budget  # one stack's connections share one budget
        answered += len(d.push(seg("S", d.conn.rcv_nxt + 5), at=0.5))
    assert answered == 2 and budget.suppressed == 1


def test_out_of_window_acks_are_limited_but_data_is_always_answered() -> None:
    d = FACTORIES[State.ESTABLISHED]()
    far = d.conn.rcv_nxt + 200_000
    assert len(d.push(seg(".", far, d.conn.snd_nxt), at=d.now + 0.01)) == 1
    assert d.push(seg(".", far, d.conn.snd_nxt), at=d.now + 0.01) == []
    # Data is not part of an ACK loop: it always gets its duplicate ACK.
    old = d.conn.rcv_nxt - 10
    assert len(d.push(seg("P.", old, d.conn.snd_nxt, data=b"x" * 5), at=d.now + 0.01)) == 1


def test_listen_drops_syn_fin() -> None:
    d = FACTORIES[State.LISTEN]()
    assert d.push(seg("SF", 100)) == []
    assert d.conn.state is State.LISTEN and d.conn.stats["drop_listen_syn_fin"] == 1


# ------------------------------------------------------------------ SYN cookies

FOUR = ("198.18.0.2", 80, "198.18.0.1", 40000)


@pytest.mark.parametrize("mss", [536, 1000, 1300, 1460, 9000])
def test_cookie_carries_the_mss_back(mss: int) -> None:
    cookies = SynCookies(secret=b"s" * 32)
    isn = cookies.make(FOUR, 5000, mss, now=100.0)
    expected = max(m for m in MSS_TABLE if m <= mss) if mss >= 536 else 536
    assert cookies.check(FOUR, 5000, isn, now=150.0) == expected


def test_forged_or_stale_cookies_are_refused() -> None:
    cookies = SynCookies(secret=b"s" * 32)
    isn = cookies.make(FOUR, 5000, 1460, now=100.0)
    assert cookies.check(FOUR, 5000, isn + 1, now=100.0) is None
    assert cookies.check(FOUR, 5000 + (1 << 25), isn, now=100.0) is None
    assert cookies.check(("198.18.0.2", 80, "198.18.0.1", 40001), 5000, isn, now=100.0) is None
    assert cookies.check(FOUR, 5000, isn, now=100.0 + 64 * 3) is None  # older than 2 periods
    assert SynCookies(secret=b"t" * 32).check(FOUR, 5000, isn, now=100.0) is None


@pytest.fixture
def small() -> Iterator[tuple[Stack, Peer]]:
    stack, peer = make_pair(limits=StackConfig(max_half_open=4, max_time_wait=2))
    try:
        yield stack, peer
    finally:
        stack.close()
        peer.link.close()


def syn(port: int, isn: int = 100) -> Segment:
    return Segment(port, 80, isn, 0, Flags.SYN, 64240, Options(mss=1460))


def test_syn_flood_falls_back_to_cookies_and_real_clients_still_connect(
    small: tuple[Stack, Peer],
) -> None:
    stack, peer = small
    listener = stack.socket()
    listener.bind(("", 80))
    listener.listen(16)
    listener.settimeout(TIMEOUT)
    peer.send_tcp(syn(20000))
    peer.answer_arp()
    peer.tcp()
    for port in range(20001, 20050):  # a flood from ports that never answer
        peer.send_tcp(syn(port))
    for _ in range(49):
        peer.tcp()
    stats = stack.stats()
    assert stats["syn_cookies_sent"] == 46  # 4 half-open, then cookies
    assert len([c for c in stack.connections() if c.state is State.SYN_RECEIVED]) == 4
    # A real client, answered with a cookie, completes the handshake with its ACK.
    peer.send_tcp(syn(30000, isn=777))
    cookie_syn_ack = peer.tcp()
    assert cookie_syn_ack.flags == Flags.SYN | Flags.ACK and cookie_syn_ack.ack == 778
    assert cookie_syn_ack.options == Options(mss=1460)  # nothing the cookie cannot carry
    peer.send_tcp(
        Segment(30000, 80, 778, cookie_syn_ack.seq + 1, Flags.ACK | Flags.PSH, 64240, payload=b"hi")
    )
    conn, address = listener.accept()
    assert address == (PEER_IP, 30000) and conn.recv(10) == b"hi"
    assert conn.connection is not None and conn.connection.send_mss == 1460
    assert stack.stats()["syn_cookies_accepted"] == 1
    # An ACK that matches no cookie is dropped: no RST (see the next test for why).
    resets = stack.stats().get("resets_sent", 0)
    peer.send_tcp(Segment(30001, 80, 999, 123456, Flags.ACK, 64240))
    peer.ping(1)  # answered after the engine has handled the ACK
    assert stack.stats()["drop_syn_cookie_failed"] == 1
    assert stack.stats().get("resets_sent", 0) == resets


def test_a_cookie_client_whose_first_ack_and_data_were_lost_still_connects(
    small: tuple[Stack, Peer],
) -> None:
    # Under a flood our receive queue overflows: a client's handshake ACK and first
    # data may be lost while a later ACK (seq past the data) arrives. It no longer
    # matches the cookie; if we answered it with RST the client would be gone.
    stack, peer = small
    listener = stack.socket()
    listener.bind(("", 80))
    listener.listen(16)
    listener.settimeout(TIMEOUT)
    peer.send_tcp(syn(20000))
    peer.answer_arp()
    peer.tcp()
    for port in range(20001, 20004):  # now the half-open queue (4) is full
        peer.send_tcp(syn(port))
        peer.tcp()
    peer.send_tcp(syn(30000, isn=777))
    cookie = peer.tcp()
    assert stack.stats()["syn_cookies_sent"] == 1
    peer.send_tcp(Segment(30000, 80, 778 + 5, cookie.seq + 1, Flags.ACK, 64240))
    peer.send_tcp(
        Segment(30000, 80, 778, cookie.seq + 1, Flags.ACK | Flags.PSH, 64240, payload=b"hello")
    )
    conn, _ = listener.accept()
    assert conn.recv(10) == b"hello"
    stats = stack.stats()
    assert stats["drop_syn_cookie_failed"] == 1 and stats.get("resets_sent", 0) == 0


def tcp_with(peer: Peer, flag: Flags) -> Segment:
    packet = peer.receive(
        lambda p: isinstance(p, wire.TcpPacket) and bool(p.segment.flags & flag), flag.name or ""
    )
    assert isinstance(packet, wire.TcpPacket)
    return packet.segment


def test_time_wait_table_is_bounded(small: tuple[Stack, Peer]) -> None:
    stack, peer = small
    peer.send_tcp(syn(1))  # no listener: answered with RST, after ARP
    peer.answer_arp()
    for port in (100, 101, 102):
        s = stack.socket()
        s.bind(("", port))
        s.listen()
        s.settimeout(TIMEOUT)
        peer.send_tcp(Segment(5000 + port, port, 10, 0, Flags.SYN, 64240, Options(mss=1460)))
        syn_ack = tcp_with(peer, Flags.SYN)
        peer.send_tcp(Segment(5000 + port, port, 11, syn_ack.seq + 1, Flags.ACK, 64240))
        conn, _ = s.accept()
        conn.close()  # we close first: FIN
        fin = tcp_with(peer, Flags.FIN)
        peer.send_tcp(Segment(5000 + port, port, 11, fin.seq + 1, Flags.ACK | Flags.FIN, 64240))
        conn.wait_for_state(State.TIME_WAIT, State.CLOSED, timeout=TIMEOUT)
        s.close()
    states = [c.state for c in stack.connections()]
    assert states.count(State.TIME_WAIT) == 2  # the third skipped TIME-WAIT
    assert stack.stats()["time_wait_overflow"] == 1


def test_forged_sources_are_dropped() -> None:
    stack, peer = make_pair()
    try:
        listener = stack.socket()
        listener.bind(("", 80))
        listener.listen()
        peer.send_tcp(syn(1), src_ip=OUR_IP)  # "land": from our own address
        peer.send_tcp(syn(2), src_ip="198.18.0.255")  # the subnet's broadcast address
        peer.send_tcp(syn(3), src_ip="198.19.7.7")  # not on this link
        peer.ping(1)
        assert stack.stats()["drop_bad_source"] == 3
        assert [c.state for c in stack.connections()] == [State.LISTEN]
    finally:
        stack.close()
        peer.link.close()


def test_limits_default_to_linux_like_values() -> None:
    limits = StackConfig()
    assert limits.syn_cookies and limits.challenge_acks_per_second == 1000
    assert TcpConfig().invalid_ack_interval == 0.5
