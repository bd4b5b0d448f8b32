// Message content as DOM nodes (docs/protocol.md §7.2): rich text is parsed by
// @shared/richtext and built with createElement and textContent, never handed
// to an HTML parser. Text keeps its font size and colour (set as style
// properties after the parser validated them), images load only from http or
// https URLs (checked again here), a shake is a marker plus an animation.
// Content that is not valid rich text, or not rich at all, is shown as text.
import { render, validate, RichTextError } from "@shared/richtext";
import type { Segment } from "@shared/richtext";

export interface Rendered {
  fragment: DocumentFragment;
  shake: boolean;
  /** "rich": parsed markup; "plain": not a rich msgtype; "invalid": rich msgtype, bad markup (shown as text). */
  mode: "rich" | "plain" | "invalid";
  error?: string;
}

const lossy = new TextDecoder("utf-8");

/** The URL an <img> may load, or null: absolute http or https only. */
export function safeImageUrl(url: string): string | null {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return null;
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    return null;
  }
  return parsed.href;
}

function segmentNode(segment: Segment): Node {
  if (segment.kind === "run") {
    if (segment.size === null && segment.color === null) {
      return document.createTextNode(segment.text);
    }
    const span = document.createElement("span");
    span.className = "rt-font";
    if (segment.size !== null) {
      span.style.fontSize = `${segment.size}px`;
    }
    if (segment.color !== null) {
      span.style.color = segment.color.startsWith("#") ? segment.color : segment.color.toLowerCase();
    }
    span.textContent = segment.text;
    return span;
  }
  if (segment.kind === "img") {
    const href = safeImageUrl(segment.url);
    if (href === null) {
      const refused = document.createElement("span");
      refused.className = "rt-refused";
      refused.textContent = "[image refused]";
      return refused;
    }
    const link = document.createElement("a");
    link.className = "rt-img-link";
    link.href = href;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    const img = document.createElement("img");
    img.className = "rt-img";
    img.alt = "image";
    img.referrerPolicy = "no-referrer";
    img.loading = "lazy";
    img.decoding = "async";
    if (segment.width !== null) {
      img.width = segment.width;
    }
    if (segment.height !== null) {
      img.height = segment.height;
    }
    // A broken image stays an <img> (the page's structure does not depend on
    // the network); it is only styled as a placeholder.
    img.addEventListener("error", () => {
      img.classList.add("rt-img-broken");
      img.title = `image did not load: ${href}`;
    }, { once: true });
    img.src = href;
    link.append(img);
    return link;
  }
  const shake = document.createElement("span");
  shake.className = "rt-shake";
  shake.title = "shake";
  shake.textContent = "≋ shake";  // no emoji: not every machine has a font for them
  return shake;
}

/** Nodes for `content`; `rich` when its msgtype carries rich text. */
export function renderContent(content: Uint8Array, rich: boolean): Rendered {
  const fragment = document.createDocumentFragment();
  if (!rich) {
    fragment.append(document.createTextNode(lossy.decode(content)));
    return { fragment, shake: false, mode: "plain" };
  }
  let segments: Segment[];
  try {
    segments = render(validate(content));
  } catch (error) {
    fragment.append(document.createTextNode(lossy.decode(content)));
    const why = error instanceof RichTextError ? error.message : String(error);
    return { fragment, shake: false, mode: "invalid", error: why };
  }
  for (const segment of segments) {
    fragment.append(segmentNode(segment));
  }
  return { fragment, shake: segments.some((s) => s.kind === "shake"), mode: "rich" };
}
