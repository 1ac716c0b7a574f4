"""A file descriptor that select, poll, epoll and asyncio see as ready exactly when a
userspace socket is, so code written for kernel sockets can wait on ours.

A socket of this stack has no kernel file of its own. Socket.fileno() hands out one
end of an AF_UNIX socketpair instead, and the stack sets that end's readiness:

- readable: one byte waits in the user end's receive queue (written from our end),
  and is drained again when the socket stops being readable;
- writable: the user end's send buffer has room. To make it unwritable, the user end
  is filled until the kernel refuses more; to make it writable again, our end reads
  everything back. Linux charges bytes in flight on a unix stream to the sender,
  and polls it writable once they drop below a quarter of its SO_SNDBUF.

Only transitions cost system calls, and nobody but this module reads or writes the
pair: callers only wait on the user end.
"""

from __future__ import annotations

import socket as _socket

_CHUNK = 65536


class ReadinessFd:
    def __init__(self) -> None:
        self._user, self._ours = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        for end in (self._user, self._ours):
            end.setblocking(False)
        # The smallest send buffer the kernel allows keeps a fill to a few writes.
        self._user.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, 1)
        self.readable = False
        self.writable = True

    def fileno(self) -> int:
        return self._user.fileno()

    def set(self, readable: bool, writable: bool) -> None:
        if readable != self.readable:
            self.readable = readable
            if readable:
                self._ours.send(b"\0")
            else:
                _drain(self._user)
        if writable != self.writable:
            self.writable = writable
            if writable:
                _drain(self._ours)
            else:
                filler = bytes(_CHUNK)
                while True:
                    try:
                        self._user.send(filler)
                    except BlockingIOError:
                        break

    def close(self) -> None:
        self._user.close()
        self._ours.close()

    def abandon(self) -> None:
        """Close our end, and forget the end handed out without closing it: after an
        error on it, someone else may have closed it already, and its number may
        now be another file's."""
        self._user.detach()
        self._ours.close()


def _drain(end: _socket.socket) -> None:
    while True:
        try:
            if not end.recv(_CHUNK):
                return
        except BlockingIOError:
            return
