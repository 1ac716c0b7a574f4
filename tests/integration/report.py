"""Lines the recovery tests want shown at the end of the run (goodput and
retransmissions beside the kernel-to-kernel reference), whether or not they pass."""

REPORT: list[str] = []
