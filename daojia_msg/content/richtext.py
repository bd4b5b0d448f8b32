# -*- test-case-name: tests.content.test_richtext -*-
"""Rich text: the markup of rich msgtypes (docs/protocol.md §7.2), parsed strictly.

A document is plain text with character references, ``<font size color>``
around plain text, ``<img url width height />`` and ``<shake />``; anything
else is refused with a :class:`RichTextError` that says what and where. The
parser reads the text once, left to right, with no regular expressions and no
HTML parser (they accept what this grammar refuses). The node only validates:
the content is stored and delivered byte for byte as sent. :func:`render`
turns a document into what a client shows: text runs, images and shakes.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from daojia_msg.content.colors import is_color

#: The longest ``img`` URL, in characters.
MAX_URL = 2048
FONT_SIZES = (8, 72)
IMAGE_SIDE = (1, 4096)
#: Named character references and the characters they stand for.
ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}
SPACE = " \t\n"
#: The digits a numeric reference may have (U+10FFFF is 1114111, 7 digits).
MAX_REF_DIGITS = 8


class RichTextError(ValueError):
    """The content is not valid rich text; the message says why and where."""


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Font:
    text: str
    size: int | None = None
    color: str | None = None


@dataclass(frozen=True, slots=True)
class Image:
    url: str
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True)
class Shake:
    pass


Node = Text | Font | Image | Shake


def validate(content: bytes) -> tuple[Node, ...]:
    """The document ``content`` holds; :class:`RichTextError` when it is not
    UTF-8 rich text."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RichTextError(f"not UTF-8 at byte {e.start}") from None
    return parse(text)


def parse(text: str) -> tuple[Node, ...]:
    """The document ``text`` spells; :class:`RichTextError` when it is not one."""
    return _Parser(text).document()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, why: str, pos: int | None = None) -> RichTextError:
        return RichTextError(f"{why} at character {self.pos if pos is None else pos}")

    def document(self) -> tuple[Node, ...]:
        nodes: list[Node] = []
        while self.pos < len(self.text):
            if self.text[self.pos] == "<":
                nodes.append(self.element())
            else:
                nodes.append(Text(self.chars(inside="text")))
        return tuple(nodes)

    def chars(self, inside: str, stop: str = "<") -> str:
        """Characters up to ``stop`` (not consumed), references decoded."""
        out: list[str] = []
        text, n = self.text, len(self.text)
        while self.pos < n and text[self.pos] not in stop:
            c = text[self.pos]
            if c == "&":
                out.append(self.reference())
            elif c == "<":
                raise self.fail(f"a bare '<' in {inside}")
            else:
                out.append(c)
                self.pos += 1
        return "".join(out)

    def reference(self) -> str:
        start = self.pos
        end = self.text.find(";", start, start + MAX_REF_DIGITS + 3)
        if end < 0:
            raise self.fail("an '&' that starts no reference (&lt; &gt; &amp; &quot; &apos; "
                            "&#N; &#xH;)")
        body = self.text[start + 1:end]
        self.pos = end + 1
        if body in ENTITIES:
            return ENTITIES[body]
        if body.startswith("#x"):
            digits, base = body[2:], 16
            ok = digits != "" and all(c in "0123456789abcdefABCDEF" for c in digits)
        elif body.startswith("#"):
            digits, base = body[1:], 10
            ok = digits != "" and all(c in "0123456789" for c in digits)
        else:
            raise self.fail(f"an unknown reference '&{body};'", start)
        if not ok:
            raise self.fail(f"a malformed numeric reference '&{body};'", start)
        code = int(digits, base)
        allowed = code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0x10FFFF
        if not allowed or 0xD800 <= code <= 0xDFFF:
            raise self.fail(f"'&{body};' names no allowed character", start)
        return chr(code)

    def expect(self, literal: str) -> None:
        if not self.text.startswith(literal, self.pos):
            raise self.fail(f"expected {literal!r}")
        self.pos += len(literal)

    def name(self) -> str:
        """A name as written (any ASCII letters and digits): only the lowercase
        names of the grammar are known."""
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos].isascii() \
                and self.text[self.pos].isalnum():
            self.pos += 1
        return self.text[start:self.pos]

    def skip_space(self) -> bool:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in SPACE:
            self.pos += 1
        return self.pos > start

    def element(self) -> Node:
        start = self.pos
        self.pos += 1  # '<'
        name = self.name()
        if not name:
            raise self.fail("a bare '<' (write &lt;)", start)
        if name not in ("font", "img", "shake"):
            raise self.fail("an element other than <font>, <img /> or <shake />", start)
        attributes = self.attributes(name)
        closed = self.text.startswith("/>", self.pos)
        if not closed and not self.text.startswith(">", self.pos):
            raise self.fail(f"an unfinished <{name}> tag")
        self.pos += 2 if closed else 1
        if name == "font":
            if closed:
                raise self.fail("<font> must enclose text: <font ...>text</font>", start)
            inner = self.chars(inside="<font>")
            self.end_tag("font", start)
            return _font(self, attributes, inner, start)
        if not closed:
            raise self.fail(f"<{name}> must close itself: <{name} ... />", start)
        if name == "shake":
            _known(self, "shake", attributes, (), start)
            return Shake()
        return _image(self, attributes, start)

    def attributes(self, element: str) -> dict[str, str]:
        found: dict[str, str] = {}
        while True:
            spaced = self.skip_space()
            if self.pos >= len(self.text) or self.text[self.pos] in "/>":
                return found
            if not spaced:
                raise self.fail(f"attributes of <{element}> must be separated by white space")
            at = self.pos
            name = self.name()
            if not name:
                raise self.fail(f"a malformed attribute in <{element}>")
            if name in found:
                raise self.fail(f"a duplicate attribute {name!r}", at)
            self.expect('="')
            value = self.chars(inside=f"an attribute of <{element}>", stop='"')
            self.expect('"')
            found[name] = value

    def end_tag(self, name: str, start: int) -> None:
        if self.text.startswith("<", self.pos) and not self.text.startswith("</", self.pos):
            raise self.fail(f"an element inside <{name}>: it holds plain text only")
        if not self.text.startswith(f"</{name}", self.pos):
            raise self.fail(f"<{name}> opened at character {start} is not closed with </{name}>")
        self.pos += len(name) + 2
        self.skip_space()
        self.expect(">")


def _number(parser: _Parser, element: str, name: str, value: str,
            bounds: tuple[int, int], at: int) -> int:
    low, high = bounds
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise parser.fail(f"<{element}> {name} must be an integer from {low} to {high}", at)
    return int(value)


def _known(parser: _Parser, element: str, attributes: dict[str, str], allowed: tuple[str, ...],
           at: int) -> None:
    for name in attributes:
        if name not in allowed:
            raise parser.fail(f"<{element}> has no attribute {name!r}", at)


def _font(parser: _Parser, attributes: dict[str, str], inner: str, at: int) -> Font:
    _known(parser, "font", attributes, ("size", "color"), at)
    size = attributes.get("size")
    color = attributes.get("color")
    if color is not None and not is_color(color):
        raise parser.fail("<font> color must be a CSS colour name, #rgb or #rrggbb", at)
    return Font(inner, None if size is None else _number(parser, "font", "size", size,
                                                          FONT_SIZES, at), color)


def _image(parser: _Parser, attributes: dict[str, str], at: int) -> Image:
    _known(parser, "img", attributes, ("url", "width", "height"), at)
    url = attributes.get("url")
    if url is None:
        raise parser.fail("<img /> needs a url", at)
    if len(url) > MAX_URL:
        raise parser.fail(f"an <img /> url is over {MAX_URL} characters", at)
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise parser.fail("an <img /> url must not hold white space or control characters", at)
    try:
        parts = urlsplit(url)
    except ValueError:
        raise parser.fail("an <img /> url that does not parse", at) from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise parser.fail("an <img /> url must be an absolute http or https URL", at)
    width, height = (None if attributes.get(side) is None else
                     _number(parser, "img", side, attributes[side], IMAGE_SIDE, at)
                     for side in ("width", "height"))
    return Image(url, width, height)


@dataclass(frozen=True, slots=True)
class Run:
    """Text to show as text (never as markup), with its style."""

    text: str
    size: int | None = None
    color: str | None = None


Segment = Run | Image | Shake


def render(document: tuple[Node, ...]) -> list[Segment]:
    """What a client shows for ``document``: text runs, images, shakes."""
    out: list[Segment] = []
    for node in document:
        if isinstance(node, Text):
            out.append(Run(node.text))
        elif isinstance(node, Font):
            out.append(Run(node.text, node.size, node.color))
        else:
            out.append(node)
    return out
