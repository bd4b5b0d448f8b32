# -*- test-case-name: tests.test_tap -*-
"""twistd dropin: ``twistd msgplatform``. Thin: everything lives in daojia_msg.tap."""

from twisted.application.service import ServiceMaker

msgplatform = ServiceMaker(
    "msgplatform",
    "daojia_msg.tap",
    "A message platform node: gate, logic, HTTP API (see README.md).",
    "msgplatform",
)
