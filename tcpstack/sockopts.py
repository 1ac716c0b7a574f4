"""Socket options (setsockopt/getsockopt) mapped onto a connection's knobs.

Only the options a userspace endpoint can honour exist here; the rest are refused
with ENOPROTOOPT by the facade, as a kernel refuses what it does not implement.
"""

from __future__ import annotations

import socket as _socket
from dataclasses import replace

from tcpstack.config import TcpConfig
from tcpstack.core.connection import TcpConnection

Key = tuple[int, int]
Value = int | str | bytes


TCP_CONGESTION = getattr(_socket, "TCP_CONGESTION", 13)
TCP_USER_TIMEOUT = getattr(_socket, "TCP_USER_TIMEOUT", 18)
IP_TTL = (_socket.IPPROTO_IP, _socket.IP_TTL)
IP_TOS = (_socket.IPPROTO_IP, _socket.IP_TOS)
DEFAULT_TTL = 64  # Linux's net.ipv4.ip_default_ttl
# The ECN bits of IP_TOS belong to the TCP, as on Linux; this one never sets them.
_ECN_MASK = 0x03
OPTIONS = {
    (_socket.IPPROTO_TCP, _socket.TCP_NODELAY),
    (_socket.SOL_SOCKET, _socket.SO_KEEPALIVE),
    (_socket.IPPROTO_TCP, _socket.TCP_KEEPIDLE),
    (_socket.IPPROTO_TCP, _socket.TCP_KEEPINTVL),
    (_socket.IPPROTO_TCP, _socket.TCP_KEEPCNT),
    (_socket.IPPROTO_TCP, TCP_CONGESTION),
    (_socket.IPPROTO_TCP, TCP_USER_TIMEOUT),
    IP_TTL,
    IP_TOS,
    (_socket.SOL_SOCKET, _socket.SO_RCVBUF),
    (_socket.SOL_SOCKET, _socket.SO_SNDBUF),
    (_socket.SOL_SOCKET, _socket.SO_REUSEADDR),
    (_socket.SOL_SOCKET, _socket.SO_LINGER),
}
# Options of the socket rather than of its connection: the facade acts on them
# itself (bind conflicts, close) and a connection never sees them.
SO_REUSEADDR = (_socket.SOL_SOCKET, _socket.SO_REUSEADDR)
SO_LINGER = (_socket.SOL_SOCKET, _socket.SO_LINGER)
SOCKET_ONLY: dict[Key, Value] = {SO_REUSEADDR: 0, SO_LINGER: bytes(8)}
POSITIVE = {
    (_socket.IPPROTO_TCP, _socket.TCP_KEEPIDLE),
    (_socket.IPPROTO_TCP, _socket.TCP_KEEPINTVL),
    (_socket.IPPROTO_TCP, _socket.TCP_KEEPCNT),
    (_socket.SOL_SOCKET, _socket.SO_RCVBUF),
    (_socket.SOL_SOCKET, _socket.SO_SNDBUF),
}


def apply_options(conn: TcpConnection, options: dict[Key, Value], now: float) -> None:
    for key, value in options.items():
        apply(conn, key, value, now)


def apply(conn: TcpConnection, key: Key, value: Value, now: float) -> None:
    level, name = key
    if key == (_socket.IPPROTO_TCP, _socket.TCP_NODELAY):
        conn.nodelay = bool(value)
    elif key == (_socket.SOL_SOCKET, _socket.SO_KEEPALIVE):
        conn.set_keepalive(bool(value), now)
    elif key == (_socket.IPPROTO_TCP, _socket.TCP_KEEPIDLE):
        conn.keepalive_idle = float(value)
        conn.set_keepalive(conn.keepalive, now)
    elif key == (_socket.IPPROTO_TCP, _socket.TCP_KEEPINTVL):
        conn.keepalive_interval = float(value)
    elif key == (_socket.IPPROTO_TCP, _socket.TCP_KEEPCNT):
        conn.keepalive_probes = int(value)
    elif key == (_socket.IPPROTO_TCP, TCP_CONGESTION):
        conn.set_congestion(str(value))
    elif key == (_socket.IPPROTO_TCP, TCP_USER_TIMEOUT):
        conn.user_timeout = int(value) / 1000
    elif key == IP_TTL:
        conn.ip_ttl = DEFAULT_TTL if value == -1 else int(value)
    elif key == IP_TOS:
        conn.ip_tos = int(value) & ~_ECN_MASK & 0xFF
    elif key == (_socket.SOL_SOCKET, _socket.SO_RCVBUF):
        # On a live connection too, as on Linux: see TcpConnection.set_receive_buffer.
        conn.set_receive_buffer(receive_buffer_size(conn.config, int(value)))
    # SO_SNDBUF sizes the connection when it is created (buffers()).


def receive_buffer_size(config: TcpConfig, value: int) -> int:
    """What SO_RCVBUF = value makes the receive buffer: doubled, as Linux does, and no
    larger than the window can advertise."""
    cap = 0xFFFF << (config.window_shift if config.window_scaling else 0)
    return min(max(2 * value, 2048), cap)


def buffers(config: TcpConfig, options: dict[Key, Value]) -> TcpConfig:
    """A connection's configuration with the socket's buffer sizes applied. Like
    Linux, the value set is doubled (for bookkeeping overhead) and the receive
    buffer is capped by what the window can advertise."""
    rcv = options.get((_socket.SOL_SOCKET, _socket.SO_RCVBUF))
    snd = options.get((_socket.SOL_SOCKET, _socket.SO_SNDBUF))
    if rcv is None and snd is None:
        return config
    if rcv is not None:
        config = replace(config, receive_buffer=receive_buffer_size(config, int(rcv)))
    if snd is not None:
        config = replace(config, send_buffer=max(2 * int(snd), 4096))
    return config


def read(
    conn: TcpConnection | None,
    key: Key,
    options: dict[Key, Value],
    config: TcpConfig,
) -> Value:
    if key in SOCKET_ONLY:
        return options.get(key, SOCKET_ONLY[key])
    if conn is not None:
        live: dict[Key, Value] = {
            (_socket.IPPROTO_TCP, _socket.TCP_NODELAY): int(conn.nodelay),
            (_socket.SOL_SOCKET, _socket.SO_KEEPALIVE): int(conn.keepalive),
            (_socket.IPPROTO_TCP, _socket.TCP_KEEPIDLE): int(conn.keepalive_idle),
            (_socket.IPPROTO_TCP, _socket.TCP_KEEPINTVL): int(conn.keepalive_interval),
            (_socket.IPPROTO_TCP, _socket.TCP_KEEPCNT): conn.keepalive_probes,
            (_socket.IPPROTO_TCP, TCP_CONGESTION): conn.cc.name,
            (_socket.IPPROTO_TCP, TCP_USER_TIMEOUT): round(conn.user_timeout * 1000),
            IP_TTL: conn.ip_ttl,
            IP_TOS: conn.ip_tos,
            (_socket.SOL_SOCKET, _socket.SO_RCVBUF): conn.config.receive_buffer,
            (_socket.SOL_SOCKET, _socket.SO_SNDBUF): conn.config.send_buffer,
        }
        return live[key]
    if key in options:
        value = options[key]
        if key in (
            (_socket.SOL_SOCKET, _socket.SO_RCVBUF),
            (_socket.SOL_SOCKET, _socket.SO_SNDBUF),
        ):
            return 2 * int(value)
        if key == IP_TTL and value == -1:
            return DEFAULT_TTL
        if key == IP_TOS:
            return int(value) & ~_ECN_MASK & 0xFF
        return value
    defaults: dict[Key, Value] = {
        (_socket.IPPROTO_TCP, _socket.TCP_NODELAY): int(not config.nagle),
        (_socket.SOL_SOCKET, _socket.SO_KEEPALIVE): int(config.keepalive),
        (_socket.IPPROTO_TCP, _socket.TCP_KEEPIDLE): int(config.keepalive_idle),
        (_socket.IPPROTO_TCP, _socket.TCP_KEEPINTVL): int(config.keepalive_interval),
        (_socket.IPPROTO_TCP, _socket.TCP_KEEPCNT): config.keepalive_probes,
        (_socket.IPPROTO_TCP, TCP_CONGESTION): config.congestion,
        (_socket.IPPROTO_TCP, TCP_USER_TIMEOUT): 0,
        IP_TTL: DEFAULT_TTL,
        IP_TOS: 0,
        (_socket.SOL_SOCKET, _socket.SO_RCVBUF): config.receive_buffer,
        (_socket.SOL_SOCKET, _socket.SO_SNDBUF): config.send_buffer,
    }
    return defaults[key]
