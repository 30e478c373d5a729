// A small element builder: the sidebar is plain DOM (text is always set as text, never parsed as HTML).
type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | EventListener | undefined>;

export function h(tag: string, attrs: Attrs = {}, ...children: (Child | Child[])[]): HTMLElement {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) {
      continue;
    }
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v as EventListener);
    } else if (k === 'class') {
      el.className = String(v);
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) {
      continue;
    }
    el.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
  return el;
}

/** A coloured badge for a state: succeeded, failed, running, ... */
export function badge(state: string): HTMLElement {
  return h('span', { class: `mlplat-badge mlplat-badge-${state}` }, state);
}

export function when(iso?: string | null): string {
  if (!iso) {
    return '–';
  }
  const d = new Date(iso);
  return isNaN(d.getTime()) ? iso : d.toLocaleString();
}

export function table(headers: string[], rows: Child[][]): HTMLElement {
  return h(
    'table',
    { class: 'mlplat-table' },
    h('thead', {}, h('tr', {}, headers.map(x => h('th', {}, x)))),
    h(
      'tbody',
      {},
      rows.map(r => h('tr', {}, r.map(c => h('td', {}, c))))
    )
  );
}
