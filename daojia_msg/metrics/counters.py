# -*- test-case-name: tests.metrics.test_registry -*-
"""Plain counters a layer keeps and the Prometheus registry reads at scrape time."""

from __future__ import annotations

from collections.abc import Iterable

#: The scopes of a login brute-force lockout: one identity from one address, or an address.
LOGIN_THROTTLE_SCOPES = ("identity", "ip")


class LabeledCounter:
    """A count per value of one label, the values known up front (so an
    outsider cannot grow the set)."""

    def __init__(self, values: Iterable[str]) -> None:
        self.counts = dict.fromkeys(values, 0)

    def inc(self, value: str) -> None:
        self.counts[value] += 1


#: The transports a gate connection comes over (``msgplatform_gate_connections``).
TRANSPORTS = ("tcp", "tls", "websocket")


class GateCounters:
    """What the gate counts for ``/metrics``: answered LOGINs by result, KICKOUTs
    by reason, answers with a non-OK code by that code, requests by command,
    bytes in and out. The label values (result-code, kickout-reason and
    command names) are given up front by the gate."""

    def __init__(self, codes: Iterable[str], reasons: Iterable[str],
                 commands: Iterable[str] = ()) -> None:
        codes = tuple(codes)
        self.logins = LabeledCounter(codes)
        self.kickouts = LabeledCounter(reasons)
        self.refused = LabeledCounter(code for code in codes if code != "OK")
        #: Client requests by command (known commands only).
        self.requests = LabeledCounter(commands)
        #: Bytes read from and written to the gate's connections.
        self.bytes_in = 0
        self.bytes_out = 0
