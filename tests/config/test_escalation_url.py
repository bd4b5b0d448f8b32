"""``[apps.<appcode>] escalation_url``: an http(s) URL checked at start."""

from __future__ import annotations

from daojia_msg.config import parse_config
from tests.config.helpers import ConfigTestCase

BASE = '[apps.1001]\nusersystem = "u"\nsecret = "12345678"\n'


class EscalationUrlTests(ConfigTestCase):
    def test_default_none(self) -> None:
        self.assertEqual(parse_config(BASE).apps[1001].escalation_url, "")

    def test_http_and_https(self) -> None:
        for url in ("http://127.0.0.1:9000/esc", "https://ops.example.com/hooks/esc?x=1",
                    "https://user:pw@[::1]:8443/"):
            config = parse_config(BASE + f'escalation_url = "{url}"\n')
            self.assertEqual(config.apps[1001].escalation_url, url)

    def test_bad(self) -> None:
        for bad, why in [('"ftp://example.com/x"', "expected an http(s)://"),
                         ('"example.com/x"', "expected an http(s)://"),
                         ('"http:///nohost"', "expected an http(s)://"),
                         ('"http://example.com:port/"', "not an http(s):// URL"),
                         ('"http://exa mple.com/"', "a URL has no whitespace"),
                         ("1", "expected a string")]:
            with self.subTest(bad=bad):
                self.assertConfigError(BASE + f"escalation_url = {bad}\n",
                                       f"apps.1001.escalation_url: {why}")

    def test_a_password_is_not_shown(self) -> None:
        error = self.assertConfigError(BASE + 'escalation_url = "ftp://u:s3cret@example.com/"\n',
                                       "apps.1001.escalation_url")
        self.assertNotIn("s3cret", str(error))
