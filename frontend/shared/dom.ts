// A tiny element builder over createElement: attributes are set one by one and
// children are nodes or text (textContent), never markup. No innerHTML anywhere.

type Child = Node | string | null | undefined | false;

export interface Props {
  className?: string;
  testid?: string;
  text?: string;
  attrs?: Record<string, string>;
  on?: Partial<{ [K in keyof HTMLElementEventMap]: (ev: HTMLElementEventMap[K]) => void }>;
}

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, props: Props = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (props.className) {
    el.className = props.className;
  }
  if (props.testid) {
    el.dataset.testid = props.testid;
  }
  for (const [name, value] of Object.entries(props.attrs ?? {})) {
    if (/^on/i.test(name)) {
      throw new Error(`h(): no event-handler attributes (${name}); use props.on`);
    }
    el.setAttribute(name, value);
  }
  for (const [event, listener] of Object.entries(props.on ?? {})) {
    el.addEventListener(event, listener as EventListener);
  }
  if (props.text !== undefined) {
    el.textContent = props.text;
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) {
      el.append(child);
    }
  }
  return el;
}

export function show(el: HTMLElement, visible: boolean): void {
  el.hidden = !visible;
}
