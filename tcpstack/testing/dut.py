"""The device under test: this endpoint, or a Linux socket as the reference.

Both sit at 198.18.0.2 in a lab's eut namespace, behind an identical veth link, so a
script cannot tell them apart except by how they behave. "tcpstack" is a Stack on a
"veth" lab; "linux" is a kernel socket in a "kernel" lab, whose eut namespace's
kernel owns the address. Linux's behaviour changes between releases, so a deviation
can be keyed to `kernel_release` (uname -r).
"""

from __future__ import annotations

import os
import re
import shutil
import socket as _socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tcpstack import netns
from tcpstack.config import TcpConfig
from tcpstack.lab import KernelStates, Lab
from tcpstack.scenarios.harness import DutSocket, KernelDutSocket
from tcpstack.stack import Stack

DUTS = ("tcpstack", "linux")
# Pinned for scripts, as packetdrill pins its defaults: a script that sends two
# challenge-worthy segments in a row means to see two ACKs, not the rate limit
# (which has scenarios of its own).
LINUX_SYSCTLS = {"net.ipv4.tcp_invalid_ratelimit": "0"}
# tso_max 0: one MSS per segment, as the Linux device is set to send them.
SCRIPT_CONFIG: dict[str, Any] = {"invalid_ack_interval": 0.0, "tso_max": 0}
Address = tuple[str, int]


class Dut:
    """One device under test in its lab."""

    def __init__(self, name: str, lab: Lab, stack: Stack | None) -> None:
        self.name = name
        self.lab = lab
        self.stack = stack
        self.address = lab.endpoint_address
        self._kernel_states = KernelStates(lab.endpoint_tcp_sockets)

    def socket(self) -> DutSocket:
        if self.stack is not None:
            return self.stack.socket()
        with self.lab.in_endpoint():
            raw = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        return KernelDutSocket(raw, self._kernel_states)

    def state(self, local: Address, remote: Address) -> str:
        """The device's state for one connection, as `ss` shows it; CLOSED if the
        device has no such connection (whether or not a listener holds the port)."""
        if self.stack is None:
            rows = [(k.local, k.remote, k.state) for k in self.lab.endpoint_tcp_sockets()]
        else:
            rows = [(r.local, r.remote, r.state.name) for r in self.stack.connections()]
        for row_local, row_remote, state in rows:
            if (row_local, row_remote) == (local, remote):
                return state
        return "CLOSED"


@contextmanager
def open_dut(
    name: str, *, settings: dict[str, Any] | None = None, **stack_args: Any
) -> Iterator[Dut]:
    """A fresh lab with device `name` ("tcpstack" or "linux") at 198.18.0.2; our
    endpoint gets the scripts' TcpConfig with `settings` on top."""
    if name not in DUTS:
        raise ValueError(f"the device under test is one of {DUTS}, not {name!r}")
    with Lab("veth" if name == "tcpstack" else "kernel") as lab:
        if name == "linux":
            with netns.enter(lab.endpoint_netns):
                for key, value in LINUX_SYSCTLS.items():
                    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                        f.write(value)
            # Segments as they would be on a real wire: without this the peer's tap
            # sees TSO/GSO super-frames that veth never cuts up.
            done = netns.run(
                lab.endpoint_netns,
                [_ethtool(), "-K", lab.endpoint_interface, "tso", "off", "gso", "off"],
                10.0,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(f"ethtool could not turn offloads off: {done.stderr.strip()}")
        config = TcpConfig(**{**SCRIPT_CONFIG, **(settings or {})})
        stack = lab.stack(config=config, **stack_args) if name == "tcpstack" else None
        try:
            yield Dut(name, lab, stack)
        finally:
            if stack is not None:
                stack.close()


def kernel_release() -> str:
    return os.uname().release


def release_tuple(release: str) -> tuple[int, ...]:
    """ "6.18.44-fc-v595" -> (6, 18, 44)."""
    match = re.match(r"(\d+(?:\.\d+)*)", release)
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


def release_matches(condition: str, release: str | None = None) -> bool:
    """Whether uname -r satisfies `condition`: "" (any), ">=6.10", "<6.10" or "==6.18"."""
    if not condition:
        return True
    match = re.fullmatch(r"(>=|<=|==|<|>)(\d+(?:\.\d+)*)", condition.strip())
    if not match:
        raise ValueError(f"a kernel condition looks like '>=6.10', not {condition!r}")
    op, wanted = match.groups()
    have = release_tuple(release or kernel_release())
    want = tuple(int(p) for p in wanted.split("."))
    have = have[: len(want)]
    return {
        ">=": have >= want,
        "<=": have <= want,
        "==": have == want,
        "<": have < want,
        ">": have > want,
    }[op]


def _ethtool() -> str:
    found = shutil.which("ethtool") or shutil.which("ethtool", path="/usr/sbin:/sbin")
    if found is None:
        raise FileNotFoundError("ethtool is not installed (scripts/setup installs it)")
    return found
