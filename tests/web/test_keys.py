"""Tests for daojia_msg.web.keys: API keys and the caller's user system."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from daojia_msg.config import parse_config
from daojia_msg.web.keys import Caller, Keys
from tests.web.helpers import two_systems


class KeysTests(TestCase):
    def test_find(self) -> None:
        config = two_systems()
        keys = Keys(config.apps.values())
        caller = keys.find(b"key-1002")
        assert caller is not None
        self.assertEqual((caller.app.appcode, caller.appcodes), (1002, frozenset({1001, 1002})))
        self.assertIsNone(keys.find(b""))
        self.assertIsNone(keys.find(b"key-1002 "))

    def test_no_key_configured(self) -> None:
        """An app without an api_key cannot be used with an empty key."""
        config = parse_config('[apps.5]\nusersystem = "x"\nsecret = "12345678"\n')
        self.assertIsNone(Keys(config.apps.values()).find(b""))

    def test_caller_type(self) -> None:
        self.assertIsInstance(Keys(two_systems().apps.values()).find(b"key-1001"), Caller)
