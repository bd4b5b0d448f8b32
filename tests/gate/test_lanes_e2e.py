"""Priority lanes over real sockets: a driver whose phone stops reading while
chat piles up gets the new order before the chat that queued before it."""

from __future__ import annotations

import socket
from dataclasses import replace
from typing import Any

from daojia_msg.config import ListenConfig, default_config
from tests.nodes import NodeTestCase

ORDER, CHAT = 5, 7
#: Enough chat to fill the socket's buffers (both kernels', made small, and
#: the transport's 64 KiB).
CHATS, CHAT_BYTES = 40, 8_000


def buffers(protocol: Any, size: int) -> None:
    """Set a connection's kernel send and receive buffers."""
    handle = protocol.transport.getHandle()
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        handle.setsockopt(socket.SOL_SOCKET, option, size)


class SlowReaderTests(NodeTestCase):
    async def test_an_order_overtakes_queued_chat(self) -> None:
        config = default_config()
        apps = dict(config.apps)
        apps[1001] = replace(apps[1001], priority_msgtypes=frozenset({ORDER}))
        node = await self.run_node(config.replace(
            apps=apps, data_dir=self.mktemp(),
            listen=ListenConfig(gate="tcp:0:interface=127.0.0.1",
                                http="tcp:0:interface=127.0.0.1")))
        merchant, _ = await self.client(1)
        driver, inbox = await self.client(2)
        phone = await driver._service.whenConnected()
        [gate] = [c for c in node.gate.connections if c.session and c.session.uid == 2]
        # Small kernel buffers on both ends: the node's side congests after
        # ~100 KB rather than megabytes.
        buffers(phone, 4096)
        buffers(gate, 4096)
        phone.transport.pauseProducing()  # the phone stops reading its socket
        for i in range(CHATS):
            await merchant.c2c(2, 1001, CHAT, b"%04d" % i + b"." * CHAT_BYTES)
        await merchant.c2c(2, 1001, ORDER, b"new order")
        self.assertTrue(gate._lanes, "the driver's socket never congested: the test proves nothing")
        buffers(phone, 1 << 20)  # reading again, at full speed (a 4 KiB window crawls)
        buffers(gate, 1 << 20)
        phone.transport.resumeProducing()
        await inbox.wait(CHATS + 1)
        order = next(i for i, m in enumerate(inbox.messages) if m.msgtype == ORDER)
        chats_after = [m for m in inbox.messages[order:] if m.msgtype == CHAT]
        self.assertGreater(len(chats_after), 0)  # it overtook chat sent before it
        numbers = [int(m.content[:4]) for m in inbox.messages if m.msgtype == CHAT]
        self.assertEqual(numbers, list(range(CHATS)))  # chat keeps its own order
