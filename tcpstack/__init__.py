"""tcpstack: a userspace TCP endpoint that speaks RFC 9293 to a real Linux kernel."""

from tcpstack.config import TcpConfig
from tcpstack.core.state import State

__all__ = ["State", "TcpConfig"]
