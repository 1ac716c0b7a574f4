"""The facade: `Stack` and `Socket`, shaped like Python's `socket` module.

Method names and meanings are a subset of `socket.socket`'s, and failures are the
builtin exceptions socket users already catch: ConnectionRefusedError,
ConnectionResetError, BrokenPipeError, TimeoutError, BlockingIOError, and OSError
with errno EADDRINUSE, ENOTCONN, EISCONN, EINVAL or EBADF.

Threads: each call takes the engine's lock for its own work and waits on a
Condition the engine notifies. Two threads may use one socket (one sending while
another receives is the usual case); two concurrent recv() calls are served in
whatever order the lock grants, exactly as with a kernel socket.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import ipaddress
import os
import random
import socket as _socket
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Protocol

from tcpstack import dropin, sockopts, wire
from tcpstack.config import StackConfig, TcpConfig
from tcpstack.control import ControlServer
from tcpstack.core.connection import TcpConnection, TcpInfo
from tcpstack.core.state import State
from tcpstack.engine import Engine, Flow, Listener, with_link_mss
from tcpstack.hooks import Hook
from tcpstack.impair import ImpairedLink, Impairment
from tcpstack.isn import IsnFunction
from tcpstack.link import Link, PacketLink, TapLink, detect_kind
from tcpstack.readiness import ReadinessFd
from tcpstack.trace import Subscriber

Address = tuple[str, int]

# States in which the handshake is still under way.
_OPENING = (State.SYN_SENT, State.SYN_RECEIVED)


def _oserror(code: int, detail: str = "") -> OSError:
    message = os.strerror(code) + (f": {detail}" if detail else "")
    return OSError(code, message)


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """One row of Stack.connections(), like a line of `ss -tan`."""

    local: Address
    remote: Address
    state: State

    def __str__(self) -> str:
        return (
            f"{self.state.name:<12} {self.local[0]}:{self.local[1]:<6} "
            f"{self.remote[0]}:{self.remote[1]}"
        )


class Stack:
    """A userspace TCP/IPv4 endpoint on one interface.

    ``Stack(interface="veth-x", address="198.18.0.2/24")`` opens the interface with
    AF_PACKET (a veth end or any Ethernet device) or /dev/net/tun (a TAP device),
    chosen from the interface's type unless ``link`` says which. The endpoint owns
    ``address`` and a MAC of its own (random and locally administered unless
    ``mac`` is given); no kernel interface should own that address, or the kernel
    would answer our segments with RSTs.

    ``netns`` names the network namespace where the interface lives; the stack
    opens it from there, and the rest of the program stays where it is.
    ``interface`` may also be an opened Link (see tcpstack.link), e.g. a MemoryLink.

    ``impairment`` (an Impairment, or its text form such as "loss=5%,dup=2%,seed=1")
    drops, duplicates, reorders, delays, corrupts or rate-limits frames in our own
    link I/O, reproducibly for a given seed, to watch recovery at work.
    """

    def __init__(
        self,
        interface: str | Link,
        address: str,
        *,
        link: str = "auto",
        netns: str | None = None,
        mac: str | None = None,
        config: TcpConfig | None = None,
        limits: StackConfig | None = None,
        isn: IsnFunction | None = None,
        create_tap: bool = False,
        impairment: Impairment | str | None = None,
        control: bool | None = None,
    ) -> None:
        """control: answer `tcpstack ss` on a unix socket (see tcpstack.control);
        by default on for a real interface, off for a Link object."""
        ipaddress.IPv4Interface(address)  # fail early on a bad address
        opened: Link
        if not isinstance(interface, str):
            opened = interface  # a ready Link: tests, wrappers, custom devices
            kind = opened.kind
        else:
            kind = detect_kind(interface, netns) if link == "auto" else link
            if kind == "tap":
                opened = TapLink(interface, netns, create=create_tap)
            elif kind == "packet":
                opened = PacketLink(interface, netns)
            else:
                raise ValueError(f"link must be 'auto', 'packet' or 'tap', not {link!r}")
        if impairment is not None:
            if isinstance(impairment, str):
                impairment = Impairment.parse(impairment)
            opened = ImpairedLink(opened, impairment)
        self.impairment = impairment
        self.mac = wire.parse_mac(mac) if mac else _random_mac()
        self.link_kind = kind
        self.interface = opened.name
        self._engine = Engine(
            opened,
            address=address,
            mac=self.mac,
            config=with_link_mss(config or TcpConfig(), opened.mtu, opened.gso_max),
            limits=limits,
            isn=isn,
        )
        self.netns = netns
        self._engine.start()
        self._control: ControlServer | None = None
        if control if control is not None else isinstance(interface, str):
            try:
                self._control = ControlServer(self.snapshot)
            except BaseException:
                self._engine.stop()
                raise

    @property
    def address(self) -> str:
        return self._engine.ip

    @property
    def config(self) -> TcpConfig:
        return self._engine.config

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Reset open connections and release the interface. Idempotent."""
        if self._control is not None:
            self._control.close()
            self._control = None
        self._engine.stop()

    def socket(self) -> Socket:
        """A new TCP socket on this stack (like socket.socket(AF_INET, SOCK_STREAM))."""
        return Socket(self)

    def create_connection(
        self,
        address: Address,
        timeout: float | None | object = _socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
        source_address: Address | None = None,
        *,
        all_errors: bool = False,
    ) -> Socket:
        """Like socket.create_connection: connect to (host, port), trying each IPv4
        address the name resolves to, and return the connected Socket. The timeout
        applies to the connect and stays on the socket; source_address binds first.

        Raises:
            OSError: the last attempt's error, or an ExceptionGroup of all of them
                with all_errors=True.
        """
        host, port = address
        errors: list[OSError] = []
        for ip in _resolve(host, port):
            sock = self.socket()
            try:
                if timeout is not _socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                    sock.settimeout(timeout)  # type: ignore[arg-type]
                if source_address is not None:
                    sock.bind(source_address)
                sock.connect((ip, port))
                return sock
            except OSError as exc:
                errors.append(exc)
                sock.close()
        if not errors:
            raise OSError(f"getaddrinfo returned an empty list for {host!r}")
        if all_errors:
            raise ExceptionGroup("create_connection failed", errors)
        raise errors[-1]

    def create_server(
        self,
        address: Address,
        *,
        family: int = _socket.AF_INET,
        backlog: int | None = None,
        reuse_port: bool = False,
        dualstack_ipv6: bool = False,
    ) -> Socket:
        """Like socket.create_server: a listening Socket bound to address, with
        SO_REUSEADDR set as CPython does on POSIX. IPv4 only."""
        if family != _socket.AF_INET or dualstack_ipv6:
            raise ValueError("tcpstack speaks IPv4 only")
        if reuse_port:
            raise ValueError("SO_REUSEPORT not supported by tcpstack")
        sock = self.socket()
        try:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            sock.bind(address)
            if backlog is None:
                sock.listen()
            else:
                sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock

    def owns(self, host: str) -> bool:
        """Whether connections to host (a name or an IPv4 address) belong on this
        stack: it is on the stack's own network, or it is "" (any address)."""
        if host == "":
            return True
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            try:
                ip = ipaddress.IPv4Address(_socket.gethostbyname(host))
            except OSError:
                return False
        return ip in self._engine.network

    def patched(self) -> contextlib.AbstractContextManager[Stack]:
        """Within `with stack.patched():`, standard-library code uses this stack:
        socket.create_connection and socket.create_server for addresses on the
        stack's network (so http.client, urllib.request, smtplib and ftplib), and
        socketserver.TCPServer and its subclasses (http.server among them) for the
        servers they create. Other addresses still go to the kernel. On exit every
        patched name is put back. The patch is process-wide while it lasts, as any
        monkeypatch is: other threads see it too."""
        return dropin.patched(self)

    def connections(self) -> list[ConnectionInfo]:
        """Every listener and connection with its state, like `ss -tan`."""
        with self._engine.lock:
            return [ConnectionInfo(*row) for row in self._engine.connection_table()]

    def snapshot(self) -> dict[str, Any]:
        """The stack, its counters and every socket with its variables, as plain
        data: what `tcpstack ss` shows (Recv-Q and Send-Q as ss counts them)."""
        with self._engine.lock:
            engine = self._engine
            rows: list[dict[str, Any]] = [
                {
                    "local": [engine.ip, port],
                    "remote": ["0.0.0.0", 0],
                    "state": "LISTEN",
                    "recv_q": len(listener.accept_queue),
                    "send_q": listener.backlog,
                    "info": None,
                }
                for port, listener in sorted(engine.listeners.items())
            ]
            for flow in engine.flows.values():
                conn = flow.conn
                info = asdict(conn.info())
                info["state"] = conn.state.name
                rows.append(
                    {
                        "local": [engine.ip, conn.local_port],
                        "remote": [flow.remote_ip, conn.remote_port],
                        "state": conn.state.name,
                        "recv_q": conn.readable,
                        "send_q": conn.in_flight + conn.unsent,
                        "info": info,
                    }
                )
            return {
                "pid": os.getpid(),
                "address": engine.ip,
                "mac": wire.mac_str(self.mac),
                "interface": self.interface,
                "link": self.link_kind,
                "netns": self.netns,
                "connections": rows,
                "stats": engine.totals(),
            }

    def stats(self) -> dict[str, int]:
        """Counters for the stack, in the spirit of `nstat`: frames, ARP, ICMP, drops
        by reason, and every connection's counters (retransmissions, fast
        retransmits, timeouts, duplicate ACKs, SACK blocks, ...) summed over the
        connections that exist now and those that have ended."""
        with self._engine.lock:
            return self._engine.totals()

    def subscribe(self, subscriber: Subscriber) -> Subscriber:
        """Call subscriber(event) for every trace event (tcpstack.trace): each segment
        in and out with our state and variables, state transitions, timers armed,
        fired and cancelled, retransmissions, and other frames. It runs on the
        engine's thread with the stack locked: keep it quick, and do not block."""
        with self._engine.lock:
            self._engine.observers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._engine.lock:
            if subscriber in self._engine.observers:
                self._engine.observers.remove(subscriber)

    def sync(self) -> None:
        """Return once the engine has finished what it is doing now. A frame is sent
        before its trace event is delivered: after sync(), the event of every frame
        the peer has already seen has reached the subscribers."""
        with self._engine.lock:
            pass

    add_observer = subscribe
    remove_observer = unsubscribe

    def add_hook(self, hook: Hook) -> Hook:
        """Drop, delay, duplicate or rewrite chosen segments (see tcpstack.hooks)."""
        with self._engine.lock:
            self._engine.hooks.append(hook)
        return hook

    def remove_hook(self, hook: Hook) -> None:
        with self._engine.lock:
            if hook in self._engine.hooks:
                self._engine.hooks.remove(hook)

    def arp_table(self) -> dict[str, str]:
        with self._engine.lock:
            now = self._engine.clock()
            return {ip: wire.mac_str(mac) for ip, mac in self._engine.arp.entries(now).items()}


def _resolve(host: str, port: int) -> list[str]:
    try:
        return [str(ipaddress.IPv4Address(host or "0.0.0.0"))]
    except ValueError:
        infos = _socket.getaddrinfo(host, port, _socket.AF_INET, _socket.SOCK_STREAM)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _random_mac() -> bytes:
    # Locally administered, unicast: 02:xx:xx:xx:xx:xx.
    return bytes([0x02]) + random.randbytes(5)


class Socket:
    """A TCP socket of a Stack, with the methods and errors of socket.socket."""

    def __init__(self, stack: Stack, *, _flow: Flow | None = None) -> None:
        self._stack = stack
        self._engine = stack._engine
        self._timeout: float | None = _socket.getdefaulttimeout()
        self._flow = _flow
        self._listener: Listener | None = None
        self._port: int | None = _flow.conn.local_port if _flow else None
        self._owns_port = False
        self._closed = False
        self._shut_rd = False
        self._error_reported = False
        # setsockopt() values, kept to apply to connections made later.
        self._options: dict[tuple[int, int], sockopts.Value] = {}
        self._ready: ReadinessFd | None = None  # made by the first fileno()
        self._io_refs = 0  # open makefile() objects; close() waits for them
        self._close_requested = False

    def __repr__(self) -> str:
        return f"<tcpstack.Socket {self.state.name} local={self._local()} remote={self._remote()}>"

    # ------------------------------------------------------------- properties

    @property
    def state(self) -> State:
        """The connection's RFC 9293 state; it stays readable after close()."""
        if self._listener is not None and not self._listener.closed:
            return State.LISTEN
        if self._flow is not None:
            return self._flow.conn.state
        return State.CLOSED

    @property
    def connection(self) -> TcpConnection | None:
        """The core TcpConnection (read it for counters and sequence variables)."""
        return self._flow.conn if self._flow else None

    # Like socket.socket's: asyncio and socketserver check these before using a socket.
    family = _socket.AF_INET
    type = _socket.SOCK_STREAM
    proto = _socket.IPPROTO_TCP

    @property
    def timeout(self) -> float | None:
        return self._timeout

    def info(self) -> TcpInfo | None:
        """A snapshot like Linux's TCP_INFO (`ss -ti`): state, sequence variables,
        cwnd, ssthresh, srtt, rttvar, rto and the connection's counters."""
        with self._engine.lock:
            return self._flow.conn.info() if self._flow else None

    # ---------------------------------------------------------------- options

    def setsockopt(self, level: int, optname: int, value: int | bytes | str, /) -> None:
        """The options of a kernel TCP socket that a userspace endpoint can honour:
        TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT,
        TCP_CONGESTION, TCP_USER_TIMEOUT (milliseconds), IP_TTL, IP_TOS, SO_RCVBUF
        and SO_SNDBUF. Set before connect() or listen(), they apply to the
        connection (and, from a listener, to accepted ones); set later, from then on.

        Raises:
            OSError: ENOPROTOOPT for an option we do not implement, EINVAL for a
                value out of range.
        """
        key = (level, optname)
        if key not in sockopts.OPTIONS:
            raise _oserror(errno.ENOPROTOOPT, f"level {level} option {optname}")
        if key == sockopts.SO_LINGER:
            if not isinstance(value, bytes | bytearray) or len(value) < 8:
                raise _oserror(errno.EINVAL, "SO_LINGER takes a struct linger")
            stored: sockopts.Value = bytes(value[:8])
        elif optname == sockopts.TCP_CONGESTION:
            name = value.decode() if isinstance(value, bytes) else str(value)
            name = name.rstrip("\0")
            if name not in ("reno", "cubic"):
                raise _oserror(errno.ENOENT, f"congestion control {name!r}")
            stored = name
        else:
            if not isinstance(value, int):
                raise TypeError("an integer is required")
            if key in sockopts.POSITIVE and value < 1:
                raise _oserror(errno.EINVAL, f"option {optname} must be at least 1")
            if key == sockopts.IP_TTL and not (1 <= value <= 255 or value == -1):
                raise _oserror(errno.EINVAL, "IP_TTL must be 1 to 255, or -1 for the default")
            if optname == sockopts.TCP_USER_TIMEOUT and value < 0:
                raise _oserror(errno.EINVAL, "TCP_USER_TIMEOUT must not be negative")
            stored = value
        with self._engine.lock:
            self._check_open()
            self._options[key] = stored
            if self._flow is not None:
                now = self._now()
                sockopts.apply(self._flow.conn, key, stored, now)
                self._engine.pump(self._flow, now)  # a new timer (keep-alive) may be due

    def getsockopt(self, level: int, optname: int, buflen: int = 0, /) -> int | bytes:
        """As setsockopt, plus SO_ERROR (the pending error, cleared by reading it, as
        a non-blocking connect() reports its outcome) and SO_TYPE."""
        key = (level, optname)
        if key == (_socket.SOL_SOCKET, _socket.SO_ERROR):
            with self._engine.lock:
                flow = self._flow
                if flow is None:
                    return 0
                if flow.error is None or self._error_reported:
                    # No pending error: report a soft one, once (Linux's sk_err_soft,
                    # RFC 9293 MUST-47), such as an ICMP host unreachable.
                    soft, flow.conn.soft_error = flow.conn.soft_error, 0
                    return soft
                self._error_reported = True
                return flow.error.errno or errno.EIO
        if key == (_socket.SOL_SOCKET, _socket.SO_TYPE):
            return _socket.SOCK_STREAM
        if key not in sockopts.OPTIONS:
            raise _oserror(errno.ENOPROTOOPT, f"level {level} option {optname}")
        with self._engine.lock:
            self._check_open()
            conn = self._flow.conn if self._flow else None
            value = sockopts.read(conn, key, self._options, self._engine.config)
        if isinstance(value, bytes):  # a struct: an int without a buffer, as CPython
            return value[:buflen] if buflen else int.from_bytes(value[:4], sys.byteorder)
        if isinstance(value, str):
            raw = value.encode()
            return raw.ljust(buflen, b"\0")[: buflen or len(raw)]
        return value

    def _local(self) -> Address:
        return (self._engine.ip if self._port else "0.0.0.0", self._port or 0)

    def _remote(self) -> Address | None:
        if self._flow is None:
            return None
        return (self._flow.remote_ip, self._flow.conn.remote_port)

    def sockatmark(self) -> bool:
        """True when the next byte recv() returns is the last urgent octet the peer
        marked (POSIX sockatmark()). Urgent data stays in line, as with SO_OOBINLINE,
        and a recv() never reads past the mark, so a loop can stop there."""
        with self._engine.lock:
            return self._flow is not None and self._flow.conn.at_urgent_mark

    def urgent_pending(self) -> int:
        """Bytes still to read up to and including the last urgent octet the peer
        marked; 0 when no urgent data is ahead (RFC 9293 MUST-33)."""
        with self._engine.lock:
            return self._flow.conn.urgent_pending if self._flow is not None else 0

    @property
    def delivery_trouble(self) -> bool:
        """True once R1 retransmissions of the same data went unanswered (RFC 9293
        §3.8.3, SHLD-9): the peer may be gone, though the connection goes on until R2
        (ETIMEDOUT). False again as soon as the peer acknowledges new data. The
        moment it happens is also a trace event (tcpstack.trace.TroubleEvent)."""
        with self._engine.lock:
            return self._flow is not None and self._flow.conn.delivery_trouble

    def getsockname(self) -> Address:
        self._check_open()
        return self._local()

    def getpeername(self) -> Address:
        self._check_open()
        remote = self._remote()
        if remote is None or self.state is State.CLOSED and self._flow and self._flow.error:
            raise _oserror(errno.ENOTCONN)
        return remote

    def settimeout(self, value: float | None) -> None:
        if value is not None:
            value = float(value)
            if value < 0:
                raise ValueError("Timeout value out of range")
        self._timeout = value

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    def __enter__(self) -> Socket:
        return self

    def __exit__(
        self,
        exc_type: builtins.type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def wait_for_state(self, *states: State, timeout: float | None = None) -> State:
        """Block until the connection is in one of `states`; return it.

        For scripts that watch the protocol, e.g. wait_for_state(State.TIME_WAIT)
        after close(). Works after close() too.

        Raises:
            TimeoutError: not reached within `timeout` seconds (None waits forever).
        """
        with self._engine.lock:
            cond = self._flow.cond if self._flow else None
            deadline = None if timeout is None else time.monotonic() + timeout
            while self.state not in states:
                self._engine.check()
                if cond is None:
                    raise _oserror(errno.ENOTCONN, f"no connection; state {self.state.name}")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"still {self.state.name}, not {'/'.join(s.name for s in states)}"
                    )
                cond.wait(remaining)
            return self.state

    # -------------------------------------------------------------- readiness

    def fileno(self) -> int:
        """A file descriptor that select, poll, selectors and asyncio see as readable
        when recv() or accept() would not block, and writable when send() would not
        (see tcpstack.readiness). Only wait on it: reading or writing it is not the
        socket's I/O. -1 once the socket is closed, like socket.socket."""
        with self._engine.lock:
            if self._closed:
                return -1
            if self._ready is None:
                self._ready = ReadinessFd()
                self._watch()
                self._update_ready()
            return self._ready.fileno()

    def _watch(self) -> None:
        """Have the engine report changes of the connection or listener to fileno()."""
        if self._ready is None:
            return
        # A weak reference: the engine's record must not keep a dropped socket alive.
        ref = weakref.ref(self)

        def watch() -> None:
            sock = ref()
            if sock is not None:
                sock._update_ready()

        if self._listener is not None:
            self._listener.watch = watch
        if self._flow is not None:
            self._flow.watch = watch

    def _update_ready(self) -> None:
        ready = self._ready
        if ready is None:
            return
        try:
            ready.set(*self._readiness())
        except OSError:
            # Someone closed or used the descriptor itself (ssl.wrap_socket does, on
            # its way to failing). Only this socket's readiness is lost, never the
            # engine that called us.
            self._ready = None
            ready.abandon()

    def _readiness(self) -> tuple[bool, bool]:
        """(readable, writable) as Linux's tcp_poll would say for select()."""
        listener, flow = self._listener, self._flow
        if listener is not None and not self._engine.alive:
            return False, False  # accept() cannot succeed again: do not spin a loop on it
        if self._closed or not self._engine.alive:
            return True, True
        if listener is not None:
            return bool(listener.accept_queue) or listener.closed, False
        if flow is None:
            return True, True  # unconnected: POLLOUT and POLLHUP, so both
        conn = flow.conn
        failed = flow.error is not None or conn.state is State.CLOSED
        readable = failed or conn.readable > 0 or conn.eof or self._shut_rd
        if failed or not conn.state.can_send:
            return readable, True  # send() would fail at once: not a wait
        if conn.state in _OPENING:
            return readable, False
        # Linux's sk_stream_is_writeable: free space of at least half what is queued.
        space = conn.send_space
        return readable, space > 0 and 2 * space >= conn.in_flight + conn.unsent

    # ---------------------------------------------------------------- helpers

    def _check_open(self) -> None:
        if self._closed:
            raise _oserror(errno.EBADF)

    def _wait(self, cond: Any, ready: Callable[[], bool], deadline: float | None) -> None:
        """Wait, with the lock held, until ready() or the deadline (TimeoutError)."""
        while not ready():
            self._engine.check()
            self._check_open()
            if self._timeout == 0.0:
                raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("timed out")
            cond.wait(remaining)

    def _deadline(self) -> float | None:
        return None if not self._timeout else time.monotonic() + self._timeout

    def _raise_pending_error(self, flow: Flow) -> None:
        """A reset or timeout is reported once, like sk_err; later calls see EOF/EPIPE."""
        if flow.error is not None and not self._error_reported:
            self._error_reported = True
            raise flow.error

    def _now(self) -> float:
        return self._engine.clock()

    # ------------------------------------------------------------ addressing

    def bind(self, address: Address) -> None:
        host, port = address
        with self._engine.lock:
            self._check_open()
            self._engine.check()
            if self._port is not None:
                raise _oserror(errno.EINVAL, "already bound")
            if host not in ("", "0.0.0.0", self._engine.ip):
                raise _oserror(errno.EADDRNOTAVAIL, host)
            if not 0 <= port <= 0xFFFF:
                raise OverflowError("bind(): port must be 0-65535.")
            if port == 0:
                port = self._engine.ephemeral_port("0.0.0.0", 0)
            elif port in self._engine.bound_ports or port in self._engine.listeners:
                raise _oserror(errno.EADDRINUSE)
            elif not self._options.get(sockopts.SO_REUSEADDR) and any(
                flow.conn.local_port == port for flow in self._engine.flows.values()
            ):
                # Like Linux: a connection still using the port (TIME-WAIT too) blocks
                # the bind unless SO_REUSEADDR is set, as servers do to restart at once.
                raise _oserror(errno.EADDRINUSE)
            self._engine.bound_ports.add(port)
            self._port = port
            self._owns_port = True

    def listen(self, backlog: int = 128) -> None:
        with self._engine.lock:
            self._check_open()
            self._engine.check()
            if self._flow is not None:
                raise _oserror(errno.EINVAL, "socket is connected")
            if self._listener is not None:
                self._listener.backlog = max(backlog, 1)
                return
        if self._port is None:
            self.bind(("", 0))
        with self._engine.lock:
            assert self._port is not None
            if self._port in self._engine.listeners:
                raise _oserror(errno.EADDRINUSE)
            self._listener = self._engine.add_listener(
                self._port, backlog, config=sockopts.buffers(self._engine.config, self._options)
            )
            self._listener.options = dict(self._options)
            self._watch()
            self._update_ready()

    def accept(self) -> tuple[Socket, Address]:
        """Wait for a connection whose handshake completed (the third segment arrived)."""
        with self._engine.lock:
            self._check_open()
            listener = self._listener
            if listener is None:
                raise _oserror(errno.EINVAL, "socket is not listening")
            self._wait(
                listener.cond,
                lambda: bool(listener.accept_queue) or listener.closed,
                self._deadline(),
            )
            if listener.closed:
                raise _oserror(errno.EINVAL if not self._closed else errno.EBADF)
            flow = listener.accept_queue.popleft()
            flow.listener = None
            self._update_ready()
            # Like CPython: the new socket takes the default timeout, not the listener's.
            child = Socket(self._stack, _flow=flow)
            # Like Linux: options set on the listener were applied to the connection
            # when it was created; the child reports them.
            child._options = dict(listener.options)
            return child, (flow.remote_ip, flow.conn.remote_port)

    def connect(self, address: Address) -> None:
        """Active open; returns once the SYN-ACK has arrived (and our ACK is sent)."""
        code = self._connect(address, raise_errors=True)
        assert code == 0

    def connect_ex(self, address: Address) -> int:
        """Like connect(), but return an errno instead of raising (0 on success)."""
        return self._connect(address, raise_errors=False)

    def _connect(self, address: Address, *, raise_errors: bool) -> int:
        host, port = address
        try:
            remote_ip = str(ipaddress.IPv4Address(host))
        except ValueError:
            remote_ip = _socket.gethostbyname(host)
        with self._engine.lock:
            try:
                self._check_open()
                self._engine.check()
                if self._listener is not None:
                    raise _oserror(errno.EINVAL, "socket is listening")
                flow = self._flow
                if flow is not None and flow.conn.state is State.CLOSED and flow.error:
                    # A refused or timed-out attempt: try again with a new SYN, as
                    # Linux does when connect() is called again.
                    flow = self._flow = None
                    self._error_reported = False
                if flow is None:
                    local_port = self._port or self._engine.ephemeral_port(remote_ip, port)
                    flow = self._engine.new_flow(
                        remote_ip,
                        port,
                        local_port,
                        config=sockopts.buffers(self._engine.config, self._options),
                    )
                    self._flow = flow
                    self._port = local_port
                    self._watch()
                    now = self._now()
                    sockopts.apply_options(flow.conn, self._options, now)
                    flow.conn.open_active(now)
                    self._engine.pump(flow, now)
                elif flow.conn.state not in _OPENING:
                    if flow.error is None:
                        raise _oserror(errno.EISCONN)
                elif self._timeout == 0.0:
                    raise BlockingIOError(errno.EALREADY, os.strerror(errno.EALREADY))
                if self._timeout == 0.0 and flow.conn.state in _OPENING:
                    raise BlockingIOError(errno.EINPROGRESS, os.strerror(errno.EINPROGRESS))
                try:
                    self._wait(
                        flow.cond,
                        lambda: flow.conn.state not in _OPENING or flow.error is not None,
                        self._deadline(),
                    )
                except TimeoutError:
                    # Give up the attempt, as a kernel socket's connect timeout does.
                    flow.conn.abort(self._now())
                    self._engine.pump(flow, self._now())
                    if not raise_errors:
                        return errno.EWOULDBLOCK  # what CPython's connect_ex reports
                    raise
                self._check_open()  # closed by another thread while we waited
                if flow.error is not None:
                    self._error_reported = True
                    raise flow.error
                if flow.conn.state is State.CLOSED:
                    raise _oserror(errno.ECONNABORTED)
                return 0
            except OSError as exc:
                if raise_errors or exc.errno is None:
                    raise
                return exc.errno

    # ------------------------------------------------------------------ data

    def _connected_flow(self) -> Flow:
        self._check_open()
        self._engine.check()
        if self._flow is None:
            raise _oserror(errno.ENOTCONN)
        return self._flow

    def send(self, data: bytes | bytearray | memoryview, flags: int = 0, /) -> int:
        """Queue some of data for sending; return how many bytes were taken.

        Raises:
            BrokenPipeError: after shutdown(SHUT_WR) or close by us, or after a reset
                that was already reported.
            ConnectionResetError: the peer reset the connection.
            TimeoutError / BlockingIOError: no buffer space within the timeout.

        flags may be MSG_OOB: the last byte taken is urgent (RFC 9293 §3.8.5).
        """
        urgent = _send_flags(flags)
        with self._engine.lock:
            n = self._send_locked(data, self._deadline(), urgent)
            return n

    def _send_locked(
        self, data: bytes | bytearray | memoryview, deadline: float | None, urgent: bool = False
    ) -> int:
        flow = self._connected_flow()
        conn = flow.conn

        def ready() -> bool:
            return (
                flow.error is not None
                or not conn.state.can_send
                or (conn.state not in _OPENING and conn.send_space > 0)
            )

        self._wait(flow.cond, ready, deadline)
        self._raise_pending_error(flow)
        if flow.error is not None or not conn.state.can_send:
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
        try:
            n = conn.send(data, urgent=urgent)
        except Exception as exc:  # InvalidStateError: our direction is closed
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE)) from exc
        self._engine.pump(flow, self._now())
        return n

    def sendall(self, data: bytes | bytearray | memoryview, flags: int = 0, /) -> None:
        """Send all of data; the timeout bounds the whole call, as in CPython.
        With MSG_OOB the last byte of data is urgent."""
        urgent = _send_flags(flags)
        view = memoryview(data).cast("B")
        deadline = self._deadline()
        offset = 0
        with self._engine.lock:
            while offset < len(view):
                # With MSG_OOB each take moves the mark to its last byte, so the
                # mark ends on the last byte of data, as Linux's does.
                offset += self._send_locked(view[offset:], deadline, urgent)

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        """Return up to bufsize bytes; b"" if and only if the peer's FIN was read.

        Raises:
            ConnectionResetError: the peer reset the connection.
            TimeoutError / BlockingIOError: nothing arrived within the timeout.
            OSError: ENOTCONN if not connected, EBADF after close().
        """
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        _recv_flags(flags)
        with self._engine.lock:
            flow = self._recv_ready()
            if flow is None:
                return b""
            data = flow.conn.receive(bufsize)
            self._engine.pump(flow, self._now())
            return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0, /) -> int:
        _recv_flags(flags)
        view = memoryview(buffer).cast("B")
        if nbytes:
            view = view[:nbytes]
        with self._engine.lock:
            flow = self._recv_ready()
            if flow is None:
                return 0
            n = flow.conn.receive_into(view)
            self._engine.pump(flow, self._now())
            return n

    def _recv_ready(self) -> Flow | None:
        """Wait for data, EOF or an error; None means EOF (return b"")."""
        flow = self._connected_flow()
        conn = flow.conn
        if self._shut_rd:
            # Linux still hands over what was queued, then a pending error (as
            # tcp_recvmsg checks sk_err before RCV_SHUTDOWN), then EOF.
            if conn.readable > 0:
                return flow
            if not conn.eof:
                self._raise_pending_error(flow)
            return None

        def ready() -> bool:
            return (
                conn.readable > 0
                or conn.eof
                or flow.error is not None
                or self._shut_rd
                or conn.state is State.CLOSED
            )

        self._wait(flow.cond, ready, self._deadline())
        # Woken by our own close() in another thread, which may have reset the
        # connection: EBADF, as for any call after close(), not the reset's ENOTCONN.
        self._check_open()
        if conn.readable > 0:
            return flow
        if conn.eof:
            # The peer's FIN came first: EOF, as Linux's recv() says even when a RST
            # followed in CLOSE-WAIT; the error is left for a send() or SO_ERROR.
            return None
        self._raise_pending_error(flow)
        if conn.state is State.CLOSED and not conn.eof and flow.error is None:
            # Closed before anything arrived (e.g. our own abort): like ENOTCONN.
            raise _oserror(errno.ENOTCONN)
        return None

    # ----------------------------------------------------------------- close

    def shutdown(self, how: int) -> None:
        """SHUT_WR sends FIN after queued data; SHUT_RD makes reads return b""."""
        if how not in (_socket.SHUT_RD, _socket.SHUT_WR, _socket.SHUT_RDWR):
            raise _oserror(errno.EINVAL)
        with self._engine.lock:
            if self._listener is not None:
                # Linux: SHUT_RD stops a listener (accept() then fails); SHUT_WR is a no-op.
                if how != _socket.SHUT_WR:
                    self._engine.close_listener(self._listener, self._now())
                return
            flow = self._connected_flow()
            if how in (_socket.SHUT_RD, _socket.SHUT_RDWR):
                self._shut_rd = True
                flow.conn.shutdown_read()
            if flow.conn.state is State.CLOSED:
                # Reset, timed out or closed: no connection to shut down (RFC 9293
                # §3.10.4; Linux's inet_shutdown says ENOTCONN however it ended).
                raise _oserror(errno.ENOTCONN)
            if how in (_socket.SHUT_WR, _socket.SHUT_RDWR):
                now = self._now()
                flow.conn.shutdown(now)
                self._engine.pump(flow, now)
            flow.changed()

    def close(self) -> None:
        """Release the socket. Idempotent.

        A connection closes gracefully (FIN) and finishes on its own, through
        TIME-WAIT if we closed first; `state` keeps reporting it. If unread data
        is left in the receive buffer the connection is reset instead, as Linux
        does (RFC 2525 §2.17), and so it is with SO_LINGER on and a zero timeout.
        SO_LINGER on with a timeout makes a blocking close() wait up to that long
        for our FIN to be acknowledged.

        Like socket.socket, the connection stays open while file objects from
        makefile() are open; the last one to close releases it.
        """
        with self._engine.lock:
            self._close_requested = True
            if self._io_refs > 0:
                return
        self._real_close()

    def _decref_socketios(self) -> None:
        # Called by socket.SocketIO.close(), for each makefile() object.
        with self._engine.lock:
            self._io_refs -= 1
            last = self._close_requested and self._io_refs <= 0
        if last:
            self._real_close()

    def _real_close(self) -> None:
        if self._engine.on_engine_thread and self._engine.alive:
            # From a file object's finalizer, perhaps in the middle of the engine's
            # loops: close at the engine's next turn instead.
            self._engine.defer(self._close_now)
            return
        self._close_now()

    def _close_now(self) -> None:
        onoff, seconds = _linger(self._options.get(sockopts.SO_LINGER))
        with self._engine.lock:
            if self._closed:
                return
            self._closed = True
            now = self._now()
            flow = self._flow
            if not self._engine.alive:
                pass  # the stack is closed or failed: nothing left to tell the peer
            elif self._listener is not None:
                self._engine.close_listener(self._listener, now)
            elif flow is not None:
                if flow.conn.readable > 0 or onoff and seconds == 0:
                    flow.conn.abort(now)
                else:
                    flow.conn.orphan(now)
                self._engine.pump(flow, now)
                if onoff and seconds != 0 and self._timeout != 0.0:
                    if not self._engine.on_engine_thread:
                        self._linger_wait(flow, seconds)
            if self._owns_port and self._port is not None:
                self._engine.bound_ports.discard(self._port)
            if flow is not None:
                flow.watch = None
                flow.changed()
            if self._listener is not None:
                self._listener.watch = None
            if self._ready is not None:
                self._ready.close()
                self._ready = None

    def _linger_wait(self, flow: Flow, seconds: int) -> None:
        """Linux's sk_stream_wait_close: until our FIN is acknowledged, the connection
        ends, or the linger time passes. A negative time has no limit, as in Linux
        (the connection's own retransmission limit still ends it)."""
        deadline = None if seconds < 0 else time.monotonic() + seconds
        while flow.conn.state in _FIN_UNACKED and self._engine.alive:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            flow.cond.wait(remaining)

    # ---------------------------------------------------------- file objects

    def makefile(
        self,
        mode: str = "r",
        buffering: int | None = None,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> Any:
        """A file object reading from and writing to the socket, as socket.makefile:
        modes "r", "w", "rw" with "b" for bytes; the socket's timeout applies, and
        the socket is released only when it and every file object are closed."""
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
        reading = "r" in mode
        writing = "w" in mode
        if not reading and not writing:
            raise ValueError("mode must include r or w")
        binary = "b" in mode
        rawmode = ("r" if reading else "") + ("w" if writing else "")
        raw = _socket.SocketIO(self, rawmode)  # type: ignore[arg-type]
        with self._engine.lock:
            self._check_open()
            self._io_refs += 1
        if buffering is None:
            buffering = -1
        if buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if not binary:
                raise ValueError("unbuffered streams must be binary")
            return raw
        buffer: Any
        if reading and writing:
            buffer = io.BufferedRWPair(raw, raw, buffering)
        elif reading:
            buffer = io.BufferedReader(raw, buffering)
        else:
            buffer = io.BufferedWriter(raw, buffering)
        if binary:
            return buffer
        text = io.TextIOWrapper(buffer, encoding, errors, newline)
        text.mode = mode  # type: ignore[misc]
        return text

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send a binary file's bytes from offset (count of them, or to the end);
        return how many were sent and leave the file positioned after them, as
        socket.sendfile does. The timeout bounds the whole call."""
        if isinstance(file, io.TextIOBase) or "b" not in getattr(file, "mode", "b"):
            raise ValueError("file should be opened in binary mode")
        if count is not None:
            if not isinstance(count, int):
                raise TypeError(f"count must be a positive integer (got {count!r})")
            if count <= 0:
                raise ValueError(f"count must be a positive integer (got {count!r})")
        if offset:
            file.seek(offset)
        deadline = self._deadline()
        total = 0
        try:
            while count is None or total < count:
                want = _SENDFILE_CHUNK if count is None else min(_SENDFILE_CHUNK, count - total)
                chunk = file.read(want)
                if not chunk:
                    break
                view = memoryview(chunk)
                with self._engine.lock:
                    sent = 0
                    while sent < len(view):
                        n = self._send_locked(view[sent:], deadline)
                        sent += n
                        total += n
        finally:
            if total > 0 and hasattr(file, "seek"):
                file.seek(offset + total)
        return total


_SENDFILE_CHUNK = 256 * 1024
# States in which our FIN waits for its acknowledgement (what SO_LINGER waits for).
_FIN_UNACKED = (State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK)


def _linger(value: sockopts.Value | None) -> tuple[int, int]:
    if not isinstance(value, bytes):
        return 0, 0
    onoff = int.from_bytes(value[:4], sys.byteorder, signed=True)
    seconds = int.from_bytes(value[4:8], sys.byteorder, signed=True)
    return onoff, seconds


class _Readable(Protocol):
    def recv(self, bufsize: int, /) -> bytes: ...


def recv_exactly(sock: _Readable, n: int) -> bytes:
    """Read until `n` bytes or end of file, from our socket or a kernel one."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _send_flags(flags: int) -> bool:
    """Whether a send is urgent (MSG_OOB); any other flag is refused."""
    if flags & ~_socket.MSG_OOB:
        raise _oserror(errno.EOPNOTSUPP, "send flags")
    return bool(flags)


def _recv_flags(flags: int) -> None:
    if flags == _socket.MSG_OOB:
        # Urgent data is always in line, and Linux refuses MSG_OOB reads then.
        raise _oserror(errno.EINVAL, "urgent data is in line (SO_OOBINLINE)")
    if flags:
        raise _oserror(errno.EOPNOTSUPP, "recv flags")
