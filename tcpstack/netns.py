"""Thread-local switching into named Linux network namespaces (/run/netns/NAME).

`enter()` moves only the calling thread, with setns(2) on a descriptor of the
namespace, and always moves it back. It never creates a namespace: a missing name is
an error. Anything the thread creates meanwhile (sockets, netlink sockets, TAP file
descriptors, child processes) belongs to that namespace for good, which is how the
lab puts kernel peer sockets and raw links inside itself from the test process.

Limits: only the network namespace changes; the mount namespace does not, so /sys
still describes the namespace it was mounted from and /proc/net follows the thread
group leader, not this thread (use /proc/thread-self/net, netlink or ioctls).
/proc/sys/net does follow the calling thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from pyroute2 import netns as _pr_netns

NETNS_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


T = TypeVar("T")


def outside_event_loop(fn: Callable[[], T]) -> T:
    """fn(), on a short-lived thread if an asyncio loop runs in this one: pyroute2's
    synchronous API runs an event loop of its own, and asyncio refuses to start one
    inside another. The new thread starts in this thread's namespace."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="netlink") as pool:
        return pool.submit(fn).result()


def path(name: str) -> str:
    """The bind-mount path of namespace NAME; rejects names that are not plain names."""
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"invalid network namespace name: {name!r}")
    return os.path.join(NETNS_DIR, name)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def enter(name: str) -> Iterator[None]:
    """Run the body with the calling thread inside namespace NAME (never created)."""
    target = os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)  # FileNotFoundError if absent
    try:
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            # EINVAL here means the path is not a network namespace (e.g. a stale file).
            _setns(target)
            try:
                yield
            finally:
                try:
                    _setns(original)
                except OSError as exc:
                    # Carrying on in the wrong namespace would silently misplace
                    # everything the thread does next; make it impossible to miss.
                    raise RuntimeError(f"could not return from netns {name!r}: {exc}") from exc
        finally:
            os.close(original)
    finally:
        os.close(target)


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def create(name: str) -> None:
    """Create namespace NAME; fails if it already exists."""
    if exists(name):
        raise FileExistsError(f"network namespace {name!r} already exists")
    _pr_netns.create(name)
    if not exists(name):
        raise OSError(f"creating network namespace {name!r} failed")


def remove(name: str) -> None:
    """Remove namespace NAME. The kernel frees it (and its interfaces) once nothing
    else holds it: open sockets or TAP fds created inside keep it alive, unnamed."""
    _pr_netns.remove(name)


def listnetns() -> list[str]:
    return sorted(_pr_netns.listnetns())


def popen(name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start ARGV inside namespace NAME (the child inherits the thread's namespace)."""
    with enter(name):
        return subprocess.Popen(list(argv), **kwargs)


def run(
    name: str, argv: Sequence[str], timeout: float, **kwargs: Any
) -> subprocess.CompletedProcess[Any]:
    """subprocess.run inside namespace NAME; the timeout is mandatory."""
    with enter(name):
        return subprocess.run(list(argv), timeout=timeout, **kwargs)
