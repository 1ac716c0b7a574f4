"""Raw links against the real kernel: ARP over veth (AF_PACKET) and TAP, and MemoryLink."""

from __future__ import annotations

import select
import socket
import time

import pytest
from pyroute2 import IPRoute
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Ether

from tcpstack import netns
from tcpstack.lab import Lab
from tcpstack.link import Link, MemoryLink, PacketLink, TapLink, detect_kind

pytestmark = pytest.mark.netns

OUR_MAC = "02:00:5e:10:00:02"  # locally administered, never a real NIC's


def peer_mac(lab: Lab) -> str:
    with netns.enter(lab.peer_netns), IPRoute() as ipr:
        (link,) = ipr.link("get", ifname=lab.peer_interface)
    return str(link.get("IFLA_ADDRESS"))


def arp_request(target: str = "198.18.0.1") -> bytes:
    return bytes(
        Ether(src=OUR_MAC, dst="ff:ff:ff:ff:ff:ff")
        / ARP(op=1, hwsrc=OUR_MAC, psrc="198.18.0.2", pdst=target)
    )


def exchange(
    link: Link, frame: bytes, want: type, timeout: float = 5.0
) -> list[tuple[Ether, bool]]:
    """Send FRAME every 200 ms until a frame with layer WANT arrives (a TAP's carrier and
    qdisc come up only once its fd is attached, so the first tries may be dropped).
    Returns every frame received, the wanted one last."""
    seen: list[tuple[Ether, bool]] = []
    deadline = time.monotonic() + timeout
    resend = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() >= resend:
            link.send(frame)
            resend = time.monotonic() + 0.2
        select.select([link], [], [], 0.05)
        for raw, trusted in link.recv_batch():
            seen.append((Ether(raw), trusted))
            if want in seen[-1][0] and (want is not ARP or seen[-1][0][ARP].op == 2):
                return seen
    raise AssertionError(f"no {want.__name__} reply within {timeout}s; saw {seen}")


def check_arp_reply(seen: list[tuple[Ether, bool]], lab: Lab) -> None:
    reply, trusted = seen[-1]
    assert reply.dst == OUR_MAC
    assert reply[ARP].psrc == "198.18.0.1" and reply[ARP].pdst == "198.18.0.2"
    assert reply[ARP].hwsrc == reply.src == peer_mac(lab)
    assert not trusted, "ARP has no checksum to vouch for"
    # Our own transmissions are never handed back to us.
    assert all(frame.src != OUR_MAC for frame, _ in seen)


def test_packet_link_arp_over_veth() -> None:
    with Lab("veth") as lab:
        with PacketLink(lab.endpoint_interface, netns=lab.endpoint_netns) as link:
            assert (link.kind, link.name, link.mtu) == ("packet", lab.endpoint_interface, 1500)
            assert link.recv_batch() == []
            check_arp_reply(exchange(link, arp_request(), ARP), lab)


def test_packet_link_trusts_locally_offloaded_checksums() -> None:
    # A kernel SYN-ACK leaves veth with its checksum still to be filled in (offload);
    # the link must flag it as trusted rather than have it fail verification.
    with Lab("veth") as lab:
        with lab.in_peer():
            listener = socket.socket()
        with listener, PacketLink(lab.endpoint_interface, netns=lab.endpoint_netns) as link:
            listener.bind((lab.peer_address, 0))
            listener.listen()
            exchange(link, arp_request(), ARP)  # teaches the kernel our MAC
            syn = (
                Ether(src=OUR_MAC, dst=peer_mac(lab))
                / IP(src=lab.endpoint_address, dst=lab.peer_address)
                / TCP(sport=40000, dport=listener.getsockname()[1], flags="S", seq=1)
            )
            synack, trusted = exchange(link, bytes(syn), TCP)[-1]
            assert synack[TCP].flags == "SA" and synack[TCP].ack == 2
            assert trusted


def test_packet_link_missing_interface() -> None:
    with Lab("veth") as lab, pytest.raises(OSError):
        PacketLink("tcps-nosuch0", netns=lab.endpoint_netns)


def test_tap_link_arp() -> None:
    with Lab("tap") as lab:
        with TapLink(lab.endpoint_interface, netns=lab.endpoint_netns) as link:
            assert (link.kind, link.name, link.mtu) == ("tap", lab.endpoint_interface, 1500)
            check_arp_reply(exchange(link, arp_request(), ARP), lab)


def test_tap_link_attach_never_creates() -> None:
    with Lab("tap") as lab:
        missing = f"{lab.name}-x"
        with pytest.raises(OSError):
            TapLink(missing, netns=lab.peer_netns)
        with netns.enter(lab.peer_netns), IPRoute() as ipr:
            assert ipr.link_lookup(ifname=missing) == []


def test_tap_link_create_lives_with_its_fd() -> None:
    with Lab("tap") as lab:
        name = f"{lab.name}-x"
        with netns.enter(lab.peer_netns), IPRoute() as ipr:
            with TapLink(name, netns=lab.peer_netns, create=True) as link:
                assert link.mtu == 1500
                (dev,) = ipr.link("get", ifname=name)
                assert dev["flags"] & 1, "brought up"
                with pytest.raises(OSError):
                    TapLink(name, netns=lab.peer_netns, create=True)
            assert ipr.link_lookup(ifname=name) == []


def test_detect_kind() -> None:
    with Lab("veth") as veth, Lab("tap") as tap:
        assert detect_kind(veth.endpoint_interface, veth.endpoint_netns) == "packet"
        assert detect_kind(tap.endpoint_interface, tap.endpoint_netns) == "tap"
        with pytest.raises(OSError):
            detect_kind(veth.endpoint_interface, tap.endpoint_netns)


def test_memory_link_keeps_frame_boundaries() -> None:
    a, b = MemoryLink.pair()
    with a, b:
        assert select.select([b], [], [], 0)[0] == []
        frames = [b"\x01", bytes(60), bytes(range(256)) * 6, b"\xff" * 9000, b"\x00" * 65535]
        for frame in frames:
            a.send(frame)
        assert select.select([b], [], [], 1)[0] == [b]
        assert b.recv_batch(max_frames=2) == [(f, False) for f in frames[:2]]
        assert b.recv_batch() == [(f, False) for f in frames[2:]]
        assert b.recv_batch() == []
        b.send(b"back")
        assert select.select([a], [], [], 1)[0] == [a]
        assert a.recv_batch() == [(b"back", False)]
