"""link_counters: a link's kernel-side counts, found through the wrappers around it."""

from __future__ import annotations

from collections.abc import Mapping

from tcpstack.impair import ImpairedLink, Impairment
from tcpstack.link import MemoryLink, link_counters


class CountingLink:
    """A MemoryLink end that also reports kernel-side drops, as PacketLink does."""

    def __init__(self, inner: MemoryLink) -> None:
        self.inner_link = inner
        self.name, self.mtu, self.kind, self.gso_max = inner.name, inner.mtu, "packet", 0
        self.counts = {"link_rx_dropped": 0}
        self.reads = 0

    def counters(self) -> Mapping[str, int]:
        self.reads += 1
        return self.counts  # its own dict, as a link's running totals would be

    def fileno(self) -> int:
        return self.inner_link.fileno()

    def recv_batch(self, max_frames: int = 64) -> list[tuple[bytes, bool]]:
        return self.inner_link.recv_batch(max_frames)

    def send(self, frame: bytes, gso_size: int = 0) -> None:
        self.inner_link.send(frame)

    def close(self) -> None:
        self.inner_link.close()


def test_a_link_without_a_kernel_queue_reports_nothing() -> None:
    a, b = MemoryLink.pair()
    with a, b:
        assert link_counters(a) == {}
        assert link_counters(ImpairedLink(a, Impairment.parse("loss=5%,seed=1"))) == {}


def test_counters_are_read_when_asked_and_through_an_impairment() -> None:
    a, b = MemoryLink.pair()
    with a, b:
        link = CountingLink(a)
        impaired = ImpairedLink(link, Impairment.parse("loss=5%,seed=1"))
        assert link.reads == 0
        link.counts["link_rx_dropped"] = 3
        assert link_counters(impaired) == {"link_rx_dropped": 3}
        assert link_counters(link) == {"link_rx_dropped": 3}
        assert link.reads == 2
        # A copy: whoever sums it into stats cannot change the link's own counts.
        link_counters(link)["link_rx_dropped"] = 99
        assert link_counters(link) == {"link_rx_dropped": 3}
