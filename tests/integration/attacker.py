"""An off-path attacker in the kernel's namespace: a raw socket on the kernel's lab
interface that spoofs the kernel's side of a live connection, floods SYNs from
addresses that do not exist, and replays malformed frames, while sniffing the
connection to aim some of its shots inside our window.

It runs as its own process (AttackProcess starts it inside the lab's peer
namespace), so that it fires at full speed instead of sharing the test's GIL with
the stack, and prints a JSON count of what it sent when it ends.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from pyroute2 import IPRoute

from tcpstack import wire
from tcpstack.core import seq
from tcpstack.core.segment import Flags, Options, Segment
from tcpstack.lab import Lab

ROOT = Path(__file__).resolve().parent.parent.parent
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
CORPUS = json.loads((Path(__file__).parent.parent / "corpus" / "malformed.json").read_text())
# Blind shots stay this far from the live sequence numbers: a blind attacker who
# lands in the window by luck (a 1-in-4096 chance for a 1 MB window) is RFC 5961's
# accepted risk, not something a deterministic test should roll dice on.
CLEAR = 64 << 20


class Attacker:
    def __init__(self, interface: str, peer_ip: str, our_mac: bytes, our_ip: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        with IPRoute() as ipr:
            (link,) = ipr.link("get", ifname=interface)
        self.sock.bind((interface, 0))
        self.peer_mac = wire.parse_mac(str(link.get("IFLA_ADDRESS")))
        self.peer_ip = peer_ip
        self.our_mac = our_mac
        self.our_ip = our_ip
        self.rng = random.Random(2024)
        self.sent: dict[str, float] = {}
        self.kernel_seq: int | None = None  # start of the kernel's latest data segment to us
        self._stop = threading.Event()

    def send(self, kind: str, frame: bytes) -> None:
        try:
            self.sock.send(frame)
        except OSError:
            # The kernel refuses some frames outright (shorter than an Ethernet
            # header): they cannot reach us this way, so they are not counted.
            kind = "refused by the kernel"
        self.sent[kind] = self.sent.get(kind, 0) + 1

    def spoofed(self, seg: Segment, src_ip: str | None = None) -> bytes:
        return wire.encode_tcp(
            self.peer_mac, self.our_mac, src_ip or self.peer_ip, self.our_ip, seg
        )

    def blind(self) -> int:
        """A sequence number well away from the live ones (see CLEAR)."""
        return seq.add(self.kernel_seq or 0, CLEAR + self.rng.randrange(1 << 31))

    def sniff(self, kernel_port: int, our_port: int, deadline: float) -> None:
        """Keep learning where the kernel's data to us is: take the newest frame the
        kernel sent, twenty times a second (decoding every frame would starve the
        barrage of the interpreter)."""
        while time.monotonic() < deadline and not self._stop.is_set():
            newest = None
            while True:
                try:
                    data, address = self.sock.recvfrom(1 << 16, socket.MSG_DONTWAIT)
                except (BlockingIOError, TimeoutError):
                    break
                if address[2] == PACKET_OUTGOING and len(data) > 100:  # data, not ACKs
                    newest = data
            if newest is not None:
                try:
                    packet = wire.decode_frame(newest, checksum_trusted=True)
                except wire.DecodeError:
                    packet = None
                if isinstance(packet, wire.TcpPacket):
                    s = packet.segment
                    if (s.src_port, s.dst_port) == (kernel_port, our_port) and len(s.payload) > 7:
                        self.kernel_seq = s.seq
            self._stop.wait(0.05)  # sampling period, not synchronization

    def barrage(
        self,
        kernel_port: int,
        our_port: int,
        listen_port: int,
        seconds: float,
        flood: bool,
        rate: float = 0.0,
    ) -> None:
        """Every attack in turn (or only the SYN flood) until stopped or `seconds` pass."""
        deadline = time.monotonic() + seconds
        if not flood:
            # Hold fire until the connection carries data: shots at a connection in
            # SYN-SENT would test simultaneous open, not a live transfer.
            while self.kernel_seq is None and time.monotonic() < deadline:
                if self._stop.wait(0.01):
                    return
        tick = 0
        started = time.monotonic()
        while time.monotonic() < deadline and not self._stop.is_set():
            tick += 1
            if rate and tick % 20 == 0:
                # Pace the barrage: it is an attack on a transfer, not a stress test.
                ahead = started + tick / rate - time.monotonic()
                if ahead > 0:
                    self._stop.wait(ahead)
            kind = 5 if flood else tick % 7
            ack = self.rng.randrange(1 << 32)
            if kind == 0:
                entry = CORPUS[tick % len(CORPUS)]
                self.send("malformed", bytes.fromhex(entry["hex"]))
            elif kind == 1:
                rst = Segment(kernel_port, our_port, self.blind(), 0, Flags.RST)
                self.send("blind rst", self.spoofed(rst))
            elif kind == 2 and self.kernel_seq is not None:
                # Ahead of RCV.NXT inside our (1 MB) window, and never on a segment
                # boundary (those fall on multiples of the MSS from a segment's
                # start): it must draw only a challenge ACK, never a reset.
                ahead = seq.add(self.kernel_seq, 1448 * 300 + 7)
                self.send(
                    "in-window rst",
                    self.spoofed(Segment(kernel_port, our_port, ahead, 0, Flags.RST)),
                )
            elif kind == 3:
                syn = Segment(
                    kernel_port, our_port, self.blind(), 0, Flags.SYN, 64240, Options(mss=1460)
                )
                self.send("blind syn", self.spoofed(syn))
            elif kind == 4:
                data = Segment(
                    kernel_port, our_port, self.blind(), ack, Flags.ACK | Flags.PSH, 64240,
                    payload=b"INJECTED" * 16,
                )  # fmt: skip
                self.send("blind data", self.spoofed(data))
            elif kind == 5:
                # A SYN from an on-link address nobody owns: a spoofed SYN flood.
                source = f"198.18.0.{self.rng.randrange(100, 250)}"
                syn = Segment(
                    self.rng.randrange(1024, 65535), listen_port, self.rng.randrange(1 << 32),
                    0, Flags.SYN, 64240, Options(mss=1460),
                )  # fmt: skip
                self.send("spoofed syn", self.spoofed(syn, src_ip=source))
            else:
                ack_only = Segment(kernel_port, our_port, self.blind(), ack, Flags.ACK)
                self.send("blind ack", self.spoofed(ack_only))

    def run(
        self,
        kernel_port: int,
        our_port: int,
        listen_port: int,
        seconds: float,
        flood: bool,
        rate: float,
    ) -> None:
        sniffer = threading.Thread(
            target=self.sniff, args=(kernel_port, our_port, time.monotonic() + seconds), daemon=True
        )
        sniffer.start()
        started = time.monotonic()
        self.barrage(kernel_port, our_port, listen_port, seconds, flood, rate)
        self.sent["seconds"] = round(time.monotonic() - started, 3)
        self._stop.set()
        sniffer.join(5.0)

    def stop(self, *_: object) -> None:
        # Runs as the SIGTERM handler, possibly while the main thread is inside
        # _stop.wait() holding the Event's lock: set() from here would deadlock on
        # that lock, so another thread sets it.
        threading.Thread(target=self._stop.set, daemon=True).start()


class AttackProcess:
    """The attacker as a child process in the lab's peer namespace."""

    def __init__(
        self,
        lab: Lab,
        our_mac: bytes,
        our_ip: str,
        *,
        kernel_port: int,
        our_port: int,
        listen_port: int,
        seconds: float,
        flood: bool = False,
        rate: float = 0.0,
    ) -> None:
        argv = [
            sys.executable, "-m", "tests.integration.attacker",
            lab.peer_interface, lab.peer_address, wire.mac_str(our_mac), our_ip,
            str(kernel_port), str(our_port), str(listen_port), str(seconds),
            "flood" if flood else "all", str(rate),
        ]  # fmt: skip
        self.process = lab.peer_popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)

    def finish(self, timeout: float = 30.0) -> dict[str, float]:
        """Stop the attack (SIGTERM to our own child, by pid) and collect its counts."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=timeout)
        lines = out.strip().splitlines()
        return dict(json.loads(lines[-1])) if lines else {}


def main() -> None:
    interface, peer_ip, our_mac, our_ip = sys.argv[1:5]
    kernel_port, our_port, listen_port = (int(x) for x in sys.argv[5:8])
    seconds, mode, rate = float(sys.argv[8]), sys.argv[9], float(sys.argv[10])
    attacker = Attacker(interface, peer_ip, wire.parse_mac(our_mac), our_ip)
    signal.signal(signal.SIGTERM, attacker.stop)
    try:
        attacker.run(kernel_port, our_port, listen_port, seconds, flood=mode == "flood", rate=rate)
    finally:
        attacker.sock.close()
        print(json.dumps(attacker.sent), flush=True)


if __name__ == "__main__":
    main()
