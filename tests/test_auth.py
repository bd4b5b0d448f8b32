"""Tests for :mod:`daojia_msg.auth`: login tokens of docs/protocol.md §5."""

from __future__ import annotations

import hashlib
import hmac
import re

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.auth import MAX_TOKEN_LEN, TokenError, mint_token, verify_token

SECRET = "s3cr3t-Of-app-1001-\u00e9"  # non-ASCII: the key is the secret's UTF-8
APPCODE = 1001
UID = 123456789012
EXPIRES = 1700003600
NOW = 1700000000.0


def reference_token(secret: str, appcode: int, uid: int, expires_at: int) -> str:
    """The token as an app server in any language would make it, from the spec alone."""
    mac = hmac.new(
        secret.encode("utf-8"), f"{appcode}:{uid}:{expires_at}".encode("ascii"), hashlib.sha256
    )
    return f"{expires_at}:{mac.hexdigest()}"


class MintTests(SynchronousTestCase):
    def test_format(self) -> None:
        token = mint_token(SECRET, APPCODE, UID, EXPIRES)
        self.assertRegex(token, r"\A[0-9]+:[0-9a-f]{64}\Z")
        self.assertTrue(token.startswith(f"{EXPIRES}:"))
        self.assertLessEqual(len(token), MAX_TOKEN_LEN)

    def test_matches_independent_hmac(self) -> None:
        for secret, appcode, uid, expires in (
            (SECRET, APPCODE, UID, EXPIRES),
            ("another-secret", 1, 0, 0),
            ("k" * 64, 2**32 - 1, 2**64 - 1, 999999999999),
        ):
            self.assertEqual(
                mint_token(secret, appcode, uid, expires),
                reference_token(secret, appcode, uid, expires),
            )

    def test_known_vector(self) -> None:
        # Fixed by hand from the spec, so a change of message layout or hash shows up here.
        expected = hmac.new(b"key-key-key", b"1001:42:1700000000", hashlib.sha256).hexdigest()
        self.assertEqual(mint_token("key-key-key", 1001, 42, 1700000000), "1700000000:" + expected)


class VerifyTests(SynchronousTestCase):
    def assertRefused(
        self,
        token: str,
        *,
        secret: str = SECRET,
        appcode: int = APPCODE,
        uid: int = UID,
        now: float = NOW,
    ) -> TokenError:
        exc = self.assertRaises(TokenError, verify_token, secret, appcode, uid, token, now)
        self.assertNotIn(secret, str(exc))
        self.assertNotIn(mint_token(secret, appcode, uid, EXPIRES).partition(":")[2], str(exc))
        return exc

    def test_round_trip(self) -> None:
        token = mint_token(SECRET, APPCODE, UID, EXPIRES)
        self.assertEqual(verify_token(SECRET, APPCODE, UID, token, NOW), EXPIRES)
        self.assertEqual(verify_token(SECRET, APPCODE, UID, token, EXPIRES - 0.001), EXPIRES)

    def test_reference_token_verifies(self) -> None:
        token = reference_token(SECRET, APPCODE, UID, EXPIRES)
        self.assertEqual(verify_token(SECRET, APPCODE, UID, token, NOW), EXPIRES)

    def test_expired(self) -> None:
        token = mint_token(SECRET, APPCODE, UID, EXPIRES)
        exc = self.assertRefused(token, now=EXPIRES)
        self.assertEqual(str(exc), "token expired")
        self.assertRefused(token, now=EXPIRES + 0.5)
        self.assertRefused(token, now=EXPIRES + 86400)

    def test_forged_mac(self) -> None:
        token = mint_token(SECRET, APPCODE, UID, EXPIRES)
        last = token[-1]
        forged = token[:-1] + ("0" if last != "0" else "1")
        self.assertEqual(str(self.assertRefused(forged)), "bad token")
        self.assertRefused(token[:-1])
        self.assertRefused(token + "0")
        self.assertRefused(f"{EXPIRES}:" + "0" * 64)

    def test_uppercase_hex_refused(self) -> None:
        token = mint_token(SECRET, APPCODE, UID, EXPIRES)
        expires, _, mac = token.partition(":")
        self.assertNotEqual(mac, mac.upper())
        self.assertRefused(f"{expires}:{mac.upper()}")

    def test_extended_expiry_refused(self) -> None:
        mac = mint_token(SECRET, APPCODE, UID, EXPIRES).partition(":")[2]
        self.assertRefused(f"{EXPIRES + 86400}:{mac}")

    def test_other_uid(self) -> None:
        token = mint_token(SECRET, APPCODE, UID, EXPIRES)
        self.assertRefused(token, uid=UID + 1)
        self.assertRefused(token, uid=0)

    def test_other_appcode(self) -> None:
        token = mint_token(SECRET, APPCODE, UID, EXPIRES)
        self.assertRefused(token, appcode=1002)

    def test_other_secret(self) -> None:
        token = mint_token(SECRET, APPCODE, UID, EXPIRES)
        self.assertRefused(token, secret="another-secret")
        self.assertRefused(mint_token("another-secret", APPCODE, UID, EXPIRES))

    def test_ambiguous_fields_refused(self) -> None:
        # "1:23" + ":" + ... is not "12:3": the appcode/uid split is part of the message.
        token = mint_token(SECRET, 1, 23, EXPIRES)
        self.assertRefused(token, appcode=12, uid=3)

    def test_malformed(self) -> None:
        mac = mint_token(SECRET, APPCODE, UID, EXPIRES).partition(":")[2]
        for token in (
            "",
            "abc",
            "123",
            ":",
            "12:zz",
            ":" + mac,
            "-5:" + mac,
            "+5:" + mac,
            " 1700003600:" + mac,
            "1700003600 :" + mac,
            "1.5:" + mac,
            "1e9:" + mac,
            "9" * 13 + ":" + mac,  # expires_at over 12 digits
            "1:" + "a" * MAX_TOKEN_LEN,  # overlong
            "1" * 10000,
            "\u00b2:" + mac,  # superscript two: isdigit() but not a number
            "1:\ud800",  # lone surrogate
            "1700003600:" + mac + "\x00",
        ):
            exc = self.assertRefused(token)
            self.assertIn(str(exc), {"malformed token", "bad token", "token expired"}, repr(token))

    def test_non_ascii_digits_refused(self) -> None:
        """Arabic-Indic digits are digits to str.isdigit(), but a token is ASCII only."""
        good = mint_token(SECRET, APPCODE, UID, EXPIRES)
        expires, _, mac = good.partition(":")
        arabic = "".join(chr(0x0660 + int(c)) for c in expires)
        exc = self.assertRefused(f"{arabic}:{mac}")
        self.assertEqual(str(exc), "malformed token")

    def test_reasons(self) -> None:
        self.assertEqual(str(self.assertRefused("abc")), "malformed token")
        self.assertEqual(str(self.assertRefused("1:" + "0" * 200)), "malformed token")
        self.assertEqual(str(self.assertRefused("12:zz")), "bad token")

    def test_reason_never_contains_secret(self) -> None:
        secret = "TopSecretValue-42"
        good = mint_token(secret, APPCODE, UID, EXPIRES)
        for token, now, uid in (
            (good, EXPIRES + 1, UID),
            (good, NOW, UID + 1),
            ("garbage", NOW, UID),
            (good[:-2], NOW, UID),
        ):
            exc = self.assertRaises(TokenError, verify_token, secret, APPCODE, uid, token, now)
            self.assertNotIn(secret, str(exc))
            self.assertNotIn(good.partition(":")[2], str(exc))
            self.assertIsNone(re.search(r"[0-9a-f]{16}", str(exc)))
            self.assertNotIn(secret, repr(exc))
