"""The receive buffer: a FIFO of the segments' payloads, read from the front.

A bytearray that is appended to at the back and deleted from at the front is
copied whole whenever it grows (CPython reallocates a buffer with a front offset
by copying it), and a megabyte receive buffer did that on most segments: the
receive path spent more time in memcpy and page faults than in TCP. Here each
payload stays the bytes object it arrived as, and a read that wants a whole
payload gets that very object, with no copy at all.
"""

from __future__ import annotations

import collections


class ByteQueue:
    __slots__ = ("_chunks", "_head", "_len")

    def __init__(self) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._head = 0  # bytes of the first chunk already read
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def append(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            self._chunks.append(data if type(data) is bytes else bytes(data))
            self._len += len(data)

    def take(self, n: int) -> bytes:
        """Remove and return up to n bytes from the front."""
        n = min(n, self._len)
        if n <= 0:
            return b""
        chunks = self._chunks
        first = chunks[0]
        head = self._head
        rest = len(first) - head
        if n == rest and head == 0:
            chunks.popleft()
            self._len -= n
            return first
        if n < rest:
            self._head = head + n
            self._len -= n
            return first[head : head + n]
        parts = []
        wanted = n
        while wanted:
            first = chunks[0]
            rest = len(first) - head
            if rest <= wanted:
                parts.append(first[head:] if head else first)
                chunks.popleft()
                wanted -= rest
                head = 0
            else:
                parts.append(first[head : head + wanted])
                head += wanted
                wanted = 0
        self._head = head
        self._len -= n
        return b"".join(parts)

    def take_into(self, view: memoryview) -> int:
        """Remove bytes from the front into view; return how many."""
        n = min(len(view), self._len)
        done = 0
        chunks = self._chunks
        head = self._head
        while done < n:
            first = chunks[0]
            k = min(len(first) - head, n - done)
            view[done : done + k] = memoryview(first)[head : head + k]
            done += k
            head += k
            if head == len(first):
                chunks.popleft()
                head = 0
        self._head = head
        self._len -= n
        return n

    def clear(self) -> None:
        self._chunks.clear()
        self._head = 0
        self._len = 0
