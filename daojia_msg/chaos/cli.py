# -*- test-case-name: tests.chaos.test_cli -*-
"""``msgplatform-chaos``: the fault suite (docs/operations.md, "Fault suite").

It starts a cluster of its own: a private ``redis-server`` and ``mariadbd``
(free loopback ports, data in a temporary directory, never the machine's
shared servers), N nodes (``twistd -n msgplatform``) with the Redis Streams
bus for C2S, and HAProxy in front; for ``rabbitmq-restart`` a private
``rabbitmq-server`` too, the bus of a second C2S route. It offers numbered C2C, S2C and C2S
traffic at ``--rate`` while it injects one fault at a time, heals it, drains
every receiver and classifies every message (:mod:`daojia_msg.chaos.ledger`).
It prints one row per fault and exits 1 on any lost message, message stored
twice, or message left unanswered::

    msgplatform-chaos --short --json chaos.json      # the CI form, < 4 minutes
    msgplatform-chaos --nodes 3 --rate 100 --fault-seconds 8 --keep
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from daojia_msg.chaos import netns, report, runner, servers
from daojia_msg.chaos.faults import FAULTS, OPTIONAL
from daojia_msg.cliargs import writable_file

SHORT: dict[str, Any] = {"fault_seconds": 3.0, "pre_seconds": 2.0, "post_seconds": 3.0, "give_up_s": 20.0}


#: The most nodes a run starts (each a process, a network namespace, ports).
MAX_NODES = 16
#: The largest ``--load``: twice the measured capacity.
MAX_LOAD = 2.0


def positive(kind: type, most: float | None = None) -> Any:
    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        if not number > 0 or (most is not None and number > most):
            bound = f" up to {most:g}" if most is not None else ""
            raise argparse.ArgumentTypeError(f"expected a positive number{bound}, got {value!r}")
        return number
    return parse


def fault_list(value: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(","))
    if "" in names and any(names):
        raise argparse.ArgumentTypeError(f"an empty fault name in {value!r}")
    names = tuple(name for name in names if name)
    unknown = runner.check_faults(names)
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown fault(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from: {', '.join(FAULTS)}")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msgplatform-chaos",
        description="The fault suite: a private cluster, numbered traffic, one fault at a "
                    "time, every message classified. Exit status 1 on any loss, double "
                    "msgid or unanswered message; 2 on a usage error or a missing program.")
    p.add_argument("--nodes", type=positive(int, MAX_NODES), default=3,
                   help=f"nodes (default 3, at most {MAX_NODES})")
    p.add_argument("--rate", type=positive(float), default=100.0,
                   help="messages per second offered, all kinds together (default 100: "
                        "half C2C, a quarter S2C, a quarter C2S)")
    p.add_argument("--faults", type=fault_list, default=None,
                   help=f"comma-separated, in order (default all: {','.join(FAULTS)}; "
                        "clock-step only where libfaketime is installed, rabbitmq-restart "
                        "only where rabbitmq-server is)")
    p.add_argument("--fault-seconds", type=positive(float), default=None,
                   help="how long each fault is held (default 5; 3 with --short)")
    p.add_argument("--users", type=positive(int), default=12, help="client users (default 12)")
    p.add_argument("--capacity-seconds", type=positive(float), default=0.0,
                   help="first measure the capacity: closed-loop senders for this long")
    p.add_argument("--concurrency", type=positive(int), default=64,
                   help="closed-loop senders of the capacity phase (default 64)")
    p.add_argument("--load", type=positive(float, MAX_LOAD), default=None,
                   help="offer this fraction of the measured capacity instead of --rate "
                        f"(e.g. 0.5, at most {MAX_LOAD:g}; needs --capacity-seconds)")
    p.add_argument("--short", action="store_true",
                   help="the CI form: shorter faults and phases (under 4 minutes in all)")
    p.add_argument("--json", metavar="FILE", type=writable_file,
                   help="write the results as JSON")
    p.add_argument("--keep", action="store_true",
                   help="keep the run's directory (servers' data, every process's log)")
    return p


def settings_from(args: argparse.Namespace) -> runner.Settings:
    if args.load is not None and not args.capacity_seconds:
        parser().error("--load needs --capacity-seconds (the capacity it is a fraction of)")
    chosen = args.faults
    if chosen and "node-partition" in chosen and args.nodes < 2:
        parser().error("node-partition cuts a node off from its peers: needs --nodes 2 or more")
    if chosen is None:
        found = optional_programs()
        chosen = tuple(name for name in FAULTS
                       if name not in OPTIONAL or found[OPTIONAL[name][0]] is not None)
    s = runner.Settings(nodes=args.nodes, rate=args.rate, faults=chosen, users=args.users,
                        capacity_seconds=args.capacity_seconds,
                        capacity_concurrency=args.concurrency, load=args.load)
    if args.short:
        s = dataclasses.replace(s, **SHORT)
    if args.fault_seconds is not None:
        s = dataclasses.replace(s, fault_seconds=args.fault_seconds)
    return s


def optional_programs() -> dict[str, str | None]:
    """The programs only some faults need (see ``faults.OPTIONAL``): path or None."""
    return {"libfaketime": servers.faketime_library(),
            "rabbitmq-server": servers.rabbitmq_server(),
            "ip-netns": netns.available()}


def skipped(settings: runner.Settings, asked: bool) -> list[str]:
    """One line per fault left out of the default list for want of its program."""
    if asked:
        return []
    found = optional_programs()
    return [f"{name} skipped: {program} not found ({fix})"
            for name, (program, fix) in OPTIONAL.items()
            if name not in settings.faults and found[program] is None]


def log(text: str) -> None:
    print(time.strftime("%H:%M:%S ") + text, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = settings_from(args)
    programs, missing = servers.prerequisites()
    found = optional_programs()
    for name, (program, fix) in OPTIONAL.items():
        if name in settings.faults:
            if found[program] is None:
                missing.append(f"{program} not found (for {name}): {fix}")
            else:
                programs[program] = found[program] or ""
    if missing:
        print("msgplatform-chaos cannot run; missing:", file=sys.stderr)
        for line in missing:
            print(f"  - {line}", file=sys.stderr)
        return 2
    for line in skipped(settings, args.faults is not None):
        log(line)
    directory = runner.base_directory(args.keep, None)
    log(f"run directory {directory}" + (" (kept)" if args.keep else ""))
    outcome: dict[str, Any] = {}

    async def go(reactor: Any) -> None:
        rows, facts = await runner.run(reactor, settings, programs, directory, log)
        outcome.update(rows=rows, facts=facts)

    from twisted.internet import task
    from twisted.internet.defer import Deferred

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(go(reactor)))
    except SystemExit as e:
        if e.code not in (0, None) and "rows" not in outcome:
            # Failed: the directory stays, with every process's log.
            print(f"msgplatform-chaos: the run failed (logs in {directory})", file=sys.stderr)
            return 2
    if not args.keep:
        runner.remove_directory(directory)
    if "rows" not in outcome:  # a signal stopped the reactor before the run ended
        kept = f"logs in {directory}" if args.keep else "--keep keeps the run's directory"
        print(f"msgplatform-chaos: interrupted ({kept})", file=sys.stderr)
        return 130
    rows, facts = outcome["rows"], outcome["facts"]
    print(report.table(rows))
    for line in report.bad_lines(rows):
        print("BAD " + line)
    doc = report.document(rows, dataclasses.asdict(settings), {"run": facts})
    if args.json:
        report.write_json(args.json, doc)
    print(json.dumps({"ok": doc["ok"], "bad": doc["bad"], **facts}))
    return 0 if doc["ok"] else 1
