// The browser's rich-text parser against the node's: proto/richtext_vectors.json
// (written from daojia_msg/content/richtext.py by tests/protocol/test_vectors.py).
import { describe, expect, it } from "vitest";
import { COLOR_NAMES, isColor } from "@shared/colors";
import { RichTextError, compose, parse, render, splitUrl, validate } from "@shared/richtext";
import rich from "../../proto/richtext_vectors.json";

interface Case {
  input: string;
  error?: string;
  nodes?: unknown[];
}

describe("proto/richtext_vectors.json", () => {
  it("knows the node's colour names", () => {
    expect([...COLOR_NAMES].sort()).toEqual(rich.colors);
  });

  for (const c of rich.cases as Case[]) {
    it(`parses ${JSON.stringify(c.input).slice(0, 80)} as the node does`, () => {
      if (c.error !== undefined) {
        expect(() => parse(c.input)).toThrow(RichTextError);
        expect(() => parse(c.input)).toThrow(c.error);
        try {
          parse(c.input);
        } catch (e) {
          expect((e as Error).message).toBe(c.error);
        }
      } else {
        expect(parse(c.input)).toEqual(c.nodes);
      }
    });
  }
});

describe("rich text", () => {
  it("refuses content that is not UTF-8", () => {
    expect(() => validate(new Uint8Array([0x61, 0xff]))).toThrow("not UTF-8");
    expect(validate(new TextEncoder().encode("你好"))).toEqual([{ kind: "text", text: "你好" }]);
  });

  it("renders fonts as styled runs", () => {
    expect(render(parse('a<font size="9">b</font><shake />'))).toEqual([
      { kind: "run", text: "a", size: null, color: null },
      { kind: "run", text: "b", size: 9, color: null },
      { kind: "shake" },
    ]);
  });

  it("splits URLs as Python's urlsplit", () => {
    expect(splitUrl("HTTPS://Example.com/x")).toEqual({ scheme: "https", netloc: "Example.com" });
    expect(splitUrl("https:foo")).toEqual({ scheme: "https", netloc: "" });
    expect(splitUrl("1http://x")).toEqual({ scheme: "", netloc: "" });
    expect(splitUrl("http://[::1")).toBeNull();
    expect(splitUrl("http://[nothost]/")).toBeNull();
  });

  it("colours: names in any case, #rgb, #rrggbb", () => {
    expect(isColor("ReD")).toBe(true);
    expect(isColor("#0aF")).toBe(true);
    expect(isColor("#0aF\n")).toBe(false);
    expect(isColor("transparent")).toBe(false);
    expect(isColor("constructor")).toBe(false);
  });

  it("composes markup that parses back to what was typed, whatever was typed", () => {
    const text = 'a <b>"x" & y</b> 😀\n<img url="javascript:alert(1)" />';
    const markup = compose({ text, size: 20, color: "red", images: [{ url: 'https://e.com/a"b.png', width: 10 }], shake: true });
    expect(parse(markup)).toEqual([
      { kind: "shake" },
      { kind: "font", text, size: 20, color: "red" },
      { kind: "img", url: 'https://e.com/a"b.png', width: 10, height: null },
    ]);
    expect(parse(compose({ text: "<&>" }))).toEqual([{ kind: "text", text: "<&>" }]);
    expect(compose({ text: "", color: "red" })).toBe("");
  });
});
