"""ARP for our one IPv4 address: the neighbour cache and its pending queue (RFC 826).

Pure logic with explicit time; the engine turns its decisions into frames. Entries
expire so a peer that changes its MAC is relearnt; unresolved destinations hold a
bounded queue of frames that is flushed when the reply arrives.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

# Linux keeps a neighbour REACHABLE for base_reachable_time (30 s) and then
# revalidates; we simply ask again after this long.
ENTRY_LIFETIME = 60.0
# Linux sends up to mcast_solicit = 3 requests one second apart.
REQUEST_INTERVAL = 1.0
REQUEST_TRIES = 3
MAX_PENDING_FRAMES = 64
MAX_ENTRIES = 1024
# Addresses being resolved at once: a SYN flood from spoofed on-link sources must not
# make us hold a queue for every address it names.
MAX_PENDING_ADDRESSES = 256


Item = TypeVar("Item")


@dataclass
class _Pending(Generic[Item]):
    frames: list[Item] = field(default_factory=list)
    next_request_at: float = 0.0
    tries: int = 0


class ArpCache(Generic[Item]):
    """IPv4 -> MAC with expiry, plus items (frames) waiting for a resolution."""

    def __init__(
        self,
        *,
        lifetime: float = ENTRY_LIFETIME,
        max_entries: int = MAX_ENTRIES,
        max_pending: int = MAX_PENDING_ADDRESSES,
    ):
        self._lifetime = lifetime
        self._max_entries = max_entries
        self._max_pending = max_pending
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._pending: dict[str, _Pending[Item]] = {}
        self.dropped_frames = 0

    def lookup(self, ip: str, now: float) -> bytes | None:
        entry = self._entries.get(ip)
        if entry is None:
            return None
        mac, expires = entry
        if now >= expires:
            del self._entries[ip]
            return None
        return mac

    def learn(self, ip: str, mac: bytes, now: float) -> list[Item]:
        """Record ip -> mac; return the frames that were waiting for it."""
        self._entries[ip] = (mac, now + self._lifetime)
        self._entries.move_to_end(ip)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        pending = self._pending.pop(ip, None)
        return pending.frames if pending else []

    def knows(self, ip: str) -> bool:
        return ip in self._entries

    def forget(self, ip: str) -> None:
        """Drop what we know of ip, so the next frame to it asks again."""
        self._entries.pop(ip, None)

    def enqueue(self, ip: str, frame: Item, now: float) -> bool:
        """Hold a frame until ip resolves. Returns True if a request should go out now."""
        if ip not in self._pending and len(self._pending) >= self._max_pending:
            self.dropped_frames += 1
            return False
        pending = self._pending.setdefault(ip, _Pending[Item]())
        if len(pending.frames) >= MAX_PENDING_FRAMES:
            # Oldest first out: TCP retransmits whatever we lose here.
            pending.frames.pop(0)
            self.dropped_frames += 1
        pending.frames.append(frame)
        if pending.tries == 0:
            pending.tries = 1
            pending.next_request_at = now + REQUEST_INTERVAL
            return True
        return False

    def due_requests(self, now: float) -> list[str]:
        """Addresses to ask for again now; unresolved ones past the last try are given up."""
        due = []
        for ip, pending in list(self._pending.items()):
            if now < pending.next_request_at:
                continue
            if pending.tries >= REQUEST_TRIES:
                self.dropped_frames += len(pending.frames)
                del self._pending[ip]
                continue
            pending.tries += 1
            pending.next_request_at = now + REQUEST_INTERVAL
            due.append(ip)
        return due

    def next_deadline(self) -> float | None:
        if not self._pending:
            return None
        return min(p.next_request_at for p in self._pending.values())

    def entries(self, now: float) -> dict[str, bytes]:
        return {ip: mac for ip, (mac, exp) in self._entries.items() if exp > now}
