"""``[offers]``: off by default, the demo's msgtypes, bad values named."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.config import DEMO_OFFERS, ConfigError, OffersConfig, default_config, parse_config

APP = """
[apps.5]
usersystem = "s"
secret = "secret-5-xx"
"""


class OffersConfigTests(SynchronousTestCase):
    def test_off_by_default_and_on_in_the_demo(self) -> None:
        self.assertEqual(parse_config(APP).offers, OffersConfig(0, 0))
        self.assertEqual(default_config().offers, OffersConfig(3, 4))
        self.assertEqual(DEMO_OFFERS, OffersConfig(3, 4))

    def test_keys(self) -> None:
        config = parse_config(APP + "[offers]\naccept_msgtype = 30\nresult_msgtype = 31\n")
        self.assertEqual(config.offers, OffersConfig(30, 31))

    def test_bad_values_name_the_key(self) -> None:
        for text, key in (("accept_msgtype = 3\n", "offers.result_msgtype"),
                          ("result_msgtype = 3\n", "offers.accept_msgtype"),
                          ("accept_msgtype = 3\nresult_msgtype = 3\n", "offers.result_msgtype"),
                          ('accept_msgtype = "3"\nresult_msgtype = 4\n', "offers.accept_msgtype"),
                          ("accept_msgtype = -1\nresult_msgtype = 4\n", "offers.accept_msgtype"),
                          ("accept = 3\n", "offers.accept")):
            with self.assertRaises(ConfigError) as caught:
                parse_config(APP + "[offers]\n" + text)
            self.assertTrue(str(caught.exception).startswith(key + ":"), str(caught.exception))
