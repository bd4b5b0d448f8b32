"""Fixtures of the config tests: example apps, the example files, a test case that checks errors."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.config import (
    ConfigError,
    parse_config,
)

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "etc" / "msgplatform.toml"

APP = """
[apps.2001]
usersystem = "customers"
name = "customer iOS"
secret = "a-long-secret-2001"
api_key = "key-2001"
"""
TWO_APPS = (
    APP
    + """
[apps.2002]
usersystem = "drivers"
secret = "a-long-secret-2002"
api_key = "key-2002"
"""
)


class ConfigTestCase(SynchronousTestCase):
    def assertConfigError(self, text: str, prefix: str) -> ConfigError:
        exc = self.assertRaises(ConfigError, parse_config, text)
        self.assertTrue(str(exc).startswith(prefix), f"{str(exc)!r} does not start with {prefix!r}")
        return exc
