"""Raw Ethernet links under the userspace endpoint: AF_PACKET, TAP, and in-memory.

A link moves whole Ethernet frames and nothing else; it never parses them. Reads are
non-blocking batches (wait on `fileno()` with select/poll first); `send` raises OSError
on any failure, including BlockingIOError when the kernel's queue is full, which the
caller may treat as a lost frame.

checksum_trusted is True when the kernel vouches for a frame's L4 checksum: either it
verified it (TP_STATUS_CSUM_VALID) or the frame comes from a local sender with checksum
offload and the field holds only the pseudo-header sum (TP_STATUS_CSUMNOTREADY), so
verifying it would wrongly fail. On veth such frames are also GSO super-frames of up
to 64 KiB, far above the MTU. A TAP hands over finished frames no larger than the MTU.

PacketLink is built on a plain AF_PACKET socket rather than scapy's L2Socket: it must be
created inside a lab namespace (scapy resolves interface names against the root
namespace's cache) and it needs each frame's PACKET_AUXDATA status and packet type,
which scapy's receive path drops. Scapy stays the tool for building and parsing frames.

Offloads both ways: PacketLink sets PACKET_VNET_HDR and TapLink IFF_VNET_HDR with
TUNSETOFFLOAD, so that every frame carries a virtio_net_hdr. Received, it says whether
the checksum is already good or only partial; sent, it lets a TCP frame of up to 64
KiB go as one GSO frame (`send(frame, gso_size=mss)`) that the kernel cuts into MSS
segments and checksums, which is what the sender's TSO uses (`gso_max` > 0).

Kernel-side receive drops: a frame the kernel could not queue for us never reaches
`recv_batch`, so TCP sees it as a loss on the wire and recovers it, but nothing of
ours would otherwise know it happened. `counters()` says how many there were since
the link was opened: for AF_PACKET the socket's PACKET_STATISTICS tp_drops (its
receive buffer was full; our own transmissions are not looped back, so they take
no room there), for a TAP the device's tx_dropped (the ring of frames waiting for
our reads was full). It costs one system call, so the engine reads it when asked for
its statistics, never per frame. The size of that queue is a knob
(`PacketLink(rcvbuf=)`, `TapLink(queue_len=)`): tests shrink it to make drops happen.

Limits: no VLAN handling (a tag the kernel stripped into auxdata is not restored),
IPv4 only, Linux only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Mapping
from typing import Protocol

from pyroute2 import IPRoute

from tcpstack import netns as _netns

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_STATISTICS = 6
PACKET_AUXDATA = 8
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
TP_STATUS_CSUMNOTREADY = 0x08
TP_STATUS_CSUM_VALID = 0x80
_AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
_PACKET_MREQ = struct.Struct("=iHH8s")  # struct packet_mreq
_TPACKET_STATS = struct.Struct("=II")  # struct tpacket_stats: tp_packets, tp_drops

PACKET_VNET_HDR = 15
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
# struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
# (little-endian: the legacy layout packet sockets and TAPs use on x86 and arm64).
VNET_HDR = struct.Struct("<BBHHHH")
VNET_NEEDS_CSUM = 0x01
VNET_DATA_VALID = 0x02
VNET_GSO_NONE = 0
VNET_GSO_TCPV4 = 1
# The largest TCP payload one GSO frame may carry: a 65535-byte IPv4 packet less
# 20 bytes of IP, 60 of TCP header at most; the sender rounds it down to whole MSS.
GSO_MAX = 65535 - 20 - 60
_TCP_CSUM_START = 14 + 20  # Ethernet and an option-less IPv4 header
_TCP_CSUM_OFFSET = 16

SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SIOCGIFMTU = 0x8921
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFTXQLEN = 0x8943
IFF_UP = 0x1
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_TUN_EXCL = 0x8000

# veth passes GSO/GRO super-frames up to 64 KiB to packet sockets whatever the MTU.
RECV_BUFFER = 256 * 1024
SOCKET_BUFFER = 8 * 1024 * 1024


class Link(Protocol):
    name: str
    mtu: int
    kind: str  # "packet", "tap", or "memory" for MemoryLink
    gso_max: int  # TCP payload bytes one send(frame, gso_size) may carry; 0: no offload

    def fileno(self) -> int: ...

    def recv_batch(self, max_frames: int = 64) -> list[tuple[bytes, bool]]:
        """Frames available now, each with checksum_trusted; never blocks."""
        ...

    def send(self, frame: bytes, gso_size: int = 0) -> None:
        """Send one frame. gso_size > 0 (only where gso_max > 0): an IPv4/TCP frame
        with a partial checksum (wire.encode_tcp(partial_checksum=True)) that the
        kernel completes and, if its payload exceeds gso_size, cuts into segments."""
        ...

    def close(self) -> None: ...


def link_counters(link: object) -> dict[str, int]:
    """What LINK's kernel side counted (see the module docstring), looking through
    wrappers that keep the link they wrap as `inner` (an ImpairedLink); {} for a
    link that has no kernel queue of its own (MemoryLink)."""
    while link is not None:
        counters = getattr(link, "counters", None)
        if counters is not None:
            return dict(counters())
        link = getattr(link, "inner", None)
    return {}


def _ifreq(name: str, tail: bytes = b"") -> bytes:
    raw = name.encode()
    if not raw or len(raw) > 15:
        raise ValueError(f"invalid interface name: {name!r}")
    return struct.pack("16s", raw) + tail.ljust(24, b"\0")


def _interface_mtu(sock: socket.socket, name: str) -> int:
    reply = fcntl.ioctl(sock.fileno(), SIOCGIFMTU, _ifreq(name))
    return int(struct.unpack_from("i", reply, 16)[0])


def _set_buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)  # ignores rmem_max; needs root
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def _vnet_header(frame: bytes, gso_size: int) -> bytes:
    if not gso_size:
        return bytes(VNET_HDR.size)  # a finished frame: nothing for the kernel to do
    header_len = _TCP_CSUM_START + (frame[_TCP_CSUM_START + 12] >> 4) * 4
    gso_type = VNET_GSO_TCPV4 if len(frame) - header_len > gso_size else VNET_GSO_NONE
    return VNET_HDR.pack(
        VNET_NEEDS_CSUM, gso_type, header_len, gso_size, _TCP_CSUM_START, _TCP_CSUM_OFFSET
    )


def _vnet_trusted(header: bytes | memoryview) -> bool:
    """The kernel checked the checksum, or will fill it in (a local sender's frame)."""
    return bool(header[0] & (VNET_NEEDS_CSUM | VNET_DATA_VALID))


def detect_kind(interface: str, netns: str | None = None) -> str:
    """ "tap" if INTERFACE is a TUN/TAP device, else "packet" (any Ethernet device)."""

    def query() -> str:
        with _netns.enter(netns) if netns else contextlib.nullcontext(), IPRoute() as ipr:
            index = socket.if_nametoindex(interface)  # OSError if there is no such interface
            (found,) = ipr.link("get", index=index)
        return "tap" if found.get(("linkinfo", "kind")) == "tun" else "packet"

    return _netns.outside_event_loop(query)


class PacketLink:
    """An AF_PACKET raw socket bound to one interface, promiscuous, with virtio-net
    headers (offload=True, the default) or auxdata for the checksum status."""

    kind = "packet"

    def __init__(
        self,
        interface: str,
        netns: str | None = None,
        offload: bool = True,
        rcvbuf: int = SOCKET_BUFFER,
    ) -> None:
        """rcvbuf: the socket's receive buffer (SO_RCVBUF, which the kernel doubles
        for its bookkeeping); frames arriving while it is full are dropped."""
        self.name = interface
        self.netns = netns
        self.offload = offload
        self.gso_max = GSO_MAX if offload else 0
        if netns is None:
            self._sock = self._open(interface, offload, rcvbuf)
        else:
            with _netns.enter(netns):
                self._sock = self._open(interface, offload, rcvbuf)
        self.mtu = _interface_mtu(self._sock, interface)
        self._buffer = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buffer)
        self._ancsize = socket.CMSG_SPACE(_AUXDATA.size)
        self.truncated = 0  # frames larger than the buffer, dropped; should stay 0
        # Reading PACKET_STATISTICS resets the kernel's counts, so they are summed
        # here; the lock keeps two readers (the engine, a test) from losing a count.
        self._stats_lock = threading.Lock()
        self._kernel_frames = 0
        self._kernel_dropped = 0

    @staticmethod
    def _open(interface: str, offload: bool, rcvbuf: int) -> socket.socket:
        index = socket.if_nametoindex(interface)
        # Protocol 0 receives nothing until bind, so no other interface's frames
        # slip in between socket() and bind().
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            if offload:
                sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            else:
                sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            mreq = _PACKET_MREQ.pack(index, PACKET_MR_PROMISC, 0, b"")
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            with contextlib.suppress(OSError):  # Linux >= 4.20; else recv_batch skips them
                # Our own frames would otherwise be copied back into the receive
                # buffer, a 64 KiB GSO frame at a time, taking room from the peer's.
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf)
            _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.bind((interface, ETH_P_ALL))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def recv_batch(self, max_frames: int = 64) -> list[tuple[bytes, bool]]:
        frames: list[tuple[bytes, bool]] = []
        while len(frames) < max_frames:
            try:
                size, ancdata, flags, address = self._sock.recvmsg_into(
                    [self._buffer], self._ancsize
                )
            except BlockingIOError:
                break
            if address[2] == PACKET_OUTGOING:
                continue  # our own transmission, looped back to every packet socket
            if flags & socket.MSG_TRUNC:
                self.truncated += 1
                continue
            if self.offload:
                skip = VNET_HDR.size
                trusted = _vnet_trusted(self._view[:skip])
            else:
                skip = 0
                trusted = False
                for level, kind, data in ancdata:
                    if level == SOL_PACKET and kind == PACKET_AUXDATA:
                        status = _AUXDATA.unpack_from(data)[0]
                        trusted = bool(status & (TP_STATUS_CSUMNOTREADY | TP_STATUS_CSUM_VALID))
            frames.append((bytes(self._view[skip:size]), trusted))
        return frames

    def counters(self) -> Mapping[str, int]:
        """link_rx_dropped: frames the kernel dropped because our receive buffer was
        full; link_rx_frames: frames it had for us, dropped ones included. Since the
        link was opened; after close(), as they were when last read."""
        with self._stats_lock:
            try:
                raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS.size)
            except OSError:
                pass  # closed: what was read before is all there will be
            else:
                frames, dropped = _TPACKET_STATS.unpack(raw)
                # tp_packets counts the dropped frames too.
                self._kernel_frames += frames
                self._kernel_dropped += dropped
            counts = {
                "link_rx_frames": self._kernel_frames,
                "link_rx_dropped": self._kernel_dropped,
            }
        if self.truncated:
            counts["link_rx_truncated"] = self.truncated
        return counts

    def send(self, frame: bytes, gso_size: int = 0) -> None:
        if self.offload:
            header = _vnet_header(frame, gso_size)
            sent = self._sock.sendmsg([header, frame]) - len(header)
        else:
            sent = self._sock.send(frame)
        if sent != len(frame):
            raise OSError(errno.EMSGSIZE, f"short send on {self.name}: {sent}/{len(frame)}")

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> PacketLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TapLink:
    """A TAP device's /dev/net/tun descriptor: complete frames, no packet-info header.

    create=False attaches to an existing TAP and fails if there is none; create=True
    makes a new one that lives as long as this descriptor and brings it up."""

    kind = "tap"

    def __init__(
        self,
        name: str,
        netns: str | None = None,
        create: bool = False,
        offload: bool = True,
        queue_len: int | None = None,
    ) -> None:
        """queue_len: how many frames the kernel may hold for our reads (the device's
        tx_queue_len, 500 by default, which sizes the TAP's ring); set on the device,
        so it outlives this descriptor. Frames arriving while the ring is full are
        dropped."""
        self.name = name
        self.netns = netns
        self.offload = offload
        self.gso_max = GSO_MAX if offload else 0
        self._fd = -1
        self._dev_stats = -1
        self._stats_lock = threading.Lock()
        self._dropped_base = 0
        self._dropped = 0
        if netns is None:
            self._open(create, queue_len)
        else:
            # Both the TUNSETIFF lookup and the device creation happen in the namespace
            # of the thread that opened /dev/net/tun.
            with _netns.enter(netns):
                self._open(create, queue_len)

    def _open(self, create: bool, queue_len: int | None) -> None:
        if not create:
            socket.if_nametoindex(self.name)  # OSError if absent: TUNSETIFF would create it
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            flags = IFF_TAP | IFF_NO_PI | (IFF_TUN_EXCL if create else 0)
            if self.offload:
                flags |= IFF_VNET_HDR
            fcntl.ioctl(fd, TUNSETIFF, _ifreq(self.name, struct.pack("H", flags)))
            if self.offload:
                # The kernel may now hand us checksum-partial and 64 KiB GSO frames
                # and takes ours, as it does with a virtio NIC.
                fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ctl:
                self.mtu = _interface_mtu(ctl, self.name)
                if create:
                    reply = fcntl.ioctl(ctl.fileno(), SIOCGIFFLAGS, _ifreq(self.name))
                    current = struct.unpack_from("H", reply, 16)[0]
                    up = struct.pack("H", current | IFF_UP)
                    fcntl.ioctl(ctl.fileno(), SIOCSIFFLAGS, _ifreq(self.name, up))
                if queue_len is not None:
                    # tun resizes its ring to the new length at once.
                    qlen = _ifreq(self.name, struct.pack("i", queue_len))
                    fcntl.ioctl(ctl.fileno(), SIOCSIFTXQLEN, qlen)
            # Opened here, it reports this namespace's devices for as long as it is open.
            self._dev_stats = os.open("/proc/thread-self/net/dev", os.O_RDONLY | os.O_CLOEXEC)
            # Counted from here: what the device dropped before we were attached (the
            # kernel's first frames, with no reader yet) is not ours.
            self._dropped_base = self._dropped = self._tx_dropped()
        except BaseException:
            os.close(fd)
            if self._dev_stats >= 0:
                os.close(self._dev_stats)
                self._dev_stats = -1
            raise
        self._fd = fd
        # A TAP read returns exactly one frame: with offloads a GSO frame of up to
        # 64 KiB behind its virtio-net header.
        self._read_size = max(self.mtu + 64, 65536 + 14 + VNET_HDR.size)

    def fileno(self) -> int:
        return self._fd

    def recv_batch(self, max_frames: int = 64) -> list[tuple[bytes, bool]]:
        frames: list[tuple[bytes, bool]] = []
        while len(frames) < max_frames:
            try:
                frame = os.read(self._fd, self._read_size)
            except BlockingIOError:
                break
            if self.offload:
                frames.append((frame[VNET_HDR.size :], _vnet_trusted(frame)))
            else:
                frames.append((frame, False))
        return frames

    def _tx_dropped(self) -> int:
        """The device's tx_dropped: frames the kernel sent to us that found the
        ring full (/proc/net/dev's 12th column, the transmit side's "drop")."""
        table = os.pread(self._dev_stats, 1 << 16, 0).decode()
        for line in table.splitlines()[2:]:
            name, _, fields = line.partition(":")
            if name.strip() == self.name:
                return int(fields.split()[11])
        raise OSError(errno.ENODEV, f"{self.name} is not in /proc/net/dev")

    def counters(self) -> Mapping[str, int]:
        """link_rx_dropped: frames the kernel dropped because the TAP's ring was
        full, since this descriptor was opened; after close(), as last read."""
        with self._stats_lock:
            if self._dev_stats >= 0:
                with contextlib.suppress(OSError):  # the device went with its namespace
                    self._dropped = self._tx_dropped()
            return {"link_rx_dropped": self._dropped - self._dropped_base}

    def send(self, frame: bytes, gso_size: int = 0) -> None:
        if self.offload:
            header = _vnet_header(frame, gso_size)
            sent = os.writev(self._fd, [header, frame]) - len(header)
        else:
            sent = os.write(self._fd, frame)
        if sent != len(frame):
            raise OSError(errno.EMSGSIZE, f"short write on {self.name}: {sent}/{len(frame)}")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with self._stats_lock:
            if self._dev_stats >= 0:
                # It holds the namespace, which should go once the lab removes it.
                os.close(self._dev_stats)
                self._dev_stats = -1

    def __enter__(self) -> TapLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryLink:
    """One end of an in-process link for tests: a SOCK_SEQPACKET socketpair, which keeps
    frame boundaries and gives a real descriptor to select on."""

    kind = "memory"
    gso_max = 0

    def __init__(self, sock: socket.socket, name: str, mtu: int) -> None:
        self._sock = sock
        self.name = name
        self.mtu = mtu

    @classmethod
    def pair(cls, mtu: int = 1500) -> tuple[MemoryLink, MemoryLink]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for sock in (a, b):
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        return cls(a, "mem-a", mtu), cls(b, "mem-b", mtu)

    def fileno(self) -> int:
        return self._sock.fileno()

    def recv_batch(self, max_frames: int = 64) -> list[tuple[bytes, bool]]:
        frames: list[tuple[bytes, bool]] = []
        while len(frames) < max_frames:
            try:
                frame = self._sock.recv(RECV_BUFFER)
            except BlockingIOError:
                break
            if not frame:
                # The other end is gone; a link that stays readable at EOF would
                # spin its reader, so say so like a vanished interface would.
                raise OSError(errno.ENOTCONN, "memory link closed by the other end")
            frames.append((frame, False))
        return frames

    def send(self, frame: bytes, gso_size: int = 0) -> None:
        try:
            self._sock.send(frame)
        except (BrokenPipeError, ConnectionRefusedError) as exc:
            # The other end is gone, as a cable pulled out: the frame is lost.
            raise OSError(errno.ENETDOWN, "memory link closed by the other end") from exc

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> MemoryLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
