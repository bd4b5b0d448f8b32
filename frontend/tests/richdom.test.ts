// Message content as DOM: hostile markup renders as text, never as elements;
// images only from http(s); fonts as validated style properties.
import { describe, expect, it } from "vitest";
import { renderContent, safeImageUrl } from "../console/src/richdom";
import rich from "../../proto/richtext_vectors.json";

const enc = new TextEncoder();

function holder(content: string, isRich = true) {
  const div = document.createElement("div");
  const r = renderContent(enc.encode(content), isRich);
  div.append(r.fragment);
  return { div, r };
}

function everyElement(root: Element): Element[] {
  return Array.from(root.querySelectorAll("*"));
}

describe("renderContent", () => {
  for (const c of rich.cases as { input: string; error?: string }[]) {
    it(`renders ${JSON.stringify(c.input).slice(0, 70)} safely`, () => {
      const { div, r } = holder(c.input);
      for (const el of everyElement(div)) {
        expect(["SPAN", "A", "IMG"]).toContain(el.tagName);
        for (const attr of Array.from(el.attributes)) {
          expect(attr.name).not.toMatch(/^on/i);
          expect(["class", "style", "href", "target", "rel", "src", "alt", "referrerpolicy", "loading", "decoding", "width", "height", "title"]).toContain(attr.name);
        }
      }
      for (const img of Array.from(div.querySelectorAll("img"))) {
        expect(img.getAttribute("src")).toMatch(/^https?:\/\//);
      }
      for (const a of Array.from(div.querySelectorAll("a"))) {
        expect(a.getAttribute("href")).toMatch(/^https?:\/\//);
      }
      if (c.error !== undefined) {
        expect(r.mode).toBe("invalid");
        expect(r.error).toBe(c.error);
        expect(everyElement(div)).toHaveLength(0);
        expect(div.textContent).toBe(c.input);
      } else {
        expect(r.mode).toBe("rich");
      }
    });
  }

  it("renders a non-rich msgtype as text, whatever it holds", () => {
    const { div, r } = holder('<img url="https://example.com/a.png" /><script>alert(1)</script>', false);
    expect(r.mode).toBe("plain");
    expect(everyElement(div)).toHaveLength(0);
    expect(div.textContent).toContain("<script>");
  });

  it("renders invalid UTF-8 as text with replacement characters", () => {
    const div = document.createElement("div");
    const r = renderContent(new Uint8Array([0x61, 0xff, 0x3c]), true);
    div.append(r.fragment);
    expect(r.mode).toBe("invalid");
    expect(div.textContent).toBe("a\ufffd<");
  });

  it("builds fonts, images and shakes", () => {
    const { div, r } = holder('a<font size="20" color="Crimson">b</font><img url="https://example.com/i.png" width="64" height="32" /><shake />');
    expect(r.shake).toBe(true);
    const span = div.querySelector("span.rt-font") as HTMLElement;
    expect(span.textContent).toBe("b");
    expect(span.style.fontSize).toBe("20px");
    expect(span.style.color).toBe("crimson");
    const img = div.querySelector("img") as HTMLImageElement;
    expect(img.getAttribute("src")).toBe("https://example.com/i.png");
    expect([img.width, img.height]).toEqual([64, 32]);
    expect(img.getAttribute("referrerpolicy")).toBe("no-referrer");
    expect(div.querySelector(".rt-shake")).not.toBeNull();
  });

  it("checks an image's scheme again", () => {
    expect(safeImageUrl("javascript:alert(1)")).toBeNull();
    expect(safeImageUrl("data:image/png;base64,AA")).toBeNull();
    expect(safeImageUrl("not a url")).toBeNull();
    expect(safeImageUrl("HTTPS://Example.com/a.png")).toBe("https://example.com/a.png");
  });
});
