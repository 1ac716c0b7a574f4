"""The differential fuzzer's generator, normalisation and comparison (no lab needed)."""

from __future__ import annotations

import pytest

from tcpstack.testing import fuzz
from tcpstack.testing.fuzz import (
    ALLOWED,
    Call,
    Difference,
    Inject,
    Model,
    Observed,
    Transcript,
    compare,
    explain,
    generate,
)

ESTABLISHED = Model(rcv_nxt=1, snd_nxt=1, window=65535, peer_ack=1, state="ESTABLISHED")


def _observed(
    step: fuzz.Step,
    replies: tuple[str, ...] = (),
    *,
    result: str = "",
    state: str = "ESTABLISHED",
    model: Model = ESTABLISHED,
) -> Observed:
    return Observed(step, model, "", replies, result, state)


def _transcript(device: str, *steps: Observed, end_state: str = "ESTABLISHED") -> Transcript:
    return Transcript(device, 0, list(steps), end_state, "EAGAIN")


def _one(ours: Observed, linux: Observed) -> list[Difference]:
    return compare(_transcript("tcpstack", ours), _transcript("linux", linux))


def test_a_seed_gives_the_same_sequence_every_time_and_seeds_differ() -> None:
    assert generate(7) == generate(7)
    assert len(generate(7, steps=20)) == 20
    assert len({tuple(generate(seed)) for seed in range(20)}) == 20


def test_generated_steps_stay_within_the_vocabulary() -> None:
    steps = [step for seed in range(200) for step in generate(seed)]
    injects = [s for s in steps if isinstance(s, Inject)]
    calls = [s for s in steps if isinstance(s, Call)]
    assert {s.flags for s in injects} == set(fuzz.FLAG_CHOICES)
    assert {s.seq for s in injects} == set(fuzz.SEQ_KINDS)
    assert {s.ack for s in injects if "." in s.flags} == set(fuzz.ACK_KINDS)
    assert {s.length for s in injects} == {0, 1, 300}
    assert {c.verb for c in calls} == set(fuzz.CALLS)
    assert {c.size for c in calls if c.verb == "write"} == {1, 100, 1000}
    # A segment without the ACK bit has no acknowledgment to vary.
    assert {s.ack for s in injects if "." not in s.flags} == {"nxt"}


def test_numbers_are_signed_and_resolved_against_the_device() -> None:
    assert fuzz._signed(5) == 5
    assert fuzz._signed(-1) == -1
    assert fuzz._signed(2**32 - 3) == -3
    model = Model(rcv_nxt=101, snd_nxt=51, window=1000, peer_ack=21, state="ESTABLISHED")
    assert fuzz._seq_offset("edge", model.window) == 1000
    assert fuzz._seq_offset("last", model.window) == 999
    assert fuzz._ack_value("nxt-1", model) == 50
    assert fuzz._ack_value("una", model) == 21
    assert fuzz._ack_value("behind", model) < model.peer_ack - 65535


@pytest.mark.parametrize(
    ("step", "moves"),
    [
        (Inject(".", "nxt", "nxt", 0), True),
        (Inject("P.", "inside", "nxt-1", 1), True),
        (Inject(".", "edge", "nxt", 0), False),  # outside the window: ignored
        (Inject("R.", "nxt", "nxt", 0), False),
        (Inject("S.", "nxt", "nxt", 0), False),
        (Inject(".", "nxt", "ahead", 0), False),  # acknowledges what was never sent
        (Inject(".", "nxt", "una", 0), False),  # a duplicate
        (Inject(".", "nxt-1", "nxt", 0), False),  # a keep-alive, outside
        (Inject("P.", "nxt-1", "nxt", 300), True),  # overlaps RCV.NXT
    ],
)
def test_the_model_follows_snd_una_only_for_an_ack_the_device_takes(
    step: Inject, moves: bool
) -> None:
    model = Model(rcv_nxt=1, snd_nxt=101, window=65535, peer_ack=1, state="ESTABLISHED")
    ack = fuzz._ack_value(step.ack, model)
    assert fuzz._moves_una(step, ack, model) is moves


def test_equal_transcripts_have_no_difference() -> None:
    step = _observed(Inject("P.", "nxt", "nxt", 1), (". 1:1(0) ack 2",))
    assert _one(step, step) == []


def test_each_kind_of_difference_is_found() -> None:
    ours = _observed(Call("write", 1), ("P. 1:2(1) ack 1",), result="1")
    linux = _observed(Call("write", 1), (), result="EAGAIN", state="CLOSED")
    assert [d.what for d in _one(ours, linux)] == ["replies", "result", "state"]
    a = _transcript("tcpstack", end_state="CLOSED")
    b = _transcript("linux", end_state="ESTABLISHED")
    (end,) = compare(a, b)
    assert (end.what, end.index, end.ours_text, end.linux_text) == (
        "end-state",
        -1,
        "CLOSED",
        "ESTABLISHED",
    )


def test_the_comparison_stops_where_the_devices_part() -> None:
    rst = Inject("R", "nxt", "nxt", 0)
    later = _observed(Inject(".", "nxt", "nxt", 0), (". 1:1(0) ack 1",))
    silent = _observed(Inject(".", "nxt", "nxt", 0))
    ours = _transcript("tcpstack", _observed(rst, state="CLOSED"), later)
    linux = _transcript("linux", _observed(rst), silent)
    assert [d.what for d in compare(ours, linux)] == ["state"]
    # Or where their numbers part, after an allowed difference.
    took = Model(rcv_nxt=2, snd_nxt=1, window=65535, peer_ack=1, state="ESTABLISHED")
    data = Inject("P.", "nxt", "nxt-1", 1)
    ours = _transcript(
        "tcpstack",
        _observed(data, (". 1:1(0) ack 2",)),
        _observed(Call("read"), result="1", model=took),
    )
    linux = _transcript(
        "linux", _observed(data, (". 1:1(0) ack 1",)), _observed(Call("read"), result="EAGAIN")
    )
    assert [d.index for d in compare(ours, linux)] == [0]


def test_a_failed_handshake_is_a_difference_only_if_one_device_fails() -> None:
    a, b = _transcript("tcpstack"), _transcript("linux")
    a.error = b.error = "no SYN-ACK"
    assert compare(a, b) == []
    b.error = ""
    assert [d.what for d in compare(a, b)] == ["error"]


def _explained_by(ours: Observed, linux: Observed) -> list[str | None]:
    out = []
    for diff in _one(ours, linux):
        entry = explain(diff)
        out.append(entry.name if entry else None)
    return out


def test_the_right_edge_allowance_covers_pure_acks_at_the_edge_only() -> None:
    edge = Inject("R", "edge", "nxt", 0)
    assert _explained_by(_observed(edge), _observed(edge, (". 1:1(0) ack 1",))) == [
        "linux-right-edge"
    ]
    inside = Inject("R", "inside", "nxt", 0)
    assert _explained_by(_observed(inside), _observed(inside, (". 1:1(0) ack 1",))) == [None]
    data = Inject("P.", "edge", "nxt", 300)
    assert _explained_by(_observed(data), _observed(data, ("R 1:1(0)",))) == [None]


def test_the_no_ack_bit_allowance_is_for_segments_outside_the_window() -> None:
    far = Inject("none", "far", "nxt", 0)
    assert _explained_by(_observed(far, (". 1:1(0) ack 1",)), _observed(far)) == [
        "linux-no-ack-first"
    ]
    inside = Inject("none", "inside", "nxt", 0)
    assert _explained_by(_observed(inside, (". 1:1(0) ack 1",)), _observed(inside)) == [None]


def test_the_old_ack_allowance_needs_linux_to_send_the_challenge_ack() -> None:
    iss = Inject("P.", "nxt", "nxt-1", 1)  # acknowledges the ISS, with no data acked
    ours = _observed(iss, (". 1:1(0) ack 2",), state="ESTABLISHED")
    linux = _observed(iss, (". 1:1(0) ack 1",))
    assert _explained_by(ours, linux) == ["linux-old-ack-challenge"]
    fin = Inject("F.", "nxt", "nxt-1", 0)
    ours = _observed(fin, (". 1:1(0) ack 2",), state="CLOSE_WAIT")
    assert _explained_by(ours, _observed(fin, (". 1:1(0) ack 1",))) == [
        "linux-old-ack-challenge",
        "linux-old-ack-challenge",
    ]
    # Once 100 octets are acknowledged, one before SND.UNA is within Linux's range.
    acked = Model(rcv_nxt=1, snd_nxt=101, window=65535, peer_ack=101, state="ESTABLISHED")
    ours = _observed(iss, (". 101:101(0) ack 2",), model=acked)
    linux = _observed(iss, (". 101:101(0) ack 1",), model=acked)
    assert _explained_by(ours, linux) == [None]


def test_the_after_fin_allowance_is_for_the_states_after_the_peer_s_fin() -> None:
    closing = Model(rcv_nxt=2, snd_nxt=1, window=65535, peer_ack=1, state="CLOSE_WAIT")
    fin = Inject("F.", "nxt+1", "nxt", 0)
    ours = _observed(fin, (". 1:1(0) ack 2",), state="CLOSE_WAIT", model=closing)
    linux = _observed(fin, state="CLOSE_WAIT", model=closing)
    assert _explained_by(ours, linux) == ["linux-silent-after-fin"]
    assert _explained_by(_observed(fin, (". 1:1(0) ack 1",)), _observed(fin)) == [None]


def test_call_results_that_differ_are_unexplained() -> None:
    # The two API differences this fuzzer found (shutdown after a reset, a read
    # after a reset in CLOSE-WAIT) were ours to fix, and no allowance covers them.
    closed = Model(rcv_nxt=2, snd_nxt=1, window=65535, peer_ack=1, state="CLOSED")
    shut = Call("shutdown")
    ours = _observed(shut, result="0", state="CLOSED", model=closed)
    linux = _observed(shut, result="ENOTCONN", state="CLOSED", model=closed)
    assert _explained_by(ours, linux) == [None]
    read = Call("read")
    ours = _observed(read, result="EPIPE", state="CLOSED", model=closed)
    linux = _observed(read, result="EOF", state="CLOSED", model=closed)
    assert _explained_by(ours, linux) == [None]


def test_every_allowance_gives_its_reason_with_a_clause_or_linux_behaviour() -> None:
    names = [entry.name for entry in ALLOWED]
    assert len(names) == len(set(names))
    for entry in ALLOWED:
        assert "RFC" in entry.reason or "Linux" in entry.reason, entry.name
        assert entry.name.startswith("bug-") == entry.bug, entry.name


def test_a_report_prints_both_transcripts_of_an_unexplained_difference() -> None:
    step = Inject(".", "inside", "nxt", 0)
    ours = _transcript("tcpstack", _observed(step, ("R 1:1(0)",)))
    linux = _transcript("linux", _observed(step))
    outcome = fuzz.Outcome(3, ours, linux, compare(ours, linux), 1.0)
    text = "\n".join(fuzz.report(outcome))
    assert text.startswith("DIFF  seed 3")
    assert "UNEXPLAINED" in text and "tcpstack (seed 0)" in text and "linux (seed 0)" in text


def test_the_left_edge_allowance_is_for_one_old_octet_only() -> None:
    old = Inject("R", "nxt-1", "nxt", 1)
    assert _explained_by(_observed(old), _observed(old, (". 1:1(0) ack 1",))) == ["linux-left-edge"]
    overlap = Inject("R", "nxt-1", "nxt", 300)
    assert _explained_by(_observed(overlap), _observed(overlap, (". 1:1(0) ack 1",))) == [None]


def test_the_fast_path_allowance_needs_linux_to_have_taken_the_data() -> None:
    data = Inject("P.", "nxt", "behind", 300)
    ours = _observed(data, (". 1:1(0) ack 1",))
    assert _explained_by(ours, _observed(data, (". 1:1(0) ack 301",))) == [
        "linux-fast-path-old-ack"
    ]
    assert _explained_by(ours, _observed(data, ("R 1:1(0)",))) == [None]


def test_the_time_wait_allowance_covers_acks_and_challenge_acks_there() -> None:
    tw = Model(rcv_nxt=2, snd_nxt=2, window=65535, peer_ack=2, state="TIME_WAIT")
    data = Inject("P.", "inside", "nxt", 300)
    ours = _observed(data, state="TIME_WAIT", model=tw)
    linux = _observed(data, (". 2:2(0) ack 2",), state="TIME_WAIT", model=tw)
    assert _explained_by(ours, linux) == ["linux-time-wait"]
    rst = Inject("R", "inside", "nxt", 0)
    ours = _observed(rst, (". 2:2(0) ack 2",), state="TIME_WAIT", model=tw)
    linux = _observed(rst, state="TIME_WAIT", model=tw)
    assert _explained_by(ours, linux) == ["linux-time-wait"]
    # Not in ESTABLISHED.
    assert _explained_by(_observed(data), _observed(data, (". 1:1(0) ack 1",))) == [None]


def test_a_new_connection_on_the_four_tuple_is_numbered_from_its_own_isns() -> None:
    from types import SimpleNamespace

    from tcpstack.core.segment import Flags, Segment

    conn = SimpleNamespace(dut_isn=1000, peer_isn=5000)
    driver = fuzz._Driver(SimpleNamespace(conn=conn))  # type: ignore[arg-type]
    ack = Segment(8080, 40000, seq=1001, ack=5101, flags=Flags.ACK, window=100)
    assert driver.see(ack) == ". 1:1(0) ack 101"
    assert (driver.rcv_nxt, driver.snd_nxt) == (101, 1)
    syn = Segment(8080, 40000, seq=77, ack=9001, flags=Flags.SYN | Flags.ACK, window=100)
    assert driver.see(syn) == "S. 0:0(0) ack 1"
    assert (conn.dut_isn, conn.peer_isn) == (77, 9000)
    assert (driver.rcv_nxt, driver.snd_nxt, driver.peer_ack) == (1, 1, 0)
    # A retransmitted SYN-ACK of the same connection changes nothing.
    assert driver.see(syn) == "S. 0:0(0) ack 1"
    assert conn.dut_isn == 77


def test_syn_received_and_rst_before_fin_allowances() -> None:
    syn_rcvd = Model(rcv_nxt=1, snd_nxt=1, window=65535, peer_ack=0, state="SYN_RECEIVED")
    far = Inject("F.", "far", "una", 300)
    ours = _observed(far, (". 1:1(0) ack 1",), state="SYN_RECEIVED", model=syn_rcvd)
    linux = _observed(far, ("R 0:0(0)",), state="SYN_RECEIVED", model=syn_rcvd)
    assert _explained_by(ours, linux) == ["linux-syn-received-ack-first"]
    close_wait = Model(rcv_nxt=3, snd_nxt=1, window=65535, peer_ack=1, state="CLOSE_WAIT")
    rst = Inject("R.", "nxt-1", "nxt", 0)
    ours = _observed(rst, state="CLOSE_WAIT", model=close_wait)
    linux = _observed(rst, state="CLOSED", model=close_wait)
    assert _explained_by(ours, linux) == ["linux-rst-before-fin"]
    established = Model(rcv_nxt=3, snd_nxt=1, window=65535, peer_ack=1, state="ESTABLISHED")
    ours = _observed(rst, model=established)
    linux = _observed(rst, state="CLOSED", model=established)
    assert _explained_by(ours, linux) == [None]


def test_a_fin_taken_past_data_queued_beyond_it_is_unexplained() -> None:
    # The bug this fuzzer found (now fixed): a FIN below queued data acknowledged
    # at the end of the queue.
    model = Model(rcv_nxt=1, snd_nxt=1001, window=65535, peer_ack=1001, state="ESTABLISHED")
    fin = Inject("F.", "nxt", "nxt", 1)
    ours = _observed(fin, (". 1001:1001(0) ack 303",), state="CLOSE_WAIT", model=model)
    linux = _observed(fin, (". 1001:1001(0) ack 3",), state="CLOSE_WAIT", model=model)
    assert _explained_by(ours, linux) == [None]
    # Where both take the FIN where it is, there is nothing to explain.
    assert _one(linux, linux) == []


def test_a_segment_linux_drops_for_its_old_ack_ends_the_comparison() -> None:
    # Data under an ACK of the ISS: the replies look alike (we ACK out-of-order
    # data, Linux sends a challenge ACK), but Linux dropped the data.
    ooo = Inject(".", "nxt+1", "nxt-1", 300)
    same = _observed(ooo, (". 1:1(0) ack 1",))
    read = Call("read")
    ours = _transcript("tcpstack", same, _observed(read, result="301"))
    linux = _transcript("linux", same, _observed(read, result="1"))
    assert compare(ours, linux) == []
    # An ACK of the same at RCV.NXT changes nothing hidden: the comparison goes on.
    plain = _observed(Inject(".", "nxt", "nxt-1", 0))
    ours = _transcript("tcpstack", plain, _observed(read, result="301"))
    linux = _transcript("linux", plain, _observed(read, result="1"))
    assert [d.what for d in compare(ours, linux)] == ["result"]


def test_a_report_tells_a_known_bug_from_an_allowed_difference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def shutdown_result(d: fuzz.Difference) -> bool:
        return d.what == "result" and d.ours_text == "0" and d.linux_text == "ENOTCONN"

    known = fuzz.Allowance("bug-shutdown-after-reset", shutdown_result, "BUG: an example")
    monkeypatch.setattr(fuzz, "ALLOWED", [*fuzz.ALLOWED, known])
    shut = Call("shutdown")
    ours = _transcript("tcpstack", _observed(shut, result="0", state="CLOSED"))
    linux = _transcript("linux", _observed(shut, result="ENOTCONN", state="CLOSED"))
    outcome = fuzz.Outcome(5, ours, linux, compare(ours, linux), 1.0)
    assert not outcome.unexplained and len(outcome.known_bugs) == 1
    lines = list(fuzz.report(outcome))
    assert lines[0].startswith("same  seed 5")
    assert "known bug (bug-shutdown-after-reset)" in lines[1]


def test_a_syn_ack_sent_again_by_its_timer_is_allowed_and_nothing_else() -> None:
    syn_rcvd = Model(rcv_nxt=1, snd_nxt=1, window=65535, peer_ack=0, state="SYN_RECEIVED")
    data = Inject("P.", "nxt", "una", 1)
    ours = _observed(data, ("R 0:0(0)",), state="SYN_RECEIVED", model=syn_rcvd)
    linux = _observed(data, ("R 0:0(0)", "S. 0:0(0) ack 1"), state="SYN_RECEIVED", model=syn_rcvd)
    assert _explained_by(ours, linux) == ["timer-syn-ack-retransmission"]
    linux = _observed(data, ("S. 0:0(0) ack 1",), state="SYN_RECEIVED", model=syn_rcvd)
    assert _explained_by(ours, linux) == [None]
