"""A running stack's control socket, and `tcpstack ss`, which reads every one of them.

A kernel's sockets can be listed from anywhere with `ss`; a userspace stack's live in
some script's process. So each Stack on a real link answers on a unix socket in
RUN_DIR (/run/tcpstack/stacks, or $TCPSTACK_RUN_DIR), named after its process id,
mode 0600 in a 0700 directory since it shows root's connections. A client sends the
line "snapshot" and reads one JSON document back: the stack, its counters, and each
connection with its state and TCP_INFO-like variables. `tcpstack ss` renders those
the way `ss -tni` does.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_RUN_DIR = "/run/tcpstack/stacks"
# How long a client waits for a stack to answer, and the server for a request.
TIMEOUT = 2.0
_counter = itertools.count(1)

Snapshot = dict[str, Any]


def run_dir() -> Path:
    return Path(os.environ.get("TCPSTACK_RUN_DIR", DEFAULT_RUN_DIR))


class ControlServer:
    """Answers snapshot requests for one stack, on its own thread, until close()."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot
        directory = run_dir()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = directory / f"{os.getpid()}-{next(_counter)}.sock"
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a dead process of the same pid left it
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            self._sock.listen(8)
        except BaseException:
            self._sock.close()
            raise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tcpstack control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        # Wakes the thread's blocking accept (with EINVAL): no polling timeout needed.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(TIMEOUT)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError as exc:
                if self._stop.is_set() or exc.errno not in (errno.ECONNABORTED, errno.EPROTO):
                    return  # close() shut the socket down, or it is gone
                continue  # a client that gave up before we accepted it
            with client:
                client.settimeout(TIMEOUT)
                try:
                    request = client.recv(64).strip()
                    if request == b"snapshot":
                        client.sendall(json.dumps(self._snapshot()).encode())
                except OSError:
                    continue  # a client that went away; serve the next


def snapshots(directory: Path | None = None) -> list[Snapshot]:
    """A snapshot of every live stack; sockets of processes that died are removed."""
    found = []
    for path in sorted((directory or run_dir()).glob("*.sock")):
        try:
            found.append(_ask(path))
        except ConnectionRefusedError:
            pid = int(path.name.split("-")[0]) if path.name.split("-")[0].isdigit() else 0
            if pid and not _alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        except (OSError, ValueError):
            continue  # busy or going away: it shows next time
    return found


def _ask(path: Path) -> Snapshot:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(path))
        sock.sendall(b"snapshot\n")
        chunks = []
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        result: Snapshot = json.loads(b"".join(chunks))
        return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_SS_STATE = {
    "ESTABLISHED": "ESTAB",
    "SYN_SENT": "SYN-SENT",
    "SYN_RECEIVED": "SYN-RECV",
    "FIN_WAIT_1": "FIN-WAIT-1",
    "FIN_WAIT_2": "FIN-WAIT-2",
    "TIME_WAIT": "TIME-WAIT",
    "CLOSE_WAIT": "CLOSE-WAIT",
    "LAST_ACK": "LAST-ACK",
    "CLOSING": "CLOSING",
    "LISTEN": "LISTEN",
    "CLOSED": "UNCONN",
}


def render(found: list[Snapshot], *, info: bool = True) -> list[str]:
    """`ss -tni` for userspace stacks: a header per stack, a line per connection and,
    with info, its variables and counters indented beneath."""
    lines: list[str] = []
    for snap in found:
        lines.append(
            f"tcpstack pid {snap['pid']} on {snap['link']} {snap['interface']}"
            f"{' in ' + snap['netns'] if snap.get('netns') else ''}:"
            f" {snap['address']} ({snap['mac']}), {len(snap['connections'])} socket(s)"
        )
        lines.append(
            f"{'State':<11}{'Recv-Q':>7}{'Send-Q':>7} {'Local Address:Port':<22} Peer Address:Port"
        )
        for c in snap["connections"]:
            local = f"{c['local'][0]}:{c['local'][1]}"
            remote = f"{c['remote'][0]}:{c['remote'][1] or '*'}"
            state = _SS_STATE.get(c["state"], c["state"])
            lines.append(f"{state:<11}{c['recv_q']:>7}{c['send_q']:>7} {local:<22} {remote}")
            if info and c.get("info"):
                lines.append("\t " + _info_line(c["info"]))
        lines.append("")
    return lines


def _info_line(i: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.3f}".rstrip("0").rstrip(".")

    counters = i.get("counters", {})
    parts = [
        i["congestion"],
        f"wscale:{i['snd_wscale']},{i['rcv_wscale']}",
        "sack" if i["sack"] else "",
        "ts" if i["timestamps"] else "",
        f"rto:{ms(i['rto'])}",
        f"rtt:{ms(i['srtt'])}/{ms(i['rttvar'])}",
        f"mss:{i['send_mss']}",
        f"cwnd:{i['cwnd'] // max(i['send_mss'], 1)}",  # in segments, as ss counts it
        f"ssthresh:{i['ssthresh']}" if i["ssthresh"] < (1 << 31) else "",
        f"inflight:{i['in_flight']}",
        f"snd_wnd:{i['snd_wnd']}",
        f"rcv_wnd:{i['rcv_wnd']}",
        f"bytes_sent:{counters.get('bytes_sent', 0)}",
        f"bytes_acked:{counters.get('bytes_acked', 0)}",
        f"bytes_received:{counters.get('bytes_received', 0)}",
        f"segs_out:{counters.get('segments_out', 0)}",
        f"segs_in:{counters.get('segments_in', 0)}",
        f"retrans:{counters.get('retransmissions', 0)}",
        f"recovery:{i['recovery']}" if i["recovery"] != "open" else "",
    ]
    return " ".join(p for p in parts if p)
