"""The sans-I/O TCP core: pure state, no threads, sockets, clocks, randomness or scapy.

Everything here is driven by method calls that carry ``now`` (float seconds) and
returns what to send, when to be called again and what happened.
"""
