// The composer: text, a msgtype, and on rich msgtypes (10 on the demo apps,
// docs/protocol.md §7.2) a font size and colour, images by URL and a shake,
// or markup typed by hand. A live preview shows what the peer will see,
// rendered as messages are (no innerHTML).
import { compose, parse, RichTextError } from "@shared/richtext";
import { isColor } from "@shared/colors";
import { h, show } from "@shared/dom";
import { renderContent, safeImageUrl } from "./richdom";

/** Msgtypes that carry rich text on the demo apps (a deployment may name others). */
export const RICH_MSGTYPES = new Set([10]);
export const DEFAULT_MSGTYPE = 10;
const SIZES = ["", "12", "14", "16", "20", "24", "32", "48"];
const COLORS = ["", "black", "gray", "red", "crimson", "orange", "goldenrod", "green", "teal", "blue", "purple", "deeppink"];
const encoder = new TextEncoder();

export interface Outgoing {
  msgtype: number;
  content: Uint8Array;
}

export class Composer {
  readonly element: HTMLElement;
  private readonly input: HTMLTextAreaElement;
  private readonly msgtype: HTMLInputElement;
  private readonly size: HTMLSelectElement;
  private readonly color: HTMLSelectElement;
  private readonly imageUrl: HTMLInputElement;
  private readonly shakeButton: HTMLButtonElement;
  private readonly raw: HTMLInputElement;
  private readonly toolbar: HTMLElement;
  private readonly chips: HTMLElement;
  private readonly preview: HTMLElement;
  private readonly error: HTMLElement;
  private readonly sendButton: HTMLButtonElement;
  private images: string[] = [];
  private shake = false;
  private enabled = true;

  constructor(private readonly onSend: (message: Outgoing) => void) {
    this.input = h("textarea", { testid: "composer-input", className: "composer-input",
      attrs: { rows: "3", placeholder: "Type a message — Enter sends, Shift+Enter for a new line", "aria-label": "message" } });
    this.msgtype = h("input", { testid: "composer-msgtype", className: "msgtype",
      attrs: { type: "number", min: "0", max: "4294967295", value: String(DEFAULT_MSGTYPE), "aria-label": "msgtype" } });
    this.size = h("select", { testid: "composer-size", attrs: { "aria-label": "font size" } },
      ...SIZES.map((s) => h("option", { text: s ? `${s}px` : "size", attrs: { value: s } })));
    this.color = h("select", { testid: "composer-color", attrs: { "aria-label": "colour" } },
      ...COLORS.map((c) => h("option", { text: c || "colour", attrs: { value: c } })));
    this.imageUrl = h("input", { testid: "composer-image-url", className: "image-url",
      attrs: { type: "url", placeholder: "https://… image URL", "aria-label": "image URL" } });
    const addImage = h("button", { testid: "composer-image-add", text: "Add image", attrs: { type: "button" },
      on: { click: () => this.addImage() } });
    this.shakeButton = h("button", { testid: "composer-shake", text: "≋ Shake", className: "toggle",
      attrs: { type: "button", "aria-pressed": "false" }, on: { click: () => this.toggleShake() } });
    this.raw = h("input", { testid: "composer-raw", attrs: { type: "checkbox", "aria-label": "edit markup" } });
    this.chips = h("div", { className: "chips", testid: "composer-images" });
    this.toolbar = h("div", { className: "toolbar" }, this.size, this.color, this.imageUrl, addImage, this.shakeButton,
      h("label", { className: "raw" }, this.raw, " markup"));
    this.preview = h("div", { testid: "composer-preview", className: "preview bubble out" });
    this.error = h("div", { testid: "composer-error", className: "composer-error", attrs: { role: "alert" } });
    this.sendButton = h("button", { testid: "send-button", className: "primary send", text: "Send", attrs: { type: "submit" } });
    this.element = h("form", { className: "composer", testid: "composer", on: { submit: (ev) => { ev.preventDefault(); this.send(); } } },
      h("div", { className: "composer-top" }, h("label", { className: "msgtype-label" }, "msgtype ", this.msgtype), this.toolbar),
      this.chips,
      h("div", { className: "composer-main" }, this.input, this.sendButton),
      h("div", { className: "preview-row" }, h("span", { className: "preview-label", text: "Preview" }), this.preview),
      this.error);
    this.input.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        this.send();
      }
    });
    for (const el of [this.input, this.msgtype, this.size, this.color, this.raw]) {
      el.addEventListener("input", () => this.update());
      el.addEventListener("change", () => this.update());
    }
    this.imageUrl.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") {
        ev.preventDefault();
        this.addImage();
      }
    });
    this.update();
  }

  setEnabled(enabled: boolean): void {
    this.enabled = enabled;
    this.update();
  }

  focus(): void {
    this.input.focus();
  }

  private isRich(): boolean {
    return RICH_MSGTYPES.has(Number(this.msgtype.value));
  }

  private addImage(): void {
    const url = this.imageUrl.value.trim();
    if (!url) {
      return;
    }
    if (safeImageUrl(url) === null || !/^https?:\/\//i.test(url) || /\s/.test(url)) {
      this.showError("An image needs an absolute http or https URL.");
      return;
    }
    this.images.push(url);
    this.imageUrl.value = "";
    this.update();
  }

  private toggleShake(): void {
    this.shake = !this.shake;
    this.update();
  }

  private showError(text: string): void {
    this.error.textContent = text;
    show(this.error, text !== "");
  }

  /** What Send would send, or why it cannot. */
  build(): Outgoing | { error: string } | null {
    const msgtype = Number(this.msgtype.value);
    if (!Number.isInteger(msgtype) || msgtype < 0 || msgtype > 0xffffffff) {
      return { error: "msgtype must be an integer from 0 to 4294967295" };
    }
    const text = this.input.value;
    if (!this.isRich()) {
      return text === "" ? null : { msgtype, content: encoder.encode(text) };
    }
    let markup: string;
    if (this.raw.checked) {
      markup = text;
    } else {
      const color = this.color.value || null;
      markup = compose({
        text,
        size: this.size.value ? Number(this.size.value) : null,
        color: color && isColor(color) ? color : null,
        images: this.images.map((url) => ({ url })),
        shake: this.shake,
      });
    }
    if (markup === "") {
      return null;
    }
    try {
      parse(markup);
    } catch (error) {
      return { error: error instanceof RichTextError ? `Not valid rich text: ${error.message}` : String(error) };
    }
    return { msgtype, content: encoder.encode(markup) };
  }

  private update(): void {
    const rich = this.isRich();
    show(this.toolbar, rich);
    const styled = rich && !this.raw.checked;
    for (const el of [this.size, this.color, this.imageUrl, this.shakeButton]) {
      el.disabled = !styled;
    }
    this.shakeButton.setAttribute("aria-pressed", String(this.shake));
    this.shakeButton.classList.toggle("on", this.shake);
    this.chips.replaceChildren(...(styled ? this.images : []).map((url, i) =>
      h("span", { className: "chip", testid: "composer-image" },
        h("span", { className: "chip-url", text: url }),
        h("button", { text: "×", attrs: { type: "button", "aria-label": "remove image" },
          on: { click: () => { this.images.splice(i, 1); this.update(); } } }))));
    const built = this.build();
    this.preview.replaceChildren();
    if (built && "content" in built) {
      const rendered = renderContent(built.content, RICH_MSGTYPES.has(built.msgtype));
      this.preview.append(rendered.fragment);
      this.showError("");
    } else {
      this.showError(built ? built.error : "");
    }
    show(this.preview.parentElement ?? this.preview, built !== null && "content" in built);
    this.sendButton.disabled = !this.enabled || built === null || "error" in built;
  }

  private send(): void {
    const built = this.build();
    if (!this.enabled || built === null || "error" in built) {
      return;
    }
    this.onSend(built);
    this.input.value = "";
    this.images = [];
    this.shake = false;
    this.update();
  }
}
