"""Memory held per half-open and per established connection, measured with tracemalloc.

The engine is driven directly, without its thread, by frames built with the wire
codec: a peer's ARP reply, then SYNs from distinct ports (half-open connections),
then the ACKs that complete them (established, idle, empty buffers), then a flood
beyond the half-open limit (SYN cookies: no state at all).
"""

from __future__ import annotations

import gc
import tracemalloc
from dataclasses import dataclass

from tcpstack import wire
from tcpstack.config import StackConfig, TcpConfig
from tcpstack.core.segment import Flags, Options, Segment
from tcpstack.engine import Engine
from tcpstack.link import MemoryLink

_OUR_MAC = bytes.fromhex("020000000002")
_PEER_MAC = bytes.fromhex("020000000001")
_OUR_IP = "198.18.0.2"
_PEER_IP = "198.18.0.1"


@dataclass(frozen=True)
class MemoryReport:
    connections: int
    half_open_bytes: float  # per half-open connection (SYN-RECEIVED)
    established_bytes: float  # per established, idle connection
    cookie_bytes: float  # per SYN answered with a cookie once the queue is full

    def lines(self) -> list[str]:
        return [
            f"memory per half-open connection:   {self.half_open_bytes:8.0f} bytes",
            f"memory per established connection: {self.established_bytes:8.0f} bytes (idle)",
            f"memory per SYN under a flood:      {self.cookie_bytes:8.0f} bytes (SYN cookies)",
        ]


def measure(connections: int = 200) -> MemoryReport:
    ours, theirs = MemoryLink.pair()
    engine = Engine(
        ours,
        address=f"{_OUR_IP}/24",
        mac=_OUR_MAC,
        config=TcpConfig(),
        limits=StackConfig(max_half_open=connections),
    )
    now = 1.0
    try:
        with engine.lock:
            listener = engine.add_listener(80, backlog=3 * connections)
            arp = wire.encode_arp(_PEER_MAC, _OUR_MAC, 2, _PEER_MAC, _PEER_IP, _OUR_MAC, _OUR_IP)
            engine._on_frame(arp, False, now)

            def feed(segment: Segment) -> None:
                frame = wire.encode_tcp(_PEER_MAC, _OUR_MAC, _PEER_IP, _OUR_IP, segment)
                engine._on_frame(frame, False, now)
                engine._drain_tx()  # the lock stays held here, so send the replies now
                theirs.recv_batch(64)  # keep the link's queue from filling

            def used() -> int:
                gc.collect()
                return tracemalloc.get_traced_memory()[0]

            tracemalloc.start()
            try:
                base = used()
                for i in range(connections):
                    feed(Segment(10000 + i, 80, 1000, 0, Flags.SYN, 64240, Options(mss=1460)))
                half_open = used()
                for i in range(connections):
                    flow = engine.flows[(_PEER_IP, 10000 + i, 80)]
                    feed(Segment(10000 + i, 80, 1001, flow.conn.iss + 1, Flags.ACK, 64240))
                established = used()
                for i in range(connections):  # the half-open queue is empty again; refill it
                    feed(Segment(30000 + i, 80, 1000, 0, Flags.SYN, 64240, Options(mss=1460)))
                full = used()
                for i in range(connections):
                    feed(Segment(50000 + i, 80, 1000, 0, Flags.SYN, 64240, Options(mss=1460)))
                flooded = used()
            finally:
                tracemalloc.stop()
            assert len(listener.accept_queue) == connections
            assert engine.stats["syn_cookies_sent"] == connections
    finally:
        ours.close()
        theirs.close()
    return MemoryReport(
        connections=connections,
        half_open_bytes=(half_open - base) / connections,
        established_bytes=(established - base) / connections,
        cookie_bytes=(flooded - full) / connections,
    )
