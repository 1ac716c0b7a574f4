"""Test TCP against a scripted peer, with Linux as the reference device under test.

tcpstack.testing is for anyone testing a TCP endpoint, ours or their own:

* notation: packetdrill-like segment lines (`S. 0:0(0) ack 1 win 65535 <mss 1460>`)
  with relative sequence numbers and tcpdump flags, parsed, printed and matched;
* peer: a scripted peer on a raw socket in its own namespace that injects exact
  segments and checks the replies, with timing tolerances;
* dut: the device under test, this endpoint or a Linux socket in a namespace;
* script: runs a script of injected segments, expected replies and socket calls
  against either device, with deviations recorded per device and kernel version;
* catalogue: the conformance scripts, each tied to the requirements it checks;
* invariants: a wire-trace checker run over every capture;
* oracle: the kernel's own counters read after every test.
"""
