"""ICMP errors (RFC 9293 §3.9.2.2, RFC 5927) and the user timeout (§3.8.3), with a
fake clock: what a connection makes of each."""

from __future__ import annotations

import errno

import pytest

from tcpstack.core.events import ConnectionTimedOut, ConnectionUnreachable, SoftError
from tcpstack.core.state import State
from tests.unit.helpers import Driver, established, seg, syn_sent

UNREACHABLE, SOURCE_QUENCH, TIME_EXCEEDED = 3, 4, 11


def icmp(d: Driver, icmp_type: int, code: int, quoted_seq: int) -> None:
    d.conn.handle_icmp_error(icmp_type, code, quoted_seq, d.now)
    d.flush()


def test_port_unreachable_ends_an_opening_connection() -> None:
    d = syn_sent()
    icmp(d, UNREACHABLE, 3, d.l(0))
    assert d.conn.state is State.CLOSED
    assert ConnectionUnreachable(errno.ECONNREFUSED) in d.events
    assert d.conn.get_timer() is None


@pytest.mark.parametrize("code", [0, 1, 5])
def test_soft_unreachable_codes_never_abort(code: int) -> None:
    # MUST-56: codes 0, 1 and 5 are soft; the SYN keeps being retransmitted.
    d = syn_sent()
    icmp(d, UNREACHABLE, code, d.l(0))
    assert d.conn.state is State.SYN_SENT
    assert [e for e in d.events if isinstance(e, SoftError)]
    assert d.conn.soft_error != 0
    assert [s.syn for s in d.fire_timer()] == [True]


def test_a_hard_error_in_a_synchronized_state_is_taken_as_soft() -> None:
    # RFC 5927 §7.2: otherwise a forged port unreachable resets a connection.
    d = established()
    d.conn.send(b"payload")
    d.flush()
    icmp(d, UNREACHABLE, 3, d.l(1))
    assert d.conn.state is State.ESTABLISHED
    assert SoftError(errno.ECONNREFUSED) in d.events
    icmp(d, TIME_EXCEEDED, 0, d.l(1))
    assert d.conn.soft_error == errno.EHOSTUNREACH


def test_an_error_quoting_data_not_in_flight_is_ignored() -> None:
    d = established()
    d.conn.send(b"payload")
    d.flush()
    for quoted in (d.l(0), d.l(9), d.l(100_000)):  # before SND.UNA, after SND.NXT
        icmp(d, UNREACHABLE, 1, quoted)
    assert d.conn.stats["drop_icmp_out_of_window"] == 3
    assert not [e for e in d.events if isinstance(e, SoftError)]


def test_source_quench_is_ignored() -> None:
    # MUST-55 (RFC 6633): no event, no soft error, no change to what is sent.
    d = established()
    d.conn.send(b"x" * 3000)
    before = d.conn.cc.cwnd
    d.flush()
    icmp(d, SOURCE_QUENCH, 0, d.l(1))
    assert d.conn.soft_error == 0 and d.conn.cc.cwnd == before
    assert d.conn.stats["icmp_ignored"] == 1


def test_the_user_timeout_ends_a_connection_before_r2() -> None:
    d = established()
    d.conn.user_timeout = 1.0
    d.conn.send(b"unanswered")
    started = d.now
    d.flush()
    for _ in range(d.conn.config.max_retries):
        d.fire_timer()
        if d.conn.state is State.CLOSED:
            break
    assert d.conn.state is State.CLOSED
    assert ConnectionTimedOut() in d.events
    # On time, not at the next backed-off retransmission.
    assert d.now == pytest.approx(started + 1.0)


def test_the_user_timeout_counts_from_the_last_progress() -> None:
    d = established()
    d.conn.user_timeout = 1.0
    for n in range(5):
        # Each write is acknowledged after most of the timeout: never given up.
        d.conn.send(b"z" * 10)
        d.flush()
        d.advance(d.now + 0.9)
        d.push(seg(".", d.r(1), d.l(1 + 10 * (n + 1))), at=d.now)
    assert d.conn.state is State.ESTABLISHED
