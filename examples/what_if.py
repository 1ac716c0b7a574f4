"""What if...? Segment hooks make the losses a plain socket cannot ask for, and the
trace shows how TCP (ours and the kernel's) gets over them.

Each case opens a connection to a kernel echo server with one hook in place, sends a
message, reads the echo and closes, printing what happened on the wire:

- lost-data: our first data segment is dropped; the retransmission repairs it.
- lost-final-ack: our ACK of the kernel's FIN is dropped; the kernel in LAST_ACK
  sends its FIN again, and we answer it from TIME_WAIT.
- late-syn-ack: the kernel's SYN-ACK is held back 300 ms; connect() takes that long.

    sudo .venv/bin/python examples/what_if.py [case ...]
"""

from __future__ import annotations

import socket
import sys
import threading
import time

from tcpstack import TcpConfig
from tcpstack.core.state import State
from tcpstack.hooks import DELAY, DROP, Hook, all_of, carries_data, fin_received, is_flags
from tcpstack.lab import Lab
from tcpstack.trace import RetransmitEvent, SegmentEvent, StateEvent, TraceEvent

PORT = 6000
CASES = {
    "lost-data": Hook("out", DROP, where=carries_data, name="drop our first data segment"),
    "lost-final-ack": Hook(
        "out", DROP, where=all_of(is_flags("."), fin_received), name="drop our ACK of the FIN"
    ),
    "late-syn-ack": Hook(
        "in", DELAY, where=is_flags("S."), delay=0.3, name="hold the SYN-ACK 300 ms"
    ),
}


def echo_server(listener: socket.socket, connections: int) -> None:
    for _ in range(connections):
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)


def run_case(lab: Lab, name: str) -> bool:
    hook = CASES[name]
    hook.fired = 0
    start = time.monotonic()

    def show(event: TraceEvent) -> None:
        at = f"{(event.time - start) * 1000:8.1f} ms"
        if isinstance(event, SegmentEvent):
            arrow = "->" if event.direction == "out" else "<-"
            note = f"   [{event.note}]" if event.note else ""
            print(f"  {at}  {arrow} {event.segment.describe()}{note}")
        elif isinstance(event, StateEvent):
            print(f"  {at}     {event.old.name} -> {event.new.name}")
        elif isinstance(event, RetransmitEvent):
            print(f"  {at}     retransmit seq {event.seq} ({event.length} bytes): {event.reason}")

    print(f"what if: {hook.name}")
    with lab.stack(config=TcpConfig(msl=0.3)) as stack:
        stack.add_hook(hook)
        stack.subscribe(show)
        sock = stack.create_connection((lab.peer_address, PORT), timeout=10)
        connected = time.monotonic() - start
        sock.sendall(b"is anybody there?")
        echo = sock.recv(100)
        sock.close()
        sock.wait_for_state(State.TIME_WAIT, timeout=10)
        sock.wait_for_state(State.CLOSED, timeout=10)  # TIME_WAIT: the re-sent FIN lands here
        stack.sync()
        stats = stack.stats()
    print(
        f"  connect() took {connected * 1000:.1f} ms; echo {echo!r}; hook fired {hook.fired}x; "
        f"retransmissions {stats.get('retransmissions', 0)}\n"
    )
    return echo == b"is anybody there?" and hook.fired == 1


def main(names: list[str]) -> int:
    unknown = set(names) - set(CASES)
    if unknown:
        print(f"unknown case(s) {sorted(unknown)}; choose from {list(CASES)}")
        return 2
    names = names or list(CASES)
    with Lab("veth") as lab:
        with lab.in_peer():
            listener = socket.create_server((lab.peer_address, PORT))
        listener.settimeout(10)
        server = threading.Thread(target=echo_server, args=(listener, len(names)), daemon=True)
        server.start()
        results = [run_case(lab, name) for name in names]
        server.join(10)
        listener.close()
    print("PASS" if all(results) else "FAIL")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
