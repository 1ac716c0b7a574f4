"""tcpstack: a userspace TCP endpoint that speaks RFC 9293 to a real Linux kernel.

Public API: Stack and Socket (the socket-module-shaped facade), State (the eleven
RFC 9293 states) and TcpConfig (tunables). The lab for test networks lives in
tcpstack.lab; the sans-I/O core in tcpstack.core.
"""

from tcpstack.config import StackConfig, TcpConfig
from tcpstack.core.state import State
from tcpstack.stack import ConnectionInfo, Socket, Stack

__all__ = ["ConnectionInfo", "Socket", "Stack", "StackConfig", "State", "TcpConfig"]
