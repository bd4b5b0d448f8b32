# -*- test-case-name: tests.bench.test_bench -*-
"""The scenarios by name, as a worker process looks them up (:mod:`.worker`)."""

from __future__ import annotations

from daojia_msg.bench.base import Scenario
from daojia_msg.bench.gatescenarios import C2C, C2S, Connect, Login
from daojia_msg.bench.httpscenarios import Pull, Push

SCENARIOS: dict[str, type[Scenario]] = {
    "connect": Connect, "login": Login, "c2s": C2S, "c2c": C2C, "push": Push, "pull": Pull,
}
