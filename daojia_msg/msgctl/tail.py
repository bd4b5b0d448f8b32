# -*- test-case-name: tests.test_consumer,tests.msgctl.test_tail -*-
"""``msgctl tail``: the C2S envelopes arriving on a topic of a bus, as they come."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred

from daojia_msg.bus.envelope import JSON, Envelope
from daojia_msg.msgctl.common import CliError, Ctx


def format_envelope(envelope: Envelope) -> str:
    """One line: a C2S envelope's fields and content, or a JSON entry (the
    ``offers`` topic's outcomes) as compact JSON."""
    if envelope.content_type == JSON:
        data = json.dumps(envelope.data, separators=(",", ":"), ensure_ascii=False)
        return f"[{envelope.topic}] logid={envelope.logid} {data}"
    m = envelope.message
    text = m.content.decode("utf-8", "backslashreplace")
    return (f"[{envelope.topic}] msgid={m.msgid} from={m.from_uid}@{m.from_appcode} "
            f"msgtype={m.msgtype} logid={envelope.logid} {text}")


async def cmd_tail(ctx: Ctx) -> None:
    """Print each envelope of TOPIC as it arrives, until --count or Ctrl-C."""
    from daojia_msg.consumer import consume

    a = ctx.args
    done: Deferred[None] = Deferred()
    seen = [0]

    def show(envelope: Any) -> None:
        ctx.say(format_envelope(envelope))
        seen[0] += 1
        if a.count and seen[0] >= a.count and not done.called:
            done.callback(None)

    try:
        stop = await consume(ctx.reactor, a.bus, a.topic, show, exchange=a.exchange,
                             listen=a.listen)
    except ValueError as e:
        raise CliError(str(e), 2) from None
    except Exception as e:
        raise CliError(f"cannot read {a.topic} from the bus: {e}") from None
    ctx.note(f"*** tailing {a.topic}" + (f" ({a.count} envelopes)" if a.count else ""))
    try:
        await done
    finally:
        await stop()
