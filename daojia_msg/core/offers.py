# -*- test-case-name: tests.logic.test_offers -*-
"""Nearby order offers: what an offer is, as logic and the offer stores share it.

An offer is pushed wave by wave to the nearest online uids of one appcode
until one of them accepts it or its accept deadline passes
(:mod:`daojia_msg.logic.offers`). Its state goes ``open`` -> ``accepted`` or
``open`` -> ``expired``, once; the outcome is then told to every recipient and
published on the bus (``notified`` records that it was).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

#: The states of an offer, as ``GET /v1/offers/{id}`` names them.
OPEN, ACCEPTED, EXPIRED = "open", "accepted", "expired"
#: How long an offer is kept after its deadline (``GET /v1/offers/{id}``
#: answers it until then, 404 after).
KEEP_S = 86_400


@dataclass(frozen=True, slots=True)
class Wave:
    """Push to up to ``count`` online uids within ``radius_m`` not reached
    yet, ``after_s`` seconds after the offer was created."""

    radius_m: float
    count: int
    after_s: float


@dataclass(frozen=True, slots=True)
class NewOffer:
    """An offer as created (``POST /v1/offers``): never changes."""

    offer_id: int
    appcode: int
    lat: float
    lon: float
    msgtype: int
    content: bytes
    logid: str
    #: By ``after_s``, earliest first.
    waves: tuple[Wave, ...]
    created_ms: int
    deadline_ms: int

    def wave_due_ms(self, k: int) -> int:
        """When wave ``k`` is due; past the last wave, the deadline."""
        if k < len(self.waves):
            return self.created_ms + round(self.waves[k].after_s * 1000)
        return self.deadline_ms

    def waves_json(self) -> str:
        return json.dumps([[w.radius_m, w.count, w.after_s] for w in self.waves])


def waves_from_json(text: str | bytes) -> tuple[Wave, ...]:
    return tuple(Wave(float(r), int(c), float(a)) for r, c, a in json.loads(text))


@dataclass(frozen=True, slots=True)
class Offer:
    """An offer as stored now."""

    spec: NewOffer
    state: str
    winner_uid: int | None
    #: Every uid a wave pushed it to, in push order.
    pushed_to: tuple[int, ...]
    #: The next wave to run (``len(spec.waves)``: none left).
    next_wave: int
    #: A wave that was recorded but may not be pushed yet (its node may have
    #: died): -1 none, else its index; ``wave_uids`` are its recipients.
    pushing: int
    wave_uids: tuple[int, ...]
    #: The outcome (accepted or expired) was told and published.
    notified: bool

    def state_at(self, now_ms: int) -> str:
        """The state as answered: an open offer past its deadline is expired
        even before a node's ticker has recorded it so."""
        if self.state == OPEN and now_ms >= self.spec.deadline_ms:
            return EXPIRED
        return self.state


class AcceptResult(enum.Enum):
    """What an accept found (:meth:`IOfferStore.accept`)."""

    #: The first accept: the offer is now ``accepted`` by this uid.
    WON = "won"
    #: The winner accepting again (its Result was lost): OK, nothing changes.
    AGAIN = "again"
    TAKEN = "offer taken"
    NOT_OFFERED = "not offered"
    EXPIRED = "offer expired"
