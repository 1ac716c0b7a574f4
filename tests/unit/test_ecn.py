"""Explicit Congestion Notification (RFC 3168; SHLD-8 of RFC 9293 §3.8.2)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tcpstack import State, TcpConfig
from tcpstack.core.connection import TcpConnection
from tcpstack.core.segment import CE, ECT_0, NOT_ECT, Flags, Segment
from tests.unit.helpers import FULL, ISS, LOCAL_PORT, REMOTE_ISS, REMOTE_PORT, Driver, peer

MSS = 1000
PLAIN = replace(FULL, sack=False, timestamps=False, window_scaling=False, receive_buffer=65535)
R1 = REMOTE_ISS + 1
ECN_SETUP = Flags.ECE | Flags.CWR


def _active(ecn: str, syn_ack: str) -> tuple[Driver, Segment]:
    conn = TcpConnection(replace(PLAIN, ecn=ecn), LOCAL_PORT, REMOTE_PORT, iss=ISS, name="t")
    d = Driver(conn, local_iss=ISS)
    conn.open_active(0.0)
    (syn,) = d.flush()
    d.push(peer(syn_ack, REMOTE_ISS, ISS + 1, mss=MSS), at=0.01)
    assert conn.state is State.ESTABLISHED
    return d, syn


def _passive(ecn: str, syn: str) -> tuple[Driver, Segment]:
    conn = TcpConnection(replace(PLAIN, ecn=ecn), LOCAL_PORT, 0, iss=ISS, name="t")
    d = Driver(conn, local_iss=ISS)
    conn.open_passive()
    (syn_ack,) = d.push(peer(syn, REMOTE_ISS, mss=MSS))
    d.push(peer(".", R1, ISS + 1), at=0.01)
    assert conn.state is State.ESTABLISHED
    return d, syn_ack


def _ecn_connection() -> Driver:
    d, _ = _active("on", "SE.")
    assert d.conn.ecn_ok
    return d


@pytest.mark.parametrize(
    ("ecn", "syn", "answer", "in_use"),
    [
        ("accept", "SEW", Flags.SYN | Flags.ACK | Flags.ECE, True),
        ("on", "SEW", Flags.SYN | Flags.ACK | Flags.ECE, True),
        ("off", "SEW", Flags.SYN | Flags.ACK, False),
        ("accept", "SE", Flags.SYN | Flags.ACK, False),  # not an ECN-setup SYN
        ("accept", "S", Flags.SYN | Flags.ACK, False),
    ],
)
def test_a_listener_answers_an_ecn_setup_syn_with_ece(
    ecn: str, syn: str, answer: Flags, in_use: bool
) -> None:
    d, syn_ack = _passive(ecn, syn)
    assert syn_ack.flags == answer and syn_ack.ecn == NOT_ECT
    assert d.conn.ecn_ok is in_use


@pytest.mark.parametrize(
    ("ecn", "syn_ack", "syn_flags", "in_use"),
    [
        ("on", "SE.", Flags.SYN | ECN_SETUP, True),
        ("on", "S.", Flags.SYN | ECN_SETUP, False),
        ("on", "SEW.", Flags.SYN | ECN_SETUP, False),  # not an ECN-setup SYN-ACK
        ("accept", "SE.", Flags.SYN, False),  # we never asked
    ],
)
def test_an_active_open_asks_only_when_on_and_takes_only_an_ecn_setup_syn_ack(
    ecn: str, syn_ack: str, syn_flags: Flags, in_use: bool
) -> None:
    d, syn = _active(ecn, syn_ack)
    assert syn.flags == syn_flags and syn.ecn == NOT_ECT
    assert d.conn.ecn_ok is in_use


def test_a_syn_sent_again_drops_the_ecn_setup_bits() -> None:
    conn = TcpConnection(replace(PLAIN, ecn="on"), LOCAL_PORT, REMOTE_PORT, iss=ISS, name="t")
    d = Driver(conn, local_iss=ISS)
    conn.open_active(0.0)
    (first,) = d.flush()
    (again,) = d.fire_timer()
    assert first.flags == Flags.SYN | ECN_SETUP and again.flags == Flags.SYN
    d.push(peer("SE.", REMOTE_ISS, ISS + 1, mss=MSS), at=d.now + 0.01)
    assert conn.state is State.ESTABLISHED and not conn.ecn_ok


def test_only_new_data_is_ect_not_acks_retransmissions_or_probes() -> None:
    d = _ecn_connection()
    d.conn.send(b"x" * 3000)
    sent = d.flush()
    assert [s.ecn for s in sent] == [ECT_0] * 3
    (again,) = d.fire_timer()  # the RTO resends the first segment
    assert again.payload and again.ecn == NOT_ECT
    acks = d.push(peer(".", R1, ISS + 1, data=b"y" * 10), at=d.now + 0.01)
    assert acks and all(s.ecn == NOT_ECT for s in acks if not s.payload)
    # A zero window: the one-byte probe is not ECN-capable either.
    d.push(peer(".", R1 + 10, ISS + 3001, win=0), at=d.now + 0.01)
    d.conn.send(b"z")
    d.flush()
    (probe,) = d.fire_timer()
    assert len(probe.payload) == 1 and probe.ecn == NOT_ECT


def test_congestion_experienced_is_echoed_at_once_until_the_senders_cwr() -> None:
    d = _ecn_connection()
    (ack,) = d.push(replace(peer(".", R1, ISS + 1, data=b"a" * 100), ecn=CE), at=0.02)
    assert ack.flags & Flags.ECE and ack.ack == R1 + 100  # at once, not delayed
    (ack,) = d.push(replace(peer(".", R1 + 100, ISS + 1, data=b"b" * 100), ecn=ECT_0), at=0.03)
    assert ack.flags & Flags.ECE  # still echoed
    cwr = replace(peer("W.", R1 + 200, ISS + 1, data=b"c" * 100), ecn=ECT_0)
    (ack,) = d.push(cwr, at=0.04)
    assert not ack.flags & Flags.ECE
    assert d.conn.stats["ce_received"] == 1


def test_ece_halves_cwnd_once_per_window_and_the_next_new_data_carries_cwr() -> None:
    d = _ecn_connection()
    d.conn.send(b"x" * 30 * MSS)
    first = d.flush()  # IW10
    assert len(first) == 10
    cwnd = d.conn.cc.cwnd
    # The first ACK echoes a mark: cwnd halves.
    d.push(peer("E.", R1, ISS + 1 + MSS), at=0.05)
    assert d.conn.cc.cwnd < cwnd and d.conn.stats["ecn_reductions"] == 1
    reduced = d.conn.cc.cwnd
    # Echoes for data sent before the reduction change nothing more.
    d.push(peer("E.", R1, ISS + 1 + 2 * MSS), at=0.06)
    assert d.conn.cc.cwnd >= reduced and d.conn.stats["ecn_reductions"] == 1
    # The first new data the smaller window lets out says CWR, and only it.
    sent = d.push(peer(".", R1, ISS + 1 + 7 * MSS), at=0.07)
    assert sent and sent[0].flags & Flags.CWR and sent[0].ecn == ECT_0
    assert not any(s.flags & Flags.CWR for s in sent[1:])
    # Once everything sent before the reduction is acknowledged, an echo counts again.
    d.push(peer(".", R1, ISS + 1 + 10 * MSS), at=0.08)
    d.push(peer("E.", R1, ISS + 1 + 11 * MSS), at=0.09)
    assert d.conn.stats["ecn_reductions"] == 2


def test_without_ecn_marks_and_echoes_are_ignored() -> None:
    d, _ = _active("accept", "S.")
    assert not d.conn.ecn_ok
    (ack,) = d.push(replace(peer(".", R1, ISS + 1, data=b"a" * 100), ecn=CE), at=0.02)
    assert not ack.flags & Flags.ECE
    d.conn.send(b"x" * 5 * MSS)
    sent = d.flush()
    assert all(s.ecn == NOT_ECT for s in sent)
    cwnd = d.conn.cc.cwnd
    d.push(peer("E.", R1 + 100, ISS + 1 + MSS), at=0.03)
    assert d.conn.cc.cwnd >= cwnd and not d.conn.stats["ecn_reductions"]


def test_the_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="ecn"):
        TcpConfig(ecn="maybe")
    assert TcpConfig().ecn == "accept"  # as Linux's tcp_ecn = 2
