"""The customer-service console in a real browser (Chromium via Playwright).

An agent logs in on the console page (a demo token), chats with a phone on the
TCP gate both ways, sees hostile content as text only, and catches up after a
dropped connection without showing a message twice. Screenshots of each test
are kept (see :func:`tests.browser.driver.screenshot_path`).
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from daojia_msg.client.errors import ResultError
from daojia_msg.content import richtext
from daojia_msg.protocol.codes import Code
from tests.browser.driver import Browser
from tests.gate.wshelpers import WSNodeTestCase
from tests.servers import TrackingProxyFactory, listen

R: Any = reactor
AGENT, AGENT_APP = 9000, 1002
PHONE, PHONE_APP = 7, 1001
RICH = 10
PEER = f'[data-testid="conversation"][data-peer="{PHONE}:{PHONE_APP}"]'
MESSAGE = '[data-testid="message"]'


class ConsoleTestCase(WSNodeTestCase):
    timeout = 120

    async def open_console(self, port: int) -> Browser:
        """A browser with the console of the listener on ``port``, logged in
        as the agent with a demo token, connected."""
        browser = await Browser.start(self)
        self.browser = browser
        await browser.call("goto", page="agent", url=f"http://127.0.0.1:{port}/console/")
        await browser.call("fill", page="agent", selector='[data-testid="login-appcode"]',
                           value=str(AGENT_APP))
        await browser.call("fill", page="agent", selector='[data-testid="login-uid"]',
                           value=str(AGENT))
        await browser.call("click", page="agent", selector='[data-testid="login-submit"]')
        await self.status("connected")
        return browser

    async def status(self, state: str) -> None:
        await self.browser.call("waitFor", page="agent",
                                selector=f'[data-testid="status"][data-status="{state}"]')

    async def open_conversation(self) -> None:
        await self.browser.call("click", page="agent", selector=PEER)
        await self.browser.call("waitFor", page="agent",
                                selector=f'[data-testid="chat-peer"][data-peer="{PHONE}:{PHONE_APP}"]')

    async def message_texts(self) -> list[str]:
        texts: list[str] = await self.browser.call("texts", page="agent",
                                                   selector=f'{MESSAGE} .text, {MESSAGE}')
        return texts

    async def count(self, selector: str) -> int:
        n: int = await self.browser.call("count", page="agent", selector=selector)
        return n

    async def no_page_errors(self) -> None:
        errors = await self.browser.call("errors", page="agent")
        self.assertEqual([e for e in errors if "WebSocket" not in e and "ERR_" not in e], [])


class ChatTests(ConsoleTestCase):
    async def test_agent_and_phone_chat_both_ways(self) -> None:
        """A rich message from a phone shows styled in the console, unread until
        opened; the agent's answer reaches the phone byte for byte."""
        await self.start_node()
        browser = await self.open_console(self.port("ws"))
        phone, inbox = await self.client(PHONE, PHONE_APP)

        rich = b'hello <font size="20" color="red">agent</font> &amp; <shake />'
        sent = await phone.c2c(AGENT, AGENT_APP, RICH, rich)
        await browser.call("waitFor", page="agent", selector=f'{PEER} [data-testid="unread"]',
                           text="1")
        await self.open_conversation()
        bubble = f'{MESSAGE}[data-msgid="{sent.msgid}"]'
        await browser.call("waitFor", page="agent", selector=bubble, text="hello agent & ")
        font = await browser.call("evaluate", page="agent", arg=str(sent.msgid), expression="""
            (msgid) => {
              const el = document.querySelector(
                `[data-testid="message"][data-msgid="${msgid}"] span.rt-font`);
              const style = getComputedStyle(el);
              return {text: el.textContent, color: style.color, size: style.fontSize};
            }""")
        self.assertEqual(font, {"text": "agent", "color": "rgb(255, 0, 0)", "size": "20px"})
        self.assertEqual(await self.count(f"{bubble} span.rt-shake"), 1)
        self.assertEqual(await self.count(f'{PEER} [data-testid="unread"]:visible'), 0)

        answer = "hi, this is the agent: your car wash is at 3 pm"
        await browser.call("fill", page="agent", selector='[data-testid="composer-input"]',
                           value=answer)
        await browser.call("click", page="agent", selector='[data-testid="send-button"]')
        [received] = await inbox.wait(1)
        self.assertEqual((received.from_uid, received.from_appcode, received.msgtype),
                         (AGENT, AGENT_APP, RICH))
        self.assertEqual(received.content, answer.encode())
        await browser.call("waitFor", page="agent",
                           selector=f'{MESSAGE}[data-msgid="{received.msgid}"][data-state="sent"]')
        await browser.screenshot("agent", "console-chat")
        await self.no_page_errors()

    async def test_hostile_content_never_executes(self) -> None:
        """Script, ``javascript:`` URLs and event handlers sent on a plain
        msgtype are shown as text; on the rich msgtype the node refuses them."""
        await self.start_node()
        browser = await self.open_console(self.port("ws"))
        phone, _ = await self.client(PHONE, PHONE_APP)
        hostile = [
            b"<script>window.__pwned = 1</script>",
            b'<img src="x" onerror="window.__pwned = 2">',
            b'<img url="javascript:window.__pwned = 3" />',
            b'<font size="12" onmouseover="window.__pwned = 4">hover</font>',
            b'<a href="javascript:window.__pwned = 5">click</a>',
        ]
        for content in hostile:
            try:
                await phone.c2c(AGENT, AGENT_APP, RICH, content)
            except ResultError as refused:
                self.assertEqual(refused.code, Code.BAD_REQUEST, content)
            else:
                self.fail(f"the node took {content!r} as rich content")
        msgids = [(await phone.c2c(AGENT, AGENT_APP, 5, content)).msgid for content in hostile]
        await browser.call("waitFor", page="agent", selector=PEER)
        await self.open_conversation()
        for msgid, content in zip(msgids, hostile, strict=True):
            await browser.call("waitFor", page="agent",
                               selector=f'{MESSAGE}[data-msgid="{msgid}"]', text=content.decode())
        # Hover and click everything in the conversation, then look for effects.
        for selector in (f"{MESSAGE} *", MESSAGE):
            for i in range(await self.count(selector)):
                await browser.call("evaluate", page="agent", arg=[selector, i], expression="""
                    ([selector, i]) => {
                      const el = document.querySelectorAll(selector)[i];
                      for (const type of ["mouseover", "click", "error", "load"])
                        el.dispatchEvent(new Event(type, {bubbles: true}));
                    }""")
        found = await browser.call("evaluate", page="agent", expression="""
            () => {
              const list = document.querySelector('[data-testid="messages"]');
              const handlers = [...list.querySelectorAll("*")].filter(
                el => [...el.attributes].some(a => a.name.startsWith("on")));
              return {
                pwned: window.__pwned ?? null,
                scripts: list.querySelectorAll("script").length,
                handlers: handlers.length,
                images: [...list.querySelectorAll("img")].map(img => img.getAttribute("src")),
                links: [...list.querySelectorAll("a")].map(a => a.getAttribute("href")),
              };
            }""")
        self.assertEqual(found, {"pwned": None, "scripts": 0, "handlers": 0, "images": [],
                                 "links": []})
        await browser.screenshot("agent", "console-hostile")
        await self.no_page_errors()


class ReconnectTests(ConsoleTestCase):
    async def test_reconnect_catches_up_without_duplicates(self) -> None:
        """A message pushed but never ACKed (the ACK was lost with the
        connection) comes again in the PULL after the reconnect, and one sent
        while the agent was away comes with it: each is shown once."""
        await self.start_node()
        proxy = TrackingProxyFactory("127.0.0.1", self.port("ws"))
        listening = R.listenTCP(0, proxy, interface="127.0.0.1")
        # Whichever port listens at the end (a skip below comes before the second).
        self.addCleanup(lambda: listening.stopListening() if listening.connected else None)
        port = listening.getHost().port
        browser = await self.open_console(port)
        phone, _ = await self.client(PHONE, PHONE_APP)

        first = await phone.c2c(AGENT, AGENT_APP, RICH, b"one: delivered and ACKed")
        await browser.call("waitFor", page="agent", selector=PEER)
        await self.open_conversation()
        await browser.call("waitFor", page="agent", selector=f'{MESSAGE}[data-msgid="{first.msgid}"]')

        for server in proxy.servers:  # from now on, nothing the browser sends arrives
            server.dataReceived = lambda data: None  # type: ignore[method-assign]
        second = await phone.c2c(AGENT, AGENT_APP, RICH, b"two: shown, its ACK lost")
        await browser.call("waitFor", page="agent", selector=f'{MESSAGE}[data-msgid="{second.msgid}"]')

        await listening.stopListening()  # the agent's network goes away
        for server in proxy.servers:
            server.transport.abortConnection()
        await self.status("reconnecting")
        third = await phone.c2c(AGENT, AGENT_APP, RICH, b"three: sent while away")

        listening = R.listenTCP(port, proxy, interface="127.0.0.1")  # it comes back
        await self.status("connected")
        await browser.call("waitFor", page="agent", selector=f'{MESSAGE}[data-msgid="{third.msgid}"]')
        for sent in (first, second, third):
            self.assertEqual(await self.count(f'{MESSAGE}[data-msgid="{sent.msgid}"]'), 1)
        self.assertEqual(await self.count(f'{MESSAGE}[data-direction="in"]'), 3)
        await browser.screenshot("agent", "console-reconnected")


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A one-colour PNG image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack("!I", len(data)) + body + struct.pack("!I", zlib.crc32(body))

    rows = b"".join(b"\0" + bytes(rgb) * width for _ in range(height))
    header = struct.pack("!IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


class RichContentTests(ConsoleTestCase):
    def image_server(self) -> str:
        """The URL of a PNG served on this machine."""
        root = Resource()
        root.putChild(b"car.png", Data(png(64, 32, (0, 128, 255)), "image/png"))
        _, port = listen(self, Site(root))
        return f"http://127.0.0.1:{port}/car.png"

    async def test_every_rich_form_renders(self) -> None:
        """Entities and numeric references, <font> with each kind of size and
        colour, <img> with and without its size, <shake /> (which shakes)."""
        await self.start_node()
        browser = await self.open_console(self.port("ws"))
        phone, _ = await self.client(PHONE, PHONE_APP)
        url = self.image_server()
        content = (
            '&lt;b&gt; &quot;q&quot; &apos;a&apos; &amp; &#65;&#x42;&#x1F600; '
            '<font size="8">tiny</font><font color="#0a0">short</font>'
            '<font color="#123456">long</font><font color="RebeccaPurple" size="72">big</font>'
            f'<font>plain</font><img url="{url}" width="64" height="32"/>'
            f'<img  url="{url}?again"\t/><shake/>'
        ).encode()
        sent = await phone.c2c(AGENT, AGENT_APP, RICH, content)
        await browser.call("waitFor", page="agent", selector=PEER)
        await self.open_conversation()
        bubble = f'{MESSAGE}[data-msgid="{sent.msgid}"]'
        await browser.call("waitFor", page="agent", selector=f"{bubble} img.rt-img", count=2)
        await browser.call("waitFor", page="agent", selector="img.rt-img", count=2,
                           state="visible")
        found = await browser.call("evaluate", page="agent", arg=str(sent.msgid), expression="""
            (msgid) => {
              const bubble = document.querySelector(
                `[data-testid="message"][data-msgid="${msgid}"]`);
              const fonts = [...bubble.querySelectorAll("span.rt-font")].map(el => {
                const style = getComputedStyle(el);
                return [el.textContent, style.fontSize, style.color];
              });
              const images = [...bubble.querySelectorAll("img.rt-img")].map(
                img => [img.getAttribute("src"), img.width, img.height, img.naturalWidth]);
              return {
                fonts, images,
                shakes: bubble.querySelectorAll("span.rt-shake").length,
                base: [getComputedStyle(bubble).fontSize, getComputedStyle(bubble).color],
              };
            }""")
        size, colour = found["base"]  # the bubble's own, where the markup sets none
        self.assertEqual(found["fonts"], [
            ["tiny", "8px", colour],
            ["short", size, "rgb(0, 170, 0)"],
            ["long", size, "rgb(18, 52, 86)"],
            ["big", "72px", "rgb(102, 51, 153)"],
        ])
        self.assertNotIn(size, ("8px", "72px"))
        self.assertEqual(found["images"], [[url, 64, 32, 64], [f"{url}?again", 64, 32, 64]])
        self.assertEqual(found["shakes"], 1)
        whole = await browser.call("texts", page="agent", selector=bubble)
        self.assertIn("<b> \"q\" 'a' & AB\U0001F600 tinyshortlongbigplain", whole[0])
        await browser.screenshot("agent", "console-rich-forms")

    async def test_agent_sends_rich_content(self) -> None:
        """The composer's size, colour, image and shake make markup that the
        node takes and the phone receives."""
        await self.start_node()
        browser = await self.open_console(self.port("ws"))
        phone, inbox = await self.client(PHONE, PHONE_APP)
        url = self.image_server()
        await phone.c2c(AGENT, AGENT_APP, RICH, b"hello")
        await browser.call("waitFor", page="agent", selector=PEER)
        await self.open_conversation()
        await browser.call("select", page="agent", selector='[data-testid="composer-size"]',
                           value="24")
        await browser.call("select", page="agent", selector='[data-testid="composer-color"]',
                           value="teal")
        await browser.call("fill", page="agent", selector='[data-testid="composer-image-url"]',
                           value=url)
        await browser.call("click", page="agent", selector='[data-testid="composer-image-add"]')
        await browser.call("click", page="agent", selector='[data-testid="composer-shake"]')
        await browser.call("fill", page="agent", selector='[data-testid="composer-input"]',
                           value="your <car> is clean & ready")
        await browser.call("waitFor", page="agent",
                           selector='[data-testid="composer-preview"] span.rt-font',
                           text="your <car> is clean & ready")
        await browser.screenshot("agent", "console-composer")
        await browser.call("click", page="agent", selector='[data-testid="send-button"]')
        [received] = await inbox.wait(1)
        self.assertEqual(received.msgtype, RICH)
        document = richtext.validate(received.content)
        self.assertEqual(
            [node for node in document if not isinstance(node, richtext.Text)
             or node.text.strip()],
            [richtext.Shake(), richtext.Font("your <car> is clean & ready", 24, "teal"),
             richtext.Image(url)])
        await browser.call("waitFor", page="agent",
                           selector=f'{MESSAGE}[data-msgid="{received.msgid}"] img.rt-img')
        await browser.screenshot("agent", "console-rich-sent")
