// Rich text (docs/protocol.md §7.2), parsed strictly: the same grammar, checks
// and messages as daojia_msg/content/richtext.py, read once left to right with
// no HTML parser. A document is text with character references,
// <font size color>text</font>, <img url width height /> and <shake />;
// anything else is refused with a RichTextError that says what and where
// (positions count code points, as Python's do). What it returns is data:
// the page builds DOM nodes from it (never innerHTML).
import { isColor } from "./colors";

export const MAX_URL = 2048;
export const FONT_SIZES: readonly [number, number] = [8, 72];
export const IMAGE_SIDE: readonly [number, number] = [1, 4096];
const ENTITIES: Record<string, string> = { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" };
const SPACE = " \t\n";
const MAX_REF_DIGITS = 8;
/** Python's str.isspace() characters (an img url may hold none of them). */
const PY_SPACE = new Set(
  "\t\n\v\f\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000",
);
const SCHEME_CHARS = /^[A-Za-z0-9+\-.]+$/;

export class RichTextError extends Error {
  override name = "RichTextError";
}

export type RichNode =
  | { kind: "text"; text: string }
  | { kind: "font"; text: string; size: number | null; color: string | null }
  | { kind: "img"; url: string; width: number | null; height: number | null }
  | { kind: "shake" };

/** What a client shows: text runs (with their style), images, shakes. */
export type Segment =
  | { kind: "run"; text: string; size: number | null; color: string | null }
  | { kind: "img"; url: string; width: number | null; height: number | null }
  | { kind: "shake" };

/** The document `content` holds: UTF-8 rich text, else RichTextError. */
export function validate(content: Uint8Array): RichNode[] {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(content);
  } catch {
    throw new RichTextError("not UTF-8");
  }
  return parse(text);
}

export function parse(text: string): RichNode[] {
  return new Parser(text).document();
}

export function render(document: RichNode[]): Segment[] {
  return document.map((node): Segment => {
    if (node.kind === "text") {
      return { kind: "run", text: node.text, size: null, color: null };
    }
    if (node.kind === "font") {
      return { kind: "run", text: node.text, size: node.size, color: node.color };
    }
    return node;
  });
}

class Parser {
  private readonly chars: string[];
  private pos = 0;

  constructor(text: string) {
    this.chars = Array.from(text); // code points, as Python indexes them
  }

  private fail(why: string, pos?: number): RichTextError {
    return new RichTextError(`${why} at character ${pos ?? this.pos}`);
  }

  private startsWith(literal: string, at = this.pos): boolean {
    const lit = Array.from(literal);
    for (let i = 0; i < lit.length; i++) {
      if (this.chars[at + i] !== lit[i]) {
        return false;
      }
    }
    return true;
  }

  document(): RichNode[] {
    const nodes: RichNode[] = [];
    while (this.pos < this.chars.length) {
      if (this.chars[this.pos] === "<") {
        nodes.push(this.element());
      } else {
        nodes.push({ kind: "text", text: this.text("text") });
      }
    }
    return nodes;
  }

  /** Characters up to one of `stop` (not consumed), references decoded. */
  private text(inside: string, stop = "<"): string {
    const out: string[] = [];
    const n = this.chars.length;
    while (this.pos < n && !stop.includes(this.chars[this.pos])) {
      const c = this.chars[this.pos];
      if (c === "&") {
        out.push(this.reference());
      } else if (c === "<") {
        throw this.fail(`a bare '<' in ${inside}`);
      } else {
        out.push(c);
        this.pos += 1;
      }
    }
    return out.join("");
  }

  private reference(): string {
    const start = this.pos;
    let end = -1;
    const limit = Math.min(this.chars.length, start + MAX_REF_DIGITS + 3);
    for (let i = start; i < limit; i++) {
      if (this.chars[i] === ";") {
        end = i;
        break;
      }
    }
    if (end < 0) {
      throw this.fail("an '&' that starts no reference (&lt; &gt; &amp; &quot; &apos; &#N; &#xH;)");
    }
    const body = this.chars.slice(start + 1, end).join("");
    this.pos = end + 1;
    if (Object.hasOwn(ENTITIES, body)) {
      return ENTITIES[body];
    }
    let digits: string;
    let ok: boolean;
    let base: number;
    if (body.startsWith("#x")) {
      digits = body.slice(2);
      base = 16;
      ok = /^[0-9a-fA-F]+$/.test(digits);
    } else if (body.startsWith("#")) {
      digits = body.slice(1);
      base = 10;
      ok = /^[0-9]+$/.test(digits);
    } else {
      throw this.fail(`an unknown reference '&${body};'`, start);
    }
    if (!ok) {
      throw this.fail(`a malformed numeric reference '&${body};'`, start);
    }
    const code = parseInt(digits, base);
    const allowed = code === 0x9 || code === 0xa || code === 0xd || (code >= 0x20 && code <= 0x10ffff);
    if (!allowed || (code >= 0xd800 && code <= 0xdfff)) {
      throw this.fail(`'&${body};' names no allowed character`, start);
    }
    return String.fromCodePoint(code);
  }

  private expect(literal: string): void {
    if (!this.startsWith(literal)) {
      throw this.fail(`expected ${pyRepr(literal)}`);
    }
    this.pos += Array.from(literal).length;
  }

  /** A name as written (ASCII letters and digits): only the grammar's lowercase names are known. */
  private name(): string {
    const start = this.pos;
    while (this.pos < this.chars.length && /^[A-Za-z0-9]$/.test(this.chars[this.pos])) {
      this.pos += 1;
    }
    return this.chars.slice(start, this.pos).join("");
  }

  private skipSpace(): boolean {
    const start = this.pos;
    while (this.pos < this.chars.length && SPACE.includes(this.chars[this.pos])) {
      this.pos += 1;
    }
    return this.pos > start;
  }

  private element(): RichNode {
    const start = this.pos;
    this.pos += 1; // '<'
    const name = this.name();
    if (!name) {
      throw this.fail("a bare '<' (write &lt;)", start);
    }
    if (name !== "font" && name !== "img" && name !== "shake") {
      throw this.fail("an element other than <font>, <img /> or <shake />", start);
    }
    const attributes = this.attributes(name);
    const closed = this.startsWith("/>");
    if (!closed && !this.startsWith(">")) {
      throw this.fail(`an unfinished <${name}> tag`);
    }
    this.pos += closed ? 2 : 1;
    if (name === "font") {
      if (closed) {
        throw this.fail("<font> must enclose text: <font ...>text</font>", start);
      }
      const inner = this.text("<font>");
      this.endTag("font", start);
      return this.font(attributes, inner, start);
    }
    if (!closed) {
      throw this.fail(`<${name}> must close itself: <${name} ... />`, start);
    }
    if (name === "shake") {
      this.known("shake", attributes, [], start);
      return { kind: "shake" };
    }
    return this.image(attributes, start);
  }

  private attributes(element: string): Map<string, string> {
    const found = new Map<string, string>();
    for (;;) {
      const spaced = this.skipSpace();
      if (this.pos >= this.chars.length || "/>".includes(this.chars[this.pos])) {
        return found;
      }
      if (!spaced) {
        throw this.fail(`attributes of <${element}> must be separated by white space`);
      }
      const at = this.pos;
      const name = this.name();
      if (!name) {
        throw this.fail(`a malformed attribute in <${element}>`);
      }
      if (found.has(name)) {
        throw this.fail(`a duplicate attribute ${pyRepr(name)}`, at);
      }
      this.expect('="');
      const value = this.text(`an attribute of <${element}>`, '"');
      this.expect('"');
      found.set(name, value);
    }
  }

  private endTag(name: string, start: number): void {
    if (this.startsWith("<") && !this.startsWith("</")) {
      throw this.fail(`an element inside <${name}>: it holds plain text only`);
    }
    if (!this.startsWith(`</${name}`)) {
      throw this.fail(`<${name}> opened at character ${start} is not closed with </${name}>`);
    }
    this.pos += name.length + 2;
    this.skipSpace();
    this.expect(">");
  }

  private number(element: string, name: string, value: string, bounds: readonly [number, number], at: number): number {
    const [low, high] = bounds;
    const n = /^[0-9]+$/.test(value) ? Number(value) : NaN;
    if (!(n >= low && n <= high)) {
      throw this.fail(`<${element}> ${name} must be an integer from ${low} to ${high}`, at);
    }
    return n;
  }

  private known(element: string, attributes: Map<string, string>, allowed: string[], at: number): void {
    for (const name of attributes.keys()) {
      if (!allowed.includes(name)) {
        throw this.fail(`<${element}> has no attribute ${pyRepr(name)}`, at);
      }
    }
  }

  private font(attributes: Map<string, string>, inner: string, at: number): RichNode {
    this.known("font", attributes, ["size", "color"], at);
    const size = attributes.get("size");
    const color = attributes.get("color");
    if (color !== undefined && !isColor(color)) {
      throw this.fail("<font> color must be a CSS colour name, #rgb or #rrggbb", at);
    }
    return {
      kind: "font",
      text: inner,
      size: size === undefined ? null : this.number("font", "size", size, FONT_SIZES, at),
      color: color ?? null,
    };
  }

  private image(attributes: Map<string, string>, at: number): RichNode {
    this.known("img", attributes, ["url", "width", "height"], at);
    const url = attributes.get("url");
    if (url === undefined) {
      throw this.fail("<img /> needs a url", at);
    }
    const points = Array.from(url);
    if (points.length > MAX_URL) {
      throw this.fail(`an <img /> url is over ${MAX_URL} characters`, at);
    }
    if (points.some((c) => PY_SPACE.has(c) || c.codePointAt(0)! < 0x20 || c === "\x7f")) {
      throw this.fail("an <img /> url must not hold white space or control characters", at);
    }
    const parts = splitUrl(url);
    if (parts === null) {
      throw this.fail("an <img /> url that does not parse", at);
    }
    if ((parts.scheme !== "http" && parts.scheme !== "https") || !parts.netloc) {
      throw this.fail("an <img /> url must be an absolute http or https URL", at);
    }
    const side = (name: string) => {
      const value = attributes.get(name);
      return value === undefined ? null : this.number("img", name, value, IMAGE_SIDE, at);
    };
    const width = side("width");
    const height = side("height");
    return { kind: "img", url, width, height };
  }
}

/**
 * The scheme and network location of `url` as Python's urllib.parse.urlsplit
 * finds them; null where urlsplit raises (unbalanced or bad brackets).
 */
export function splitUrl(url: string): { scheme: string; netloc: string } | null {
  let scheme = "";
  let rest = url;
  const colon = url.indexOf(":");
  if (colon > 0 && /^[A-Za-z]$/.test(url[0]) && SCHEME_CHARS.test(url.slice(0, colon))) {
    scheme = url.slice(0, colon).toLowerCase();
    rest = url.slice(colon + 1);
  }
  let netloc = "";
  if (rest.startsWith("//")) {
    const after = rest.slice(2);
    const end = after.search(/[/?#]/);
    netloc = end < 0 ? after : after.slice(0, end);
    const open = netloc.includes("[");
    const close = netloc.includes("]");
    if (open !== close) {
      return null;
    }
    if (open) {
      const host = netloc.split("[")[1].split("]")[0];
      if (!/^(?:[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.[\w\-.~!$&'()*+,;=:]+)$/.test(host) || (!host.startsWith("v") && !host.includes(":"))) {
        return null;
      }
    }
  }
  return { scheme, netloc };
}

/** Python's repr() of a short ASCII string, as the Python messages quote names. */
function pyRepr(s: string): string {
  return s.includes("'") && !s.includes('"') ? `"${s}"` : `'${s.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}

/** `text` as rich-text character data: &, < and > written as references. */
export function escapeText(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** `value` for inside an attribute's double quotes. */
export function escapeAttribute(value: string): string {
  return escapeText(value).replace(/"/g, "&quot;");
}

export interface ComposeOptions {
  text: string;
  size?: number | null;
  color?: string | null;
  images?: { url: string; width?: number | null; height?: number | null }[];
  shake?: boolean;
}

/** The markup of a composed message: a shake first, the text (in a font when styled), then images. */
export function compose(options: ComposeOptions): string {
  const parts: string[] = [];
  if (options.shake) {
    parts.push("<shake />");
  }
  const styled = (options.size ?? null) !== null || (options.color ?? null) !== null;
  if (styled && options.text !== "") {
    const attrs = [
      options.size != null ? ` size="${options.size}"` : "",
      options.color != null ? ` color="${escapeAttribute(options.color)}"` : "",
    ].join("");
    parts.push(`<font${attrs}>${escapeText(options.text)}</font>`);
  } else {
    parts.push(escapeText(options.text));
  }
  for (const image of options.images ?? []) {
    const w = image.width != null ? ` width="${image.width}"` : "";
    const h = image.height != null ? ` height="${image.height}"` : "";
    parts.push(`<img url="${escapeAttribute(image.url)}"${w}${h} />`);
  }
  return parts.join("");
}
