"""A throwaway two-node test network: a kernel TCP peer and a link for our endpoint.

`Lab(kind="veth")` makes two namespaces, `<name>-peer` and `<name>-eut`, joined by a
veth pair; the peer end holds 198.18.0.1/24, the eut end carries no address at all so
that the eut namespace's kernel never answers (or RSTs) traffic meant for the userspace
endpoint, which owns 198.18.0.2 and its own MAC. `Lab(kind="tap")` makes only the peer
namespace, holding a persistent TAP with 198.18.0.1/24 whose file descriptor the
endpoint opens. `Lab(kind="kernel")` is the veth lab with 198.18.0.2/24 given to the
eut end as a kernel address, so kernel sockets made in the eut namespace (`in_endpoint()`)
talk to the kernel peer: the kernel-to-kernel reference over an identical link, to
compare the userspace endpoint's figures against. Everything is built with netlink from
inside the namespaces: the root namespace never gets an address, interface or route, and
nothing gets a default route.

Loss on the kernel's side: this kernel has no netem, so `peer_loss()` loads nftables
rules (`nft`, Debian's nftables) into the peer namespace that drop TCP packets the
kernel receives or sends, at random or exactly the n-th matching one; `nft()` loads any
ruleset there. Rules live in the namespace and vanish with it. They act at the netdev
ingress and egress hooks of the kernel's lab interface, where a drop is a loss on the
wire for the kernel's TCP too; a TSO/GSO super-packet it sends over veth is dropped whole.
`peer_nstat()` reads the kernel's SNMP and TcpExt counters of the peer namespace
(`endpoint_nstat()` those of the eut namespace), named as nstat names them.

Each kernel that speaks TCP in a lab has PINNED_SYSCTLS written before any interface
exists, so tests do not depend on the machine's defaults. `capture_peer(path)` runs
tcpdump on the kernel's lab interface until the lab goes (the test suite keeps one
per lab, for the evidence of a failure).

Cleanup: removing a namespace removes its interfaces. Labs are removed by `down()`, on
leaving `with Lab()`, at interpreter exit, and on SIGINT/SIGTERM (handlers that raise,
so the first two paths run). Every lab also records itself in
/run/tcpstack/labs/<name>.json (TCPSTACK_LAB_DIR overrides) before creating anything, so
labs of a process that was SIGKILLed, or made with `up(persist=True)` to outlive their
creator, can be removed later with `down_recorded()`; that only ever removes the
namespaces a record lists. A namespace outlives its name while anything still holds it
(an open socket or TAP fd created inside it), so close links before expecting the
kernel to free the interfaces.

Teardown observers: `add_teardown_observer(fn)` has `fn(lab)` called by every `down()`
of this process just before the lab's namespaces go, while the lab still counts as up
(so `peer_nstat()` works): the last moment anything can be read from its kernels. An
observer cannot stop the removal: what it raises is kept in `lab.teardown_errors` and
the namespaces are removed all the same.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from pyroute2 import IPRoute

from tcpstack import netns
from tcpstack.capture import FileCapture
from tcpstack.stack import Stack

KINDS = ("veth", "tap", "kernel")
_VETH_KINDS = ("veth", "kernel")
PEER_ADDRESS = "198.18.0.1"
ENDPOINT_ADDRESS = "198.18.0.2"
PREFIXLEN = 24
NAME_PREFIX = "tcps-"
_NAME_RE = re.compile(r"^tcps-[0-9a-f]{6}$")
_DEFAULT_RECORD_DIR = "/run/tcpstack/labs"
_UP_TIMEOUT = 5.0
_NFT_TIMEOUT = 10.0
LOSS_TABLE = "tcpstack_loss"
_TCP_FLAGS = ("fin", "syn", "rst", "ack")
# numgen inc counts modulo this; the k-th match is dropped and the count would next
# reach k again only after 2**32 - 1 more matching packets.
_NTH_MODULUS = 0xFFFF_FFFF

# Every kernel of a lab that speaks TCP has these set when the lab is built, so that
# what a test expects of it does not hang on the machine's or the kernel's defaults
# (the conformance plan's §4.5; packetdrill's defaults.sh pins likewise). Each is the
# Linux default except tcp_no_metrics_save, on so that one connection's cached RTT and
# ssthresh do not shape the next. A key this kernel lacks is skipped (`Lab.pinned`
# holds those written). Congestion control is not pinned: a namespace may only choose
# among the host's allowed ones, so it keeps the host's default (BBR on this machine).
PINNED_SYSCTLS = {
    "net.ipv4.tcp_no_metrics_save": "1",
    "net.ipv4.tcp_rfc1337": "0",
    "net.ipv4.tcp_timestamps": "1",
    "net.ipv4.tcp_sack": "1",
    "net.ipv4.tcp_dsack": "1",
    "net.ipv4.tcp_window_scaling": "1",
    "net.ipv4.tcp_ecn": "2",
    "net.ipv4.tcp_syncookies": "1",
    "net.ipv4.tcp_min_snd_mss": "48",
    "net.ipv4.tcp_syn_retries": "6",
    "net.ipv4.tcp_synack_retries": "5",
    "net.ipv4.tcp_retries1": "3",
    "net.ipv4.tcp_retries2": "15",
    "net.ipv4.tcp_fin_timeout": "60",
    "net.ipv4.tcp_keepalive_time": "7200",
    "net.ipv4.tcp_keepalive_intvl": "75",
    "net.ipv4.tcp_keepalive_probes": "9",
    "net.ipv4.tcp_invalid_ratelimit": "500",
    "net.ipv4.tcp_recovery": "1",
    "net.ipv4.tcp_early_retrans": "3",
    "net.ipv4.tcp_shrink_window": "0",
}

# Kernel TCP state numbers (include/net/tcp_states.h) to the project's RFC names.
# 12 is TCP_NEW_SYN_RECV, the request socket a listener keeps for a half-open
# connection; ss shows it as SYN-RECV too.
_KERNEL_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECEIVED",
    4: "FIN_WAIT_1",
    5: "FIN_WAIT_2",
    6: "TIME_WAIT",
    7: "CLOSED",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "SYN_RECEIVED",
}
# Bits 1..12; bit 13 (bound but inactive, kernel >= 6.7) is not a connection.
_DIAG_STATES = sum(1 << s for s in _KERNEL_STATES)


@dataclass(frozen=True)
class KernelSocket:
    """One TCP socket of the kernel peer, as inet_diag reports it."""

    state: str
    local: tuple[str, int]
    remote: tuple[str, int]


class KernelStates:
    """A kernel's state for one connection, polled from inet_diag when asked.

    Before the kernel has a socket for a connection it is LISTEN if a listener holds
    the port (the SYN has not arrived yet) and CLOSED otherwise; once its socket has
    been seen and is gone, CLOSED.
    """

    def __init__(self, sockets: Callable[[], list[KernelSocket]]) -> None:
        self._sockets = sockets
        self._seen: set[tuple[tuple[str, int], tuple[str, int]]] = set()

    def state(self, local: tuple[str, int], remote: tuple[str, int]) -> str:
        listening = False
        for ks in self._sockets():
            if ks.local == local and ks.remote == remote:
                self._seen.add((local, remote))
                return ks.state
            if ks.state == "LISTEN" and ks.local[1] == local[1]:
                listening = listening or ks.local[0] in (local[0], "0.0.0.0", "::")
        return "LISTEN" if listening and (local, remote) not in self._seen else "CLOSED"


def record_dir() -> Path:
    return Path(os.environ.get("TCPSTACK_LAB_DIR", _DEFAULT_RECORD_DIR))


class Lab:
    """A lab network; see the module docstring. Use as a context manager or up()/down()."""

    def __init__(self, kind: str = "veth") -> None:
        if kind not in KINDS:
            raise ValueError(f"lab kind must be one of {KINDS}, not {kind!r}")
        self.kind = kind
        self.name = NAME_PREFIX + secrets.token_hex(3)
        self.peer_netns = f"{self.name}-peer"
        self.peer_address = PEER_ADDRESS
        self.prefixlen = PREFIXLEN
        self.endpoint_address = ENDPOINT_ADDRESS
        self.endpoint_cidr = f"{ENDPOINT_ADDRESS}/{PREFIXLEN}"
        # Interface names are at most 11 + 2 = 13 characters (IFNAMSIZ allows 15).
        if kind in _VETH_KINDS:
            self.endpoint_netns = f"{self.name}-eut"
            self.peer_interface = f"{self.name}-p"
            self.endpoint_interface = f"{self.name}-e"
            self.namespaces: tuple[str, ...] = (self.peer_netns, self.endpoint_netns)
        else:
            self.endpoint_netns = self.peer_netns
            self.peer_interface = self.endpoint_interface = f"{self.name}-t"
            self.namespaces = (self.peer_netns,)
        self.persist = False
        self._state = "new"  # new -> up -> down
        self._creator_pid = 0
        self._diags: dict[str, _InetDiag] = {}
        self._diag_lock = threading.Lock()
        self._observed = False
        # What teardown observers raised, with the observer; see add_teardown_observer.
        self.teardown_errors: list[tuple[Callable[[Lab], None], Exception]] = []
        # The PINNED_SYSCTLS this kernel has, as written into each TCP-speaking namespace.
        self.pinned: dict[str, str] = {}
        self._captures: list[FileCapture] = []

    def __repr__(self) -> str:
        return f"<Lab {self.name} kind={self.kind} {self._state}>"

    def __enter__(self) -> Lab:
        if self._state == "new":
            self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    @property
    def is_up(self) -> bool:
        return self._state == "up"

    # -- building and removing ---------------------------------------------------

    def up(self, persist: bool = False) -> Lab:
        """Create the lab. With persist=True it survives this process (exit, signals;
        a with-block still removes it) until `down_recorded()` or `lab down`."""
        if self._state != "new":
            raise RuntimeError(f"{self!r} cannot be brought up again")
        self.persist = persist
        self._creator_pid = os.getpid()
        with _signals_deferred():
            self._state = "up"
            try:
                # Record and register before creating anything, so that whatever
                # exists after a failure or a crash part-way through can be removed.
                _write_record(self._record())
                if not persist:
                    _register(self)
                netns.outside_event_loop(self._build)
            except BaseException:
                self.down()
                raise
        return self

    def down(self) -> None:
        """Remove everything this lab created; safe to call any number of times.
        Teardown observers run first (see add_teardown_observer)."""
        if self._state == "down":
            return
        with _signals_deferred():
            try:
                self._notify_teardown()
            finally:
                self._remove()

    def _notify_teardown(self) -> None:
        # Once per lab, so an observer that calls down() itself does not recurse; a
        # lab whose up() never started has nothing to observe.
        if self._observed or self._state != "up":
            return
        self._observed = True
        with _observers_lock:
            observers = tuple(_teardown_observers)
        for observer in observers:
            try:
                observer(self)
            except Exception as exc:
                # Kept, not raised: a failing reader must never leave namespaces behind.
                self.teardown_errors.append((observer, exc))

    def _remove(self) -> None:
        if self._state == "down":
            return
        self._state = "down"
        # A capture's process holds the namespace it runs in: end it first. One
        # that will not end is reported, but the namespaces go all the same.
        capture_errors: list[BaseException] = []
        while self._captures:
            try:
                self._captures.pop().stop()
            except (OSError, subprocess.SubprocessError) as exc:
                capture_errors.append(exc)
        with self._diag_lock:
            for diag in self._diags.values():
                diag.close()
            self._diags.clear()
        errors: list[BaseException] = []
        for name in self.namespaces:
            try:
                if netns.exists(name):
                    netns.remove(name)
            except OSError as exc:
                errors.append(exc)
        if not errors:
            _delete_record(self.name)
        _unregister(self)
        if errors or capture_errors:
            raise (errors + capture_errors)[0]

    def _build(self) -> None:
        for name in self.namespaces:
            netns.create(name)
            with netns.enter(name):
                # Before any interface exists, so none ever gets an IPv6 address or
                # sends neighbour discovery onto the lab link.
                _write_sysctl("net.ipv6.conf.all.disable_ipv6", "1")
                _write_sysctl("net.ipv6.conf.default.disable_ipv6", "1")
                # The kernel lab's eut kernel is a TCP peer too, and is treated alike.
                if name == self.peer_netns or self.kind == "kernel":
                    for key, value in PINNED_SYSCTLS.items():
                        try:
                            _write_sysctl(key, value)
                        except FileNotFoundError:
                            continue
                        self.pinned[key] = value
        with netns.enter(self.peer_netns), IPRoute() as ipr:
            if self.kind in _VETH_KINDS:
                eut_fd = os.open(netns.path(self.endpoint_netns), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    # The eut end is born directly in the eut namespace: nothing
                    # passes through the root namespace, even for a moment.
                    ipr.link(
                        "add",
                        ifname=self.peer_interface,
                        kind="veth",
                        peer={"ifname": self.endpoint_interface, "net_ns_fd": eut_fd},
                    )
                finally:
                    os.close(eut_fd)
            else:
                # pyroute2 emulates this with an ioctl on /dev/net/tun from the calling
                # thread, which is inside the peer namespace here.
                ipr.link("add", ifname=self.peer_interface, kind="tuntap", mode="tap")
            index = _index(ipr, self.peer_interface)
            ipr.addr("add", index=index, address=self.peer_address, prefixlen=self.prefixlen)
            ipr.link("set", index=index, state="up")
            ipr.link("set", index=_index(ipr, "lo"), state="up")
        if self.kind in _VETH_KINDS:
            with netns.enter(self.endpoint_netns), IPRoute() as ipr:
                eut_index = _index(ipr, self.endpoint_interface)
                if self.kind == "kernel":
                    ipr.addr(
                        "add",
                        index=eut_index,
                        address=self.endpoint_address,
                        prefixlen=self.prefixlen,
                    )
                ipr.link("set", index=eut_index, state="up")
                ipr.link("set", index=_index(ipr, "lo"), state="up")
                # Until the carrier is seen the kernel's qdisc is a no-op that drops
                # frames, so wait for it rather than lose a test's first packets.
                _wait_oper_up(ipr, eut_index)
            with netns.enter(self.peer_netns), IPRoute() as ipr:
                _wait_oper_up(ipr, _index(ipr, self.peer_interface))

    def _record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "namespaces": list(self.namespaces),
            "interfaces": {"peer": self.peer_interface, "endpoint": self.endpoint_interface},
            "netns": {"peer": self.peer_netns, "endpoint": self.endpoint_netns},
            "addresses": {
                "peer": f"{self.peer_address}/{self.prefixlen}",
                "endpoint": self.endpoint_cidr,
            },
            "creator_pid": self._creator_pid,
            "creator_start": _process_start(self._creator_pid),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "persist": self.persist,
        }

    @classmethod
    def from_record(cls, name: str) -> Lab:
        """A Lab object for a recorded lab that is up (e.g. one made by `lab up`)."""
        for rec in list_recorded():
            if rec["name"] == name:
                lab = cls(rec["kind"])
                lab.name = name
                lab.peer_netns = rec["netns"]["peer"]
                lab.endpoint_netns = rec["netns"]["endpoint"]
                lab.peer_interface = rec["interfaces"]["peer"]
                lab.endpoint_interface = rec["interfaces"]["endpoint"]
                lab.namespaces = tuple(rec["namespaces"])
                lab.persist = bool(rec.get("persist", False))
                lab._creator_pid = int(rec["creator_pid"])
                lab._state = "up"
                return lab
        raise LookupError(f"no recorded lab named {name!r}")

    # -- using ----------------------------------------------------------------------

    def stack(self, **kwargs: Any) -> Stack:
        """A Stack owning the endpoint's address on the lab's endpoint interface;
        kwargs go to Stack (config=, impairment=, ...). Close it before the lab."""
        return Stack(
            self.endpoint_interface, self.endpoint_cidr, netns=self.endpoint_netns, **kwargs
        )

    def in_peer(self) -> contextlib.AbstractContextManager[None]:
        """Context manager: the calling thread runs inside the peer namespace."""
        return netns.enter(self.peer_netns)

    def in_endpoint(self) -> contextlib.AbstractContextManager[None]:
        """Context manager: the calling thread runs inside the endpoint's namespace
        (in a "kernel" lab, where kernel sockets own 198.18.0.2)."""
        return netns.enter(self.endpoint_netns)

    def peer_popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return netns.popen(self.peer_netns, argv, **kwargs)

    def capture_peer(self, path: str | os.PathLike[str], **kwargs: Any) -> FileCapture:
        """Start writing every frame on the kernel's lab interface to the pcapng file
        `path` (dumpcap in the peer namespace; kwargs go to FileCapture). It runs
        until its stop() or the lab's removal, and has started when this returns."""
        self._require_up()
        capture = FileCapture(self.peer_interface, self.peer_netns, path, **kwargs).start()
        self._captures.append(capture)
        return capture

    def peer_run(
        self, argv: Sequence[str], timeout: float, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        return netns.run(self.peer_netns, argv, timeout, **kwargs)

    def peer_tcp_sockets(self) -> list[KernelSocket]:
        """Every TCP socket of the peer namespace, TIME_WAIT and SYN-RECV included."""
        return self._tcp_sockets(self.peer_netns)

    def endpoint_tcp_sockets(self) -> list[KernelSocket]:
        """Every kernel TCP socket of the endpoint's namespace (a "kernel" lab's
        reference sockets; none otherwise, since the endpoint is ours)."""
        return self._tcp_sockets(self.endpoint_netns)

    def _tcp_sockets(self, namespace: str) -> list[KernelSocket]:
        with self._diag_lock:
            if self._state != "up":
                raise RuntimeError(f"{self!r} is not up")
            diag = self._diags.get(namespace)
            if diag is None:
                # A netlink socket answers for the namespace it was created in.
                with netns.enter(namespace):
                    diag = self._diags[namespace] = _InetDiag()
            found: list[KernelSocket] = []
            for family in (socket.AF_INET, socket.AF_INET6):
                for state, local, remote in diag.dump(family):
                    found.append(
                        KernelSocket(
                            state=_KERNEL_STATES.get(state, "CLOSED"),
                            local=(_unmap(local[0]), local[1]),
                            remote=(_unmap(remote[0]), remote[1]),
                        )
                    )
            return found

    def peer_listening(self, port: int) -> bool:
        """Whether a kernel socket in the peer namespace listens on port."""
        return any(s.state == "LISTEN" and s.local[1] == port for s in self.peer_tcp_sockets())

    def wait_peer_listening(self, port: int, timeout: float = 10.0) -> None:
        """Return once a kernel socket in the peer namespace listens on port: a
        server started there with peer_popen() is ready for connections."""
        deadline = time.monotonic() + timeout
        while not self.peer_listening(port):
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port} in {self.peer_netns}")
            time.sleep(0.005)

    def peer_tcp_state(self, local: tuple[str, int], remote: tuple[str, int]) -> str | None:
        """State of the peer's socket with this local and remote address, or None."""
        for sock in self.peer_tcp_sockets():
            if sock.local == local and sock.remote == remote:
                return sock.state
        return None

    # -- the kernel's side: nftables and counters --------------------------------------

    def nft(self, ruleset: str) -> None:
        """Load RULESET (nft -f syntax) in the peer namespace; NftError if nft refuses."""
        self._nft(["-f", "-"], ruleset)

    def peer_loss(
        self,
        percent: float = 100.0,
        *,
        direction: str = "both",
        tcp_flags: str | None = None,
        nth: int | None = None,
    ) -> None:
        """Drop TCP packets in the peer namespace, replacing any earlier peer_loss.

        direction: "in" (packets the kernel receives), "out" (packets it sends) or
        "both". percent: the chance each matching packet is dropped (0.01 steps; 0
        clears). nth=k: drop exactly the k-th matching packet (1-based, both directions
        counted together) and no other. tcp_flags: only packets whose SYN/ACK/FIN/RST
        flags are exactly these, e.g. "syn,ack" (PSH and URG are ignored).

        Measured here: a drop on the way *in* is a loss like any on the wire, but one
        on the way *out*, even at the device's egress hook, is reported back to the
        kernel's own TCP as a failed send and it simply sends again (TcpRetransSegs
        does not move). So "out" loses the kernel's pure ACKs, which nobody resends,
        but not its data; to lose the kernel's data, drop it where it arrives (our
        impairment layer's inbound loss, or `endpoint_loss` on a "kernel" lab)."""
        self._loss(self.peer_netns, self.peer_interface, percent, direction, tcp_flags, nth)

    def endpoint_loss(
        self,
        percent: float = 100.0,
        *,
        direction: str = "in",
        tcp_flags: str | None = None,
        nth: int | None = None,
    ) -> None:
        """peer_loss() for the eut namespace of a "kernel" lab (its second kernel)."""
        if self.kind != "kernel":
            raise ValueError("endpoint_loss needs a 'kernel' lab: elsewhere no kernel is there")
        self._loss(self.endpoint_netns, self.endpoint_interface, percent, direction, tcp_flags, nth)

    def _loss(
        self,
        namespace: str,
        interface: str,
        percent: float,
        direction: str,
        tcp_flags: str | None,
        nth: int | None,
    ) -> None:
        if nth is None and percent == 0:
            ruleset = f"table netdev {LOSS_TABLE}\ndelete table netdev {LOSS_TABLE}\n"
        else:
            ruleset = loss_ruleset(
                interface, percent, direction=direction, tcp_flags=tcp_flags, nth=nth
            )
        self._nft(["-f", "-"], ruleset, namespace=namespace)

    def peer_loss_clear(self) -> None:
        """Remove the peer_loss() rules, if any."""
        # Adding first makes the delete valid whether or not the table exists.
        self.nft(f"table netdev {LOSS_TABLE}\ndelete table netdev {LOSS_TABLE}\n")

    def peer_loss_dropped(self) -> int:
        """Packets the current peer_loss() rules have dropped."""
        shown = self._nft(["-j", "list", "counter", "netdev", LOSS_TABLE, "dropped"])
        for item in json.loads(shown)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise NftError(f"no drop counter in {LOSS_TABLE}: {shown!r}")

    def peer_nstat(self) -> dict[str, int]:
        """The kernel's counters in the peer namespace, e.g. TcpRetransSegs."""
        self._require_up()
        return read_nstat(self.peer_netns)

    def endpoint_nstat(self) -> dict[str, int]:
        """The same for the eut namespace (a "kernel" lab's second kernel)."""
        self._require_up()
        return read_nstat(self.endpoint_netns)

    def _require_up(self) -> None:
        if self._state != "up":
            raise RuntimeError(f"{self!r} is not up")

    def _nft(
        self, args: Sequence[str], stdin: str | None = None, *, namespace: str | None = None
    ) -> str:
        self._require_up()
        binary = _nft_binary()
        where = namespace or self.peer_netns
        done = netns.run(
            where,
            [binary, *args],
            _NFT_TIMEOUT,
            input=stdin,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise NftError(
                f"nft {' '.join(args)} failed in {where} "
                f"(exit {done.returncode}): {done.stderr.strip()}"
            )
        return str(done.stdout)

    def describe(self) -> list[str]:
        lines = [f"lab {self.name} ({self.kind}, {self._state})"]
        lines.append(
            f"  kernel peer: netns {self.peer_netns}, interface {self.peer_interface}, "
            f"{self.peer_address}/{self.prefixlen}"
        )
        owner = (
            "a kernel address: the kernel-to-kernel reference"
            if self.kind == "kernel"
            else "owned by the userspace endpoint, not the kernel"
        )
        lines.append(
            f"  endpoint:    netns {self.endpoint_netns}, interface {self.endpoint_interface}, "
            f"{self.endpoint_cidr} ({owner})"
        )
        lines.append(f"  run beside the peer: ip netns exec {self.peer_netns} ss -tan")
        if self.kind == "kernel":
            lines.append(f"  run beside the endpoint: ip netns exec {self.endpoint_netns} ss -tan")
        lines.append(f"  remove: tcpstack lab down {self.name}")
        return lines


# -- nftables and counters ---------------------------------------------------------


class NftError(RuntimeError):
    """nft is missing or refused a command; the message carries its stderr."""


def _nft_binary() -> str:
    # sudo's secure_path has /usr/sbin, but a plain root shell's PATH may not.
    found = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
    if found is None:
        raise NftError("nft not found: install Debian's nftables package (scripts/setup does)")
    return found


def loss_ruleset(
    interface: str,
    percent: float = 100.0,
    *,
    direction: str = "both",
    tcp_flags: str | None = None,
    nth: int | None = None,
) -> str:
    """The nft ruleset behind `Lab.peer_loss()`, for the kernel's INTERFACE."""
    # netdev ingress/egress on the kernel's interface, not ip input/output: a packet
    # the kernel's own TCP sends and netfilter drops at ip output is reported back
    # to TCP as a local send error and simply retried, which is no loss at all.
    # Dropped at the device's egress it is lost on the wire, as netem would do.
    hooks = {"in": ("ingress",), "out": ("egress",), "both": ("ingress", "egress")}
    if direction not in hooks:
        raise ValueError(f"direction must be 'in', 'out' or 'both', not {direction!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", interface):
        raise ValueError(f"invalid interface name: {interface!r}")
    match = []
    if tcp_flags is not None:
        wanted = [f.strip().lower() for f in tcp_flags.split(",")]
        if not all(f in _TCP_FLAGS for f in wanted) or len(set(wanted)) != len(wanted):
            raise ValueError(
                f"tcp_flags must name distinct flags among {', '.join(_TCP_FLAGS)}: {tcp_flags!r}"
            )
        exact = " | ".join(f for f in _TCP_FLAGS if f in wanted)
        match.append(f"tcp flags & ({' | '.join(_TCP_FLAGS)}) == {exact}")
    if not (0.0 <= percent <= 100.0):
        raise ValueError(f"percent must be in 0..100, not {percent!r}")
    if nth is not None:
        if percent != 100.0:
            raise ValueError("nth drops its packet for certain: leave percent at 100")
        if not 1 <= nth < _NTH_MODULUS:
            raise ValueError(f"nth must be a positive packet number, not {nth!r}")
        # numgen inc yields 0 for the first packet that reaches it, and only matching
        # packets reach it, so this is the nth match and no other.
        match.append(f"numgen inc mod {_NTH_MODULUS} == {nth - 1}")
    elif percent < 100.0:
        if percent == int(percent):
            match.append(f"numgen random mod 100 < {int(percent)}")
        else:
            hundredths = round(percent * 100)
            if hundredths == 0 or abs(hundredths - percent * 100) > 1e-6:
                raise ValueError(f"percent resolution is 0.01, not {percent!r}")
            match.append(f"numgen random mod 10000 < {hundredths}")
    lines = [
        # Add, delete and re-add in one transaction: replaces any earlier table atomically.
        f"table netdev {LOSS_TABLE}",
        f"delete table netdev {LOSS_TABLE}",
        f"table netdev {LOSS_TABLE} {{",
        "    counter dropped { }",
        # One chain behind both hooks, so a single numgen counts every matching packet.
        "    chain lossy {",
        f"        {' '.join([*match, 'counter name dropped drop'])}",
        "    }",
    ]
    for hook in hooks[direction]:
        lines += [
            f"    chain {hook} {{",
            f'        type filter hook {hook} device "{interface}" priority filter; policy accept;',
            "        meta protocol ip ip protocol tcp jump lossy",
            "    }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def read_nstat(namespace: str) -> dict[str, int]:
    """/proc/net/snmp and /proc/net/netstat of NAMESPACE as {"TcpRetransSegs": n, ...}."""
    texts = []
    with netns.enter(namespace):
        # /proc/self/net follows the thread group leader; thread-self follows setns.
        for name in ("snmp", "netstat"):
            with open(f"/proc/thread-self/net/{name}") as f:
                texts.append(f.read())
    counters: dict[str, int] = {}
    for text in texts:
        lines = text.splitlines()
        # Each group is a header line of names and a line of values, same prefix.
        for header, values in zip(lines[::2], lines[1::2], strict=False):
            prefix, _, names = header.partition(":")
            vprefix, _, numbers = values.partition(":")
            if prefix != vprefix:
                raise ValueError(f"unexpected counter layout in /proc: {header!r}")
            for key, value in zip(names.split(), numbers.split(), strict=True):
                counters[prefix + key] = int(value)
    return counters


# -- helpers -----------------------------------------------------------------------


def _write_sysctl(key: str, value: str) -> None:
    # /proc/sys/net resolves against the calling thread's namespace.
    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(value)


def _index(ipr: Any, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise OSError(f"interface {ifname!r} not found")
    return int(found[0])


def _wait_oper_up(ipr: Any, index: int) -> None:
    deadline = time.monotonic() + _UP_TIMEOUT
    while True:
        (link,) = ipr.link("get", index=index)
        if link.get("IFLA_OPERSTATE") == "UP":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"interface {index} not operationally up")
        time.sleep(0.005)


def _unmap(address: str) -> str:
    # Dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d.
    return address[7:] if address.startswith("::ffff:") and "." in address else address


class _InetDiag:
    """Just enough of the kernel's inet_diag (NETLINK_SOCK_DIAG) to list TCP sockets.

    Hand-parsed because pyroute2's generic parser costs about 0.1 ms per socket
    (70 ms for 600 sockets, slower than forking ss); this takes microseconds."""

    _NETLINK_SOCK_DIAG = 4
    _SOCK_DIAG_BY_FAMILY = 20
    _NLMSG_ERROR = 2
    _NLMSG_DONE = 3
    _NLM_F_REQUEST_DUMP = 0x001 | 0x300
    _HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
    _REQUEST = struct.Struct("=BBBBI48x")  # struct inet_diag_req_v2, empty sockid
    _SOCKID = struct.Struct("!HH16s16s")  # ports and addresses of inet_diag_sockid

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, self._NETLINK_SOCK_DIAG)
        self._sock.settimeout(5.0)
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def dump(self, family: int) -> list[tuple[int, tuple[str, int], tuple[str, int]]]:
        self._seq += 1
        body = self._REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, _DIAG_STATES)
        header = self._HEADER.pack(
            self._HEADER.size + len(body),
            self._SOCK_DIAG_BY_FAMILY,
            self._NLM_F_REQUEST_DUMP,
            self._seq,
            0,
        )
        self._sock.send(header + body)
        width = 4 if family == socket.AF_INET else 16
        found: list[tuple[int, tuple[str, int], tuple[str, int]]] = []
        while True:
            data = self._sock.recv(1 << 17)
            offset = 0
            while offset + self._HEADER.size <= len(data):
                length, kind, _, seq, _ = self._HEADER.unpack_from(data, offset)
                if length < self._HEADER.size:
                    raise OSError("malformed netlink reply")
                body_at = offset + self._HEADER.size
                offset += (length + 3) & ~3
                if seq != self._seq:
                    continue
                if kind == self._NLMSG_DONE:
                    return found
                if kind == self._NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, body_at)[0]
                    raise OSError(code, f"inet_diag: {os.strerror(code)}")
                if kind == self._SOCK_DIAG_BY_FAMILY:
                    state = data[body_at + 1]
                    sport, dport, src, dst = self._SOCKID.unpack_from(data, body_at + 4)
                    found.append(
                        (
                            state,
                            (socket.inet_ntop(family, src[:width]), sport),
                            (socket.inet_ntop(family, dst[:width]), dport),
                        )
                    )


def _process_start(pid: int) -> int | None:
    """Start time of PID in clock ticks since boot: tells a live creator from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _creator_alive(rec: dict[str, Any]) -> bool:
    start = _process_start(int(rec.get("creator_pid", 0)))
    return start is not None and start == rec.get("creator_start")


# -- records --------------------------------------------------------------------------


def _write_record(rec: dict[str, Any]) -> None:
    directory = record_dir()
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{rec['name']}.tmp"
    tmp.write_text(json.dumps(rec, indent=2) + "\n")
    tmp.rename(directory / f"{rec['name']}.json")


def _delete_record(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (record_dir() / f"{name}.json").unlink()


def _valid_record(rec: Any, stem: str) -> bool:
    if not isinstance(rec, dict) or rec.get("name") != stem or not _NAME_RE.match(stem):
        return False
    spaces = rec.get("namespaces")
    return isinstance(spaces, list) and all(
        isinstance(n, str) and n.startswith(stem + "-") and "/" not in n for n in spaces
    )


def list_recorded() -> list[dict[str, Any]]:
    """The lab records this code wrote (malformed or foreign files are ignored)."""
    found = []
    for file in sorted(record_dir().glob("tcps-*.json")):
        try:
            rec = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        if _valid_record(rec, file.stem):
            rec["creator_alive"] = _creator_alive(rec)
            found.append(rec)
    return found


def down_recorded(name: str | None = None, stale_only: bool = True) -> list[str]:
    """Remove the recorded lab NAME, or (NAME None) every recorded lab, or with
    stale_only only those whose creating process is gone. Returns the names removed."""
    records = list_recorded()
    if name is not None:
        records = [r for r in records if r["name"] == name]
        if not records:
            raise LookupError(f"no recorded lab named {name!r}")
    removed = []
    for rec in records:
        if stale_only and rec["creator_alive"]:
            continue
        with _live_lock:
            live = _live.get(rec["name"])
        if live is not None:
            live.down()
        else:
            with _signals_deferred():
                for space in rec["namespaces"]:
                    if netns.exists(space):
                        netns.remove(space)
                _delete_record(rec["name"])
        removed.append(rec["name"])
    return removed


# -- teardown observers ------------------------------------------------------------------

_teardown_observers: list[Callable[[Lab], None]] = []
_observers_lock = threading.Lock()


def add_teardown_observer(observer: Callable[[Lab], None]) -> Callable[[], None]:
    """Have `observer(lab)` called by every Lab.down() in this process just before the
    lab's namespaces are removed; returns a function that stops it (safe to call twice).

    Namespaces are removed however the observer ends: an Exception it raises is kept
    in `lab.teardown_errors`. It runs on whichever thread called down(), possibly
    while another test thread is busy, so it should be quick and thread-safe."""
    with _observers_lock:
        _teardown_observers.append(observer)

    def remove() -> None:
        with _observers_lock:
            with contextlib.suppress(ValueError):
                _teardown_observers.remove(observer)

    return remove


# -- cleanup at exit and on signals ----------------------------------------------------

_live: dict[str, Lab] = {}
_live_lock = threading.RLock()
_saved_handlers: dict[int, Any] = {}
_atexit_registered = False
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # Raise rather than clean up here: the with-blocks and atexit do the removal,
    # and they also cover the paths that never see a signal.
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _register(lab: Lab) -> None:
    global _atexit_registered
    with _live_lock:
        _live[lab.name] = lab
        if not _atexit_registered:
            atexit.register(_down_all)
            _atexit_registered = True
        if not _saved_handlers and _in_main_thread():
            for sig in _SIGNALS:
                _saved_handlers[sig] = signal.signal(sig, _on_signal)


def _unregister(lab: Lab) -> None:
    with _live_lock:
        _live.pop(lab.name, None)
        if not _live and _saved_handlers and _in_main_thread():
            for sig, handler in _saved_handlers.items():
                signal.signal(sig, handler)
            _saved_handlers.clear()


def live_labs() -> list[Lab]:
    """The labs this process has up and would remove at exit (persistent ones aside)."""
    with _live_lock:
        return list(_live.values())


def _down_all() -> None:
    with _live_lock:
        labs = list(_live.values())
    for lab in labs:
        # A forked child inherits this registry and atexit hooks; only the process
        # that built a lab may tear it down.
        if lab._creator_pid == os.getpid():
            with contextlib.suppress(Exception):
                lab.down()


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, so building or removing a lab is
    never cut in half by our own raising handler."""
    if not _in_main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# -- for the CLI -------------------------------------------------------------------------


def main_up(kind: str, persist: bool) -> Lab:
    """`tcpstack lab up`: build a lab; with persist it outlives the command."""
    return Lab(kind).up(persist=persist)


def main_down(name: str | None) -> list[str]:
    """`tcpstack lab down [NAME]`: remove NAME, or every lab whose creator has exited."""
    return down_recorded(name, stale_only=name is None)
