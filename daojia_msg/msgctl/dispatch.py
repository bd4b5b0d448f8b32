# -*- test-case-name: tests.msgctl.test_dispatch -*-
"""``msgctl offer``: offer an order near a point in waves and follow it.

It creates the offer (``POST /v1/offers``), then reads it back (``GET
/v1/offers/{id}``) every ``--poll`` seconds until it is accepted or
expired, and prints each wave's recipients as they appear, with their
distance from the point (``GET /v1/nearby``, when they are still on the
map), then who won. The API says who was pushed the offer, not in which
wave: a uid is counted in the last wave due when it first appears in
``pushed_to`` (waves push within a second of their time, so waves less than
a second or a poll apart may be told apart wrongly).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from twisted.internet.task import deferLater

from daojia_msg.msgctl.common import CliError, Ctx
from daojia_msg.msgctl.demoargs import DEFAULT_WAVES, MAX_WAVES, Wave
from daojia_msg.msgctl.httpapi import _api_key, _http

#: How long after the deadline an offer still "open" is waited for (it
#: expires within 1 s of its deadline).
EXPIRY_GRACE_S = 3.0
#: GET /v1/nearby answers at most this many.
NEARBY_LIMIT = 100


def wave_of(waves: tuple[Wave, ...], elapsed_s: float) -> int:
    """The index of the last wave due ``elapsed_s`` seconds after the creation."""
    due = [i for i, w in enumerate(waves) if w.after_s <= elapsed_s]
    return due[-1] if due else 0


@dataclass
class Follow:
    """What has been seen of one offer: who was pushed it, by wave."""

    waves: tuple[Wave, ...]
    seen: set[int] = field(default_factory=set)
    by_wave: dict[int, list[int]] = field(default_factory=dict)

    def new(self, pushed_to: list[Any]) -> list[int]:
        """The uids of ``pushed_to`` not seen before, in its order."""
        fresh = []
        for uid in pushed_to:
            if isinstance(uid, int) and uid not in self.seen:
                self.seen.add(uid)
                fresh.append(uid)
        return fresh

    def place(self, uids: list[int], elapsed_s: float) -> int:
        k = wave_of(self.waves, elapsed_s)
        self.by_wave.setdefault(k, []).extend(uids)
        return k


def _body(ctx: Ctx, waves: tuple[Wave, ...]) -> dict[str, Any]:
    a = ctx.args
    content = " ".join(a.text) or f"new order near {a.lat},{a.lon}"
    return {"appcode": a.appcode, "lat": a.lat, "lon": a.lon, "msgtype": a.msgtype,
            "content": content, "waves": [w.as_json() for w in waves],
            "accept_deadline_s": a.deadline}


def _check(waves: tuple[Wave, ...], deadline: float) -> None:
    if len(waves) > MAX_WAVES:
        raise CliError(f"--wave: at most {MAX_WAVES} waves, got {len(waves)}", 2)
    late = [w for w in waves if w.after_s >= deadline]
    if late:
        raise CliError(f"--wave: every wave must start before --deadline {deadline:g} s "
                       f"(one starts after {late[0].after_s:g} s)", 2)


async def _distances(ctx: Ctx, key: str, radius_m: float) -> dict[int, float]:
    """uid -> metres from the offer's point, of the drivers on the map now
    (empty if the query fails: the distances are a nicety)."""
    a = ctx.args
    query = urlencode({"appcode": a.appcode, "lat": a.lat, "lon": a.lon,
                       "radius_m": radius_m, "limit": NEARBY_LIMIT})
    try:
        found = json.loads(await _http(ctx, "GET", f"/v1/nearby?{query}", key))
        return {d["uid"]: d["distance_m"] for d in found["drivers"]}
    except (CliError, ValueError, KeyError, TypeError):
        return {}


async def cmd_offer(ctx: Ctx) -> int:
    a = ctx.args
    waves = tuple(a.wave or DEFAULT_WAVES)
    _check(waves, a.deadline)
    key = _api_key(a.api_key, a.appcode)
    created = json.loads(await _http(ctx, "POST", "/v1/offers", key, _body(ctx, waves)))
    start = ctx.reactor.seconds()
    offer_id = str(created["offer_id"])
    ctx.say(f"offer {offer_id} (logid {created.get('logid', '')}) near {a.lat},{a.lon} on app "
            f"{a.appcode}: {len(waves)} wave(s), accept deadline {a.deadline:g} s")
    for i, w in enumerate(waves, 1):
        ctx.say(f"  wave {i}: up to {w.count} driver(s) within {w.radius_m:g} m "
                f"at +{w.after_s:g} s")
    follow = Follow(waves)
    path = f"/v1/offers/{quote(offer_id, safe='')}"
    widest = max(w.radius_m for w in waves)
    while True:
        state = json.loads(await _http(ctx, "GET", path, key))
        elapsed = ctx.reactor.seconds() - start
        fresh = follow.new(state.get("pushed_to") or [])
        if fresh:
            k = follow.place(fresh, elapsed)
            away = await _distances(ctx, key, widest)
            who = ", ".join(f"{uid} ({away[uid]:.0f} m)" if uid in away else str(uid)
                            for uid in fresh)
            ctx.say(f"wave {k + 1} (+{elapsed:.1f} s): pushed to {who}")
        if state.get("state") != "open":
            return _outcome(ctx, state, follow, elapsed)
        if elapsed > a.deadline + EXPIRY_GRACE_S:
            raise CliError(f"offer {offer_id} is still open {elapsed:.0f} s after its creation, "
                           f"past its deadline ({a.deadline:g} s)")
        await deferLater(ctx.reactor, a.poll, lambda: None)


def _outcome(ctx: Ctx, state: dict[str, Any], follow: Follow, elapsed: float) -> int:
    reached = len(follow.seen)
    waves = len(follow.by_wave)
    pushed = f"pushed to {reached} driver(s) in {waves} wave(s)"
    if state.get("state") == "accepted":
        winner = state.get("winner_uid")
        wave = next((k + 1 for k, uids in follow.by_wave.items() if winner in uids), None)
        ctx.say(f"won by driver {winner}" + (f" (wave {wave})" if wave else "")
                + f", seen at +{elapsed:.1f} s; {pushed}")
        return 0
    if state.get("state") == "expired":
        ctx.say(f"expired: nobody accepted in time; {pushed}")
        return 0
    raise CliError(f"unexpected offer state {state.get('state')!r}")
