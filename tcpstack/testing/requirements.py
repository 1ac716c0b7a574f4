"""The RFC requirements this endpoint is held to, one row each, with our verdict.

The rows are RFC 9293 Appendix B (every MUST and SHOULD), the segment-arrival
clauses of RFC 9293 §3.1 and §3.10.7 that the scripted scenarios cite, and the
clauses of the companion RFCs (5961, 6298, 5681, 7323, 2018, 6528) a TCP endpoint
facing Linux is judged by. ``tcpstack.testing.matrix`` renders them, together with
the scenarios of ``tcpstack.testing.catalogue``, into docs/conformance.md.

Each statement paraphrases the requirement in a line; the RFC is the authority.
``status`` is what we found reading the code and the tests:

* "met": implemented, and the tests named in ``evidence`` (or a scenario that
  cites the row) check it. A "met" row with no evidence yet is shown as not met,
  "untested", until a test or scenario names it; ``awaiting`` names the planned
  scenario expected to.
* "deviated": we knowingly behave otherwise; ``reason`` says how and why.
* "not met": not implemented, or broken (``reason`` says which), or implemented
  but untested (``reason`` starts "untested:"; such a row counts as met once a
  scenario cites it; tests it names already are only partial evidence).
* "n/a": cannot apply to a single-address IPv4 endpoint on one link.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Final, Literal

Status = Literal["met", "deviated", "not met", "n/a"]
STATUSES: Final[tuple[Status, ...]] = ("met", "deviated", "not met", "n/a")
UNTESTED: Final = "untested:"

ID_PATTERN: Final = re.compile(r"^(MUST-[1-9]\d*|SHLD-[1-9]\d*|RFC\d{4}-\d+(\.\d+)*[a-z]?)$")
SECTION_PATTERN: Final = re.compile(r"^§\d+(\.\d+)*$")
SCENARIO_PATTERN: Final = re.compile(r"^[A-Z]-\d{2}$")
MUST_COUNT: Final = 69
SHOULD_COUNT: Final = 31


@dataclass(frozen=True, slots=True)
class Requirement:
    id: str  # "MUST-13", "SHLD-7", "RFC5961-3.2"
    section: str  # where the RFC states it: "§3.6.1"
    text: str  # one line, our words
    status: Status
    reason: str = ""  # required unless met
    evidence: tuple[str, ...] = ()  # pytest node ids; "file::test" matches every parametrization
    awaiting: tuple[str, ...] = ()  # planned scenario ids expected to check it
    note: str = ""  # a caveat worth a reader's attention, even when met
    group: str = ""  # the table it is listed in (a key of GROUPS)

    @property
    def kind(self) -> str:
        """ "MUST" or "SHOULD" for RFC 9293 Appendix B rows, else "companion"."""
        if self.id.startswith("MUST-"):
            return "MUST"
        if self.id.startswith("SHLD-"):
            return "SHOULD"
        return "companion"


# Appendix B's headings, in its order, then the other RFC 9293 clauses and the
# companion RFCs. A requirement listed under two Appendix B headings (MUST-46 and
# MUST-57 are under both "Opening Connections" and "Address Validation") appears once.
GROUPS: Final[tuple[tuple[str, str], ...]] = (
    ("push", "PUSH flag"),
    ("window", "Window"),
    ("urgent", "Urgent data"),
    ("options", "TCP options"),
    ("checksums", "TCP checksums"),
    ("isn", "ISN selection"),
    ("opening", "Opening connections"),
    ("closing", "Closing connections"),
    ("retransmissions", "Retransmissions"),
    ("acks", "Generating ACKs"),
    ("sending", "Sending data"),
    ("failures", "Connection failures"),
    ("keepalive", "Keep-alive packets"),
    ("ip-options", "IP options"),
    ("icmp", "Receiving ICMP messages from IP"),
    ("address", "Address validation"),
    ("interface", "TCP/application interface services"),
    ("ecn", "Explicit Congestion Notification"),
    ("rfc9293", "RFC 9293: header format and segment arrival (§3.1, §3.10.7)"),
    ("rfc5961", "RFC 5961: blind in-window attacks"),
    ("rfc6298", "RFC 6298: the retransmission timer"),
    ("rfc5681", "RFC 5681: congestion control"),
    ("rfc7323", "RFC 7323: window scale, timestamps and PAWS"),
    ("rfc2018", "RFC 2018: selective acknowledgment"),
    ("rfc6528", "RFC 6528: initial sequence numbers"),
)
APPENDIX_B_GROUPS: Final = frozenset(key for key, _ in GROUPS[:18])


def _group(key: str, *rows: Requirement) -> tuple[Requirement, ...]:
    return tuple(replace(row, group=key) for row in rows)


R = Requirement

# Reasons and evidence shared by several rows.
_FC = "tests/unit/test_flow_control.py::"
_URG = "tests/unit/test_urgent.py::"
_URG_LINUX = (
    "tests/integration/test_urgent.py::test_linux_finds_the_urgent_byte_we_mark",
    "tests/integration/test_urgent.py::test_we_find_the_urgent_byte_linux_marks",
)
_SHRUNK = (
    f"{_FC}test_a_window_shrunk_to_zero_is_probed_for_as_long_as_the_peer_answers",
    f"{_FC}test_a_window_shrunk_to_zero_still_times_out_when_the_peer_goes_quiet",
)
_NO_SOURCE_ROUTE = (
    "no source routing: IP options are skipped unread and never sent; source routing "
    "is deprecated (RFC 7126), and a Linux host drops source-routed datagrams by "
    "default (accept_source_route=0)"
)
_IP = "tests/integration/test_icmp_and_ip.py::"
_ICMP_UNIT = "tests/unit/test_icmp_and_user_timeout.py::"
_MARKS = (f"{_IP}test_ttl_and_dscp_set_by_the_application_reach_the_wire",)

REQUIREMENTS: Final[tuple[Requirement, ...]] = (
    *_group(
        "push",
        R(
            "MUST-60",
            "§3.9.1.2",
            "Without a PUSH flag on send calls, never hold queued data back indefinitely.",
            "met",
            evidence=(
                "tests/unit/test_flow_control.py::test_nagle_holds_a_small_segment_while_data_is_unacknowledged",
                "tests/unit/test_established.py::test_send_segments_by_mss_and_sets_psh_on_the_last",
            ),
        ),
        R(
            "MUST-61",
            "§3.9.1.2",
            "Without a PUSH flag on send calls, set PSH on the segment that empties the queue.",
            "met",
            evidence=(
                "tests/unit/test_established.py::test_send_segments_by_mss_and_sets_psh_on_the_last",
            ),
        ),
        R(
            "SHLD-27",
            "§3.9.1.2",
            "Collapse successive pushed writes into as large a segment as possible.",
            "met",
            evidence=(
                "tests/unit/test_flow_control.py::test_nagle_holds_a_small_segment_while_data_is_unacknowledged",
            ),
        ),
        R(
            "SHLD-28",
            "§3.9.1.2",
            "Send full-sized segments whenever there is enough data and window.",
            "met",
            evidence=(
                "tests/unit/test_established.py::test_send_segments_by_mss_and_sets_psh_on_the_last",
                "tests/unit/test_offload.py::test_tso_sends_the_same_bytes_in_fewer_segments",
            ),
        ),
    ),
    *_group(
        "window",
        R(
            "MUST-1",
            "§3.1",
            "Treat the window field as an unsigned number.",
            "met",
            evidence=(
                "tests/unit/test_established.py::test_send_segments_by_mss_and_sets_psh_on_the_last",
                "tests/unit/test_wire.py::test_round_trip",
            ),
        ),
        R(
            "SHLD-14",
            "§3.8.6",
            "Do not shrink the window we offer: its right edge never moves left.",
            "deviated",
            "by less than one unit of the window scale, when the buffer has no room for "
            "rounding the field up: it is then truncated as RFC 7323 §2.4 defines it, "
            "where rounding it up on every ACK let a peer sending less than a unit at a "
            "time keep a full buffer's window open for ever (Linux has tcp_shrink_window "
            "for the same); never more, and data the peer sent up to the furthest edge we "
            "offered is still taken",
            evidence=(
                "tests/unit/test_window_edge.py::"
                "test_a_full_buffer_closes_its_window_to_segments_smaller_than_the_scale_unit",
                "tests/unit/test_window_edge.py::test_the_right_edge_we_offer_never_retreats",
                "tests/integration/test_windows_with_the_kernel.py::"
                "test_data_up_to_the_furthest_edge_we_offered_is_taken",
                "tests/unit/test_invariants.py::test_i7_our_right_edge_moving_left_is_found",
                "tests/integration/test_recovery.py::test_eight_megabytes_each_way_under_impairment",
                "tests/integration/test_recovery.py::test_our_reader_stops_for_two_seconds",
            ),
            note="The wire-trace checker's I-7 holds every segment every integration test "
            "makes us send to that, against the kernel.",
        ),
        R(
            "SHLD-15",
            "§3.8.6",
            "After the peer shrinks its window, send no new data beyond the new right edge.",
            "met",
            evidence=_SHRUNK,
            awaiting=("W-04",),
        ),
        R(
            "SHLD-16",
            "§3.8.6",
            "After a shrink, keep retransmitting unacknowledged data inside the window.",
            "met",
            evidence=_SHRUNK,
            awaiting=("W-04",),
        ),
        R(
            "SHLD-17",
            "§3.8.6",
            "Do not time the connection out because data beyond the right edge goes unACKed.",
            "met",
            evidence=_SHRUNK,
            awaiting=("W-04",),
        ),
        R(
            "MUST-34",
            "§3.8.6",
            "Cope with a peer that shrinks its window, even if the usable window goes negative.",
            "met",
            evidence=_SHRUNK,
            awaiting=("W-04",),
        ),
        R(
            "MUST-35",
            "§3.8.6",
            "Probe a window that shrank to zero the standard way, as any zero window.",
            "met",
            evidence=_SHRUNK,
            note="a window shrunk to zero under data in flight is probed, as Linux does, "
            "by retransmitting the segment at SND.UNA; a peer's answer resets the give-up "
            "count, as for any window probe",
        ),
        R(
            "MUST-36",
            "§3.8.6.1",
            "Support probing a zero window.",
            "met",
            evidence=(
                "tests/unit/test_established.py::test_zero_window_is_probed_with_one_byte",
                "tests/integration/test_recovery.py::test_kernel_reader_stops_for_two_seconds",
            ),
        ),
        R(
            "SHLD-29",
            "§3.8.6.1",
            "Send the first zero-window probe once the window has been zero for an RTO.",
            "met",
            evidence=(f"{_FC}test_zero_window_probes_start_after_an_rto_and_back_off",),
        ),
        R(
            "SHLD-30",
            "§3.8.6.1",
            "Back off the interval between zero-window probes exponentially.",
            "met",
            evidence=(f"{_FC}test_zero_window_probes_start_after_an_rto_and_back_off",),
        ),
        R(
            "MUST-37",
            "§3.8.6.1",
            "Keep the connection open for as long as the peer answers the window probes.",
            "met",
            evidence=(
                "tests/unit/test_established.py::test_zero_window_is_probed_with_one_byte",
                *_SHRUNK,
            ),
        ),
        R(
            "MUST-66",
            "§3.4",
            "Process the RST and URG fields even when the receive window is zero.",
            "met",
            evidence=(
                f"{_URG}test_urg_is_processed_with_a_zero_receive_window",
                "tests/unit/test_established.py::test_zero_window_is_probed_with_one_byte",
            ),
        ),
    ),
    *_group(
        "urgent",
        R(
            "MUST-30",
            "§3.8.5",
            "Support the urgent mechanism.",
            "met",
            evidence=_URG_LINUX,
            note="send(MSG_OOB) marks the last byte urgent; received urgent data stays in "
            "line, as with SO_OOBINLINE on Linux, and recv(MSG_OOB) fails with EINVAL as "
            "it does there",
        ),
        R(
            "MUST-62",
            "§3.8.5",
            "The urgent pointer points at the first octet after the urgent data.",
            "met",
            evidence=(
                f"{_URG}test_the_pointer_received_marks_the_octet_after_the_urgent_data",
                f"{_URG}test_urgent_data_sent_carries_the_pointer_until_acknowledged",
                *_URG_LINUX,
            ),
        ),
        R(
            "MUST-31",
            "§3.8.5",
            "Accept urgent data of any length.",
            "met",
            evidence=(f"{_URG}test_urgent_data_of_any_length_and_a_pointer_ahead_of_the_data",),
        ),
        R(
            "MUST-32",
            "§3.8.5",
            "Tell the application at once when urgent data arrives or its pointer advances.",
            "met",
            evidence=(
                f"{_URG}test_the_pointer_received_marks_the_octet_after_the_urgent_data",
                "tests/integration/test_urgent.py::test_we_find_the_urgent_byte_linux_marks",
            ),
            note="an UrgentEvent to stack.subscribe() subscribers, as the pointer moves; "
            "there is no SIGURG",
        ),
        R(
            "MUST-33",
            "§3.8.5",
            "Let the application learn how much urgent data remains to be read.",
            "met",
            evidence=(
                f"{_URG}test_the_pointer_received_marks_the_octet_after_the_urgent_data",
                "tests/integration/test_urgent.py::test_we_find_the_urgent_byte_linux_marks",
            ),
            note="Socket.urgent_pending() counts the bytes to the mark, Socket.sockatmark() "
            "says when the next byte is the last urgent one, and reads stop there",
        ),
        R(
            "SHLD-13",
            "§3.8.5",
            "New applications should not use the urgent mechanism.",
            "n/a",
            "advice to applications, not to the TCP implementation",
        ),
    ),
    *_group(
        "options",
        R(
            "MUST-4",
            "§3.1",
            "Understand the End of Option List, No-Operation and MSS options.",
            "met",
            evidence=("tests/unit/test_wire.py::test_option_parsing_details",),
        ),
        R(
            "MUST-5",
            "§3.1",
            "Accept options on any segment, not only on SYNs.",
            "met",
            evidence=("tests/unit/test_options.py::test_timestamps_echo_and_measure_rtt",),
        ),
        R(
            "MUST-6",
            "§3.1",
            "Skip, without error, any option we do not implement (it has a length field).",
            "met",
            evidence=("tests/unit/test_wire.py::test_option_parsing_details",),
        ),
        R(
            "MUST-68",
            "§3.1",
            "Every option other than EOL and NOP carries a length octet.",
            "met",
            evidence=(
                "tests/unit/test_wire.py::test_drop_reason[option_no_length]",
                "tests/unit/test_wire.py::test_encode_tcp_matches_scapy",
            ),
        ),
        R(
            "MUST-7",
            "§3.1",
            "Survive an illegal option length, such as zero.",
            "met",
            evidence=(
                "tests/unit/test_wire.py::test_drop_reason[option_length_0]",
                "tests/unit/test_wire.py::test_drop_reason[option_overruns]",
                "tests/integration/test_kernel_peer.py::test_malformed_frames_are_counted_and_harmless",
            ),
            note="The whole segment is dropped (drop_tcp_bad_options); the connection is not "
            "reset.",
        ),
        R(
            "MUST-64",
            "§3.2",
            "Parse options that do not begin on a word boundary.",
            "met",
            evidence=("tests/unit/test_wire.py::test_option_parsing_details",),
        ),
        R(
            "MUST-14",
            "§3.7.1",
            "Send the MSS option, and use the one the peer sends.",
            "met",
            evidence=(
                "tests/unit/test_options.py::test_syn_offers_everything_linux_does",
                "tests/unit/test_handshake.py::test_syn_ack_mss_option_sets_send_mss",
            ),
        ),
        R(
            "SHLD-5",
            "§3.7.1",
            "Put an MSS option on every SYN whose receive MSS is not the 536 default.",
            "met",
            evidence=(
                "tests/unit/test_options.py::test_syn_offers_everything_linux_does",
                "tests/unit/test_options.py::test_passive_syn_ack_answers_only_what_was_offered",
            ),
        ),
        R(
            "MUST-15",
            "§3.7.1",
            "With no MSS option from the peer, assume a send MSS of 536 (IPv4).",
            "met",
            evidence=("tests/unit/test_handshake.py::test_missing_mss_option_means_536",),
        ),
        R(
            "MUST-16",
            "§3.7.1",
            "Send no more per segment than the peer's MSS or IP allows, less our options.",
            "met",
            evidence=(
                "tests/unit/test_handshake.py::test_syn_ack_mss_option_sets_send_mss",
                "tests/unit/test_established.py::test_send_segments_by_mss_and_sets_psh_on_the_last",
            ),
            note="A peer MSS below 48 is raised to 48, as Linux does (tcp_min_snd_mss).",
        ),
        R(
            "SHLD-6",
            "§3.7.3",
            "On an interface whose MTU varies per packet, base the MSS on the smallest MTU.",
            "n/a",
            "veth and TAP links have one fixed MTU",
        ),
        R(
            "MUST-65",
            "§3.2",
            "Never send an MSS option outside a SYN.",
            "met",
            evidence=(
                "tests/unit/test_options.py::test_options_need_both_sides",
                "tests/unit/test_invariants.py::test_two_cores_through_a_bad_wire_break_nothing",
            ),
        ),
        R(
            "MUST-67",
            "§3.7.1",
            "Announce an MSS no larger than the largest datagram we can receive, less 40.",
            "met",
            evidence=(
                f"{_IP}test_the_mss_we_announce_follows_the_link_mtu",
                "tests/integration/test_gate0.py::"
                "test_at_a_jumbo_mtu_our_mss_is_the_mtu_minus_40_unless_capped",
            ),
        ),
        R(
            "MUST-69",
            "§3.1",
            "Fill the header space after an End of Option List with zeros.",
            "met",
            evidence=("tests/unit/test_wire.py::test_encode_tcp_matches_scapy",),
        ),
    ),
    *_group(
        "checksums",
        R(
            "MUST-2",
            "§3.1",
            "Compute the checksum of every segment we send.",
            "met",
            evidence=(
                "tests/unit/test_wire.py::test_encode_tcp_matches_scapy",
                "tests/unit/test_offload.py::test_partial_checksum_completes_to_the_full_one",
                "tests/integration/test_kernel_peer.py::test_one_megabyte_each_way_arrives_intact",
                "tests/unit/test_invariants.py::test_two_stacks_transfer_and_close_break_nothing",
            ),
        ),
        R(
            "MUST-3",
            "§3.1",
            "Verify the checksum of every segment received, and drop those that fail.",
            "met",
            evidence=(
                "tests/unit/test_wire.py::test_drop_reason[bad_tcp_checksum]",
                "tests/integration/test_kernel_peer.py::test_malformed_frames_are_counted_and_harmless",
                "tests/integration/test_recovery.py::test_eight_megabytes_each_way_under_impairment"
                "[veth-1% corruption]",
            ),
            note="Frames the kernel marks as checksum-verified or not yet checksummed "
            "(its own offload) are trusted, as its own stack trusts them.",
        ),
    ),
    *_group(
        "isn",
        R(
            "MUST-8",
            "§3.4.1",
            "Drive initial sequence numbers from a clock (one tick per 4 µs).",
            "met",
            evidence=(
                "tests/unit/test_isn.py::test_same_tuple_advances_with_the_4_microsecond_clock",
            ),
        ),
        R(
            "SHLD-1",
            "§3.4.1",
            "Add a keyed pseudorandom function of the addresses and ports to that clock.",
            "met",
            evidence=(
                "tests/unit/test_isn.py::test_different_tuples_are_unrelated",
                "tests/unit/test_isn.py::test_secret_changes_everything",
            ),
        ),
        R(
            "MUST-9",
            "§3.4.1",
            "Keep that function's key secret, so nobody outside can compute our ISNs.",
            "met",
            evidence=("tests/unit/test_isn.py::test_secret_changes_everything",),
        ),
    ),
    *_group(
        "opening",
        R(
            "MUST-10",
            "§3.5",
            "Support simultaneous open.",
            "met",
            evidence=(
                "tests/unit/test_handshake.py::test_simultaneous_open",
                "tests/integration/test_scenarios.py::test_scenario_passes_against_the_kernel[simultaneous-open-veth]",
            ),
        ),
        R(
            "MUST-11",
            "§3.5",
            "Remember whether SYN-RECEIVED was reached from a passive or an active open.",
            "met",
            evidence=(
                "tests/unit/test_handshake.py::test_passive_syn_received_rst_returns_to_listen",
                "tests/unit/test_handshake.py::test_active_syn_received_rst_is_refused",
                "tests/integration/test_scenarios.py::test_scenario_passes_against_the_kernel[reset-veth]",
            ),
        ),
        R(
            "MUST-41",
            "§3.9.1.1",
            "A passive open makes a new listener or fails; it never disturbs other connections.",
            "not met",
            "untested: bind() refuses a port in use (EADDRINUSE, tested), but no test shows "
            "that the connections already on that port are left untouched",
        ),
        R(
            "MUST-42",
            "§3.9.1.1",
            "Allow listening on a port while connections on that port are still opening.",
            "met",
            evidence=(
                "tests/integration/test_kernel_peer.py::test_fifty_concurrent_kernel_clients",
                "tests/unit/test_hardening.py::test_syn_flood_falls_back_to_cookies_and_real_clients_still_connect",
            ),
        ),
        R(
            "MUST-44",
            "§3.9.1.1",
            "On a multihomed host, ask IP for a source address when the application gives none.",
            "n/a",
            "the endpoint owns exactly one IPv4 address, so there is no source address to choose",
        ),
        R(
            "MUST-45",
            "§3.9.1.1",
            "Keep sending from the local address the connection has used so far.",
            "met",
            evidence=(
                "tests/integration/test_kernel_peer.py::test_active_open_to_a_kernel_listener",
            ),
        ),
    ),
    *_group(
        "closing",
        R(
            "SHLD-2",
            "§3.5.3",
            "Accept a RST that carries data.",
            "met",
            awaiting=("M-08",),
        ),
        R(
            "MUST-12",
            "§3.6",
            "Tell the application whether the peer closed normally or aborted.",
            "met",
            evidence=(
                "tests/integration/test_kernel_peer.py::test_kernel_reset_surfaces_as_connection_reset",
                "tests/integration/test_kernel_peer.py::test_half_close_kernel_stops_and_we_keep_sending",
                "tests/unit/test_established.py::test_exact_rst_resets_synchronized_states",
            ),
        ),
        R(
            "SHLD-3",
            "§3.6.1",
            "Send a RST when a close would throw away received data.",
            "met",
            evidence=(
                "tests/integration/test_kernel_peer.py::test_close_with_unread_data_resets",
                "tests/unit/test_flow_control.py::test_data_for_an_orphan_is_answered_with_rst",
            ),
        ),
        R(
            "MUST-13",
            "§3.6.1",
            "After an active close, linger in TIME-WAIT for 2×MSL.",
            "deviated",
            "TIME-WAIT lasts 2×MSL (MSL 30 s: 60 s, as on Linux), but once max_time_wait "
            "(4096) connections are in it, a closing connection skips it, as Linux does "
            "past tcp_max_tw_buckets",
            evidence=(
                "tests/unit/test_close.py::test_time_wait_lasts_two_msl_then_closes",
                "tests/integration/test_scenarios.py::test_scenario_passes_against_the_kernel[time-wait-veth]",
                "tests/unit/test_hardening.py::test_time_wait_table_is_bounded",
            ),
        ),
        R(
            "SHLD-4",
            "§3.6.1",
            "Use timestamps to cut TIME-WAIT short for a new connection (RFC 6191).",
            "met",
            evidence=(
                "tests/unit/test_time_wait_reuse.py::"
                "test_with_timestamps_a_newer_tsval_reopens_whatever_the_sequence_number",
                "tests/unit/test_time_wait_reuse.py::"
                "test_without_timestamps_a_higher_sequence_number_reopens",
                "tests/unit/test_isn.py::test_timestamp_offsets_are_keyed_on_the_four_tuple",
                "tests/integration/test_time_wait_reuse.py::"
                "test_a_kernel_client_reconnects_to_our_port_in_time_wait",
                "tests/integration/test_time_wait_reuse.py::"
                "test_we_reconnect_to_a_kernel_server_in_time_wait",
            ),
            note="Our TSval offset is keyed on the 4-tuple, as Linux 6.18's is, so it keeps "
            "rising from one incarnation to the next and the kernel's TIME-WAIT can use it too; "
            "the new incarnation's ISS is SND.NXT + 65537, as Linux picks it.",
        ),
    ),
    *_group(
        "retransmissions",
        R(
            "MUST-19",
            "§3.8.2",
            "Implement slow start, congestion avoidance and exponential RTO backoff.",
            "met",
            evidence=(
                "tests/unit/test_loss_recovery.py::test_congestion_control_slow_start_avoidance_and_loss",
                "tests/unit/test_loss_recovery.py::test_rto_goes_back_and_retransmits_in_slow_start",
                "tests/unit/test_retransmit.py::test_syn_is_retransmitted_with_exponential_backoff_then_gives_up",
                "tests/integration/test_recovery.py::test_eight_megabytes_each_way_under_impairment"
                "[veth-5% loss each way]",
            ),
        ),
        R(
            "MUST-18",
            "§3.8.1",
            "Compute the RTO as RFC 6298 says, taking RTT samples by Karn's algorithm.",
            "met",
            evidence=(
                "tests/unit/test_rtt.py::test_later_samples_smooth_per_rfc_6298",
                "tests/unit/test_retransmit.py::test_lost_syn_then_syn_ack_completes",
                "tests/unit/test_retransmit.py::test_data_retransmits_the_earliest_unacked_segment",
            ),
            note="The RTO floor is 200 ms, as on Linux (see RFC6298-2.4).",
        ),
    ),
    *_group(
        "acks",
        R(
            "MUST-58",
            "§3.10.7.4",
            "Aggregate ACKs whenever possible.",
            "met",
            evidence=(
                "tests/unit/test_flow_control.py::test_delayed_ack_every_second_full_segment_or_after_40ms",
                "tests/unit/test_flow_control.py::test_data_we_send_carries_the_pending_ack",
            ),
        ),
        R(
            "SHLD-31",
            "§3.10.7.4",
            "Hold in-window segments that arrive out of order for later processing.",
            "met",
            evidence=(
                "tests/unit/test_established.py::test_out_of_order_data_is_held_and_acked_at_once",
                "tests/unit/test_loss_recovery.py::test_reassembler_merges_trims_and_releases_in_order",
            ),
        ),
        R(
            "MUST-59",
            "§3.10.7.4",
            "Process every queued segment before sending an ACK for them.",
            "deviated",
            "out-of-order data released by a filled hole is taken whole and ACKed once "
            "(tested), but frames read from the link in one batch are processed one at a "
            "time, each ACK decided as it goes, as Linux does (veth's GRO hands over "
            "64 KB super-frames anyway)",
            evidence=(
                "tests/unit/test_established.py::test_out_of_order_data_is_held_and_acked_at_once",
            ),
        ),
        R(
            "SHLD-18",
            "§3.8.6.3",
            "Delay ACKs.",
            "met",
            evidence=(
                "tests/unit/test_flow_control.py::test_delayed_ack_every_second_full_segment_or_after_40ms",
            ),
        ),
        R(
            "MUST-40",
            "§3.8.6.3",
            "Never delay an ACK by half a second or more.",
            "met",
            evidence=(
                "tests/unit/test_flow_control.py::test_delayed_ack_every_second_full_segment_or_after_40ms",
            ),
        ),
        R(
            "SHLD-19",
            "§3.8.6.3",
            "ACK at least every second full-sized segment.",
            "met",
            evidence=(
                "tests/unit/test_flow_control.py::test_delayed_ack_every_second_full_segment_or_after_40ms",
            ),
        ),
        R(
            "MUST-39",
            "§3.8.6.2.2",
            "Avoid the silly window syndrome as a receiver.",
            "met",
            evidence=(
                "tests/unit/test_established.py::test_reading_opens_the_window_with_an_update",
                "tests/integration/test_recovery.py::test_our_reader_stops_for_two_seconds",
            ),
        ),
    ),
    *_group(
        "sending",
        R(
            "MUST-49",
            "§3.9.2",
            "Make the TTL of the segments we send configurable.",
            "met",
            evidence=_MARKS,
            note="IP_TTL, 64 by default as Linux's ip_default_ttl",
        ),
        R(
            "MUST-38",
            "§3.8.6.2.1",
            "Avoid the silly window syndrome as a sender.",
            "met",
            evidence=(
                "tests/unit/test_established.py::test_silly_window_is_not_filled_with_a_tiny_segment",
                "tests/unit/test_established.py::test_sender_respects_the_peer_window",
            ),
        ),
        R(
            "SHLD-7",
            "§3.7.4",
            "Coalesce small segments with the Nagle algorithm.",
            "met",
            evidence=(
                "tests/unit/test_flow_control.py::test_nagle_holds_a_small_segment_while_data_is_unacknowledged",
            ),
        ),
        R(
            "MUST-17",
            "§3.7.4",
            "Let the application turn Nagle off for a connection.",
            "met",
            evidence=(
                "tests/unit/test_flow_control.py::test_tcp_nodelay_sends_small_segments_at_once",
                "tests/unit/test_engine.py::test_socket_options_reach_the_connection",
            ),
        ),
    ),
    *_group(
        "failures",
        R(
            "MUST-20",
            "§3.8.3",
            "Give IP negative advice after R1 retransmissions; close the connection after R2.",
            "met",
            evidence=(
                "tests/unit/test_retransmit.py::test_retransmission_limit_aborts_with_timed_out",
                "tests/unit/test_retransmit.py::test_syn_is_retransmitted_with_exponential_backoff_then_gives_up",
                "tests/unit/test_retransmit.py::"
                "test_r1_reports_delivery_trouble_once_and_new_data_acked_clears_it",
                "tests/integration/test_delivery_trouble.py::"
                "test_r1_tells_the_application_and_asks_for_the_peers_address_again",
            ),
            note="Our peers are on-link, so the advice goes to the only route there is: "
            "the peer's link address is forgotten and asked for again by ARP. R1 counts "
            "data retransmissions (TcpConfig.r1, Linux's tcp_retries1); R2 is max_retries "
            "and syn_retries (ETIMEDOUT).",
        ),
        R(
            "MUST-21",
            "§3.8.3",
            "Let the application set R2 for each connection.",
            "met",
            evidence=(
                f"{_IP}test_the_user_timeout_ends_a_connection_and_names_the_icmp_error",
                f"{_ICMP_UNIT}test_the_user_timeout_ends_a_connection_before_r2",
                f"{_ICMP_UNIT}test_the_user_timeout_counts_from_the_last_progress",
            ),
            note="TCP_USER_TIMEOUT, in milliseconds as on Linux: the connection ends once "
            "the peer has acknowledged nothing (and answered no probe) for that long",
        ),
        R(
            "SHLD-9",
            "§3.8.3",
            "Tell the application of the trouble once R1 is reached, before R2.",
            "met",
            evidence=(
                "tests/unit/test_retransmit.py::"
                "test_r1_reports_delivery_trouble_once_and_new_data_acked_clears_it",
                "tests/integration/test_delivery_trouble.py::"
                "test_r1_tells_the_application_and_asks_for_the_peers_address_again",
            ),
            note="Socket.delivery_trouble turns true, and a TroubleEvent goes to trace "
            "subscribers; Linux tells the application nothing before R2.",
        ),
        R(
            "SHLD-10",
            "§3.8.3",
            "Set R1 to at least three retransmissions.",
            "met",
            evidence=(
                "tests/unit/test_retransmit.py::"
                "test_r1_reports_delivery_trouble_once_and_new_data_acked_clears_it",
            ),
        ),
        R(
            "SHLD-11",
            "§3.8.3",
            "Set R2 to at least 100 seconds.",
            "met",
            evidence=(
                f"{_FC}test_defaults_keepalive_after_two_hours_and_r2_after_over_100_seconds",
            ),
        ),
        R(
            "MUST-22",
            "§3.8.3",
            "Handle SYN retransmissions the same way, telling the application when they stop.",
            "met",
            evidence=(
                "tests/unit/test_retransmit.py::test_syn_is_retransmitted_with_exponential_backoff_then_gives_up",
                "tests/unit/test_retransmit.py::test_syn_ack_is_retransmitted_then_half_open_gives_up",
                "tests/integration/test_recovery.py::test_lost_syn_is_retransmitted",
            ),
        ),
        R(
            "MUST-23",
            "§3.8.3",
            "Keep retransmitting a SYN for at least three minutes.",
            "deviated",
            "connect() gives up after 6 SYN retransmissions, about 127 s, as Linux does "
            "with its default tcp_syn_retries",
            evidence=(
                "tests/unit/test_retransmit.py::test_syn_is_retransmitted_with_exponential_backoff_then_gives_up",
            ),
        ),
    ),
    *_group(
        "keepalive",
        R(
            "MUST-24",
            "§3.8.4",
            "Let the application turn keep-alives on or off for each connection.",
            "met",
            evidence=(
                "tests/unit/test_flow_control.py::test_keepalive_probes_then_times_out",
                "tests/integration/test_recovery.py::test_keepalive_is_answered_and_then_finds_a_dead_peer",
            ),
        ),
        R(
            "MUST-25",
            "§3.8.4",
            "Keep-alives are off by default.",
            "met",
            evidence=(
                "tests/unit/test_flow_control.py::test_keepalive_off_sends_nothing_when_idle",
            ),
        ),
        R(
            "MUST-26",
            "§3.8.4",
            "Send a keep-alive only when nothing is outstanding and nothing came for a while.",
            "met",
            evidence=(
                f"{_FC}test_keepalive_waits_while_data_is_in_flight_and_restarts_on_every_ack",
            ),
        ),
        R(
            "MUST-27",
            "§3.8.4",
            "Make the keep-alive interval configurable.",
            "met",
            evidence=(
                "tests/unit/test_flow_control.py::test_keepalive_probes_then_times_out",
                "tests/integration/test_recovery.py::test_keepalive_is_answered_and_then_finds_a_dead_peer",
            ),
        ),
        R(
            "MUST-28",
            "§3.8.4",
            "Make that interval two hours or more by default.",
            "met",
            evidence=(
                f"{_FC}test_defaults_keepalive_after_two_hours_and_r2_after_over_100_seconds",
            ),
        ),
        R(
            "MUST-29",
            "§3.8.4",
            "Never take one unanswered keep-alive as proof that the peer is dead.",
            "met",
            evidence=(
                "tests/unit/test_flow_control.py::test_keepalive_probes_then_times_out",
                "tests/integration/test_recovery.py::test_keepalive_is_answered_and_then_finds_a_dead_peer",
            ),
        ),
        R(
            "SHLD-12",
            "§3.8.4",
            "Send keep-alives without data.",
            "met",
            evidence=("tests/unit/test_flow_control.py::test_keepalive_probes_then_times_out",),
        ),
    ),
    *_group(
        "ip-options",
        R(
            "MUST-50",
            "§3.9.2",
            "Ignore IP options we do not understand.",
            "met",
            evidence=("tests/unit/test_wire.py::test_ip_options_are_skipped_not_refused",),
        ),
        R(
            "MUST-51",
            "§3.9.2.1",
            "Let the application give a source route when it opens a connection.",
            "deviated",
            _NO_SOURCE_ROUTE,
        ),
        R(
            "MUST-52",
            "§3.9.2.1",
            "A source route from the application overrides one received in a datagram.",
            "deviated",
            _NO_SOURCE_ROUTE,
        ),
        R(
            "MUST-53",
            "§3.9.2.1",
            "After a passive open, keep a received source route's return route and use it.",
            "deviated",
            _NO_SOURCE_ROUTE,
        ),
        R(
            "SHLD-24",
            "§3.9.2.1",
            "A source route received later replaces the earlier one.",
            "deviated",
            _NO_SOURCE_ROUTE,
        ),
    ),
    *_group(
        "icmp",
        R(
            "MUST-54",
            "§3.9.2.2",
            "Act on ICMP error messages, each for the connection it concerns.",
            "met",
            evidence=(
                f"{_IP}test_a_port_unreachable_refuses_connect_at_once",
                f"{_IP}test_a_host_unreachable_while_opening_is_soft_and_named_at_the_end",
                f"{_IP}test_an_icmp_error_on_an_established_connection_is_reported_not_fatal",
                f"{_ICMP_UNIT}test_an_error_quoting_data_not_in_flight_is_ignored",
                "tests/unit/test_wire.py::test_icmp_errors_decode_what_they_quote",
            ),
            note="the quoted segment names the connection, and its sequence number must "
            "lie in SND.UNA..SND.NXT (RFC 5927 §4.1), as Linux checks",
        ),
        R(
            "SHLD-25",
            "§3.9.2.2",
            "Pass ICMP soft errors on to the application.",
            "met",
            evidence=(
                f"{_IP}test_an_icmp_error_on_an_established_connection_is_reported_not_fatal",
                f"{_IP}test_the_user_timeout_ends_a_connection_and_names_the_icmp_error",
            ),
        ),
        R(
            "MUST-56",
            "§3.9.2.2",
            "Do not abort on a soft error (unreachable 0, 1, 5; time exceeded; parameter problem).",
            "met",
            evidence=(
                f"{_ICMP_UNIT}test_soft_unreachable_codes_never_abort",
                f"{_IP}test_a_host_unreachable_while_opening_is_soft_and_named_at_the_end",
            ),
            note="Linux aborts a connection in SYN-SENT on any destination unreachable; "
            "this endpoint keeps retransmitting its SYN, as the RFC asks",
        ),
        R(
            "SHLD-26",
            "§3.9.2.2",
            "Abort the connection on a hard ICMP error (destination unreachable 2 to 4).",
            "deviated",
            "only while the connection opens (SYN-SENT): once synchronized, a hard error "
            "is taken as a soft one, as RFC 5927 §7.2 advises against blind reset attacks "
            "and as Linux does; code 4 (fragmentation needed) is path-MTU news, never "
            "fatal",
            evidence=(
                f"{_IP}test_a_port_unreachable_refuses_connect_at_once",
                f"{_ICMP_UNIT}test_a_hard_error_in_a_synchronized_state_is_taken_as_soft",
            ),
        ),
        R(
            "MUST-55",
            "§3.9.2.2",
            "Discard ICMP Source Quench silently.",
            "met",
            evidence=(
                f"{_IP}test_source_quench_changes_nothing",
                f"{_ICMP_UNIT}test_source_quench_is_ignored",
            ),
        ),
    ),
    *_group(
        "address",
        R(
            "MUST-46",
            "§3.9.1.1",
            "Refuse to open a connection to a broadcast, multicast or invalid address.",
            "met",
            evidence=(f"{_IP}test_connect_refuses_broadcast_multicast_and_the_network_address",),
            note="ENETUNREACH, as Linux answers; the subnet's all-zeros address is refused "
            "too, where Linux tries it as a host",
        ),
        R(
            "MUST-63",
            "§3.9.2.3",
            "Ignore a SYN whose source address is invalid.",
            "met",
            evidence=(
                "tests/unit/test_hardening.py::test_forged_sources_are_dropped",
                "tests/unit/test_wire.py::test_drop_reason[broadcast_source]",
                "tests/unit/test_wire.py::test_drop_reason[multicast_source]",
            ),
        ),
        R(
            "MUST-57",
            "§3.9.2.3",
            "Silently drop a SYN sent to a broadcast or multicast address.",
            "not met",
            "untested: a segment for any address but ours is dropped (drop_not_our_ip), "
            "but no test sends one to a broadcast or multicast address",
        ),
    ),
    *_group(
        "interface",
        R(
            "MUST-47",
            "§3.9.1.8",
            "Report soft errors to the application.",
            "met",
            evidence=(
                f"{_IP}test_an_icmp_error_on_an_established_connection_is_reported_not_fatal",
                f"{_IP}test_the_user_timeout_ends_a_connection_and_names_the_icmp_error",
            ),
            note="as on Linux: SO_ERROR reports the last soft error once, and it is the "
            "error of a connection that later times out; stack.subscribe shows "
            "retransmissions as they happen",
        ),
        R(
            "SHLD-20",
            "§3.9.1.8",
            "Let the application turn error reports off.",
            "deviated",
            "soft errors are never pushed at the application: it reads them when it asks "
            "(SO_ERROR), so there is nothing to turn off; Linux has no switch either",
        ),
        R(
            "MUST-48",
            "§3.9.1.9",
            "Let the application set the Diffserv field of the segments it sends.",
            "met",
            evidence=_MARKS,
            note="IP_TOS; the two ECN bits stay the TCP's (zero here), as on Linux",
        ),
        R(
            "SHLD-22",
            "§3.9.1.9",
            "Hand the current Diffserv value to IP unchanged.",
            "met",
            evidence=_MARKS,
        ),
        R(
            "SHLD-21",
            "§3.9.1.9",
            "Let the application change the Diffserv field during the connection.",
            "met",
            evidence=_MARKS,
        ),
        R(
            "SHLD-23",
            "§3.9.2",
            "Applications should not change the Diffserv field during a connection.",
            "n/a",
            "advice to applications, not to the TCP implementation",
        ),
        R(
            "MUST-43",
            "§3.9.1.1",
            "Accept an optional local IP address when opening a connection.",
            "met",
            evidence=(
                "tests/integration/test_kernel_peer.py::test_socket_errors_are_the_builtin_ones",
            ),
            note="bind() takes the stack's own address or a wildcard; any other fails with "
            "EADDRNOTAVAIL.",
        ),
    ),
    *_group(
        "ecn",
        R(
            "SHLD-8",
            "§3.8.2",
            "Implement Explicit Congestion Notification (RFC 3168).",
            "met",
            evidence=(
                "tests/unit/test_ecn.py::test_a_listener_answers_an_ecn_setup_syn_with_ece",
                "tests/unit/test_ecn.py::"
                "test_ece_halves_cwnd_once_per_window_and_the_next_new_data_carries_cwr",
                "tests/unit/test_ecn.py::"
                "test_congestion_experienced_is_echoed_at_once_until_the_senders_cwr",
                "tests/unit/test_ecn.py::test_only_new_data_is_ect_not_acks_retransmissions_or_probes",
                "tests/integration/test_ecn.py::test_a_kernel_that_asks_for_ecn_gets_it_unless_we_refuse",
                "tests/integration/test_ecn.py::test_marks_on_our_data_make_us_reduce_and_say_cwr",
                "tests/integration/test_ecn.py::"
                "test_marks_on_the_kernels_data_are_echoed_until_it_says_cwr",
            ),
            note="As Linux's default (tcp_ecn = 2) we use ECN when the peer asks; "
            'TcpConfig(ecn="on") asks too. A SYN sent again goes without the ECN-setup '
            "bits, as Linux's fallback does.",
        ),
    ),
    *_group(
        "rfc9293",
        R(
            "RFC9293-3.1",
            "§3.1",
            "Send reserved bits as zero and ignore them; drop a segment whose data offset is "
            "out of range.",
            "met",
            evidence=(
                "tests/unit/test_wire.py::test_drop_reason[data_offset_4]",
                "tests/unit/test_wire.py::test_drop_reason[data_offset_beyond]",
                "tests/unit/test_wire.py::test_ethernet_padding_is_not_payload",
                "tests/unit/test_invariants.py::test_two_stacks_transfer_and_close_break_nothing",
            ),
        ),
        R(
            "RFC9293-3.10.7.1",
            "§3.10.7.1",
            "With no connection, ignore a RST and answer anything else with a RST built from it.",
            "met",
            evidence=(
                "tests/unit/test_handshake.py::test_closed_port_syn_gets_rst_ack_with_seq_zero",
                "tests/unit/test_handshake.py::test_closed_port_ack_gets_rst_at_seg_ack",
                "tests/unit/test_handshake.py::test_closed_port_never_answers_rst",
                "tests/integration/test_kernel_peer.py::test_kernel_connect_to_a_port_without_listener_is_refused",
            ),
        ),
        R(
            "RFC9293-3.10.7.2",
            "§3.10.7.2",
            "In LISTEN, ignore a RST, answer any ACK with a RST, take a SYN, drop the rest.",
            "met",
            evidence=(
                "tests/unit/test_handshake.py::test_listen_ignores_rst",
                "tests/unit/test_handshake.py::test_listen_answers_any_ack_with_rst",
                "tests/unit/test_handshake.py::test_listen_drops_fin_and_bare_data",
                "tests/unit/test_engine.py::test_listener_answers_a_stray_ack_with_rst_to_its_port",
            ),
        ),
        R(
            "RFC9293-3.10.7.3",
            "§3.10.7.3",
            "In SYN-SENT, RST a bad ACK, take a RST only with a good one, treat a bare SYN as "
            "simultaneous open.",
            "met",
            evidence=(
                "tests/unit/test_handshake.py::test_syn_sent_bad_ack_gets_rst_and_stays",
                "tests/unit/test_handshake.py::test_syn_sent_rst_with_acceptable_ack_is_refused",
                "tests/unit/test_handshake.py::test_syn_sent_rst_without_ack_is_ignored",
                "tests/integration/test_kernel_peer.py::test_connect_to_a_closed_port_is_refused_at_once",
            ),
        ),
        R(
            "RFC9293-3.10.7.4",
            "§3.10.7.4",
            "In synchronized states, check sequence number, RST, SYN, ACK, data and FIN in "
            "that order.",
            "met",
            evidence=(
                "tests/unit/test_established.py::test_retransmitted_old_data_is_trimmed_and_reacked",
                "tests/unit/test_established.py::test_data_beyond_the_window_is_trimmed",
                "tests/unit/test_established.py::test_segment_without_ack_bit_is_dropped",
                "tests/unit/test_handshake.py::test_syn_received_unacceptable_ack_gets_rst_and_stays",
                "tests/unit/test_close.py::test_time_wait_reacks_a_retransmitted_fin_and_restarts_2msl",
                "tests/unit/test_diagram.py::test_scenarios_cover_every_edge_of_the_diagram",
            ),
            note="The ACK owed to an unacceptable segment without data is sent at most once "
            "per 0.5 s, as Linux's tcp_invalid_ratelimit does.",
        ),
    ),
    *_group(
        "rfc5961",
        R(
            "RFC5961-3.2",
            "§3.2",
            "Reset only on a RST exactly at RCV.NXT; challenge one elsewhere in the window; "
            "drop it outside.",
            "met",
            evidence=(
                "tests/unit/test_established.py::test_exact_rst_resets_synchronized_states",
                "tests/unit/test_established.py::test_in_window_rst_gets_a_challenge_ack",
                "tests/unit/test_established.py::test_out_of_window_rst_is_dropped_silently",
                "tests/integration/test_attacks.py::test_transfer_survives_a_barrage_of_forged_and_malformed_frames",
            ),
        ),
        R(
            "RFC5961-4.2",
            "§4.2",
            "Answer any SYN in a synchronized state with a challenge ACK, and drop it.",
            "met",
            evidence=(
                "tests/unit/test_established.py::test_syn_in_synchronized_state_gets_a_challenge_ack",
                "tests/integration/test_attacks.py::test_transfer_survives_a_barrage_of_forged_and_malformed_frames",
            ),
            note="RFC 9293's exceptions stand: a passive SYN-RECEIVED returns to LISTEN, and "
            "a newer SYN may reopen TIME-WAIT.",
        ),
        R(
            "RFC5961-5.2",
            "§5.2",
            "Take an ACK only within SND.UNA − MAX.SND.WND … SND.NXT; otherwise send an ACK "
            "and drop it.",
            "met",
            evidence=(
                "tests/unit/test_established.py::test_ack_of_unsent_data_is_answered_and_dropped",
                "tests/unit/test_established.py::test_an_ack_older_than_the_largest_window_is_answered_and_dropped",
            ),
        ),
        R(
            "RFC5961-7",
            "§7",
            "Limit the rate of challenge ACKs.",
            "met",
            evidence=(
                "tests/unit/test_hardening.py::test_challenge_acks_are_limited_per_connection",
                "tests/unit/test_hardening.py::test_challenge_acks_share_a_stack_wide_budget",
            ),
        ),
    ),
    *_group(
        "rfc6298",
        R(
            "RFC6298-2.1",
            "§2.1",
            "Start with an RTO of one second.",
            "met",
            evidence=(
                "tests/unit/test_rtt.py::test_initial_rto_is_one_second",
                "tests/integration/test_recovery.py::test_lost_syn_is_retransmitted",
            ),
        ),
        R(
            "RFC6298-2.2",
            "§2.2",
            "On the first RTT sample R, set SRTT to R and RTTVAR to R/2.",
            "met",
            evidence=("tests/unit/test_rtt.py::test_first_sample_sets_srtt_and_half_rttvar",),
        ),
        R(
            "RFC6298-2.3",
            "§2.3",
            "Smooth later samples with gains 1/8 and 1/4; RTO = SRTT + max(G, 4·RTTVAR).",
            "met",
            evidence=(
                "tests/unit/test_rtt.py::test_later_samples_smooth_per_rfc_6298",
                "tests/unit/test_rtt.py::test_first_sample_sets_srtt_and_half_rttvar",
            ),
        ),
        R(
            "RFC6298-2.4",
            "§2.4",
            "Round an RTO below one second up to one second.",
            "deviated",
            "the floor is 200 ms, Linux's TCP_RTO_MIN, so that we recover as fast as the "
            "kernel we talk to",
            evidence=("tests/unit/test_rtt.py::test_minimum_applies_to_tiny_rtts",),
        ),
        R(
            "RFC6298-2.5",
            "§2.5",
            "If the RTO has a ceiling, make it at least 60 seconds.",
            "met",
            evidence=("tests/unit/test_rtt.py::test_backoff_doubles_to_the_cap_and_resets",),
        ),
        R(
            "RFC6298-3",
            "§3",
            "Take no RTT sample from a retransmitted segment, unless timestamps disambiguate.",
            "met",
            evidence=(
                "tests/unit/test_retransmit.py::test_lost_syn_then_syn_ack_completes",
                "tests/unit/test_retransmit.py::test_data_retransmits_the_earliest_unacked_segment",
                "tests/unit/test_options.py::test_timestamps_measure_retransmitted_segments_too",
            ),
        ),
        R(
            "RFC6298-5.1",
            "§5.1",
            "Start the retransmission timer when data goes out, if it is not running.",
            "met",
            evidence=(
                "tests/unit/test_established.py::test_ack_frees_the_send_buffer_and_stops_the_timer",
            ),
        ),
        R(
            "RFC6298-5.2",
            "§5.2",
            "Stop the timer once everything sent is acknowledged.",
            "met",
            evidence=(
                "tests/unit/test_established.py::test_ack_frees_the_send_buffer_and_stops_the_timer",
            ),
        ),
        R(
            "RFC6298-5.3",
            "§5.3",
            "Restart the timer when an ACK acknowledges new data.",
            "met",
            evidence=(
                "tests/unit/test_retransmit.py::test_data_retransmits_the_earliest_unacked_segment",
            ),
        ),
        R(
            "RFC6298-5.4",
            "§5.4",
            "When the timer expires, retransmit the earliest unacknowledged segment.",
            "met",
            evidence=(
                "tests/unit/test_retransmit.py::test_data_retransmits_the_earliest_unacked_segment",
            ),
        ),
        R(
            "RFC6298-5.5",
            "§5.5",
            "When the timer expires, double the RTO, up to the ceiling.",
            "met",
            evidence=(
                "tests/unit/test_retransmit.py::test_syn_is_retransmitted_with_exponential_backoff_then_gives_up",
                "tests/unit/test_rtt.py::test_backoff_doubles_to_the_cap_and_resets",
            ),
        ),
        R(
            "RFC6298-5.6",
            "§5.6",
            "When the timer expires, start it again with the new RTO.",
            "met",
            evidence=(
                "tests/unit/test_retransmit.py::test_data_retransmits_the_earliest_unacked_segment",
            ),
        ),
        R(
            "RFC6298-5.7",
            "§5.7",
            "If the SYN timed out and the RTO is below 3 s, use 3 s once data flows.",
            "met",
            evidence=(
                "tests/unit/test_retransmit.py::test_after_a_syn_timeout_the_rto_is_at_least_three_seconds_until_measured",
            ),
        ),
    ),
    *_group(
        "rfc5681",
        R(
            "RFC5681-3.1",
            "§3.1",
            "Slow start below ssthresh, congestion avoidance above; after an RTO, one segment.",
            "met",
            evidence=(
                "tests/unit/test_loss_recovery.py::test_congestion_control_slow_start_avoidance_and_loss",
                "tests/unit/test_loss_recovery.py::test_rto_goes_back_and_retransmits_in_slow_start",
            ),
            note="CUBIC (RFC 9438) is the default, as on Linux; Reno is there with TCP_CONGESTION.",
        ),
        R(
            "RFC5681-3.1a",
            "§3.1",
            "Start with an initial window of at most two to four segments, by SMSS.",
            "deviated",
            "the initial window is 10 segments (RFC 6928), as on Linux",
            evidence=(
                "tests/unit/test_loss_recovery.py::test_congestion_control_slow_start_avoidance_and_loss",
            ),
        ),
        R(
            "RFC5681-3.2",
            "§3.2",
            "Retransmit on the third duplicate ACK, then recover without waiting for the RTO.",
            "met",
            evidence=(
                "tests/unit/test_loss_recovery.py::test_three_duplicate_acks_trigger_fast_retransmit_without_sack",
                "tests/unit/test_loss_recovery.py::test_newreno_partial_ack_retransmits_the_next_hole",
                "tests/unit/test_trace.py::test_three_duplicate_acks_trigger_a_fast_retransmit",
            ),
            note="With SACK, RACK-TLP (RFC 8985) finds the losses instead, as on Linux.",
        ),
        R(
            "RFC5681-4.1",
            "§4.1",
            "After an idle period longer than the RTO, start again from the restart window.",
            "met",
            evidence=(
                "tests/unit/test_loss_recovery.py::"
                "test_after_idling_longer_than_the_rto_the_sender_restarts_from_iw",
            ),
            note="The restart window is min(IW, cwnd), as RFC 5681 §4.1 says; Linux's "
            "tcp_cwnd_restart is gentler, halving cwnd per idle RTO down to IW.",
        ),
        R(
            "RFC5681-4.2",
            "§4.2",
            "ACK every second full segment within 500 ms; ACK out-of-order data and gap "
            "fills at once.",
            "met",
            evidence=(
                "tests/unit/test_flow_control.py::test_delayed_ack_every_second_full_segment_or_after_40ms",
                "tests/unit/test_flow_control.py::test_out_of_order_and_fin_are_acked_at_once_even_when_delaying",
                "tests/unit/test_established.py::test_out_of_order_data_is_held_and_acked_at_once",
            ),
        ),
    ),
    *_group(
        "rfc7323",
        R(
            "RFC7323-2.2",
            "§2.2",
            "Send Window Scale only on SYNs (on a SYN-ACK only if offered); never scale a "
            "SYN's window.",
            "met",
            evidence=(
                "tests/unit/test_options.py::test_window_scaling_applies_to_later_segments_both_ways",
                "tests/unit/test_options.py::test_syn_offers_everything_linux_does",
                "tests/unit/test_options.py::test_passive_syn_ack_answers_only_what_was_offered",
                "tests/unit/test_invariants.py::test_two_cores_through_a_bad_wire_break_nothing",
            ),
        ),
        R(
            "RFC7323-2.3",
            "§2.3",
            "Take a received shift above 14 as 14.",
            "met",
            evidence=("tests/unit/test_options.py::test_peer_shift_above_14_is_taken_as_14",),
        ),
        R(
            "RFC7323-3.2",
            "§3.2",
            "Echo timestamps in a SYN-ACK only if the SYN had them; then send them on every "
            "non-RST segment.",
            "met",
            evidence=(
                "tests/unit/test_options.py::test_passive_syn_ack_answers_only_what_was_offered",
                "tests/unit/test_options.py::test_timestamps_echo_and_measure_rtt",
                "tests/unit/test_options.py::test_options_need_both_sides",
                "tests/unit/test_invariants.py::test_two_cores_through_a_bad_wire_break_nothing",
            ),
        ),
        R(
            "RFC7323-3.2a",
            "§3.2",
            "Send timestamps on RSTs too, and drop non-RST segments that lack them.",
            "deviated",
            "our RSTs carry timestamps, but a non-RST segment without them on a connection "
            "that agreed to them is processed as usual, as Linux does: a middlebox that "
            "strips the option would otherwise stall the connection",
        ),
        R(
            "RFC7323-4.3",
            "§4.3",
            "Echo the timestamp of the segment that advanced the left edge, not a later one.",
            "met",
            evidence=("tests/unit/test_options.py::test_ts_recent_follows_the_left_edge_only",),
        ),
        R(
            "RFC7323-5.3",
            "§5.3",
            "PAWS: drop, and ACK, a non-RST segment whose timestamp is older than TS.Recent.",
            "met",
            evidence=(
                "tests/unit/test_options.py::test_paws_drops_an_old_duplicate_and_acks",
                "tests/unit/test_options.py::test_paws_spares_a_reordered_pure_duplicate_ack",
            ),
            note="A pure duplicate ACK that was merely reordered is spared, as in Linux's "
            "tcp_disordered_ack().",
        ),
    ),
    *_group(
        "rfc2018",
        R(
            "RFC2018-2",
            "§2",
            "Send SACK-permitted only on SYNs, and use SACK only if both SYNs carried it.",
            "met",
            evidence=(
                "tests/unit/test_options.py::test_passive_syn_ack_answers_only_what_was_offered",
                "tests/unit/test_options.py::test_options_need_both_sides",
                "tests/unit/test_invariants.py::test_two_cores_through_a_bad_wire_break_nothing",
            ),
        ),
        R(
            "RFC2018-4",
            "§4",
            "Report out-of-order data in SACK blocks, the most recent block first.",
            "met",
            evidence=(
                "tests/unit/test_options.py::test_sack_blocks_report_out_of_order_data_most_recent_first",
                "tests/unit/test_options.py::test_sack_blocks_fit_beside_timestamps",
            ),
        ),
    ),
    *_group(
        "rfc6528",
        R(
            "RFC6528-3",
            "§3",
            "ISN = a 4 µs timer plus a keyed hash of the connection's addresses and ports.",
            "met",
            evidence=(
                "tests/unit/test_isn.py::test_same_tuple_advances_with_the_4_microsecond_clock",
                "tests/unit/test_isn.py::test_different_tuples_are_unrelated",
                "tests/unit/test_isn.py::test_secret_changes_everything",
            ),
        ),
    ),
)

BY_ID: Final[dict[str, Requirement]] = {r.id: r for r in REQUIREMENTS}
