"""The whole engine, fed hostile frames and a fake clock: nothing escapes, invariants hold.

The engine runs without its thread: frames go straight into its receive path and
time moves only when the test says. After every input the invariants are checked:
every connection is in one of the eleven states, SND.UNA <= SND.NXT (modulo 2**32),
the retransmission queue matches the sequence space, buffers stay within their
bounds, tables stay bounded, and no core raised (internal_errors stays 0).

A longer run: TCPSTACK_FUZZ_EXAMPLES=20000 scripts/fuzz
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpstack import wire
from tcpstack.config import StackConfig, TcpConfig
from tcpstack.core import seq
from tcpstack.core.segment import Flags, Options, Segment
from tcpstack.core.state import State
from tcpstack.engine import Engine
from tcpstack.link import MemoryLink

OUR_MAC = bytes.fromhex("020000000002")
PEER_MAC = bytes.fromhex("020000000001")
OUR_IP = "198.18.0.2"
PEER_IP = "198.18.0.1"
LISTEN_PORT = 80
CORPUS = json.loads((Path(__file__).parent.parent / "corpus" / "malformed.json").read_text())
EXAMPLES = int(os.environ.get("TCPSTACK_FUZZ_EXAMPLES", "150"))


class Rig:
    """An engine with a listener, a connection of its own, and a fake clock."""

    def __init__(self) -> None:
        self.ours, self.theirs = MemoryLink.pair()
        self.now = 1.0
        self.config = TcpConfig(msl=0.5, receive_buffer=64 << 10, send_buffer=64 << 10)
        self.engine = Engine(
            self.ours,
            address=f"{OUR_IP}/24",
            mac=OUR_MAC,
            config=self.config,
            limits=StackConfig(max_half_open=8, max_time_wait=8),
            clock=lambda: self.now,
        )
        with self.engine.lock:
            self.engine.add_listener(LISTEN_PORT, backlog=8)
            self.frame(wire.encode_arp(PEER_MAC, OUR_MAC, 2, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP))
            flow = self.engine.new_flow(PEER_IP, 9000, 50000)
            flow.conn.open_active(self.now)
            self.engine.pump(flow, self.now)

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()

    def frame(self, data: bytes) -> None:
        with self.engine.lock:
            self.engine._on_frame(data, False, self.now)
        self._drain()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        with self.engine.lock:
            self.engine._run_timers(self.now)
        self._drain()

    def app(self, op: str, which: int) -> None:
        with self.engine.lock:
            flows = list(self.engine.flows.values())
            if not flows:
                return
            flow = flows[which % len(flows)]
            conn = flow.conn
            if op == "send" and conn.state.can_send and not conn.eof:
                try:
                    conn.send(b"d" * 3000)
                except Exception as exc:  # only misuse of the API may raise
                    assert type(exc).__name__ == "InvalidStateError"
            elif op == "read":
                conn.receive(5000)
            elif op == "close":
                conn.orphan(self.now)
            elif op == "abort":
                conn.abort(self.now)
            self.engine.pump(flow, self.now)
        self._drain()

    def _drain(self) -> None:
        while self.theirs.recv_batch(64):
            pass

    def segment_frame(self, seg: Segment) -> bytes:
        return wire.encode_tcp(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, seg)

    def check(self) -> None:
        engine = self.engine
        assert engine.stats["internal_errors"] == 0
        assert len(engine.flows) <= 64
        for flow in engine.flows.values():
            c = flow.conn
            assert isinstance(c.state, State)
            assert seq.le(c.snd_una, c.snd_nxt)
            if c.state.is_synchronized and seq.gt(c.snd_una, c.iss):
                assert c._rtxq.outstanding == seq.sub(c.snd_nxt, c.snd_una)
            assert 0 <= c._rtxq.sacked_bytes <= c._rtxq.outstanding
            assert 0 <= c._rtxq.lost_bytes <= c._rtxq.outstanding
            slack = 1 << c.rcv_wscale  # the advertised window is rounded up
            assert c.readable + c._ooo.held_bytes <= c.config.receive_buffer + slack
            assert c.send_space >= 0 and c.in_flight >= 0 and c.unsent >= 0
        for listener in engine.listeners.values():
            assert len(listener.half_open) <= engine.limits.max_half_open
            assert len(listener.accept_queue) <= listener.backlog


@st.composite
def segments(draw: st.DrawFn, rig: Rig) -> Segment:
    """TCP segments aimed near the live connections' sequence numbers."""
    with rig.engine.lock:
        conns = [f.conn for f in rig.engine.flows.values()]
    ports = [(9000, 50000), (40000 + draw(st.integers(0, 3)), LISTEN_PORT)]
    ports += [(c.remote_port, c.local_port) for c in conns if c.remote_port]
    src, dst = draw(st.sampled_from(ports))
    bases = [0, 1000, 0xFFFF_FFF0] + [c.rcv_nxt for c in conns] + [c.irs for c in conns]
    ack_bases = [0] + [c.snd_nxt for c in conns] + [c.snd_una for c in conns]
    flags = Flags(0)
    for bit in draw(st.sets(st.sampled_from(list(Flags)))):
        flags |= bit
    sq = seq.add(draw(st.sampled_from(bases)), draw(st.integers(-2000, 70_000)))
    ack = seq.add(draw(st.sampled_from(ack_bases)), draw(st.integers(-2000, 2000)))
    options = Options(
        mss=draw(st.none() | st.integers(0, 0xFFFF)),
        wscale=draw(st.none() | st.integers(0, 20)),
        sack_permitted=draw(st.booleans()),
        timestamps=draw(
            st.none() | st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
        ),
        sack_blocks=tuple(
            (seq.add(ack, a), seq.add(ack, a + b))
            for a, b in draw(
                st.lists(st.tuples(st.integers(-3000, 3000), st.integers(0, 3000)), max_size=3)
            )
        ),
    )
    if options.encoded_length() > 40:
        options = Options(mss=options.mss)
    payload = draw(st.sampled_from([b"", b"x", b"y" * 700, b"z" * 1448]))
    window = draw(st.sampled_from([0, 1, 100, 65535]))
    return Segment(src, dst, sq, ack, flags, window, options, payload, draw(st.integers(0, 0xFFFF)))


@st.composite
def actions(draw: st.DrawFn, rig: Rig) -> tuple[str, object]:
    kind = draw(
        st.sampled_from(
            ["segment"] * 6 + ["mutated"] * 2 + ["random", "corpus", "time", "time", "app"]
        )
    )
    if kind == "segment":
        return ("frame", rig.segment_frame(draw(segments(rig))))
    if kind == "mutated":
        frame = bytearray(rig.segment_frame(draw(segments(rig))))
        for _ in range(draw(st.integers(1, 4))):
            frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
        return ("frame", bytes(frame))
    if kind == "random":
        return ("frame", draw(st.binary(min_size=0, max_size=200)))
    if kind == "corpus":
        return ("frame", bytes.fromhex(draw(st.sampled_from(CORPUS))["hex"]))
    if kind == "time":
        return ("time", draw(st.sampled_from([0.001, 0.05, 0.25, 1.0, 5.0])))
    return (
        "app",
        (draw(st.sampled_from(["send", "read", "close", "abort"])), draw(st.integers(0, 9))),
    )


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_engine_survives_any_sequence_of_frames_and_timers(data: st.DataObject) -> None:
    rig = Rig()
    try:
        for _ in range(data.draw(st.integers(1, 40))):
            what, arg = data.draw(actions(rig))
            if what == "frame":
                rig.frame(arg)  # type: ignore[arg-type]
            elif what == "time":
                rig.advance(arg)  # type: ignore[arg-type]
            else:
                op, which = arg  # type: ignore[misc]
                rig.app(op, which)
            rig.check()
    finally:
        rig.close()


@pytest.mark.parametrize("entry", CORPUS, ids=[e["name"] for e in CORPUS])
def test_corpus_frame_is_counted_and_harmless(entry: dict[str, str]) -> None:
    rig = Rig()
    try:
        frame = bytes.fromhex(entry["hex"])
        kind, counter = entry["expect"].split(":")
        name = f"drop_{counter}" if kind == "drop" else counter
        before = rig.engine.totals().get(name, 0)
        rig.frame(frame)
        rig.advance(1.0)
        rig.check()
        assert rig.engine.totals().get(name, 0) > before, f"{name} not counted"
        if kind == "drop":
            with pytest.raises(wire.DecodeError) as refused:
                wire.decode_frame(frame)
            assert refused.value.reason == counter
    finally:
        rig.close()
