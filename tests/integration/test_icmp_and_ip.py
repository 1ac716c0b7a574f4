"""ICMP errors from a real kernel, the IP fields a socket sets, and the addresses
connect() refuses (RFC 9293 §3.9.1.1, §3.9.1.9, §3.9.2.2, §3.7.1).

The ICMP errors are the kernel's own: an nftables `reject` in the peer namespace
answers our segments with the message a router or host would send. Where Linux's
own socket is the reference, the test asks it the same question.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket

import pytest

from tcpstack import TcpConfig, netns
from tcpstack.core.state import State
from tcpstack.lab import Lab
from tcpstack.stack import Stack
from tcpstack.trace import SegmentEvent
from tcpstack.wire import internet_checksum
from tests.integration.kernel import MSL, TIMEOUT, connect, kernel_server, open_stack, wait_until

pytestmark = pytest.mark.netns

REFUSED, UNREACHABLE, MARKED = 7201, 7202, 7203
TABLE = "tcpstack_icmp"


def reject(lab: Lab, port: int, kind: str) -> None:
    """Answer every TCP segment to ``port`` with an ICMP error of ``kind``."""
    lab.nft(
        f"table ip {TABLE} {{\n chain input {{ type filter hook input priority 0; "
        f"policy accept;\n  tcp dport {port} reject with icmp type {kind}\n }}\n}}\n"
    )


def test_a_port_unreachable_refuses_connect_at_once(lab: Lab, stack: Stack) -> None:
    # SHLD-26: a hard error while opening ends the attempt, as Linux's connect() does.
    reject(lab, REFUSED, "port-unreachable")
    s = stack.socket()
    s.settimeout(TIMEOUT)
    with pytest.raises(ConnectionRefusedError):
        s.connect((lab.peer_address, REFUSED))
    assert stack.stats().get("retransmissions", 0) == 0  # before any SYN went again
    assert stack.stats()["connections_unreachable"] == 1
    s.close()


def test_a_host_unreachable_while_opening_is_soft_and_named_at_the_end(lab: Lab) -> None:
    # MUST-56: codes 0, 1 and 5 never abort; the SYN goes again. When the attempt
    # gives up, the error it reports is the soft one (MUST-47), as Linux's would.
    reject(lab, UNREACHABLE, "host-unreachable")
    config = TcpConfig(msl=MSL, rto_initial=0.2, syn_retries=2)
    with open_stack(lab, config=config) as stack:
        s = stack.socket()
        s.settimeout(TIMEOUT)
        with pytest.raises(OSError) as failed:
            s.connect((lab.peer_address, UNREACHABLE))
        assert failed.value.errno == errno.EHOSTUNREACH
        assert stack.stats()["retransmissions"] == 2
        s.close()


def test_an_icmp_error_on_an_established_connection_is_reported_not_fatal(
    lab: Lab, stack: Stack
) -> None:
    s, peer = connect(stack, lab, UNREACHABLE)
    with s, peer:
        # RFC 5927 §7.2: even a hard error leaves an established connection up.
        reject(lab, UNREACHABLE, "port-unreachable")
        s.sendall(b"into the void")
        reported: list[int] = []
        wait_until(
            lambda: bool(reported.append(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
                         or reported[-1]),
            "the soft error",
        )  # fmt: skip
        assert reported[-1] == errno.ECONNREFUSED
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0  # read once, as Linux
        assert s.state is State.ESTABLISHED


def test_the_user_timeout_ends_a_connection_and_names_the_icmp_error(
    lab: Lab, stack: Stack
) -> None:
    # MUST-21: the application sets R2 for its connection; the error reported is the
    # soft one the ICMP messages brought, not ETIMEDOUT (Linux's tcp_write_err).
    s, peer = connect(stack, lab, UNREACHABLE)
    with s, peer:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 600)
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 600
        reject(lab, UNREACHABLE, "host-unreachable")
        s.sendall(b"nobody will acknowledge this")
        with pytest.raises(OSError) as failed:
            s.recv(10)
        assert failed.value.errno == errno.EHOSTUNREACH
        # Long before R2: 15 retransmissions would take minutes.
        assert stack.stats()["retransmissions"] < 6


def test_source_quench_changes_nothing(lab: Lab, stack: Stack) -> None:
    # MUST-55 (RFC 6633): Source Quench is ignored. The kernel no longer sends it,
    # so the peer's raw socket does, quoting a segment of ours in flight.
    s, peer = connect(stack, lab, UNREACHABLE)
    with s, peer:
        seen: list[SegmentEvent] = []
        stack.subscribe(lambda e: seen.append(e) if isinstance(e, SegmentEvent) else None)
        s.sendall(b"a" * 1000)
        assert len(peer.recv(1000)) > 0
        ours = next(e for e in seen if e.direction == "out" and e.segment.payload)
        quoted = (
            bytes.fromhex("45000028000040004006") + bytes(2)  # checksum not checked
            + socket.inet_aton(lab.endpoint_address) + socket.inet_aton(lab.peer_address)
            + ours.segment.src_port.to_bytes(2, "big") + ours.segment.dst_port.to_bytes(2, "big")
            + ours.segment.seq.to_bytes(4, "big")
        )  # fmt: skip
        with lab.in_peer():
            raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        with raw:
            message = bytearray(b"\x04\x00\x00\x00" + bytes(4) + quoted)
            checksum = internet_checksum(bytes(message))
            message[2:4] = checksum.to_bytes(2, "big")
            raw.sendto(bytes(message), (lab.endpoint_address, 0))
        wait_until(lambda: stack.stats().get("icmp_ignored", 0) == 1, "the quench to arrive")
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        s.sendall(b"b" * 1000)
        got = b""
        while len(got) < 1000:
            got += peer.recv(2000)
        assert got.endswith(b"b" * 1000)


def test_ttl_and_dscp_set_by_the_application_reach_the_wire(lab: Lab, stack: Stack) -> None:
    # MUST-48/49, SHLD-21/22: IP_TTL and IP_TOS go on every segment, SYN included.
    lab.nft(
        f"table ip {TABLE} {{\n counter marked {{ }}\n counter plain {{ }}\n"
        f" chain input {{ type filter hook input priority 0; policy accept;\n"
        f"  ip saddr {lab.endpoint_address} tcp dport {MARKED} ip ttl 9 ip dscp af11"
        f" counter name marked\n"
        f"  ip saddr {lab.endpoint_address} tcp dport {MARKED} ip ttl 64 ip dscp cs0"
        f" counter name plain\n }}\n}}\n"
    )
    server = kernel_server(lab, MARKED)
    with server:
        s = stack.socket()
        s.settimeout(TIMEOUT)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 9)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x28 | 0x03)  # ECN bits are TCP's
        assert s.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == 0x28
        s.connect((lab.peer_address, MARKED))
        peer, _ = server.accept()
        with s, peer:
            s.sendall(b"marked")
            assert peer.recv(10) == b"marked"
            marked = _counter(lab, "marked")
            assert marked >= 3  # SYN, ACK, data
            # Changed mid-connection (SHLD-21): the next segments carry the new value.
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, -1)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0)
            s.sendall(b"plain")
            assert peer.recv(10) == b"plain"
            assert _counter(lab, "plain") >= 1
            assert _counter(lab, "marked") == marked
            with pytest.raises(OSError) as bad:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 256)
            assert bad.value.errno == errno.EINVAL


def _counter(lab: Lab, name: str) -> int:
    shown = lab.peer_run(
        ["nft", "-j", "list", "counter", "ip", TABLE, name], timeout=10, capture_output=True
    )
    for item in json.loads(shown.stdout)["nftables"]:
        if "counter" in item:
            return int(item["counter"]["packets"])
    raise AssertionError(f"no counter {name}")


def test_connect_refuses_broadcast_multicast_and_the_network_address(
    lab: Lab, stack: Stack
) -> None:
    # MUST-46; Linux's own socket is asked the same, and says the same.
    network = ipaddress.ip_network(lab.endpoint_cidr, strict=False)
    for address in (str(network.broadcast_address), "224.0.0.1", str(network.network_address)):
        s = stack.socket()
        with pytest.raises(OSError) as ours:
            s.connect((address, 80))
        s.close()
        assert ours.value.errno == errno.ENETUNREACH, address
        if address == str(network.network_address):
            # Linux takes the all-zeros host number for a host and spends seconds
            # on ARP before EHOSTUNREACH; RFC 1122 §3.2.1.3 makes it no host's.
            continue
        with lab.in_peer():
            kernel = socket.socket()
        with kernel, pytest.raises(OSError) as linux:
            kernel.connect((address, 80))
        assert linux.value.errno == errno.ENETUNREACH, address
    assert stack.stats().get("tcp_out", 0) == 0


def test_the_mss_we_announce_follows_the_link_mtu(veth: Lab) -> None:
    # MUST-67: no larger than the largest datagram we can receive, less 40.
    netns.run(
        veth.endpoint_netns,
        ["ip", "link", "set", "dev", veth.endpoint_interface, "mtu", "1280"],
        timeout=10,
        check=True,
    )
    with open_stack(veth) as stack:
        seen: list[SegmentEvent] = []
        stack.subscribe(lambda e: seen.append(e) if isinstance(e, SegmentEvent) else None)
        s, peer = connect(stack, veth, MARKED)
        with s, peer:
            syn = next(e.segment for e in seen if e.direction == "out" and e.segment.syn)
            assert syn.options.mss == 1240
            # The kernel, on a 1500-byte link, will send us nothing bigger.
            assert peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG) <= 1240
