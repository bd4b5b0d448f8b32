# -*- test-case-name: tests.logic.test_inbox -*-
"""PULL (offline messages) and HISTORY (the message list), PROTOCOL.md §6.3."""

from __future__ import annotations

from twisted.logger import Logger

from daojia_msg.config import Limits
from daojia_msg.logic.service import MAX_ID, Session, to_pb
from daojia_msg.logic.stats import Stats
from daojia_msg.protocol import errors
from daojia_msg.protocol.codes import Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from daojia_msg.store.errors import StoreError
from daojia_msg.store.interfaces import IMessageStore


class Inbox:
    log = Logger()

    def __init__(self, store: IMessageStore, limits: Limits, stats: Stats) -> None:
        self.store = store
        self.limits = limits
        self.stats = stats

    def page_limit(self, limit: int) -> int:
        """0 means the default; above the cap is capped, not refused."""
        return min(limit or self.limits.page_default, self.limits.page_cap)

    async def pull(self, session: Session, req: pb.PullRequest) -> pb.PullResponse:
        if req.after_msgid > MAX_ID:  # no message has a larger id
            return pb.PullResponse(code=Code.OK)
        try:
            page = await self.store.pull(
                session.uid, session.appcode, req.after_msgid, self.page_limit(req.limit)
            )
        except StoreError:
            raise errors.Unavailable("message store unavailable") from None
        for msg in page.messages:
            self.stats.add((msg.to_appcode, msg.msgtype, msg.kind), "pulled")
            self.log.debug("{msgid} pulled by {uid}@{appcode}", msgid=msg.msgid, logid=msg.logid,
                           uid=session.uid, appcode=session.appcode)
        return pb.PullResponse(
            code=Code.OK, messages=[to_pb(m) for m in page.messages], has_more=page.has_more
        )

    async def history(self, session: Session, req: pb.HistoryRequest) -> pb.HistoryResponse:
        if req.peer_uid > MAX_ID:  # no such peer
            return pb.HistoryResponse(code=Code.OK)
        before = 0 if req.before_msgid > MAX_ID else req.before_msgid  # every id is below it
        try:
            page = await self.store.history(
                session.usersystem, session.uid, before, self.page_limit(req.limit), req.peer_uid
            )
        except StoreError:
            raise errors.Unavailable("message store unavailable") from None
        return pb.HistoryResponse(
            code=Code.OK, messages=[to_pb(m) for m in page.messages], has_more=page.has_more
        )
