# -*- test-case-name: tests.test_tracing -*-
"""``msgctl trace``: one message's path through the nodes, from their JSON logs."""

from __future__ import annotations

from daojia_msg import tracing
from daojia_msg.msgctl.common import CliError, Ctx


async def cmd_trace(ctx: Ctx) -> int:
    """The events of one logid in the JSON log files, in time order. Exit 1
    when none is found or a file cannot be read (what can be read is printed)."""
    a = ctx.args
    if not a.logid:
        raise CliError("LOGID must not be empty", 2)
    unreadable: list[str] = []

    def cannot_read(path: str, e: OSError) -> None:
        unreadable.append(path)
        ctx.note(f"msgctl: error: cannot read {path}: {e.strerror or e}")

    found = tracing.read_trace(a.logid, a.files, on_error=cannot_read)
    for path, count in found.skipped.items():
        ctx.note(f"msgctl: warning: {path}: skipped {count} unreadable record(s) "
                 f"naming logid {a.logid}")
    for event in found:
        ctx.say(tracing.format_line(tracing.record(event)))
    readable = len(dict.fromkeys(a.files)) - len(unreadable)
    if not found and readable:
        raise CliError(f"no log events with logid {a.logid} in {readable} file(s)")
    return 1 if unreadable else 0
