"""The kernel oracle can fail a test: a broken segment the kernel really counted is
read as its lab goes down and reported as unexpected, and an allowance silences it."""

from __future__ import annotations

import pytest
from pyroute2 import IPRoute

from tcpstack import netns, wire
from tcpstack.core.segment import Flags, Segment
from tcpstack.lab import Lab, add_teardown_observer
from tcpstack.link import PacketLink
from tcpstack.testing import oracle
from tests.integration.kernel import wait_until

pytestmark = pytest.mark.netns

OUR_MAC = wire.parse_mac("02:00:5e:10:00:02")  # locally administered, never a real NIC's
# Ethernet (14) and an IPv4 header without options (20), then 16 bytes into TCP.
TCP_CHECKSUM_AT = 14 + 20 + 16
BAD = 3


def peer_mac(lab: Lab) -> bytes:
    with netns.enter(lab.peer_netns), IPRoute() as ipr:
        (link,) = ipr.link("get", ifname=lab.peer_interface)
    return wire.parse_mac(str(link.get("IFLA_ADDRESS")))


def bad_checksum_syn(lab: Lab) -> bytes:
    syn = Segment(src_port=40000, dst_port=9, seq=1, flags=Flags.SYN, window=1024)
    frame = bytearray(
        wire.encode_tcp(OUR_MAC, peer_mac(lab), lab.endpoint_address, lab.peer_address, syn)
    )
    frame[TCP_CHECKSUM_AT] ^= 0xFF
    return bytes(frame)


# The checksum errors are this test's purpose; the conftest's own watch must let them by.
@pytest.mark.nstat_allows("TcpInCsumErrors", "TcpInErrs")
def test_the_oracle_reports_a_checksum_error_the_kernel_counted() -> None:
    watch = oracle.Watch()
    stop = add_teardown_observer(watch.observe)
    try:
        with Lab("veth") as lab:
            frame = bad_checksum_syn(lab)
            # Without offload the frame leaves as it is, and the kernel checks it.
            with PacketLink(
                lab.endpoint_interface, netns=lab.endpoint_netns, offload=False
            ) as link:
                for _ in range(BAD):
                    link.send(frame)
            wait_until(lambda: lab.peer_nstat()["TcpInCsumErrors"] == BAD, "the kernel's count")
    finally:
        stop()
    # Read by the observer as the lab went down; the namespace is gone now.
    assert not netns.exists(lab.peer_netns)
    (reading,) = watch.readings()
    assert (reading.lab, reading.namespace) == (lab.name, lab.peer_netns)
    assert oracle.unexpected(reading, ()) == {"TcpInCsumErrors": BAD, "TcpInErrs": BAD}
    assert oracle.unexpected(reading, {"TcpInCsumErrors"}) == {"TcpInErrs": BAD}
    assert oracle.unexpected(reading, {"TcpInCsumErrors", "TcpInErrs"}) == {}
    report = watch.report(())
    assert f"TcpInCsumErrors = {BAD} in {lab.peer_netns} (lab {lab.name})" in report
    assert watch.report({"TcpInCsumErrors", "TcpInErrs"}) == ""


def test_an_ordinary_lab_leaves_the_oracle_quiet() -> None:
    # The other half of the proof: the report above is not something every lab gives.
    watch = oracle.Watch()
    with Lab("kernel") as lab:
        watch.observe(lab)
    assert [r.namespace for r in watch.readings()] == [lab.peer_netns, lab.endpoint_netns]
    assert watch.report(()) == ""
