"""``[geo]`` and a route's ``geo`` key."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.config import ConfigError, GeoConfig, default_config, parse_config

APP = """
[apps.5]
usersystem = "s"
secret = "secret-5-xx"

[[routes]]
appcode = 5
msgtype = 1
topic = "gps"
"""


class GeoConfigTests(SynchronousTestCase):
    def test_defaults_and_the_demo(self) -> None:
        config = parse_config(APP)
        self.assertEqual(config.geo, GeoConfig(max_age_s=60.0))
        self.assertFalse(config.routes[0].geo)
        demo = {(r.appcode, r.msgtype): r.geo for r in default_config().routes}
        self.assertEqual(demo, {(1001, 1): True, (1001, 2): False, (1002, 1): True,
                                (1002, 2): False})

    def test_keys(self) -> None:
        config = parse_config(APP + 'geo = true\n[geo]\nmax_age_s = 5\n')
        self.assertTrue(config.routes[0].geo)
        self.assertEqual(config.geo.max_age_s, 5.0)

    def test_bad_values_name_the_key(self) -> None:
        for text, key in ((APP + 'geo = "yes"\n', "routes.0.geo"),
                          (APP + 'geo = 1\n', "routes.0.geo"),
                          (APP + '[geo]\nmax_age_s = 4.9\n', "geo.max_age_s"),
                          (APP + '[geo]\nmax_age = 10\n', "geo.max_age")):
            with self.assertRaises(ConfigError) as caught:
                parse_config(text)
            self.assertTrue(str(caught.exception).startswith(key + ":"), str(caught.exception))
