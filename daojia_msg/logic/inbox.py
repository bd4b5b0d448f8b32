# -*- test-case-name: tests.logic.test_service -*-
"""PULL (offline messages) and HISTORY (the message list), docs/protocol.md §6.3.

Each is answered UNAVAILABLE when the message store does not answer within
``store.answer_timeout_s`` (docs/protocol.md §7.4): the read is simply
dropped when it comes late.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from daojia_msg import tracing
from daojia_msg.config import Limits
from daojia_msg.core.convert import MAX_ID, to_pb
from daojia_msg.core.errors import StoreError
from daojia_msg.core.model import Page, StoredMessage
from daojia_msg.logic.answers import Answers
from daojia_msg.logic.interfaces import IMessageStore
from daojia_msg.logic.sessions import Session
from daojia_msg.metrics.delivery import Stats
from daojia_msg.protocol import errors
from daojia_msg.protocol.codes import Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb

#: The message path: stored, pushed, ACKed... (only to the trace file and buffer).
trace = tracing.MESSAGES.logger("daojia_msg.logic.inbox")

#: Bytes of a Pull/HistoryResponse besides its messages (code, reason, has_more),
#: and of each repeated-field entry besides the Message (tag + length varint).
RESPONSE_OVERHEAD = 16
FIELD_OVERHEAD = 4


def _read_timeout() -> errors.Unavailable:
    return errors.Unavailable("the message store did not answer in time")


class Inbox:
    """PULL and HISTORY; with ``answers`` (the node's: ``LogicService.answers``)
    their reads are bounded by its time limit, without it they wait for the store."""

    log = Logger()

    def __init__(self, store: IMessageStore, limits: Limits, stats: Stats,
                 answers: Answers | None = None) -> None:
        self.store = store
        self.limits = limits
        self.stats = stats
        self.answers = answers

    async def _read(self, d: Deferred[Page]) -> Page:
        try:
            if self.answers is not None:
                return await self.answers.bound(d, _read_timeout)
            return await d
        except StoreError:
            raise errors.Unavailable("message store unavailable") from None

    def page_limit(self, limit: int) -> int:
        """0 means the default; above the cap is capped, not refused."""
        return min(limit or self.limits.page_default, self.limits.page_cap)

    async def pull(self, session: Session, req: pb.PullRequest) -> pb.PullResponse:
        if req.after_msgid > MAX_ID:  # no message has a larger id
            return pb.PullResponse(code=Code.OK)
        page = await self._read(self.store.pull(
            session.uid, session.appcode, req.after_msgid, self.page_limit(req.limit)))
        messages, cut = self._fit(page.messages)
        for msg in page.messages[: len(messages)]:  # what the page carries: counted once
            self.stats.add((msg.to_appcode, msg.msgtype, msg.kind), "pulled")
            if tracing.MESSAGES.listeners:
                trace.debug("{msgid} pulled by {uid}@{appcode}", msgid=msg.msgid, logid=msg.logid,
                               uid=session.uid, appcode=session.appcode)
        return pb.PullResponse(code=Code.OK, messages=messages, has_more=page.has_more or cut)

    async def history(self, session: Session, req: pb.HistoryRequest) -> pb.HistoryResponse:
        if req.peer_uid > MAX_ID:  # no such peer
            return pb.HistoryResponse(code=Code.OK)
        before = 0 if req.before_msgid > MAX_ID else req.before_msgid  # every id is below it
        page = await self._read(self.store.history(
            session.usersystem, session.uid, before, self.page_limit(req.limit), req.peer_uid))
        messages, cut = self._fit(page.messages)
        return pb.HistoryResponse(code=Code.OK, messages=messages, has_more=page.has_more or cut)

    def _fit(self, page: list[StoredMessage]) -> tuple[list[pb.Message], bool]:
        """The messages of ``page`` that fit one frame body (``limits.max_body``,
        what clients decode with), and whether some were left for the next page.
        One message always fits: content is at most ``max_content``."""
        out: list[pb.Message] = []
        size = RESPONSE_OVERHEAD
        for msg in page:
            encoded = to_pb(msg)
            n = encoded.ByteSize() + FIELD_OVERHEAD
            if out and size + n > self.limits.max_body:
                return out, True
            out.append(encoded)
            size += n
        return out, False
