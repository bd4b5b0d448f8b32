# -*- test-case-name: tests.store.mysql.test_reads -*-
"""``count_pending`` of the MySQL store: every LOGIN asks it, so the counts of
a read batch (:mod:`daojia_msg.store.reads`) are answered by one query."""

from __future__ import annotations

from typing import Any

from daojia_msg.store.mysql.placement import Placement


class PendingCounter:
    """``count_pending``'s read. Called alone it counts one ``(uid,
    appcode)``; in a read batch :meth:`many` answers all of the batch's counts
    in one query, a ``GROUP BY`` per shard table joined by ``UNION ALL``,
    rather than a query each."""

    __name__ = "count_pending"  # as logs name an interaction

    def __init__(self, placement: Placement) -> None:
        self.placement = placement

    def __call__(self, txn: Any, uid: int, appcode: int, floor: int = 0) -> int:
        return self.many(txn, [(uid, appcode, floor)])[0]

    def many(self, txn: Any, keys: list[tuple[int, ...]]) -> list[int]:
        """The pending count of each ``(uid, appcode[, floor])`` of ``keys``
        (all of one database), without the messages below ``floor`` (expired;
        the batch's highest floor counts for all: they differ by the
        milliseconds between the reads, and an expired message is never counted)."""
        by_table: dict[int, set[tuple[int, int]]] = {}
        floor = max((key[2] for key in keys if len(key) > 2), default=0)
        for uid, appcode, *_ in keys:
            by_table.setdefault(self.placement.place(uid)[1], set()).add((uid, appcode))
        # A range of the pending index per key (the row constructor is
        # optimised as such); uids and appcodes are ints, written as decimal
        # literals: nothing else reaches the text.
        txn.execute(" UNION ALL ".join(
            f"(SELECT to_uid, to_appcode, COUNT(*) FROM messages_{n}"
            " WHERE (to_uid, to_appcode, state) IN ("
            + ", ".join(f"({int(uid)}, {int(appcode)}, 0)" for uid, appcode in sorted(table))
            + f") AND msgid >= {int(floor)} GROUP BY to_uid, to_appcode)"
            for n, table in sorted(by_table.items())
        ))  # fmt: skip
        counts = {(int(uid), int(appcode)): int(count) for uid, appcode, count in txn.fetchall()}
        return [counts.get((key[0], key[1]), 0) for key in keys]
