"""`python -m tcpstack` / `tcpstack`: the demo and the lab verbs."""

from __future__ import annotations

import argparse
import logging
import sys

from tcpstack import lab as lab_module


def _add_link_choice(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--veth", dest="kind", action="store_const", const="veth", help="veth pair (default)"
    )
    group.add_argument("--tap", dest="kind", action="store_const", const="tap", help="TAP device")
    parser.set_defaults(kind="veth")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcpstack",
        description="A userspace TCP endpoint that talks to the real Linux kernel (run as root).",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-vv: every state change)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="build a lab, talk TCP to the kernel, print the ladder")
    _add_link_choice(demo)
    demo.add_argument("--passive", action="store_true", help="the kernel is the client; we listen")
    demo.add_argument(
        "--msl",
        type=float,
        default=1.0,
        help="segment lifetime in seconds; TIME-WAIT is 2*MSL (default 1, so the demo ends)",
    )

    transfer = sub.add_parser(
        "transfer",
        help="bulk data both ways with the kernel, under impairment, beside kernel-to-kernel",
    )
    _add_link_choice(transfer)
    transfer.add_argument("--size", type=_size, default=8 << 20, help="bytes each way (e.g. 8M)")
    transfer.add_argument(
        "--direction",
        choices=("both", "up", "down"),
        default="both",
        help="up = we send, down = the kernel sends",
    )
    transfer.add_argument(
        "--impair",
        metavar="SPEC",
        help='impair our link, e.g. "loss=5%%,dup=2%%,reorder=10%%:3,corrupt=1%%,seed=7"',
    )
    transfer.add_argument(
        "--loss",
        type=float,
        default=0.0,
        metavar="PCT",
        help="drop PCT%% of TCP packets each way, where they arrive (nftables at the kernel,"
        " our impairment layer at us); the kernel pair gets the same",
    )
    transfer.add_argument("--congestion", choices=("cubic", "reno"), default="cubic")
    transfer.add_argument(
        "--no-compare", action="store_true", help="skip the kernel-to-kernel reference run"
    )
    transfer.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )

    memory = sub.add_parser(
        "memory", help="measure memory per half-open and per established connection"
    )
    memory.add_argument("--connections", type=int, default=1000)

    scenario = sub.add_parser(
        "scenario",
        help="reproduce a claim of the source documents against the kernel, with a verdict",
    )
    scenario.add_argument(
        "name", help="a scenario's name, 'list' to see them all, or 'all' to run every one"
    )
    _add_link_choice(scenario)
    scenario.add_argument("--pcap", metavar="FILE", help="write what we sent and received (pcapng)")
    scenario.add_argument(
        "--plot",
        metavar="FILE",
        help="draw the ladder to FILE (.svg or .png), and beside it FILE-states,"
        " FILE-tsg and FILE-cwnd: state diagram, time-sequence graph, cwnd/RTT/RTO",
    )
    scenario.add_argument(
        "--differential",
        action="store_true",
        help="also run it with a Linux socket as the DUT, and compare the two side by side",
    )
    scenario.add_argument(
        "--msl", type=float, default=0.5, help="segment lifetime in seconds (default 0.5)"
    )
    scenario.add_argument(
        "--absolute", action="store_true", help="print absolute seq/ack and timestamps too"
    )

    conformance = sub.add_parser(
        "conformance",
        help="run the conformance scenarios: scripts against us and Linux, or their pytest tests",
    )
    conformance.add_argument(
        "ids",
        nargs="*",
        help="scenario ids (e.g. H-03 R-08): their scripts and the tests mapped to them; "
        "default: every CI script",
    )
    conformance.add_argument(
        "--dut", choices=("tcpstack", "linux", "both"), default="both", help="device under test"
    )
    conformance.add_argument(
        "--all", action="store_true", help="also the longer scenarios CI leaves out"
    )
    conformance.add_argument(
        "--list", action="store_true", help="list every scenario with where it runs, and stop"
    )
    conformance.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="limit for the pytest run of one scenario's tests",
    )
    conformance.add_argument(
        "--transcript", action="store_true", help="print each run's transcript, passed or not"
    )

    sub.add_parser(
        "bench",
        help="benchmark against the kernel on this machine; --soak and --grid for the long"
        " runs (see tcpstack bench --help)",
        add_help=False,
    )
    ss = sub.add_parser(
        "ss", help="list the running stacks' sockets with state and counters, like ss -tni"
    )
    ss.add_argument("--brief", action="store_true", help="one line per socket, no variables")
    ss.add_argument(
        "--watch", type=float, metavar="SECONDS", help="refresh every SECONDS (Ctrl-C stops)"
    )
    ss.add_argument(
        "--count", type=int, default=600, help="with --watch, stop after this many refreshes"
    )

    lab = sub.add_parser("lab", help="create or remove a lab network")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)
    up = lab_sub.add_parser("up", help="create a lab that stays up until `lab down`")
    _add_link_choice(up)
    down = lab_sub.add_parser(
        "down", help="remove a lab made by `lab up` (default: all whose creator is gone)"
    )
    down.add_argument("name", nargs="?", help="the lab's name, e.g. tcps-1a2b3c")
    lab_sub.add_parser("list", help="list labs made by `lab up`")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["bench"]:
        from tcpstack import bench  # its own options, parsed there

        return bench.main(arguments[1:])
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=level, format="%(relativeCreated)9.3f %(name)s %(message)s")
    if args.command == "demo":
        from tcpstack import demo

        result = demo.run(kind=args.kind, passive=args.passive, msl=args.msl)
        print("PASS" if result.ok else "FAIL")
        return 0 if result.ok else 1
    if args.command == "transfer":
        return _transfer(args)
    if args.command == "memory":
        from tcpstack.measure import measure

        for line in measure(args.connections).lines():
            print(line)
        return 0
    if args.command == "scenario":
        from tcpstack.scenarios import cli as scenario_cli

        return scenario_cli.main(args)
    if args.command == "conformance":
        from tcpstack.testing import runner

        return runner.main(args)
    if args.command == "ss":
        return _ss(args)
    if args.command == "lab":
        if args.lab_command == "up":
            created = lab_module.main_up(args.kind, persist=True)
            for line in created.describe():
                print(line)
            return 0
        if args.lab_command == "down":
            try:
                removed = lab_module.main_down(args.name)
            except LookupError as exc:
                print(f"tcpstack: {exc}", file=sys.stderr)
                return 1
            for name in removed:
                print(f"removed {name}")
            if not removed:
                print("nothing to remove")
            return 0
        for rec in lab_module.list_recorded():
            print(f"{rec['name']}  {rec['kind']}  namespaces {' '.join(rec['namespaces'])}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().rstrip("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _ss(args: argparse.Namespace) -> int:
    import time

    from tcpstack import control

    rounds = args.count if args.watch else 1
    for n in range(rounds):
        found = control.snapshots()
        if args.watch:
            print(f"\x1b[H\x1b[2J{time.strftime('%H:%M:%S')}  tcpstack ss (every {args.watch:g} s)")
        for line in control.render(found, info=not args.brief):
            print(line)
        if not found:
            print(f"no running tcpstack stacks (sockets in {control.run_dir()})")
        if n + 1 < rounds:
            try:
                time.sleep(args.watch)
            except KeyboardInterrupt:
                break
    return 0


def _transfer(args: argparse.Namespace) -> int:
    from tcpstack import transfer
    from tcpstack.config import TcpConfig

    ours, _ = transfer.compare(
        args.kind,
        size=args.size,
        directions=args.direction,
        impairment=args.impair,
        loss=args.loss,
        reference=not args.no_compare,
        progress=args.progress,
        config=TcpConfig(congestion=args.congestion),
    )
    if ours.info is not None:
        i = ours.info
        srtt = f"{i.srtt * 1000:.2f} ms" if i.srtt is not None else "-"
        print(
            f"  {i.congestion} cwnd {i.cwnd} ssthresh {min(i.ssthresh, 1 << 31)} srtt {srtt}"
            f" rto {i.rto * 1000:.0f} ms mss {i.send_mss} wscale {i.snd_wscale}/{i.rcv_wscale}"
            f" sack {'on' if i.sack else 'off'} timestamps {'on' if i.timestamps else 'off'}"
        )
        counters = {k: v for k, v in sorted(i.counters.items()) if v}
        print("  counters: " + ", ".join(f"{k} {v}" for k, v in counters.items()))
    if ours.drops:
        print(
            "  dropped: "
            + ", ".join(f"{k.removeprefix('drop_')} {v}" for k, v in ours.drops.items())
        )
    return 0 if ours.ok else 1
