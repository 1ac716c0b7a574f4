"""A packet capture on one interface of a namespace: what a kernel sent and received.

The scenarios' differential mode runs a kernel socket where our endpoint would be and
needs its segments as our engine reports its own; this is the tcpdump of that run.
An AF_PACKET socket sees both directions (outgoing frames with PACKET_OUTGOING), and
with default offloads it sees GSO super-frames and frames whose checksum the kernel
has not filled in yet (PACKET_AUXDATA's TP_STATUS_CSUMNOTREADY, kept as
`checksum_partial`), so frames are decoded without checking checksums unless the
kernel says they are complete.

`FileCapture` is the other kind: tcpdump, in a process of its own, writing a pcap
file, for watching long runs without slowing them.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tcpstack import netns

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_CSUMNOTREADY = 0x08
_AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
BUFFER = 64 << 20
_TIMESPEC = struct.Struct("=qq")
# A capture ends by itself after this long, should its owner never stop it.
MAX_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class CapturedFrame:
    time: float  # when the kernel saw it, on time.monotonic()'s clock like trace events
    outgoing: bool
    frame: bytes = field(repr=False)
    checksum_partial: bool = False  # offload fills the checksum in later: it is not wrong


class Capture:
    """Capture frames on `interface` in `namespace` from start() until stop().

    `on_frame` runs in the capture thread for each frame as it is seen, e.g. to poll
    socket states at that moment.
    """

    def __init__(
        self,
        interface: str,
        namespace: str,
        on_frame: Callable[[CapturedFrame], None] | None = None,
    ) -> None:
        self.frames: list[CapturedFrame] = []
        self.errors: list[BaseException] = []
        self._on_frame = on_frame
        with netns.enter(namespace):
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            # The kernel's own timestamp of each frame: the capture thread may read it
            # milliseconds later, when the exchange it belongs to is long over.
            self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            # Two kernels exchange a megabyte in a few milliseconds: the queue must
            # hold a burst while this thread catches up (FORCE: root may exceed rmem_max).
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BUFFER)
            self._sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            self._sock.bind((interface, ETH_P_ALL))
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        self._ancsize = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_AUXDATA.size)
        # Timestamps come on CLOCK_REALTIME; trace events use the monotonic clock.
        self._clock_offset = time.monotonic() - time.time()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._idle_since = 0.0
        self._thread = threading.Thread(target=self._run, name=f"capture {interface}", daemon=True)

    def start(self) -> Capture:
        self._thread.start()
        return self

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[CapturedFrame]:
        """Stop, after reading what has already arrived; returns the frames."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self._sock.close()
        return self.frames

    def sync(self, timeout: float = 5.0) -> None:
        """Return once every frame seen before this call has been handled."""
        asked = time.monotonic()
        deadline = asked + timeout
        with self._idle:
            while self._idle_since <= asked and self._thread.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("the capture thread did not catch up")
                self._idle.wait(remaining)

    def _mark_idle(self) -> None:
        with self._idle:
            self._idle_since = time.monotonic()
            self._idle.notify_all()

    def _run(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        try:
            while time.monotonic() < deadline:
                stopping = self._stop.is_set()
                readable, _, _ = select.select([self._sock], [], [], 0 if stopping else 0.01)
                if not readable:
                    self._mark_idle()
                    if stopping:
                        return
                    continue
                self._drain()
        except BaseException as exc:  # reported by the owner, never lost in a thread
            self.errors.append(exc)

    def _drain(self) -> None:
        while True:
            try:
                frame, ancdata, _, address = self._sock.recvmsg(1 << 16, self._ancsize)
            except BlockingIOError:
                self._mark_idle()
                return
            when = time.monotonic()
            partial = False
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack_from(data)
                    when = sec + nsec / 1e9 + self._clock_offset
                elif level == SOL_PACKET and kind == PACKET_AUXDATA:
                    partial = bool(_AUXDATA.unpack_from(data)[0] & TP_STATUS_CSUMNOTREADY)
            captured = CapturedFrame(when, address[2] == PACKET_OUTGOING, frame, partial)
            self.frames.append(captured)
            if self._on_frame is not None:
                self._on_frame(captured)


READY_SECONDS = 5.0
STOP_SECONDS = 5.0


class FileCapture:
    """tcpdump writing what `interface` in `namespace` sees to a pcap file, from
    start() (which returns once it captures) until stop().

    Unlike Capture this costs our process nothing: the capture runs in a process of
    its own, so it can watch a whole suite's transfers without taking the GIL from
    the endpoint. Immediate mode and a flush per packet make the file complete the
    moment stop() returns (dumpcap, without them, holds frames back for up to a
    second). `snaplen` keeps headers and options and drops most payload;
    `max_packets` keeps a runaway capture from filling the disk.
    """

    def __init__(
        self,
        interface: str,
        namespace: str,
        path: str | os.PathLike[str],
        *,
        snaplen: int = 256,
        max_packets: int = 1_000_000,
    ) -> None:
        self.path = Path(path)
        self._argv = [
            shutil.which("tcpdump") or "/usr/bin/tcpdump",
            "--immediate-mode",
            "-U",
            "-n",
            # As root tcpdump would write the file as user tcpdump, who may not.
            "-Z",
            "root",
            "-i",
            interface,
            "-s",
            str(snaplen),
            "-c",
            str(max_packets),
            "-w",
            str(self.path),
        ]
        self._namespace = namespace
        self._process: subprocess.Popen[bytes] | None = None
        self.stderr = ""

    def start(self) -> FileCapture:
        process = self._process = netns.popen(
            self._namespace,
            self._argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        said = b""
        deadline = time.monotonic() + READY_SECONDS
        # tcpdump says "listening on" once its socket is bound: from then on it sees
        # every frame, so the caller's first packet is not missed.
        while b"listening on" not in said:
            remaining = deadline - time.monotonic()
            if process.poll() is not None or remaining <= 0:
                self.stop()
                raise OSError(f"tcpdump did not start capturing: {self.stderr.strip()!r}")
            readable, _, _ = select.select([process.stderr], [], [], remaining)
            if readable:
                said += os.read(process.stderr.fileno(), 4096)
        self.stderr = said.decode(errors="replace")
        return self

    def stop(self) -> Path:
        """End the capture (the file is complete once this returns); idempotent."""
        process, self._process = self._process, None
        if process is None:
            return self.path
        if process.poll() is None:
            process.terminate()
        try:
            _, err = process.communicate(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate(timeout=STOP_SECONDS)
        self.stderr += (err or b"").decode(errors="replace")
        return self.path

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> FileCapture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
