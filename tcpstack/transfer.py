"""Bulk transfers between the endpoint and the kernel, and the same between two kernels.

Used by `tcpstack transfer`, the recovery tests and the benchmark: both directions
at once (or one), sha256-checked, with goodput and the retransmission counters of
each side, so the userspace endpoint and the kernel can be compared under the same
impairment.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from tcpstack.config import TcpConfig
from tcpstack.core.connection import TcpInfo
from tcpstack.impair import Impairment
from tcpstack.lab import Lab
from tcpstack.progress import ProgressBar
from tcpstack.stack import Stack

PORT = 9000
CHUNK = 1 << 16

# The counters worth printing next to goodput, ours and the kernel's (nstat names).
OUR_COUNTERS = (
    "retransmissions",
    "fast_retransmits",
    "timeouts",
    "tail_loss_probes",
    "duplicate_acks",
    "ooo_segments_queued",
    "sack_blocks_sent",
    "sack_blocks_received",
    "window_probes",
    "spurious_recoveries_undone",
)
KERNEL_COUNTERS = (
    "TcpRetransSegs",
    "TcpExtTCPSackRecovery",
    "TcpExtTCPTimeouts",
    "TcpExtTCPLossProbes",
    "TcpExtTCPOFOQueue",
    "TcpExtTCPSpuriousRTOs",
)


@dataclass
class TransferResult:
    label: str
    size: int  # bytes in each direction that moved
    directions: str
    seconds: float
    ok: bool
    detail: str = ""
    ours: dict[str, int] = field(default_factory=dict)  # our counters (empty for kernel runs)
    kernel: dict[str, int] = field(default_factory=dict)  # the kernel's counter deltas
    info: TcpInfo | None = None
    drops: dict[str, int] = field(default_factory=dict)  # our stack's drop counters

    @property
    def goodput(self) -> float:
        """Megabytes per second of application data, both directions together."""
        moved = self.size * (2 if self.directions == "both" else 1)
        return moved / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def summary(self) -> str:
        counters = ", ".join(f"{k} {v}" for k, v in {**self.ours, **self.kernel}.items() if v)
        verdict = "ok" if self.ok else f"FAILED {self.detail}"
        return f"{self.label:<34} {self.goodput:8.2f} MB/s {self.seconds:7.2f} s  {verdict}" + (
            f"  [{counters}]" if counters else ""
        )


class _Peer:
    """One side of a transfer run by kernel sockets: send `outgoing`, hash what comes in."""

    def __init__(self, sock: socket.socket, outgoing: bytes, pause: float) -> None:
        self.sock = sock
        self.outgoing = outgoing
        self.pause = pause
        self.digest = hashlib.sha256()
        self.received = 0
        self.error: BaseException | None = None

    def run(self, send: bool, receive: bool) -> None:
        try:
            sender = threading.Thread(target=self._send, daemon=True) if send else None
            if sender:
                sender.start()
            else:
                self.sock.shutdown(socket.SHUT_WR)
            if receive:
                self._receive()
            if sender:
                sender.join()
        except BaseException as exc:  # reported by the caller
            self.error = exc

    def _send(self) -> None:
        try:
            self.sock.sendall(self.outgoing)
            self.sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:
            self.error = exc

    def _receive(self) -> None:
        if self.pause:
            # A reader that stops for a while: the window closes and must reopen.
            first = self.sock.recv(CHUNK)
            self.digest.update(first)
            self.received += len(first)
            time.sleep(self.pause)
        while data := self.sock.recv(CHUNK):
            self.digest.update(data)
            self.received += len(data)


def _payloads(size: int, directions: str) -> tuple[bytes, bytes]:
    up = os.urandom(size) if directions in ("both", "up") else b""
    down = os.urandom(size) if directions in ("both", "down") else b""
    return up, down


def exchange(
    lab: Lab,
    client: Any,
    *,
    up: bytes,
    down: bytes,
    pause_client: float,
    pause_server: float,
    timeout: float,
    on_connected: Callable[[], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[float, list[str]]:
    """Connect `client` (ours or a kernel socket) to a kernel server in the peer
    namespace, move `up` and `down` at once; return the time taken and any problems.
    `on_connected` runs once the connection is established, before data moves;
    `progress(done, total)` is called as bytes arrive at both ends."""
    with lab.in_peer():
        server = socket.create_server((lab.peer_address, PORT))
    server.settimeout(timeout)
    client.settimeout(timeout)
    kernel_side: dict[str, _Peer] = {}

    def serve() -> None:
        conn, _ = server.accept()
        conn.settimeout(timeout)
        peer = kernel_side["peer"] = _Peer(conn, down, pause_server)
        peer.run(send=bool(down), receive=bool(up))
        conn.close()

    server_thread = threading.Thread(target=serve, daemon=True)
    server_thread.start()
    started = time.monotonic()
    ours = _Peer(client, up, pause_client)
    finished = threading.Event()

    def report() -> None:
        # Received bytes at both ends: what has really arrived, not what is queued.
        total = len(up) + len(down)
        while not finished.wait(0.1) and time.monotonic() - started < timeout:
            theirs = kernel_side.get("peer")
            assert progress is not None
            progress(ours.received + (theirs.received if theirs else 0), total)

    reporter = threading.Thread(target=report, daemon=True) if progress else None
    try:
        client.connect((lab.peer_address, PORT))
        if on_connected is not None:
            on_connected()
        if reporter is not None:
            reporter.start()
        ours.run(send=bool(up), receive=bool(down))
        server_thread.join(timeout)
    finally:
        finished.set()
        if reporter is not None:
            reporter.join(1.0)
        server.close()
    if progress is not None:
        theirs = kernel_side.get("peer")
        progress(ours.received + (theirs.received if theirs else 0), len(up) + len(down))
    return time.monotonic() - started, _check(ours, kernel_side.get("peer"), up, down)


def run_ours(
    lab: Lab,
    *,
    size: int,
    directions: str = "both",
    impairment: Impairment | str | None = None,
    config: TcpConfig | None = None,
    pause_ours: float = 0.0,
    pause_kernel: float = 0.0,
    timeout: float = 120.0,
    label: str = "tcpstack",
    progress: Callable[[int, int], None] | None = None,
    on_stack: Callable[[Stack], None] | None = None,
) -> TransferResult:
    """The endpoint connects to a kernel server in the lab and data moves both ways.
    `on_stack` may set up the stack (hooks, subscribers) before the connection."""
    up, down = _payloads(size, directions)
    before = lab.peer_nstat()
    with Stack(
        lab.endpoint_interface,
        lab.endpoint_cidr,
        netns=lab.endpoint_netns,
        config=config,
        impairment=impairment,
    ) as stack:
        if on_stack is not None:
            on_stack(stack)
        sock = stack.socket()
        elapsed, problems = exchange(
            lab,
            sock,
            up=up,
            down=down,
            pause_client=pause_ours,
            pause_server=pause_kernel,
            timeout=timeout,
            progress=progress,
        )
        info = sock.info()
        sock.close()
        totals = stack.stats()
    after = lab.peer_nstat()
    return TransferResult(
        label=label,
        size=size,
        directions=directions,
        seconds=elapsed,
        ok=not problems,
        detail="; ".join(problems),
        ours={k: totals.get(k, 0) for k in OUR_COUNTERS},
        kernel={k: after.get(k, 0) - before.get(k, 0) for k in KERNEL_COUNTERS},
        info=info,
        drops={k: v for k, v in sorted(totals.items()) if k.startswith(("drop_", "impair_"))},
    )


def run_kernel(
    lab: Lab,
    *,
    size: int,
    directions: str = "both",
    pause_client: float = 0.0,
    pause_server: float = 0.0,
    timeout: float = 120.0,
    label: str = "kernel <-> kernel",
    progress: Callable[[int, int], None] | None = None,
) -> TransferResult:
    """The same transfer between two kernel sockets over a "kernel" lab's veth pair."""
    assert lab.kind == "kernel", "run_kernel needs Lab('kernel')"
    up, down = _payloads(size, directions)
    before = _add(lab.peer_nstat(), lab.endpoint_nstat())
    with lab.in_endpoint():
        client = socket.socket()
    with client:
        elapsed, problems = exchange(
            lab,
            client,
            up=up,
            down=down,
            pause_client=pause_client,
            pause_server=pause_server,
            timeout=timeout,
            progress=progress,
        )
    after = _add(lab.peer_nstat(), lab.endpoint_nstat())
    return TransferResult(
        label=label,
        size=size,
        directions=directions,
        seconds=elapsed,
        ok=not problems,
        detail="; ".join(problems),
        kernel={k: after.get(k, 0) - before.get(k, 0) for k in KERNEL_COUNTERS},
    )


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}


def _check(ours: _Peer, peer: _Peer | None, up: bytes, down: bytes) -> list[str]:
    problems = []
    if ours.error is not None:
        problems.append(f"our side: {ours.error!r}")
    if peer is None:
        problems.append("the kernel never accepted")
        return problems
    if peer.error is not None:
        problems.append(f"kernel side: {peer.error!r}")
    if peer.digest.hexdigest() != hashlib.sha256(up).hexdigest():
        problems.append(f"upload corrupted or short ({peer.received} of {len(up)} bytes)")
    if ours.digest.hexdigest() != hashlib.sha256(down).hexdigest():
        problems.append(f"download corrupted or short ({ours.received} of {len(down)} bytes)")
    return problems


def with_inbound_loss(impairment: Impairment | str | None, percent: float) -> Impairment:
    """`impairment` plus an inbound loss of `percent`, combined as independent drops."""
    if isinstance(impairment, str):
        impairment = Impairment.parse(impairment)
    impairment = impairment or Impairment()
    kept = (1 - impairment.inbound.loss) * (1 - percent / 100)
    return replace(impairment, inbound=replace(impairment.inbound, loss=1 - kept))


def compare(
    kind: str,
    *,
    size: int,
    directions: str = "both",
    impairment: str | None = None,
    loss: float = 0.0,
    reference: bool = True,
    emit: Callable[[str], None] = print,
    progress: bool | None = None,
    **kw: Any,
) -> tuple[TransferResult, TransferResult | None]:
    """Our transfer, then (with `reference`) kernel-to-kernel under the same loss.

    `loss` percent is dropped each way where each packet *arrives*: by nftables at
    the kernel's ingress for our segments, and by our impairment layer for the
    kernel's (a kernel's TCP learns of a drop at its own egress and just resends,
    so that would be no loss). The kernel pair gets nftables ingress loss on both
    of its ends. Duplication, reordering and corruption exist only in our link
    I/O, so the kernel pair runs without them; the labels say so.
    """
    loss_label = f"loss {loss:g}% each way" if loss else ""
    with Lab(kind) as lab:
        ours_impairment: Impairment | str | None = impairment
        if loss:
            lab.peer_loss(loss, direction="in")
            ours_impairment = with_inbound_loss(impairment, loss)
        label = " ".join(x for x in (f"tcpstack/{kind}", loss_label, impairment or "") if x)
        bar = ProgressBar(label, enabled=progress)
        ours = run_ours(
            lab,
            size=size,
            directions=directions,
            impairment=ours_impairment,
            label=label,
            progress=bar,
            **kw,
        )
        bar.finish()
    emit(ours.summary())
    if not reference:
        return ours, None
    with Lab("kernel") as pair:
        if loss:
            pair.peer_loss(loss, direction="in")
            pair.endpoint_loss(loss, direction="in")
        reference_label = f"kernel<->kernel/veth {loss_label or 'clean'}"
        bar = ProgressBar(reference_label, enabled=progress)
        kernel = run_kernel(
            pair, size=size, directions=directions, label=reference_label, progress=bar
        )
        bar.finish()
    emit(kernel.summary())
    if kernel.goodput:
        emit(f"  goodput ratio tcpstack/kernel: {ours.goodput / kernel.goodput:.4f}")
    return ours, kernel
