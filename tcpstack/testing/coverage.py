"""Where each scenario of the conformance plan is checked: the scenario coverage map.

The plan (conformance.md §6 of the shared reference) names 126 scenarios in ten
groups. Some are scripted: they live in ``tcpstack.testing.catalogue`` and run
against both devices. Many of the kernel-peer ones were written earlier as ordinary
pytest tests, without the plan's ids. This module ties each id to what checks it,
so ``docs/conformance.md`` can show the gaps and ``tcpstack conformance H-01`` can
run a scenario by its id whatever form it took.

Whether a scenario is scripted is read from the catalogue each time, never copied
here: a script added there shows up in the map (and wins over the tests and the
reason below) with no edit to this file.

Each entry gives our own short title, its gate (§8 of the plan: 0 runs in every CI
run, 1 before a merge, 2 nightly), and, unless the catalogue scripts it, either
the pytest node ids of the tests that exercise its stimulus and check its
expectation, or why nothing does yet. A test that checks only part of a scenario
says which part in ``partial``; it is still mapped, but not counted as covering it.
A node id without a ``[parameter]`` stands for all its parametrizations.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]

# The plan's groups, in its order, with how many scenarios each has (§7 of the plan).
GROUPS: Final = (
    ("E", "Harness preconditions", 7),
    ("H", "Handshake", 16),
    ("D", "Data transfer and reassembly", 13),
    ("R", "Retransmission and loss", 14),
    ("W", "Flow control and windows", 10),
    ("C", "Close and TIME-WAIT", 18),
    ("A", "RST and attacks", 13),
    ("O", "Options", 13),
    ("M", "Malformed input", 12),
    ("L", "Load and scale", 10),
)
TOTAL: Final = 126
ID: Final = re.compile(r"[A-Z]-\d\d")
# A catalogue key is a scenario id, or one with a suffix for a variant (D-03-all).
CATALOGUE_KEY: Final = re.compile(r"([A-Z]-\d\d)(-[a-z0-9-]+)?")


def plan_ids() -> list[str]:
    """The 126 ids, in the plan's order."""
    return [f"{g}-{n:02d}" for g, _, count in GROUPS for n in range(1, count + 1)]


@dataclass(frozen=True, slots=True)
class Scenario:
    id: str
    title: str  # our own words
    gate: int  # 0, 1 or 2
    tests: tuple[str, ...] = ()  # pytest node ids that check it
    partial: str = ""  # when the tests check only part: what they do and do not
    missing: str = ""  # with no tests and no script: why not yet


# Shorthands for the test files, so the table stays readable.
KP = "tests/integration/test_kernel_peer.py::"
REC = "tests/integration/test_recovery.py::"
ATT = "tests/integration/test_attacks.py::"
LAB = "tests/integration/test_lab.py::"
LINK = "tests/integration/test_link.py::"
ORA = "tests/integration/test_oracle.py::"
CONF = "tests/integration/test_conformance.py::"
HS = "tests/unit/test_handshake.py::"
EST = "tests/unit/test_established.py::"
FLOW = "tests/unit/test_flow_control.py::"
CLOSE = "tests/unit/test_close.py::"
LOSS = "tests/unit/test_loss_recovery.py::"
RTX = "tests/unit/test_retransmit.py::"
RTT = "tests/unit/test_rtt.py::"
OPT = "tests/unit/test_options.py::"
ENG = "tests/unit/test_engine.py::"
HARD = "tests/unit/test_hardening.py::"
WIRE = "tests/unit/test_wire.py::"
ISN = "tests/unit/test_isn.py::"
G0 = "tests/integration/test_gate0.py::"
API = "tests/integration/test_api_and_syn_data.py::"
SIM = "tests/integration/test_simultaneous.py::"
CK = "tests/integration/test_close_with_the_kernel.py::"
NEG = "tests/integration/test_option_negotiation.py::"
LIVE = "tests/integration/test_liveness_and_predictability.py::"
LOSSK = "tests/integration/test_loss_with_the_kernel.py::"
WIN = "tests/integration/test_windows_with_the_kernel.py::"
STRAY = "tests/integration/test_strays_and_floods.py::"
EIGHT = REC + "test_eight_megabytes_each_way_under_impairment"


def _both(test: str, case: str) -> tuple[str, str]:
    """An impairment case of the 8 MiB transfer, on both link kinds."""
    return (f"{test}[veth-{case}]", f"{test}[tap-{case}]")


SCENARIOS: Final[tuple[Scenario, ...]] = (
    # ---------------------------------------------------------------- E
    Scenario(
        "E-01",
        "No kernel in our namespace answers for our address",
        0,
        (
            LAB + "test_veth_lab_layout",
            LAB + "test_tap_lab_layout",
            KP + "test_one_megabyte_each_way_arrives_intact",
            G0 + "test_every_frame_from_our_address_on_the_wire_is_in_our_transmit_log",
            G0 + "test_one_byte_writes_in_padded_frames_get_exact_acks_and_frames_fit_the_mtu",
        ),
    ),
    Scenario(
        "E-02",
        "Checksums: offloaded kernel frames are taken, ours are right",
        0,
        (
            LINK + "test_packet_link_trusts_locally_offloaded_checksums",
            KP + "test_one_megabyte_each_way_arrives_intact",
            ORA + "test_the_oracle_reports_a_checksum_error_the_kernel_counted",
        ),
    ),
    Scenario(
        "E-03",
        "Offloads off for conformance runs, and recorded",
        0,
        (
            CONF + "test_scripted_scenario[E-07-tcpstack]",
            CONF + "test_scripted_scenario[E-07-linux]",
            G0 + "test_with_offloads_off_frames_fit_the_mtu_and_kernel_segments_our_mss",
        ),
    ),
    Scenario(
        "E-04",
        "Small frames: Ethernet padding is not payload; frames fit the MTU",
        0,
        (
            WIRE + "test_ethernet_padding_is_not_payload",
            G0 + "test_one_byte_writes_in_padded_frames_get_exact_acks_and_frames_fit_the_mtu",
        ),
    ),
    Scenario(
        "E-05",
        "The kernel resolves our address; we answer ARP for it alone",
        0,
        (KP + "test_ping_is_answered", ENG + "test_arp_request_for_our_address_is_answered"),
    ),
    Scenario(
        "E-06",
        "Each test gets fresh namespaces, pinned sysctls, a counter check and evidence",
        0,
        (
            LAB + "test_veth_lab_layout",
            ORA + "test_an_ordinary_lab_leaves_the_oracle_quiet",
            ORA + "test_the_oracle_reports_a_checksum_error_the_kernel_counted",
            G0 + "test_each_lab_is_fresh_with_its_kernel_settings_pinned",
            G0 + "test_the_evidence_of_a_failure_names_the_connection_on_both_sides",
            G0 + "test_the_suite_keeps_the_evidence_of_a_failing_test_and_only_of_it",
        ),
    ),
    Scenario("E-07", "Smoke script against the Linux reference", 0),
    # ---------------------------------------------------------------- H
    Scenario(
        "H-01",
        "Active open to a kernel listener, with options",
        0,
        (
            KP + "test_active_open_to_a_kernel_listener",
            OPT + "test_syn_offers_everything_linux_does",
            OPT + "test_options_need_both_sides",
        ),
    ),
    Scenario(
        "H-02",
        "Passive open from a kernel client",
        0,
        (
            KP + "test_passive_open_from_a_kernel_client",
            OPT + "test_passive_syn_ack_answers_only_what_was_offered",
        ),
    ),
    Scenario("H-03", "Bad ACK in SYN-RECEIVED gets a RST", 0),
    Scenario("H-04", "What SYN-SENT accepts and refuses", 0),
    Scenario(
        "H-05", "RST in SYN-SENT", 0, (KP + "test_connect_to_a_closed_port_is_refused_at_once",)
    ),
    Scenario(
        "H-06",
        "Simultaneous open",
        1,
        (
            HS + "test_simultaneous_open",
            HS + "test_simultaneous_open_completed_by_a_plain_ack",
            SIM + "test_syns_cross_and_both_sides_pass_syn_received",
            SIM + "test_our_syn_lost_the_kernels_syn_finds_us_in_syn_sent",
            SIM + "test_kernels_syn_lost_our_syn_finds_the_kernel_in_syn_sent",
        ),
    ),
    Scenario("H-07", "RST in SYN-RECEIVED reached by simultaneous open", 0),
    Scenario(
        "H-08",
        "RST in passive SYN-RECEIVED: back to LISTEN",
        1,
        (
            HS + "test_passive_syn_received_rst_returns_to_listen",
            ENG + "test_reset_half_open_connection_leaves_no_zombie",
        ),
        partial="a simulated client; the kernel-side drop and stray SYN-ACK are not run",
    ),
    Scenario(
        "H-09",
        "SYN retransmission and connect timeout",
        1,
        (
            REC + "test_lost_syn_is_retransmitted",
            RTX + "test_syn_is_retransmitted_with_exponential_backoff_then_gives_up",
        ),
        partial="one lost SYN with the kernel, backoff and give-up with a simulated peer; R2 "
        "length and the 3 s RTO afterwards unchecked",
    ),
    Scenario(
        "H-10",
        "SYN-ACK retransmission",
        1,
        (
            REC + "test_kernels_lost_third_ack_is_recovered",
            REC + "test_lost_syn_ack_is_retransmitted",
            HS + "test_syn_received_first_data_segment_completes_handshake",
        ),
        partial="one lost ACK, not two; the backoff is not timed",
    ),
    Scenario(
        "H-11",
        "Data on the kernel's SYN (Fast Open)",
        1,
        (API + "test_fast_open_syn_data_is_acked_only_after_the_kernel_resends_it",),
    ),
    Scenario(
        "H-12",
        "Segments to a closed port",
        0,
        (KP + "test_kernel_connect_to_a_port_without_listener_is_refused",),
    ),
    Scenario("H-13", "What a listener does with each kind of segment", 0),
    Scenario(
        "H-14",
        "Backlog and accept-queue overflow",
        1,
        (
            ENG + "test_full_accept_queue_drops_the_final_ack",
            HARD + "test_syn_flood_falls_back_to_cookies_and_real_clients_still_connect",
        ),
        partial="simulated clients; closing a listener with queued connections is untested",
    ),
    Scenario(
        "H-15",
        "ISN quality",
        1,
        (
            ISN + "test_same_tuple_advances_with_the_4_microsecond_clock",
            ISN + "test_different_tuples_are_unrelated",
            LIVE + "test_isns_of_a_thousand_four_tuples_are_unpredictable",
            LIVE + "test_isns_of_one_four_tuple_follow_a_four_microsecond_clock",
        ),
    ),
    Scenario("H-16", "Zero and top-bit windows in the handshake", 1, missing="no script yet"),
    # ---------------------------------------------------------------- D
    Scenario(
        "D-01",
        "Bulk transfer both ways, byte-exact",
        0,
        (KP + "test_one_megabyte_each_way_arrives_intact",),
    ),
    Scenario(
        "D-02",
        "Nagle, PUSH and NODELAY",
        1,
        (
            FLOW + "test_nagle_holds_a_small_segment_while_data_is_unacknowledged",
            FLOW + "test_tcp_nodelay_sends_small_segments_at_once",
            EST + "test_send_segments_by_mss_and_sets_psh_on_the_last",
        ),
        partial="a simulated peer; no timing against the kernel's delayed ACKs",
    ),
    Scenario("D-03", "Out-of-order segments in every order", 0),
    Scenario("D-04", "Overlapping segments", 0),
    Scenario("D-05", "A segment partly below RCV.NXT", 0),
    Scenario("D-06", "Data at or past the right edge", 0),
    Scenario(
        "D-07",
        "Reordering and duplication on the path",
        1,
        _both(EIGHT, "2% duplication") + _both(EIGHT, "10% reordered by 3"),
        partial="8 MiB, not 64; spurious retransmissions are not held to a budget",
    ),
    Scenario(
        "D-08",
        "Our sequence numbers wrap past 2^32",
        1,
        (
            KP + "test_sequence_numbers_wrap_past_2_32_with_the_kernel",
            EST + "test_sequence_numbers_wrap_past_2_32",
        ),
        partial="no fast retransmit or RTO forced across the wrap",
    ),
    Scenario(
        "D-09",
        "The peer's sequence numbers wrap past 2^32",
        1,
        (EST + "test_sequence_numbers_wrap_past_2_32", LOSS + "test_reassembler_across_2_32"),
        partial="in-order data and the reassembler; no out-of-order or SACK script across the wrap",
    ),
    Scenario(
        "D-10",
        "Urgent data",
        1,
        (
            "tests/integration/test_urgent.py::test_linux_finds_the_urgent_byte_we_mark",
            "tests/integration/test_urgent.py::test_we_find_the_urgent_byte_linux_marks",
            "tests/unit/test_urgent.py::test_urg_is_processed_with_a_zero_receive_window",
            "tests/unit/test_urgent.py::test_the_pointer_received_marks_the_octet_after_the_urgent_data",
        ),
        partial="URG with a zero window is checked in the core only, not against the kernel",
    ),
    Scenario(
        "D-11",
        "When we ACK (delayed ACK)",
        1,
        (
            FLOW + "test_delayed_ack_every_second_full_segment_or_after_40ms",
            FLOW + "test_out_of_order_and_fin_are_acked_at_once_even_when_delaying",
            WIN + "test_we_ack_at_least_every_second_full_sized_segment",
            WIN + "test_a_lone_segment_is_acked_after_the_delayed_ack_timeout",
        ),
        partial="immediate ACKs for out-of-order data and a filled hole only with a simulated peer",
    ),
    Scenario(
        "D-12",
        "ACKs ride on data",
        1,
        (
            FLOW + "test_data_we_send_carries_the_pending_ack",
            WIN + "test_responses_carry_the_ack_of_their_request",
        ),
    ),
    Scenario(
        "D-13",
        "Stray segments leave other connections alone",
        1,
        (
            ENG + "test_listener_answers_a_stray_ack_with_rst_to_its_port",
            FLOW + "test_data_for_an_orphan_is_answered_with_rst",
            STRAY + "test_d13_strays_for_other_4_tuples_are_reset_and_leave_live_connections_alone",
        ),
    ),
    # ---------------------------------------------------------------- R
    Scenario(
        "R-01",
        "RTO, backoff and Karn",
        1,
        (
            RTX + "test_data_retransmits_the_earliest_unacked_segment",
            RTT + "test_backoff_doubles_to_the_cap_and_resets",
            LOSSK + "test_blackout_backs_off_and_karn_keeps_the_rto_until_a_fresh_sample",
        ),
        partial="with the kernel, a blackout of 1.4 s between writes with timestamps off, not 10 "
        "s in mid-flight",
    ),
    Scenario(
        "R-02",
        "No spurious RTO on a slow path",
        1,
        (RTX + "test_new_data_after_ack_rearms_and_rto_never_below_minimum",),
        partial="the timer restart only; no delayed, rate-limited path",
    ),
    Scenario(
        "R-03",
        "Fast retransmit",
        1,
        (
            LOSS + "test_three_duplicate_acks_trigger_fast_retransmit_without_sack",
            LOSS + "test_dupthresh_sacked_segments_retransmit_the_hole_at_once",
            LOSSK + "test_one_lost_segment_is_repaired_by_the_kernels_sacks",
            LOSSK + "test_one_lost_segment_is_resent_on_the_third_duplicate_ack",
            LOSSK + "test_one_lost_segment_is_resent_only_once",
        ),
    ),
    Scenario(
        "R-04",
        "Several losses in one window",
        1,
        (
            LOSS + "test_newreno_partial_ack_retransmits_the_next_hole",
            LOSS + "test_sack_above_a_hole_marks_it_lost_after_the_reordering_window",
            LOSSK + "test_three_losses_in_one_window_are_repaired_in_one_episode",
        ),
        partial="limited transmit is not checked",
    ),
    Scenario(
        "R-05",
        "Tail loss",
        1,
        (
            LOSS + "test_tail_loss_probe_resends_the_last_segment_before_the_rto",
            LOSSK + "test_lost_tail_of_a_write_is_repaired_by_a_probe_before_the_rto",
        ),
    ),
    Scenario(
        "R-06",
        "A retransmission is lost too",
        1,
        (
            LOSS + "test_rack_detects_a_lost_retransmission_without_an_rto",
            LOSSK + "test_lost_fast_retransmission_is_found_by_rack",
            LOSSK + "test_lost_timeout_retransmission_is_resent_after_the_doubled_rto",
        ),
    ),
    Scenario(
        "R-07",
        "Lost ACKs and stretch ACKs",
        1,
        (
            "tests/integration/test_acks_and_timers.py::test_half_the_kernels_acks_lost_while_we_send",
        ),
    ),
    Scenario(
        "R-08",
        "Random loss soak",
        1,
        _both(EIGHT, "5% loss each way"),
        partial="8 MiB at 5% only; no retransmitted/dropped ratio, no goodput table",
    ),
    Scenario(
        "R-09",
        "Corrupted frames",
        1,
        _both(EIGHT, "1% corruption"),
        partial="8 MiB at 1%; the kernel's checksum counter is allowed, not matched to the damage",
    ),
    Scenario(
        "R-10",
        "Duplicated frames",
        1,
        _both(EIGHT, "2% duplication"),
        partial="2% duplicated, not every frame three times; ACK amplification not counted",
    ),
    Scenario(
        "R-11",
        "Blackhole: giving up, user timeout",
        1,
        (
            RTX + "test_retransmission_limit_aborts_with_timed_out",
            LIVE + "test_blackhole_warns_at_r1_aborts_at_the_user_timeout_then_resets_the_kernel",
        ),
        partial="with the kernel, the user timeout; R2's fifteen retransmissions with a "
        "simulated peer only",
    ),
    Scenario(
        "R-12",
        "Congestion window discipline",
        1,
        (
            LOSS + "test_congestion_control_slow_start_avoidance_and_loss",
            LOSS + "test_rto_goes_back_and_retransmits_in_slow_start",
            LOSS + "test_sender_never_exceeds_the_peer_window_or_cwnd",
            LOSSK + "test_after_idling_longer_than_the_rto_the_window_restarts",
        ),
        partial="no peer ACKing every 1, 2 or 4 segments",
    ),
    Scenario(
        "R-13",
        "FIN retransmission",
        1,
        (
            REC + "test_lost_first_fin_is_retransmitted",
            REC + "test_kernels_lost_last_ack_makes_us_resend_our_fin",
            CLOSE + "test_fin_wait_1_retransmits_fin_on_timeout",
            CLOSE + "test_last_ack_retransmits_fin_on_timeout",
            SIM + "test_fin_is_sent_again_from_closing_with_backoff",
        ),
    ),
    Scenario(
        "R-14",
        "RTT estimation",
        1,
        (
            RTT + "test_first_sample_sets_srtt_and_half_rttvar",
            RTT + "test_later_samples_smooth_per_rfc_6298",
        ),
        partial="the estimator alone; no delayed, jittered path",
    ),
    # ---------------------------------------------------------------- W
    Scenario(
        "W-01",
        "We stop reading: zero window, the kernel probes",
        1,
        (
            REC + "test_our_reader_stops_for_two_seconds",
            EST + "test_reading_opens_the_window_with_an_update",
            WIN + "test_our_zero_window_answers_the_kernels_probes_and_opens_at_the_threshold",
        ),
    ),
    Scenario(
        "W-02",
        "Our window update is lost",
        1,
        (
            "tests/integration/test_acks_and_timers.py::"
            "test_lost_window_update_is_repaired_by_the_kernels_probe",
        ),
    ),
    Scenario(
        "W-03",
        "The kernel stops reading: we probe its zero window",
        1,
        (
            REC + "test_kernel_reader_stops_for_two_seconds",
            EST + "test_zero_window_is_probed_with_one_byte",
            FLOW + "test_persist_timer_survives_a_probe_acked_with_the_window_shut",
            WIN + "test_we_probe_the_kernels_zero_window_ever_more_slowly",
        ),
    ),
    Scenario(
        "W-04",
        "The peer shrinks its window",
        0,
        (
            FLOW + "test_a_window_shrunk_to_zero_is_probed_for_as_long_as_the_peer_answers",
            FLOW + "test_a_window_shrunk_to_zero_still_times_out_when_the_peer_goes_quiet",
        ),
    ),
    Scenario(
        "W-05",
        "Sender silly-window avoidance",
        0,
        (EST + "test_silly_window_is_not_filled_with_a_tiny_segment",),
    ),
    Scenario(
        "W-06",
        "Receiver silly-window avoidance",
        1,
        (
            ENG + "test_reading_sends_no_useless_window_update_without_window_scaling",
            EST + "test_reading_opens_the_window_with_an_update",
            WIN + "test_a_slow_reader_opens_its_window_by_the_threshold_or_more",
        ),
        partial="a scaled window may open by up to a scale unit less than the threshold, and our "
        "windows are not whole segments, so the kernel sends remainders (two strict "
        "xfails in the file)",
    ),
    Scenario(
        "W-07",
        "Window-scale arithmetic",
        1,
        (
            OPT + "test_window_scaling_applies_to_later_segments_both_ways",
            WIN + "test_windows_are_scaled_by_each_sides_shift",
            WIN + "test_data_up_to_the_furthest_edge_we_offered_is_taken",
        ),
        partial="16 MiB each way, not 64",
    ),
    Scenario(
        "W-08",
        "Window scaling not agreed",
        1,
        (
            OPT + "test_options_need_both_sides",
            NEG + "test_without_window_scaling_windows_stay_unscaled_and_4_mib_each_way_arrive",
        ),
    ),
    Scenario("W-09", "A stale window update is ignored", 0),
    Scenario(
        "W-10",
        "Less buffer than window",
        1,
        (
            "tests/integration/test_receive_buffer.py::"
            "test_a_buffer_made_smaller_takes_only_what_fits_and_loses_nothing",
            FLOW + "test_a_buffer_made_smaller_keeps_the_window_offered_and_takes_what_fits",
        ),
        partial="the kernel as the peer, not a scripted one beside Linux as the device",
    ),
    # ---------------------------------------------------------------- C
    Scenario(
        "C-01",
        "Active close through TIME-WAIT",
        0,
        (
            KP + "test_active_close_we_end_in_time_wait",
            KP + "test_half_close_we_stop_sending_and_keep_receiving",
        ),
    ),
    Scenario(
        "C-02",
        "Passive close",
        0,
        (
            KP + "test_passive_close_the_kernel_ends_in_time_wait",
            KP + "test_half_close_kernel_stops_and_we_keep_sending",
            G0 + "test_after_a_passive_close_a_late_segment_for_the_connection_gets_a_reset",
        ),
    ),
    Scenario(
        "C-03",
        "Simultaneous close",
        1,
        (
            CLOSE + "test_simultaneous_close_through_closing",
            CLOSE + "test_pair_four_way_close_and_simultaneous_close",
            SIM + "test_fins_cross_and_both_sides_pass_closing",
        ),
    ),
    Scenario(
        "C-04",
        "FIN carrying data",
        1,
        (
            CLOSE + "test_fin_after_data_is_sent_once_the_data_is_out",
            KP + "test_one_megabyte_each_way_arrives_intact",
        ),
        partial="we send data and FIN together; receiving them in one segment is not asserted",
    ),
    Scenario(
        "C-05",
        "Half-close both ways",
        1,
        (
            KP + "test_half_close_we_stop_sending_and_keep_receiving",
            KP + "test_half_close_kernel_stops_and_we_keep_sending",
            CK + "test_we_shut_wr_and_still_receive_ten_mebibytes",
            CK + "test_kernel_shuts_wr_and_still_receives_ten_mebibytes",
            CK + "test_after_shut_rd_recv_says_eof_yet_later_data_is_acked_and_read",
            CK + "test_data_reaching_a_socket_shut_both_ways_is_reset",
        ),
    ),
    Scenario(
        "C-06",
        "Close with unread data resets",
        0,
        (
            KP + "test_close_with_unread_data_resets",
            KP + "test_kernel_reset_surfaces_as_connection_reset",
            KP + "test_active_close_we_end_in_time_wait",
            G0 + "test_our_close_with_ten_kilobytes_unread_sends_rst_and_no_fin",
            G0 + "test_kernel_close_with_unread_data_resets_and_our_next_read_fails",
            G0 + "test_close_after_the_kernel_retransmitted_data_and_fin_we_had_read_sends_fin",
        ),
    ),
    Scenario(
        "C-07",
        "Abort",
        1,
        (
            CLOSE + "test_abort_sends_rst_and_closes",
            "tests/unit/test_dropin.py::test_linger_zero_resets_instead_of_closing",
            CK + "test_linger_zero_close_mid_transfer_resets_the_kernel",
        ),
    ),
    Scenario("C-08", "FIN ahead of missing data", 0),
    Scenario("C-09", "FIN with an old ACK in FIN-WAIT", 1, missing="no script yet"),
    Scenario("C-10", "FIN into a zero window", 1),
    Scenario(
        "C-11",
        "TIME-WAIT input",
        1,
        (
            REC + "test_our_lost_last_ack_is_answered_from_time_wait",
            CLOSE + "test_time_wait_reacks_a_retransmitted_fin_and_restarts_2msl",
        ),
        partial="the retransmitted FIN only; the four sequence positions are not tried",
    ),
    Scenario(
        "C-12", "RST in TIME-WAIT", 1, missing="no test sends a RST to a connection in TIME-WAIT"
    ),
    Scenario(
        "C-13",
        "Reusing a 4-tuple across TIME-WAIT",
        1,
        (
            "tests/integration/test_time_wait_reuse.py::"
            "test_a_kernel_client_reconnects_to_our_port_in_time_wait",
            "tests/integration/test_time_wait_reuse.py::"
            "test_we_reconnect_to_a_kernel_server_in_time_wait",
            "tests/unit/test_time_wait_reuse.py::"
            "test_with_timestamps_a_newer_tsval_reopens_whatever_the_sequence_number",
        ),
    ),
    Scenario(
        "C-14",
        "An orphan in FIN-WAIT-2 times out",
        1,
        (
            FLOW + "test_orphan_in_fin_wait_2_times_out_quietly",
            CK + "test_an_orphan_in_fin_wait_2_times_out_and_a_late_write_is_reset",
        ),
    ),
    Scenario("C-15", "LAST-ACK input", 0),
    Scenario(
        "C-16",
        "Close in SYN-SENT",
        1,
        (
            HS + "test_close_in_syn_sent_deletes_the_tcb",
            CK + "test_close_in_syn_sent_sends_nothing_and_a_late_syn_ack_is_reset",
        ),
    ),
    Scenario(
        "C-17",
        "Closing a listener with unaccepted connections",
        1,
        (API + "test_closing_a_listener_resets_the_connections_nobody_accepted",),
    ),
    Scenario(
        "C-18",
        "Blocked calls wake on reset or close",
        1,
        (
            KP + "test_engine_failure_reaches_a_blocked_call",
            ENG + "test_engine_failure_reaches_blocked_calls",
            CK + "test_a_blocked_recv_wakes_with_reset_when_the_kernel_resets",
            CK + "test_a_sendall_blocked_on_a_full_buffer_wakes_with_reset",
            CK + "test_a_blocked_recv_fails_with_ebadf_when_we_close",
            CK + "test_a_blocked_accept_fails_with_ebadf_when_the_listener_closes",
            CK + "test_a_blocked_accept_fails_with_einval_on_shut_rd_as_on_linux",
        ),
    ),
    # ---------------------------------------------------------------- A
    Scenario("A-01", "RST sequence checks in every state", 0),
    Scenario(
        "A-02",
        "Challenge ACK on a live transfer",
        1,
        (ATT + "test_transfer_survives_a_barrage_of_forged_and_malformed_frames",),
        partial="in-window RSTs among other forged frames; the `ss -K` variant is not run",
    ),
    Scenario("A-03", "SYN on a synchronized connection", 0),
    Scenario(
        "A-04",
        "ACK acceptability; blind data",
        1,
        (
            EST + "test_ack_of_unsent_data_is_answered_and_dropped",
            ATT + "test_transfer_survives_a_barrage_of_forged_and_malformed_frames",
            STRAY + "test_a04_ack_acceptability_in_each_state",
        ),
        partial="SYN-RECEIVED, LAST-ACK and TIME-WAIT are not tried",
    ),
    Scenario(
        "A-05",
        "Rate limit on challenge and duplicate ACKs",
        1,
        (
            HARD + "test_challenge_acks_are_limited_per_connection",
            HARD + "test_out_of_window_acks_are_limited_but_data_is_always_answered",
            HARD + "test_challenge_acks_share_a_stack_wide_budget",
            STRAY + "test_a05_challenge_and_duplicate_acks_are_limited_per_connection_as_on_linux",
            STRAY
            + "test_a05_the_stack_wide_challenge_budget_couples_connections_as_linuxs_limit_does",
        ),
        partial="our stack-wide budget is a fixed count (README, Rate limits); 1,000 segments/s "
        "for 10 s is not run",
    ),
    Scenario("A-06", "Out-of-window segments get an ACK", 0),
    Scenario("A-07", "Old segments below RCV.NXT", 0),
    Scenario(
        "A-08",
        "PAWS and TS.Recent",
        1,
        (
            OPT + "test_paws_drops_an_old_duplicate_and_acks",
            OPT + "test_paws_spares_a_reordered_pure_duplicate_ack",
            OPT + "test_ts_recent_follows_the_left_edge_only",
        ),
        partial="a simulated peer; the RST and 24-day idle cases are untested",
    ),
    Scenario(
        "A-09",
        "SYN flood",
        2,
        (
            ATT + "test_syn_flood_does_not_stop_real_clients",
            HARD + "test_forged_or_stale_cookies_are_refused",
            HARD + "test_cookie_carries_the_mss_back",
        ),
        partial="3 s at over 1,000 SYNs/s, not 30 s at 5,000",
    ),
    Scenario(
        "A-10",
        "Floods for unknown connections",
        1,
        (
            HS + "test_closed_port_never_answers_rst",
            STRAY + "test_a10_flood_for_unknown_4_tuples_is_answered_one_rst_per_ack_as_linux_does",
        ),
        partial="no FIN floods, nothing sustained at 10,000 frames/s",
    ),
    Scenario(
        "A-11",
        "ICMP errors against connections",
        1,
        missing="no test sends ICMP errors about a connection",
    ),
    Scenario(
        "A-12",
        "Martian sources and land attack",
        1,
        (HARD + "test_forged_sources_are_dropped",),
        partial="SYNs from bad sources on a simulated link; a broadcast destination is untried",
    ),
    Scenario(
        "A-13",
        "What an observer can predict",
        1,
        (
            ISN + "test_different_tuples_are_unrelated",
            LIVE + "test_ephemeral_ports_of_a_thousand_connects_are_random",
            LIVE + "test_timestamp_offsets_hold_for_a_four_tuple_and_change_with_the_stack",
            LIVE + "test_timestamp_offsets_differ_from_one_four_tuple_to_the_next",
        ),
    ),
    # ---------------------------------------------------------------- O
    Scenario(
        "O-01",
        "Our MSS follows the MTU",
        1,
        (
            OPT + "test_syn_offers_everything_linux_does",
            NEG + "test_the_mss_we_announce_is_the_mtu_less_40",
            NEG + "test_a_stack_opens_on_a_72_byte_mtu_and_announces_32",
        ),
        partial="the kernel's segments to us are not held to our MSS with its offloads off",
    ),
    Scenario(
        "O-02",
        "The peer's MSS caps our segments",
        1,
        (
            HS + "test_syn_ack_mss_option_sets_send_mss",
            EST + "test_send_segments_by_mss_and_sets_psh_on_the_last",
            NEG + "test_the_kernels_mss_caps_every_frame_we_send",
        ),
        partial="SACK blocks' option bytes, and a peer MSS above our MTU less 40, are not tried",
    ),
    Scenario("O-03", "No MSS option", 0),
    Scenario("O-04", "Tiny and huge MSS values", 0),
    Scenario("O-05", "MSS outside the SYN", 0),
    Scenario(
        "O-06",
        "Option negotiation matrix",
        1,
        (
            OPT + "test_options_need_both_sides",
            NEG + "test_an_option_is_used_exactly_when_both_sides_offered_it",
            NEG + "test_sack_blocks_flow_only_when_both_offered_sack",
        ),
        partial="64 KiB each way without loss per combination, not 16 MiB at 1% loss",
    ),
    Scenario("O-07", "Window scale above 14", 0),
    Scenario(
        "O-08",
        "Timestamp rules",
        1,
        (
            OPT + "test_timestamps_echo_and_measure_rtt",
            OPT + "test_ts_recent_follows_the_left_edge_only",
        ),
        partial="echo, TS.Recent, a missing TSopt and TSopt on RSTs (script O-08-missing-ts); "
        "the delayed-ACK echo cases, TSopt when not agreed, on challenge ACKs and FIN "
        "TSvals are untested",
    ),
    Scenario(
        "O-09",
        "SACK blocks we send",
        1,
        (
            OPT + "test_sack_blocks_report_out_of_order_data_most_recent_first",
            OPT + "test_sack_blocks_fit_beside_timestamps",
        ),
        partial="a simulated peer; no D-SACK, no comparison with Linux",
    ),
    Scenario(
        "O-10",
        "SACK blocks we receive",
        1,
        (
            LOSS + "test_retransmit_queue_tracks_pipe_through_sack_and_ack",
            "tests/unit/test_offload.py::test_partial_sack_of_an_offload_segment_retransmits_only_the_hole",
        ),
        partial="well-formed blocks only; malformed ones are untested",
    ),
    Scenario(
        "O-11",
        "Unknown and newer options",
        1,
        (WIRE + "test_option_parsing_details",),
        partial="the parser, and scripted O-12; no kernel sending TFO or AccECN",
    ),
    Scenario("O-12", "Option parsing robustness", 0),
    Scenario(
        "O-13",
        "ECN",
        1,
        (
            "tests/integration/test_ecn.py::test_a_kernel_that_asks_for_ecn_gets_it_unless_we_refuse",
            "tests/integration/test_ecn.py::test_we_ask_a_kernel_for_ecn_and_it_accepts",
            "tests/integration/test_ecn.py::test_marks_on_our_data_make_us_reduce_and_say_cwr",
            "tests/integration/test_ecn.py::"
            "test_marks_on_the_kernels_data_are_echoed_until_it_says_cwr",
        ),
    ),
    # ---------------------------------------------------------------- M
    Scenario("M-01", "Bad checksums", 0),
    Scenario("M-02", "Broken IP layer", 0),
    Scenario("M-03", "Padding and trailing bytes", 0),
    Scenario("M-04", "Bad data offset", 0),
    Scenario("M-05", "Illegal flag combinations", 0),
    Scenario("M-06", "Reserved and ECN bits", 0),
    Scenario("M-07", "Odd URG pointers", 0),
    Scenario("M-08", "RST carrying data", 0),
    Scenario(
        "M-09",
        "Extreme field values",
        1,
        partial="no allocation sized from peer values is checked only by a coarse bound "
        "on our process's peak RSS; option and MSS extremes are left to O-04 and M-07",
    ),
    Scenario(
        "M-10",
        "Header mutation on a live transfer",
        2,
        (
            ATT + "test_transfer_survives_a_barrage_of_forged_and_malformed_frames",
            WIRE + "test_mutated_frames_only_raise_decode_error",
        ),
        partial="forged and malformed frames beside a live transfer; its own frames are not "
        "mutated",
    ),
    Scenario(
        "M-11",
        "Offline fuzzing",
        2,
        (
            "tests/unit/test_fuzz_engine.py::test_engine_survives_any_sequence_of_frames_and_timers",
            "tests/unit/test_fuzz_engine.py::test_corpus_frame_is_counted_and_harmless",
            "tests/unit/test_properties.py::test_random_inputs_never_raise_and_follow_the_diagram",
            WIRE + "test_random_tcp_segments_only_raise_decode_error",
        ),
    ),
    Scenario(
        "M-12",
        "Differential stateful fuzzing",
        1,
        ("tests/integration/test_differential_fuzz.py::test_no_unexplained_difference_from_linux",),
        partial="10 seeds in CI, many with `sudo ./scripts/fuzz-diff`; passive opens on an "
        "established connection only: no active open, close(), urgent data, timestamps, "
        "SACK or window scale, and timers held off",
    ),
    # ---------------------------------------------------------------- L
    Scenario(
        "L-01",
        "Many connections at once",
        2,
        (KP + "test_fifty_concurrent_kernel_clients",),
        partial="50 clients, not 200 or 1,000; latency and CPU not recorded",
    ),
    Scenario(
        "L-02",
        "Connection churn",
        1,
        (HARD + "test_time_wait_table_is_bounded",),
        partial="the TIME-WAIT bound only; no 10,000-connection run",
    ),
    Scenario(
        "L-03",
        "Multi-GiB soak with loss",
        2,
        (
            "tests/unit/test_long_runs.py::test_a_good_soak_passes",
            "tests/unit/test_long_runs.py::test_each_failure_is_named",
        ),
        partial="the soak itself runs from `sudo ./scripts/soak` (4 GiB each way at 0.5% "
        "loss, about a minute), not in CI; CI checks its verdict logic",
    ),
    Scenario(
        "L-04",
        "Keep-alive",
        2,
        (
            REC + "test_keepalive_is_answered_and_then_finds_a_dead_peer",
            FLOW + "test_keepalive_off_sends_nothing_when_idle",
            FLOW + "test_keepalive_probes_then_times_out",
            LIVE + "test_kernel_keepalives_are_answered_until_we_go_silent",
        ),
    ),
    Scenario(
        "L-05",
        "Memory bound on out-of-order data",
        1,
        (
            "tests/unit/test_reassembly.py::test_a_flood_of_disjoint_bytes_is_held_and_released_in_order",
        ),
        partial="1,000 one-byte segments in CI (20,000 in `scripts/conformance --all`), "
        "not 100k: Linux's window takes no more; the bytes held are bounded by the window, "
        "but not the per-block bookkeeping",
    ),
    Scenario(
        "L-06",
        "Receive path saturation",
        1,
        (
            "tests/integration/test_saturation.py::test_kernel_blast_is_received_whole",
            "tests/integration/test_saturation.py::test_stalled_reader_window_creep",
        ),
        partial="our window is the buffer, not sized to what we process; drops at the "
        "veth backlog are not counted; throughput is only 'it completes'",
    ),
    Scenario(
        "L-07",
        "Offloads on",
        1,
        (
            KP + "test_one_megabyte_each_way_arrives_intact",
            LINK + "test_packet_link_trusts_locally_offloaded_checksums",
            WIRE + "test_gso_super_frame_decodes",
        ),
    ),
    Scenario(
        "L-08",
        "Timers at scale; wall-clock steps",
        1,
        (
            "tests/integration/test_acks_and_timers.py::"
            "test_timers_of_many_connections_fire_on_the_monotonic_clock",
        ),
        partial="300 connections, not 10,000; the wall clock stepped in our process only "
        "(time.time patched), not the system's; no cost per timer measured",
    ),
    Scenario(
        "L-09",
        "API calls from many threads",
        1,
        (
            API + "test_close_ends_a_connect_still_waiting_for_its_syn_ack",
            API + "test_a_sendall_blocked_on_a_zero_window_wakes_only_when_the_kernel_reads",
            API + "test_shutdown_in_one_thread_releases_a_blocked_recv_and_sendall",
            API + "test_close_in_one_thread_releases_blocked_recv_sendall_and_accept",
            API + "test_a_recv_blocked_in_another_thread_fails_with_ebadf_on_close",
            API + "test_threads_race_send_recv_shutdown_and_close",
        ),
        partial="no asyncio tasks, no two threads in recv() on one socket; a blocked send "
        "wakes as soon as any space frees, where Linux waits for a third of the buffer",
    ),
    Scenario(
        "L-10",
        "Performance baselines",
        2,
        (
            "tests/unit/test_long_runs.py::test_grid_check_compares_raw_figures_within_the_factor",
            "tests/unit/test_long_runs.py::test_cells_with_loss_get_more_slack",
        ),
        partial="the grid runs from `sudo ./scripts/grid --check scripts/grid-baseline.json` "
        "(about 3.5 min), not in CI, which runs `tcpstack bench --quick --check`; the "
        "kernel pair only without delay (no netem)",
    ),
)

BY_ID: Final = {s.id: s for s in SCENARIOS}


# ------------------------------------------------------------------ with the catalogue


def scenario_of(key: str) -> str | None:
    """The plan id a catalogue key belongs to, or None if it names none."""
    match = CATALOGUE_KEY.fullmatch(key)
    return match.group(1) if match else None


def scripted_keys(scripts: Iterable[str], scenario: str) -> list[str]:
    """The catalogue keys that script `scenario` (itself, and variants such as D-03-all)."""
    return sorted(k for k in scripts if scenario_of(k) == scenario)


@dataclass(frozen=True, slots=True)
class Where:
    """Where one scenario is checked, after the catalogue had its say."""

    scenario: Scenario
    ci_scripts: tuple[str, ...]  # catalogue keys in SCRIPTS (run by CI)
    more_scripts: tuple[str, ...]  # keys only in EXTENDED (`--all`)

    @property
    def scripted(self) -> bool:
        return bool(self.ci_scripts or self.more_scripts)

    @property
    def kind(self) -> str:
        """'scripted', 'tested', 'partial' or 'not yet'. A scenario whose scripts or
        tests check only part of it, as its `partial` note says, is 'partial'."""
        if self.scripted:
            return "partial" if self.scenario.partial else "scripted"
        if self.scenario.tests:
            return "partial" if self.scenario.partial else "tested"
        return "not yet"

    @property
    def in_ci(self) -> bool:
        """Fully checked by what CI runs: a script in SCRIPTS, or tests under tests/
        (CI runs all of tests/) that check the whole scenario."""
        s = self.scenario
        if self.ci_scripts:
            return not s.partial
        return bool(s.tests) and not s.partial and all(t.startswith("tests/") for t in s.tests)


def locate(
    ci: Collection[str], extended: Collection[str], scenarios: Iterable[Scenario] = SCENARIOS
) -> list[Where]:
    """Every scenario with its scripts: `ci` and `extended` are the catalogue's keys."""
    return [
        Where(
            s,
            tuple(scripted_keys(ci, s.id)),
            tuple(k for k in scripted_keys(extended, s.id) if k not in ci),
        )
        for s in scenarios
    ]


def catalogue_keys() -> tuple[list[str], list[str]]:
    """The keys of catalogue.SCRIPTS and catalogue.EXTENDED. Imported here, not at
    module level: the catalogue pulls in the scripted peer and the lab."""
    from tcpstack.testing.catalogue import EXTENDED, SCRIPTS

    return list(SCRIPTS), list(EXTENDED)
