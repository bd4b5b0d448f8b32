"""Login brute force through the gate: forged tokens lock an identity out from
one address, a legitimate user elsewhere is unaffected, /metrics counts it."""

from __future__ import annotations

from prometheus_client import generate_latest
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.auth import mint_token
from daojia_msg.metrics.registry import make_registry
from daojia_msg.protocol.codes import Code
from tests.helpers import Stack

ATTACKER, USER = "198.51.100.7", "203.0.113.9"


class LoginThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stack = Stack()

    def forged(self, uid: int = 42) -> str:
        expires = int(self.stack.clock.seconds()) + 600
        return f"{expires}:{'0' * 64}"

    def attempts(self, times: int, token: str, host: str = ATTACKER, uid: int = 42) -> list[int]:
        conn = self.stack.connect(host)
        return [conn.login(uid, 1001, token).code for _ in range(times)]

    def test_five_forged_tokens_lock_the_identity_out_from_that_address(self) -> None:
        self.assertEqual(self.attempts(5, self.forged()), [Code.UNAUTHORIZED] * 5)
        # Even the right token is refused now, without being checked.
        self.assertEqual(self.attempts(1, self.stack.token(42)), [Code.RATE_LIMITED])

    def test_a_legitimate_user_from_another_address_logs_in_at_once(self) -> None:
        self.attempts(5, self.forged())
        conn = self.stack.connect(USER)
        self.assertEqual(conn.login(42, 1001).code, Code.OK)

    def test_the_lockout_ends_after_60_seconds(self) -> None:
        self.attempts(5, self.forged())
        self.stack.clock.advance(59)
        self.assertEqual(self.attempts(1, self.stack.token(42)), [Code.RATE_LIMITED])
        self.stack.clock.advance(1)
        self.assertEqual(self.attempts(1, self.stack.token(42)), [Code.OK])

    def test_expired_tokens_do_not_count(self) -> None:
        now = int(self.stack.clock.seconds())
        expired = mint_token("demo-secret-1001", 1001, 42, now - 1)
        self.assertEqual(self.attempts(10, expired), [Code.UNAUTHORIZED] * 10)
        self.assertEqual(self.attempts(1, self.stack.token(42)), [Code.OK])

    def test_bodies_that_do_not_parse_do_not_count(self) -> None:
        conn = self.stack.connect(ATTACKER)
        for _ in range(10):
            conn.send(0x01, b"\xff\xff\xff", uid=42, appcode=1001)
        self.assertEqual(self.attempts(1, self.stack.token(42)), [Code.OK])

    def test_metrics_count_each_throttled_login_by_scope(self) -> None:
        registry = make_registry(self.stack.logic.stats, lambda: 0, lambda: 0,
                                 self.stack.logic.sessions.throttled)
        self.attempts(5, self.forged())
        self.attempts(2, self.stack.token(42))
        text = generate_latest(registry).decode()
        self.assertIn('msgplatform_login_throttled_total{scope="identity"} 2.0', text)
        self.assertIn('msgplatform_login_throttled_total{scope="ip"} 0.0', text)

    def test_a_relogin_with_forged_tokens_counts_too(self) -> None:
        conn = self.stack.connect(ATTACKER)
        self.assertEqual(conn.login(42, 1001).code, Code.OK)
        codes = [conn.login(42, 1001, self.forged()).code for _ in range(6)]
        self.assertEqual(codes, [Code.UNAUTHORIZED] * 5 + [Code.RATE_LIMITED])
