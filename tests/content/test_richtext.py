"""Rich text (docs/protocol.md §7.2): every form the grammar allows is accepted
and renders to text, images and shakes; everything else is refused, saying why.
Property tests (hypothesis) generate both."""

from __future__ import annotations

import html

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.content.colors import NAMES, is_color
from daojia_msg.content.richtext import (
    Font,
    Image,
    RichTextError,
    Run,
    Shake,
    Text,
    parse,
    render,
    validate,
)


class AcceptedFormsTests(SynchronousTestCase):
    def test_plain_text_and_references(self) -> None:
        self.assertEqual(parse(""), ())
        self.assertEqual(parse("a &lt;b&gt; &amp; &quot;c&quot; &apos;d&apos; &#65;&#x42;&#x1F600;"),
                         (Text("a <b> & \"c\" 'd' AB\U0001F600"),))
        self.assertEqual(parse("tab\there\nnew line &#9;&#10;&#13;"), (Text("tab\there\nnew line \t\n\r"),))

    def test_font_with_either_or_both_attributes(self) -> None:
        self.assertEqual(parse('<font size="8" color="#abc">x</font>'), (Font("x", 8, "#abc"),))
        self.assertEqual(parse('<font\tcolor="RebeccaPurple"\n size="72" >y</font >'),
                         (Font("y", 72, "RebeccaPurple"),))
        self.assertEqual(parse("<font>plain</font>"), (Font("plain"),))
        self.assertEqual(parse('<font color="#A0b1C2"></font>'), (Font("", None, "#A0b1C2"),))

    def test_images_and_shakes(self) -> None:
        url = "https://img.example.com/a.png?x=1&amp;y=2"
        self.assertEqual(parse(f'<img url="{url}" width="1" height="4096" />'),
                         (Image("https://img.example.com/a.png?x=1&y=2", 1, 4096),))
        self.assertEqual(parse('<img url="http://a.b/c"/>'), (Image("http://a.b/c"),))
        self.assertEqual(parse("<shake /><shake/><shake\n/>"), (Shake(), Shake(), Shake()))

    def test_a_mixed_document_renders_to_runs_images_and_shakes(self) -> None:
        document = parse('hi <font size="20" color="red">there</font><img url="https://x.y/z" />'
                         "<shake />&lt;3")
        self.assertEqual(render(document), [Run("hi "), Run("there", 20, "red"),
                                            Image("https://x.y/z"), Shake(), Run("<3")])

    def test_content_is_utf8(self) -> None:
        self.assertEqual(validate("héllo".encode()), (Text("héllo"),))
        with self.assertRaises(RichTextError) as e:
            validate(b"ok \xff")
        self.assertEqual(str(e.exception), "not UTF-8 at byte 3")


class RefusedFormsTests(SynchronousTestCase):
    def assertRefused(self, text: str, reason: str) -> None:
        with self.assertRaises(RichTextError) as e:
            parse(text)
        self.assertIn(reason, str(e.exception))

    def test_text(self) -> None:
        self.assertRefused("a < b", "a bare '<' (write &lt;) at character 2")
        self.assertRefused("fish & chips", "an '&' that starts no reference")
        self.assertRefused("&nbsp;", "an unknown reference '&nbsp;'")
        self.assertRefused("&#xZZ;", "a malformed numeric reference")
        self.assertRefused("&#X41;", "a malformed numeric reference")
        for bad in ("&#0;", "&#8;", "&#x1F;", "&#xD800;", "&#xDFFF;", "&#x110000;"):
            self.assertRefused(bad, "names no allowed character")

    def test_elements_and_attributes(self) -> None:
        for hostile in ("<script>alert(1)</script>", "<b>x</b>", "<FONT>x</FONT>", "<iframe/>",
                        "<a href=\"http://x\">y</a>", "<svg onload=\"x\"/>"):
            self.assertRefused(hostile, "an element other than <font>, <img /> or <shake />")
        self.assertRefused('<img url="http://x" onerror="alert(1)" />', "no attribute 'onerror'")
        self.assertRefused('<font style="x">y</font>', "no attribute 'style'")
        self.assertRefused('<shake x="1" />', "no attribute 'x'")
        self.assertRefused('<font size="9" size="10">x</font>', "a duplicate attribute 'size'")
        self.assertRefused("<font size='9'>x</font>", "expected '=\"'")
        self.assertRefused('<font size="9"color="red">x</font>', "separated by white space")
        self.assertRefused('<font title="a<b">x</font>', "a bare '<' in an attribute")

    def test_nesting_and_closing(self) -> None:
        self.assertRefused("<font>x", "is not closed with </font>")
        self.assertRefused("<font><font>x</font></font>", "an element inside <font>")
        self.assertRefused("<font><shake /></font>", "an element inside <font>")
        self.assertRefused("<font/>", "<font> must enclose text")
        self.assertRefused('<img url="http://x">', "<img> must close itself")
        self.assertRefused("<shake>", "<shake> must close itself")
        self.assertRefused("</font>", "a bare '<'")
        self.assertRefused("<font", "an unfinished <font> tag")

    def test_values(self) -> None:
        self.assertRefused('<font size="7">x</font>', "size must be an integer from 8 to 72")
        self.assertRefused('<font size="73">x</font>', "from 8 to 72")
        self.assertRefused('<font size="+9">x</font>', "from 8 to 72")
        for color in ("transparent", "currentcolor", "#abcd", "#ggg", "rgb(1,2,3)", ""):
            self.assertRefused(f'<font color="{color}">x</font>', "color must be")
        self.assertRefused('<img url="http://x" width="0" />', "width must be an integer from 1 to 4096")
        self.assertRefused('<img url="http://x" height="4097" />', "height must be")
        self.assertRefused("<img />", "needs a url")

    def test_urls(self) -> None:
        for url in ("javascript:alert(1)", "data:image/png;base64,xx", "ftp://x/y", "//x/y",
                    "/relative", "https:///nohost", "JaVaScRiPt:x"):
            self.assertRefused(f'<img url="{url}" />', "absolute http or https URL")
        self.assertRefused('<img url="http://x/a b" />', "white space or control characters")
        self.assertRefused('<img url="http://x/&#9;" />', "white space or control characters")
        long = "https://x.y/" + "a" * 2037
        self.assertEqual(len(long), 2049)
        self.assertRefused(f'<img url="{long}" />', "over 2048 characters")
        self.assertEqual(parse(f'<img url="{long[:-1]}" />'), (Image(long[:-1]),))


class ColourTests(SynchronousTestCase):
    def test_css_level_4_names_any_case(self) -> None:
        self.assertEqual(len(NAMES), 148)
        for name in ("red", "RED", "RebeccaPurple", "lightgoldenrodyellow"):
            self.assertTrue(is_color(name), name)
        for name in ("transparent", "currentcolor", "reddish", "#12", "#12345"):
            self.assertFalse(is_color(name), name)


# -- property tests ---------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
URLS = st.builds(lambda scheme, host, path: f"{scheme}://{host}/{path}",
                 st.sampled_from(["http", "https"]),
                 st.from_regex(r"[a-z]{1,10}\.[a-z]{2,3}", fullmatch=True),
                 st.from_regex(r"[a-z0-9/._?=&-]{0,40}", fullmatch=True))
NODES = st.one_of(
    TEXT.filter(bool).map(Text),
    st.builds(Font, TEXT, st.none() | st.integers(8, 72),
              st.none() | st.sampled_from(sorted(NAMES)) | st.from_regex(r"#[0-9a-f]{3}", fullmatch=True)),
    st.builds(Image, URLS, st.none() | st.integers(1, 4096), st.none() | st.integers(1, 4096)),
    st.just(Shake()),
)


def serialize(nodes: list[Text | Font | Image | Shake]) -> str:
    out = []
    for node in nodes:
        if isinstance(node, Text):
            out.append(html.escape(node.text, quote=False))
        elif isinstance(node, Font):
            attrs = "".join(f' {k}="{v}"' for k, v in (("size", node.size), ("color", node.color))
                            if v is not None)
            out.append(f"<font{attrs}>{html.escape(node.text, quote=False)}</font>")
        elif isinstance(node, Image):
            attrs = "".join(f' {k}="{v}"' for k, v in (("width", node.width),
                                                        ("height", node.height)) if v is not None)
            out.append(f'<img url="{html.escape(node.url)}"{attrs} />')
        else:
            out.append("<shake />")
    return "".join(out)


def merged(nodes: list[Text | Font | Image | Shake]) -> tuple[Text | Font | Image | Shake, ...]:
    """Adjacent text nodes read back as one."""
    out: list[Text | Font | Image | Shake] = []
    for node in nodes:
        if isinstance(node, Text) and out and isinstance(out[-1], Text):
            out[-1] = Text(out[-1].text + node.text)
        else:
            out.append(node)
    return tuple(out)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.lists(NODES, max_size=8))
    def test_every_document_of_the_grammar_is_accepted_as_written(self, nodes: list) -> None:
        self.assertEqual(parse(serialize(nodes)), merged(nodes))

    @settings(max_examples=500, deadline=None)
    @given(st.text(alphabet="<>&;#x/=\" abcfghilmnoprstuzAEF0123456789", max_size=40))
    def test_anything_accepted_renders_to_text_images_and_shakes_only(self, text: str) -> None:
        try:
            document = parse(text)
        except RichTextError:
            return
        for segment in render(document):
            self.assertIsInstance(segment, Run | Image | Shake)
            if isinstance(segment, Image):
                self.assertTrue(segment.url.startswith(("http://", "https://")), segment)
        # What was accepted reads back the same once written out again.
        self.assertEqual(parse(serialize(list(document))), merged(list(document)))

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(["script", "iframe", "a", "b", "svg", "style", "object", "Font"]),
           st.sampled_from(["", ' onclick="x"', ' href="javascript:x"', ' src="x"']),
           TEXT)
    def test_no_other_element_is_ever_accepted(self, name: str, attrs: str, inner: str) -> None:
        for text in (f"<{name}{attrs}>{inner}</{name}>", f"<{name}{attrs} />"):
            self.assertRaises(RichTextError, parse, text)
