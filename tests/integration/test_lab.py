"""The lab network and the namespace helpers, against the real kernel."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import DiagSocket, IPRoute

from tcpstack import lab as labmod
from tcpstack import netns
from tcpstack.lab import Lab

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def root_state() -> tuple[frozenset[Any], ...]:
    """Interfaces, addresses and routes of the namespace this thread is in."""
    with IPRoute() as ipr:
        links = frozenset((m["index"], m.get("IFLA_IFNAME")) for m in ipr.link("dump"))
        addrs = frozenset(
            (m["index"], m.get("IFA_ADDRESS"), m["prefixlen"]) for m in ipr.addr("dump")
        )
        routes = frozenset(
            (m.get("RTA_TABLE"), m["family"], m.get("RTA_DST"), m["dst_len"], m.get("RTA_OIF"))
            for family in (socket.AF_INET, socket.AF_INET6)
            for m in ipr.route("dump", family=family)
        )
    return links, addrs, routes


def ns_view(name: str) -> dict[str, Any]:
    with netns.enter(name), IPRoute() as ipr:
        links = {m.get("IFLA_IFNAME"): m for m in ipr.link("dump")}
        addrs = [(m["index"], m.get("IFA_ADDRESS"), m["prefixlen"]) for m in ipr.addr("dump")]
        routes = [
            m
            for family in (socket.AF_INET, socket.AF_INET6)
            for m in ipr.route("dump", family=family)
        ]
    return {"links": links, "addrs": addrs, "routes": routes}


def read_sysctl(key: str) -> str:
    with open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()


SYSCTLS = (
    "net.ipv6.conf.all.disable_ipv6",
    "net.ipv6.conf.default.disable_ipv6",
    "net.ipv4.tcp_no_metrics_save",
)


def check_common(lab: Lab, view: dict[str, Any]) -> None:
    assert view["links"]["lo"]["flags"] & 1, "lo is up"
    for route in view["routes"]:
        assert route["dst_len"] != 0, f"default route in lab: {route}"
    assert not any(a[1] and ":" in a[1] for a in view["addrs"]), "no IPv6 addresses"


# -- namespace helpers ---------------------------------------------------------------------


def test_enter_never_creates() -> None:
    name = "tcps-absent-" + os.urandom(3).hex()
    with pytest.raises(FileNotFoundError), netns.enter(name):
        pass
    assert not netns.exists(name)
    with pytest.raises(ValueError):
        netns.path("../etc")


def test_enter_is_per_thread_and_restores() -> None:
    def ns_inode() -> int:
        return os.stat("/proc/thread-self/ns/net").st_ino

    home = ns_inode()
    seen: list[int] = []
    go = threading.Event()

    def look() -> None:
        if go.wait(timeout=10):
            seen.append(ns_inode())

    # Started before enter(): a thread started inside would inherit the namespace.
    worker = threading.Thread(target=look)
    worker.start()
    with Lab("tap") as lab:
        with pytest.raises(RuntimeError, match="inside"), lab.in_peer():
            assert ns_inode() != home
            go.set()
            worker.join(timeout=10)
            raise RuntimeError("inside")
        assert ns_inode() == home
    assert seen == [home]


def test_socket_made_inside_stays_inside() -> None:
    with Lab("veth") as lab:
        with lab.in_peer():
            listener = socket.socket()
        with listener:
            listener.bind((lab.peer_address, 0))
            listener.listen()
            port = listener.getsockname()[1]
            shown = lab.peer_run(["ss", "-tlnH"], timeout=10, capture_output=True, text=True)
            assert f"{lab.peer_address}:{port}" in shown.stdout
            shown = subprocess.run(
                ["ip", "netns", "exec", lab.peer_netns, "ss", "-tlnH"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            assert f"{lab.peer_address}:{port}" in shown.stdout
            with DiagSocket() as diag:
                diag.bind()
                root = diag.get_sock_stats(family=socket.AF_INET)
            assert all(m["idiag_sport"] != port or m["idiag_src"] != lab.peer_address for m in root)
            assert lab.peer_tcp_state((lab.peer_address, port), ("0.0.0.0", 0)) == "LISTEN"


# -- building labs --------------------------------------------------------------------------


def test_veth_lab_layout() -> None:
    root_sysctls = {k: read_sysctl(k) for k in SYSCTLS}
    with Lab("veth") as lab:
        assert lab.name.startswith("tcps-") and lab.kind == "veth"
        assert lab.namespaces == (f"{lab.name}-peer", f"{lab.name}-eut")
        assert all(netns.exists(n) for n in lab.namespaces)
        assert (lab.peer_address, lab.prefixlen) == ("198.18.0.1", 24)
        assert (lab.endpoint_address, lab.endpoint_cidr) == ("198.18.0.2", "198.18.0.2/24")
        assert len(lab.peer_interface) <= 15 and len(lab.endpoint_interface) <= 15

        peer = ns_view(lab.peer_netns)
        check_common(lab, peer)
        veth = peer["links"][lab.peer_interface]
        assert veth.get(("linkinfo", "kind")) == "veth"
        assert veth.get("IFLA_OPERSTATE") == "UP"
        assert (veth["index"], "198.18.0.1", 24) in peer["addrs"]

        eut = ns_view(lab.endpoint_netns)
        check_common(lab, eut)
        end = eut["links"][lab.endpoint_interface]
        assert end.get("IFLA_OPERSTATE") == "UP"
        assert [a for a in eut["addrs"] if a[0] == end["index"]] == [], "eut end has no address"
        assert set(eut["links"]) == {"lo", lab.endpoint_interface}

        for name in lab.namespaces:
            with netns.enter(name):
                assert read_sysctl("net.ipv6.conf.all.disable_ipv6") == "1"
                assert read_sysctl("net.ipv6.conf.default.disable_ipv6") == "1"
        with lab.in_peer():
            assert read_sysctl("net.ipv4.tcp_no_metrics_save") == "1"
        assert {k: read_sysctl(k) for k in SYSCTLS} == root_sysctls
    assert not any(netns.exists(n) for n in lab.namespaces)


def test_tap_lab_layout() -> None:
    with Lab("tap") as lab:
        assert lab.namespaces == (f"{lab.name}-peer",)
        assert lab.endpoint_netns == lab.peer_netns
        assert lab.endpoint_interface == lab.peer_interface
        assert len(lab.peer_interface) <= 15
        peer = ns_view(lab.peer_netns)
        check_common(lab, peer)
        tap = peer["links"][lab.peer_interface]
        assert tap.get(("linkinfo", "kind")) == "tun"
        assert tap["flags"] & 1, "administratively up"
        assert (tap["index"], "198.18.0.1", 24) in peer["addrs"]
        assert set(peer["links"]) == {"lo", lab.peer_interface}
        with lab.in_peer():
            assert read_sysctl("net.ipv6.conf.all.disable_ipv6") == "1"
            assert read_sysctl("net.ipv4.tcp_no_metrics_save") == "1"


@pytest.mark.parametrize("kind", ["veth", "tap", "kernel"])
def test_root_namespace_untouched(kind: str) -> None:
    before = root_state()
    with Lab(kind) as lab:
        if kind == "kernel":
            kernel_echo(lab)
            lab.peer_nstat()
        during = root_state()
        lab.peer_tcp_sockets()
    after = root_state()
    assert before == during == after
    links, addrs, routes = after
    assert not any(name and name.startswith("tcps-") for _, name in links)
    assert not any(a and a.startswith("198.18.") for _, a, _ in addrs)
    assert not any(dst and str(dst).startswith("198.18.") for _, _, dst, _, _ in routes)


def test_kernel_lab_layout() -> None:
    with Lab("kernel") as lab:
        assert lab.kind == "kernel"
        assert lab.namespaces == (f"{lab.name}-peer", f"{lab.name}-eut")
        assert lab.endpoint_netns == f"{lab.name}-eut"
        peer = ns_view(lab.peer_netns)
        check_common(lab, peer)
        assert (peer["links"][lab.peer_interface]["index"], "198.18.0.1", 24) in peer["addrs"]
        eut = ns_view(lab.endpoint_netns)
        check_common(lab, eut)
        end = eut["links"][lab.endpoint_interface]
        assert end.get(("linkinfo", "kind")) == "veth"
        assert end.get("IFLA_OPERSTATE") == "UP"
        # The only difference from a veth lab: the eut end is a kernel address.
        assert [a for a in eut["addrs"] if a[0] == end["index"]] == [
            (end["index"], "198.18.0.2", 24)
        ]
        assert set(eut["links"]) == {"lo", lab.endpoint_interface}
        with lab.in_endpoint():
            assert read_sysctl("net.ipv6.conf.all.disable_ipv6") == "1"
            assert read_sysctl("net.ipv4.tcp_no_metrics_save") == "1"
        text = "\n".join(lab.describe())
        assert "kernel-to-kernel" in text and lab.endpoint_netns in text
        (rec,) = [r for r in labmod.list_recorded() if r["name"] == lab.name]
        assert rec["kind"] == "kernel" and rec["namespaces"] == list(lab.namespaces)
    assert not any(netns.exists(n) for n in lab.namespaces)
    assert not (labmod.record_dir() / f"{lab.name}.json").exists()


def kernel_echo(lab: Lab, payload: bytes = b"hello, kernel") -> tuple[str, int]:
    """Echo PAYLOAD from a kernel client in the eut namespace off a kernel server in
    the peer namespace; returns the client's address."""
    with lab.in_peer():
        server = socket.create_server((lab.peer_address, 0))
    with lab.in_endpoint():
        client = socket.socket()
    with server, client:
        server.settimeout(5)
        client.settimeout(5)
        client.connect((lab.peer_address, server.getsockname()[1]))
        conn, address = server.accept()
        with conn:
            conn.settimeout(5)
            assert address == client.getsockname()
            assert address[0] == lab.endpoint_address
            client.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = conn.recv(4096)
                assert chunk, "peer closed early"
                got += chunk
            conn.sendall(got)
            echoed = b""
            while len(echoed) < len(payload):
                chunk = client.recv(4096)
                assert chunk, "server closed early"
                echoed += chunk
        assert echoed == payload
        return str(address[0]), int(address[1])


def test_kernel_lab_carries_kernel_tcp() -> None:
    with Lab("kernel") as lab:
        assert kernel_echo(lab)[0] == "198.18.0.2"
        # Both ends are kernel sockets, each counted in its own, fresh namespace.
        eut, peer = lab.endpoint_nstat(), lab.peer_nstat()
        assert (eut["TcpActiveOpens"], eut["TcpPassiveOpens"]) == (1, 0)
        assert (peer["TcpActiveOpens"], peer["TcpPassiveOpens"]) == (0, 1)


def test_two_labs_at_once_are_distinct() -> None:
    with Lab("veth") as a, Lab("veth") as b, Lab("tap") as c:
        names = [x.name for x in (a, b, c)]
        assert len(set(names)) == 3
        spaces = [n for x in (a, b, c) for n in x.namespaces]
        assert len(set(spaces)) == len(spaces)
        ifaces = {a.peer_interface, a.endpoint_interface, b.peer_interface, b.endpoint_interface}
        assert len(ifaces) == 4
        assert all(netns.exists(n) for n in spaces)
    assert not any(netns.exists(n) for n in spaces)


def test_down_removes_everything_and_is_idempotent() -> None:
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    lab = Lab("veth").up()
    assert signal.getsignal(signal.SIGTERM) is not handlers[signal.SIGTERM]
    record = labmod.record_dir() / f"{lab.name}.json"
    assert record.exists()
    assert any(r["name"] == lab.name for r in labmod.list_recorded())
    lab.down()
    lab.down()
    assert not any(netns.exists(n) for n in lab.namespaces)
    assert not record.exists()
    assert not lab.is_up
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    with pytest.raises(RuntimeError):
        lab.up()


def test_failed_up_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Lab) -> None:
        netns.create(self.peer_netns)
        raise OSError("simulated failure half-way through")

    monkeypatch.setattr(Lab, "_build", broken)
    lab = Lab("veth")
    with pytest.raises(OSError, match="simulated"):
        lab.up()
    assert not netns.exists(lab.peer_netns)
    assert not (labmod.record_dir() / f"{lab.name}.json").exists()


def test_exception_inside_with_cleans_up() -> None:
    with pytest.raises(ZeroDivisionError), Lab("veth") as lab:
        assert all(netns.exists(n) for n in lab.namespaces)
        _ = 1 / 0
    assert not any(netns.exists(n) for n in lab.namespaces)


# -- cleanup from another process ------------------------------------------------------------


@contextlib.contextmanager
def child(code: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError("child printed nothing in time")
    line = proc.stdout.readline().strip()
    if not line:
        assert proc.stderr is not None
        raise AssertionError(f"child failed: {proc.stderr.read()}")
    return line


# The child polls in short steps: CPython runs a Python signal handler only between
# bytecodes, so a signal that lands just before one long select() would wait it out.
HOLD_WITH = """
import select, sys, time
from tcpstack.lab import Lab
with Lab("veth") as lab:
    print(lab.name, flush=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not select.select([sys.stdin], [], [], 0.05)[0]:
        pass
"""

# No with-block: only the atexit hook can remove this one.
HOLD_BARE = """
import select, sys, time
from tcpstack.lab import Lab
lab = Lab("veth").up()
print(lab.name, flush=True)
deadline = time.monotonic() + 30
while time.monotonic() < deadline and not select.select([sys.stdin], [], [], 0.05)[0]:
    pass
"""


@pytest.mark.parametrize("code", [HOLD_WITH, HOLD_BARE], ids=["with", "atexit"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_signal_to_holder_cleans_up(signum: int, code: str) -> None:
    with child(code) as proc:
        name = read_line(proc, timeout=20)
        spaces = [f"{name}-peer", f"{name}-eut"]
        try:
            assert all(netns.exists(n) for n in spaces)
            proc.send_signal(signum)
            proc.wait(timeout=20)
            wait_until(lambda: not any(netns.exists(n) for n in spaces), 10, "lab removal")
            assert proc.returncode != 0
            assert not (labmod.record_dir() / f"{name}.json").exists()
        finally:
            if any(netns.exists(n) for n in spaces):
                labmod.down_recorded(name, stale_only=False)


PERSIST = """
from tcpstack.lab import main_up
print(main_up('veth', persist=True).name, flush=True)
"""


def test_persistent_lab_outlives_creator() -> None:
    with child(PERSIST) as proc:
        name = read_line(proc, timeout=20)
        assert proc.wait(timeout=20) == 0
    try:
        (rec,) = [r for r in labmod.list_recorded() if r["name"] == name]
        assert rec["persist"] is True and rec["creator_alive"] is False
        assert rec["kind"] == "veth" and rec["creator_pid"] == proc.pid
        assert rec["addresses"] == {"peer": "198.18.0.1/24", "endpoint": "198.18.0.2/24"}
        assert all(netns.exists(n) for n in rec["namespaces"])
        again = Lab.from_record(name)
        assert again.is_up and again.endpoint_netns == f"{name}-eut"
        assert again.endpoint_interface == rec["interfaces"]["endpoint"]
        assert labmod.main_down(name) == [name]
        assert not any(netns.exists(n) for n in rec["namespaces"])
        with pytest.raises(LookupError):
            labmod.down_recorded(name)
    finally:
        with contextlib.suppress(LookupError):
            labmod.down_recorded(name, stale_only=False)


def test_down_recorded_stale_only_spares_live_labs(
    lab_records: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A record directory of its own keeps other tests' labs out of this sweep.
    private = lab_records / "stale-test"
    env = {"TCPSTACK_LAB_DIR": str(private)}
    monkeypatch.setenv("TCPSTACK_LAB_DIR", str(private))
    with child(PERSIST, env) as proc:
        stale = read_line(proc, timeout=20)
        assert proc.wait(timeout=20) == 0
    try:
        with Lab("tap") as live:
            assert {r["name"] for r in labmod.list_recorded()} == {stale, live.name}
            assert labmod.main_down(None) == [stale]
            assert not netns.exists(f"{stale}-peer")
            assert netns.exists(live.peer_netns)
            # Foreign files in the record directory are never acted on.
            foreign = private / "tcps-zzzzzz.json"
            foreign.write_text('{"name": "x", "namespaces": ["eth0"]}')
            assert [r["name"] for r in labmod.list_recorded()] == [live.name]
            foreign.unlink()
    finally:
        with contextlib.suppress(LookupError):
            labmod.down_recorded(stale, stale_only=False)


# -- the kernel peer's sockets ------------------------------------------------------------


def ss_sockets(lab: Lab) -> set[tuple[str, str, str]]:
    out = lab.peer_run(["ss", "-tanH"], timeout=10, capture_output=True, text=True).stdout
    return {(f[0], f[3], f[4]) for f in (line.split() for line in out.splitlines())}


SS_NAMES = {
    "LISTEN": "LISTEN",
    "SYN_SENT": "SYN-SENT",
    "SYN_RECEIVED": "SYN-RECV",
    "ESTABLISHED": "ESTAB",
    "TIME_WAIT": "TIME-WAIT",
}


# Kernel to kernel on loopback: `half`'s FIN makes the TCP_DEFER_ACCEPT listener
# create a child, and closing the listener with that child unaccepted resets it.
@pytest.mark.nstat_allows("TcpEstabResets")
def test_peer_tcp_sockets_sees_every_state() -> None:
    with Lab("veth") as lab, contextlib.ExitStack() as stack:
        with lab.in_peer():
            made = [socket.socket() for _ in range(5)]
        for s in made:
            stack.enter_context(s)
        server, client, deferred, half, stray = made
        server.bind(("127.0.0.1", 0))
        server.listen()
        srv = ("127.0.0.1", server.getsockname()[1])
        client.connect(srv)
        conn, _ = server.accept()
        stack.enter_context(conn)
        cli = client.getsockname()

        def state(local: tuple[str, int], remote: tuple[str, int]) -> str | None:
            return lab.peer_tcp_state(local, remote)

        assert state(srv, ("0.0.0.0", 0)) == "LISTEN"
        assert state(cli, srv) == "ESTABLISHED" and state(srv, cli) == "ESTABLISHED"

        # The kernel holds a request socket in SYN-RECV until data arrives.
        deferred.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
        deferred.bind(("127.0.0.1", 0))
        deferred.listen()
        dsrv = ("127.0.0.1", deferred.getsockname()[1])
        half.connect(dsrv)
        wait_until(lambda: state(dsrv, half.getsockname()) == "SYN_RECEIVED", 5, "SYN_RECEIVED")

        # Nobody owns 198.18.0.2 in the kernel, so this SYN is never answered.
        stray.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            stray.connect((lab.endpoint_address, 9))
        assert state(stray.getsockname(), (lab.endpoint_address, 9)) == "SYN_SENT"

        # Cross-check against ss, which reads the same kernel tables its own way.
        found = {
            (SS_NAMES[s.state], f"{s.local[0]}:{s.local[1]}", f"{s.remote[0]}:{s.remote[1]}")
            for s in lab.peer_tcp_sockets()
        }
        on_ss = {(st, loc, rem.replace(":*", ":0")) for st, loc, rem in ss_sockets(lab)}
        assert found == on_ss
        assert {st for st, _, _ in found} == {"LISTEN", "ESTAB", "SYN-RECV", "SYN-SENT"}

        client.shutdown(socket.SHUT_WR)
        wait_until(lambda: state(cli, srv) == "FIN_WAIT_2", 5, "FIN_WAIT_2")
        assert state(srv, cli) == "CLOSE_WAIT"
        conn.close()
        wait_until(lambda: state(cli, srv) == "TIME_WAIT", 5, "TIME_WAIT")
        assert state(srv, cli) is None
