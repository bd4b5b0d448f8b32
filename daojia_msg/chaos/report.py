# -*- test-case-name: tests.chaos.test_ledger -*-
"""The fault suite's table (one row per phase) and its JSON document."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from daojia_msg.chaos.ledger import Row

COLUMNS = (
    ("fault", "phase"), ("sent", "sent"), ("deliv", "delivered"), ("LOST", "lost"),
    ("DOUBLE", "double"), ("MISMATCH", "mismatch"), ("refused", "refused"),
    ("REF+DELIV", "refused_delivered"), ("unconf", "unconfirmed"),
    ("UNANSW", "unanswered"), ("frozen", "frozen"), ("no-ans", "no_answer"), ("resends", "resends"),
)
#: Facts of each phase shown after the counts (from ``Row.notes``): KICKOUTs
#: and lost connections of the users, messages only the drain (PULL) brought
#: (not pushed live), the OK answers' p99 and max seconds (resends included).
NOTES = (("kicks", "kickouts"), ("disc", "disconnects"), ("pulled", "drained"),
         ("p99 s", "ok_p99_s"),
         ("max s", "ok_max_s"))
#: How the total row shows each note: counts add up, the slowest answer is
#: the slowest of all; a p99 of p99s would mean nothing, so it stays blank.
NOTE_TOTALS: dict[str, Callable[[list[Any]], Any]] = {
    "kickouts": sum, "disconnects": sum, "drained": sum, "ok_max_s": max}


def _note_total(rows: Sequence[Row], key: str) -> str:
    combine = NOTE_TOTALS.get(key)
    values = [row.notes[key] for row in rows if row.notes.get(key) is not None]
    return "" if combine is None or not values else str(combine(values))


def table(rows: Sequence[Row]) -> str:
    """A plain-text table; upper-case columns are the bad verdicts."""
    total = Row("total")
    for row in rows:
        for name in Row.COUNTS:
            setattr(total, name, getattr(total, name) + getattr(row, name))
    cells = [[str(getattr(row, attr)) for _, attr in COLUMNS]
             + [str(row.notes.get(key, "-")) for _, key in NOTES] for row in rows]
    cells.append([str(getattr(total, attr)) for _, attr in COLUMNS]
                 + [_note_total(rows, key) for _, key in NOTES])
    heads = [head for head, _ in COLUMNS + NOTES]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]

    def line(values: Sequence[str]) -> str:
        first = values[0].ljust(widths[0])
        rest = [v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(c) for c in cells])


def bad_lines(rows: Sequence[Row]) -> list[str]:
    """One line per bad verdict with its examples, for the end of the output."""
    lines = []
    for row in rows:
        for name in Row.BAD:
            count = getattr(row, name)
            if count:
                lines.append(f"{row.phase}: {count} {name}: "
                             + "; ".join(row.bad_examples.get(name, [])[:3]))
        if row.kicked:
            lines.append(f"{row.phase}: {row.kicked} KICKOUT: the users' connections must "
                         "stay through a Redis outage shorter than cluster.redis_outage_grace_s")
    return lines


def document(rows: Sequence[Row], settings: dict[str, Any],
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    bad = sum(row.bad for row in rows)
    return {"ok": bad == 0, "bad": bad, "settings": settings,
            "phases": [row.as_json() for row in rows], **(extra or {})}


def write_json(path: str, doc: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")
