"""Every edge of the RFC 9293 state diagram, each driven by its own segment sequence.

The scenarios below are named after the edge they take. The last test checks that
together they cover ALLOWED_TRANSITIONS exactly: an edge the core can take but no
scenario drives, or a scenario that takes an edge outside the table, fails.
"""

from collections.abc import Callable
from dataclasses import replace

import pytest

from tcpstack.core.state import ALLOWED_TRANSITIONS, State
from tests.unit.helpers import (
    CONFIG,
    Driver,
    close_wait,
    closing,
    established,
    established_passive,
    fin_wait_1,
    fin_wait_2,
    last_ack,
    listen,
    seg,
    syn_received,
    syn_sent,
    time_wait,
)


def closed_to_listen() -> Driver:
    return listen()


def listen_to_closed() -> Driver:
    d = listen()
    d.conn.shutdown(d.now)
    d.flush()
    return d


def syn_sent_to_closed_by_rst() -> Driver:
    d = syn_sent()
    d.push(seg("R.", 0, d.l(1)))
    return d


def syn_sent_to_syn_received() -> Driver:
    d = syn_sent()
    d.push(seg("S", d.r(0)))
    return d


def syn_received_to_closed_active_rst() -> Driver:
    d = syn_sent_to_syn_received()
    d.push(seg("R", d.r(1)))
    return d


def syn_received_to_fin_wait_1() -> Driver:
    d = syn_received()
    d.conn.shutdown(d.now)
    d.flush()
    return d


def syn_received_to_listen() -> Driver:
    d = syn_received()
    d.push(seg("R", d.r(1)))
    return d


def established_to_closed_by_rst() -> Driver:
    d = established()
    d.push(seg("R", d.r(1)))
    return d


def fin_wait_1_to_closed_by_rst() -> Driver:
    d = fin_wait_1()
    d.push(seg("R", d.r(1)))
    return d


def fin_wait_2_to_closed_by_rst() -> Driver:
    d = fin_wait_2()
    d.push(seg("R", d.r(1)))
    return d


def close_wait_to_closed_by_rst() -> Driver:
    d = close_wait()
    d.push(seg("R", d.r(2)))
    return d


def closing_to_closed_by_rst() -> Driver:
    d = closing()
    d.push(seg("R", d.r(2)))
    return d


def closing_to_time_wait() -> Driver:
    d = closing()
    d.push(seg(".", d.r(2), d.l(2)))
    return d


def last_ack_to_closed() -> Driver:
    d = last_ack()
    d.push(seg(".", d.r(2), d.l(2)))
    return d


def time_wait_to_closed() -> Driver:
    d = time_wait()
    d.advance(d.now + 10)
    return d


def syn_received_to_closed_by_timeout() -> Driver:
    d = syn_received(config=replace(CONFIG, synack_retries=0))
    d.fire_timer()
    return d


SCENARIOS: list[Callable[[], Driver]] = [
    closed_to_listen,
    listen_to_closed,
    syn_sent,
    syn_received,
    established,
    established_passive,
    syn_sent_to_closed_by_rst,
    syn_sent_to_syn_received,
    syn_received_to_closed_active_rst,
    syn_received_to_fin_wait_1,
    syn_received_to_listen,
    syn_received_to_closed_by_timeout,
    established_to_closed_by_rst,
    fin_wait_1,
    fin_wait_2,
    fin_wait_1_to_closed_by_rst,
    fin_wait_2_to_closed_by_rst,
    close_wait,
    close_wait_to_closed_by_rst,
    closing,
    closing_to_closed_by_rst,
    closing_to_time_wait,
    last_ack,
    last_ack_to_closed,
    time_wait,
    time_wait_to_closed,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
def test_scenario_stays_on_the_diagram(scenario: Callable[[], Driver]) -> None:
    for old, new in scenario().transitions():
        assert (old, new) in ALLOWED_TRANSITIONS, f"{old.name} -> {new.name}"


def test_scenarios_cover_every_edge_of_the_diagram() -> None:
    seen: set[tuple[State, State]] = set()
    for scenario in SCENARIOS:
        seen.update(scenario().transitions())
    missing = ALLOWED_TRANSITIONS - seen
    assert not missing, sorted(f"{a.name} -> {b.name}" for a, b in missing)
    assert len({s for edge in seen for s in edge}) == 11  # all eleven states visited
