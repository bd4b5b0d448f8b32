# -*- test-case-name: tests.logic.test_escalation,tests.store.test_escalations -*-
"""Offline escalation's records (docs/operations.md §14),
shared by logic's escalator and the schedules that keep them: what is due
when, and a node's claim on an entry while it works on it."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

#: The header that carries the body's signature.
SIGNATURE_HEADER = "X-Msgplatform-Signature"


@dataclass(frozen=True, slots=True)
class Escalation:
    """A push that asked for escalation: due at Unix ms ``due_ms`` (when it
    became durable + ``escalate_after_s``) unless ACKed by then."""

    msgid: int
    to_uid: int
    to_appcode: int
    due_ms: int


@dataclass(frozen=True, slots=True)
class EscalationClaim:
    """An entry a node claimed (a lease until ``leased_until_ms``): ``token``
    proves the claim is still this node's when it finishes or retries it.
    ``first_due_ms`` is the entry's first due time (retries give up an hour
    after it); ``attempts``: POSTs that failed so far."""

    msgid: int
    to_uid: int
    to_appcode: int
    first_due_ms: int
    attempts: int
    token: str
    leased_until_ms: int


@dataclass(frozen=True, slots=True)
class Escalated:
    """An escalation as its receiver reads it (the POST's JSON, checked):
    the message its recipient did not ACK in time."""

    msgid: int
    logid: str
    to_uid: int
    to_appcode: int
    msgtype: int
    content: bytes


def signature(secret: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``body`` keyed by the app's ``secret``."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, given: str | bytes) -> bool:
    """Whether ``given`` (the header's value) is the signature of ``body``
    (constant time): what a receiver does. A value that is not ASCII is no
    signature (``compare_digest`` would raise on it, not answer False)."""
    if isinstance(given, str):
        try:
            given = given.encode("ascii")
        except UnicodeEncodeError:
            return False
    return hmac.compare_digest(signature(secret, body).encode("ascii"), given)
