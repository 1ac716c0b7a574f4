"""R1 against the kernel (RFC 9293 §3.8.3: MUST-20, SHLD-9, SHLD-10).

The kernel stops hearing us (nftables drops our TCP segments at its door, ARP still
passes). After R1 = 3 retransmissions the socket reports delivery trouble, a trace
event says so once, and our IP layer takes the negative advice: it asks for the
kernel's link address again. When the path heals, the data arrives and the trouble
clears; the connection never ended.
"""

from __future__ import annotations

import pytest

from tcpstack import State, TcpConfig
from tcpstack.lab import Lab
from tcpstack.trace import Recorder, TroubleEvent
from tests.integration.kernel import MSL, connect, open_stack, wait_until

pytestmark = pytest.mark.netns

# A short RTO floor, so three backed-off retransmissions take well under a second.
QUICK = TcpConfig(msl=MSL, rto_min=0.05, rto_initial=0.2)


def test_r1_tells_the_application_and_asks_for_the_peers_address_again(lab: Lab) -> None:
    with open_stack(lab, config=QUICK) as stack:
        recorder = stack.subscribe(Recorder())
        s, peer = connect(stack, lab)
        s.sendall(b"before")
        assert peer.recv(6) == b"before"
        asked = stack.stats()["arp_requests"]
        lab.peer_loss(100, direction="in")
        s.sendall(b"lost")
        wait_until(lambda: s.delivery_trouble, "delivery trouble at R1")
        info = s.info()
        assert info is not None and info.state is State.ESTABLISHED
        wait_until(lambda: stack.stats()["arp_requests"] > asked, "the kernel's MAC asked again")
        lab.peer_loss(0)
        assert peer.recv(4) == b"lost"
        wait_until(lambda: not s.delivery_trouble, "the trouble cleared by an ACK")
        troubles = [e for e in recorder.events if isinstance(e, TroubleEvent)]
        assert [e.retransmissions for e in troubles] == [3]
        assert stack.stats()["delivery_trouble"] == 1
        s.close()
        assert peer.recv(1) == b""
        peer.close()
