// A pipeline run as a picture in the main area: its DAG, each step's state live (running, cached, failed, retried),
// its duration and backend; a click opens the step's executed notebook, "log" its log.
import { Dialog, MainAreaWidget, showDialog } from '@jupyterlab/apputils';
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Widget } from '@lumino/widgets';
import { Run, Step, request, showError } from './api';
import { badge, h } from './dom';

const NODE = { width: 190, height: 58, gapX: 56, gapY: 18, pad: 12 };
const SVG = 'http://www.w3.org/2000/svg';

function svg(tag: string, attrs: Record<string, string | number> = {}, ...children: (Node | string)[]): SVGElement {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    el.setAttribute(k, String(v));
  }
  for (const c of children) {
    el.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
  }
  return el;
}

/** What the picture calls a step's state: `cached` when it reused an earlier run's results. */
export function shownState(s: Step): string {
  return s.status === 'succeeded' && s.cached_from ? 'cached' : s.status;
}

/** Columns by depth (a step sits one column right of its deepest dependency), rows in the run's step order. */
export function layout(steps: Step[]): Map<string, { x: number; y: number }> {
  const byName = new Map(steps.map(s => [s.name, s]));
  const depth = new Map<string, number>();
  const level = (name: string, seen: Set<string>): number => {
    if (depth.has(name)) {
      return depth.get(name)!;
    }
    if (seen.has(name)) {
      return 0; // the server refuses cycles; never loop on a bad record
    }
    seen.add(name);
    const deps = (byName.get(name)?.depends_on || []).filter(d => byName.has(d));
    const d = deps.length ? 1 + Math.max(...deps.map(x => level(x, seen))) : 0;
    depth.set(name, d);
    return d;
  };
  const rows = new Map<number, number>();
  const at = new Map<string, { x: number; y: number }>();
  for (const s of steps) {
    const col = level(s.name, new Set());
    const row = rows.get(col) ?? 0;
    rows.set(col, row + 1);
    at.set(s.name, { x: NODE.pad + col * (NODE.width + NODE.gapX), y: NODE.pad + row * (NODE.height + NODE.gapY) });
  }
  return at;
}

function detail(s: Step): string {
  const parts = [s.seconds !== null && s.seconds !== undefined ? `${s.seconds.toFixed(1)} s` : '', s.backend || ''];
  if (s.attempts > 1) {
    parts.push(`${s.attempts} attempts`);
  }
  return parts.filter(Boolean).join(' · ');
}

/** The run's DAG, refreshed every 2 s while the run is running. */
export class PipelineRunView extends Widget {
  private readonly state: HTMLElement;
  private readonly graph: HTMLElement;
  private readonly info: HTMLElement;
  private readonly cancelButton: HTMLElement;
  private timer: number | undefined;
  run: Run | null = null;

  constructor(
    private readonly app: JupyterFrontEnd,
    readonly runId: string
  ) {
    super();
    this.addClass('mlplat-runview');
    this.id = `mlplat-run-${runId}`;
    this.title.label = `Run ${runId}`;
    this.title.closable = true;
    this.state = h('span', { class: 'mlplat-joblog-state' });
    this.cancelButton = h('button', { class: 'jp-mod-styled mlplat-small', 'data-cancel-run': runId, onclick: () => void this.cancel() }, 'Cancel');
    const refresh = h('button', { class: 'mlplat-link', title: 'Refresh', onclick: () => void this.refresh() }, '↻');
    this.graph = h('div', { class: 'mlplat-dag', 'data-run-graph': runId });
    this.info = h('div', { class: 'mlplat-muted mlplat-runview-info' });
    this.node.append(h('div', { class: 'mlplat-toolbar' }, this.state, refresh, this.cancelButton), this.info, this.graph);
  }

  protected onAfterAttach(): void {
    void this.refresh();
  }

  protected onBeforeDetach(): void {
    window.clearTimeout(this.timer);
  }

  dispose(): void {
    window.clearTimeout(this.timer);
    super.dispose();
  }

  async refresh(): Promise<void> {
    window.clearTimeout(this.timer);
    try {
      this.run = await request<Run>(`pipelines/runs/${encodeURIComponent(this.runId)}`);
    } catch (err) {
      this.state.replaceChildren(h('span', { class: 'mlplat-error' }, err instanceof Error ? err.message : String(err)));
      return;
    }
    this.draw(this.run);
    if (this.run.status === 'running' && this.isAttached) {
      this.timer = window.setTimeout(() => void this.refresh(), 2000);
    }
  }

  private draw(run: Run): void {
    this.state.replaceChildren(badge(run.status), ' ', h('b', {}, run.pipeline), h('span', { class: 'mlplat-muted' }, ` ${run.id}`));
    this.cancelButton.hidden = run.status !== 'running';
    this.info.textContent = `started by ${run.started_by} · parameters ${JSON.stringify(run.parameters)}`;
    const at = layout(run.steps);
    const width = Math.max(...[...at.values()].map(p => p.x)) + NODE.width + NODE.pad;
    const height = Math.max(...[...at.values()].map(p => p.y)) + NODE.height + NODE.pad;
    const edges = run.steps.flatMap(s =>
      (s.depends_on || [])
        .filter(d => at.has(d))
        .map(d => {
          const a = at.get(d)!;
          const b = at.get(s.name)!;
          const [x1, y1, x2, y2] = [a.x + NODE.width, a.y + NODE.height / 2, b.x, b.y + NODE.height / 2];
          const mid = (x1 + x2) / 2;
          return svg('path', { class: 'mlplat-dag-edge', d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}` });
        })
    );
    const nodes = run.steps.map(s => this.stepNode(run, s, at.get(s.name)!));
    this.graph.replaceChildren(svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img' }, ...edges, ...nodes));
  }

  private stepNode(run: Run, s: Step, p: { x: number; y: number }): SVGElement {
    const state = shownState(s);
    const title = svg('title', {}, s.error ? `${s.name}: ${s.error}` : s.cached_from ? `${s.name}: reused ${s.cached_from}` : s.name);
    const box = svg('rect', { x: p.x, y: p.y, width: NODE.width, height: NODE.height, rx: 6, class: 'mlplat-dag-box' });
    const name = svg('text', { x: p.x + 10, y: p.y + 20, class: 'mlplat-dag-name' }, s.name);
    const line = svg('text', { x: p.x + 10, y: p.y + 38, class: 'mlplat-dag-state' }, state);
    const more = svg('text', { x: p.x + 10, y: p.y + 52, class: 'mlplat-dag-detail' }, detail(s));
    const log = svg('text', { x: p.x + NODE.width - 10, y: p.y + 20, class: 'mlplat-dag-log', 'text-anchor': 'end', 'data-step-log': s.name }, 'log');
    log.addEventListener('click', e => {
      e.stopPropagation();
      void openStepLog(this.app, run.id, s.name);
    });
    const g = svg('g', { class: `mlplat-dag-node mlplat-dag-${state}`, 'data-step': s.name, 'data-state': state, tabindex: 0 }, title, box, name, line, more, log);
    const open = () => (s.notebook ? void openStepNotebook(this.app, run.id, s.name) : void openStepLog(this.app, run.id, s.name));
    g.addEventListener('click', open);
    g.addEventListener('keydown', e => {
      if ((e as KeyboardEvent).key === 'Enter') {
        open();
      }
    });
    return g;
  }

  private async cancel(): Promise<void> {
    const answer = await showDialog({
      title: `Cancel run ${this.runId}?`,
      body: 'Running steps are stopped where they run; the run stays resumable.',
      buttons: [Dialog.cancelButton({ label: 'Keep running' }), Dialog.warnButton({ label: 'Cancel run' })]
    });
    if (!answer.button.accept) {
      return;
    }
    try {
      await request<Run>(`pipelines/runs/${encodeURIComponent(this.runId)}/cancel`, { method: 'POST' });
    } catch (err) {
      await showError(`Cancel ${this.runId}`, err);
    }
    await this.refresh();
  }
}

/** Open a step's executed notebook (the server copies it under the root when it lives in the workspace). */
export async function openStepNotebook(app: JupyterFrontEnd, runId: string, step: string): Promise<void> {
  try {
    const copied = await request<{ paths: string[] }>(`pipelines/runs/${encodeURIComponent(runId)}/steps/${encodeURIComponent(step)}/open`, {
      method: 'POST'
    });
    await app.commands.execute('docmanager:open', { path: copied.paths[0] });
  } catch (err) {
    await showError(`Open ${step} of ${runId}`, err);
  }
}

/** A step's log in the main area (its end, as the server keeps it), refreshed while the run runs. */
export async function openStepLog(app: JupyterFrontEnd, runId: string, step: string): Promise<void> {
  const pre = h('pre', { class: 'mlplat-log', 'data-step-log-text': `${runId}/${step}` });
  const content = new Widget({ node: h('div', { class: 'mlplat-joblog' }, pre) });
  const widget = new MainAreaWidget({ content });
  widget.id = `mlplat-steplog-${runId}-${step}`;
  widget.title.label = `${step} log · ${runId}`;
  widget.title.closable = true;
  app.shell.add(widget, 'main', { mode: 'split-bottom' });
  const load = async () => {
    if (widget.isDisposed) {
      return;
    }
    try {
      const [log, run] = await Promise.all([
        request<{ text: string; truncated: boolean }>(`pipelines/runs/${encodeURIComponent(runId)}/steps/${encodeURIComponent(step)}/log`),
        request<Run>(`pipelines/runs/${encodeURIComponent(runId)}`)
      ]);
      pre.textContent = (log.truncated ? '… (the start is cut)\n' : '') + (log.text || '(nothing logged yet)');
      if (run.status === 'running') {
        window.setTimeout(() => void load(), 2000);
      }
    } catch (err) {
      pre.textContent = err instanceof Error ? err.message : String(err);
    }
  };
  await load();
}

/** Open (or bring forward) the picture of run `runId`. */
export function openRunView(app: JupyterFrontEnd, runId: string): PipelineRunView {
  const id = `mlplat-run-${runId}`;
  for (const w of app.shell.widgets('main')) {
    if (w.id === `${id}-panel`) {
      app.shell.activateById(w.id);
      return (w as MainAreaWidget<PipelineRunView>).content;
    }
  }
  const view = new PipelineRunView(app, runId);
  const panel = new MainAreaWidget({ content: view });
  panel.id = `${id}-panel`;
  panel.title.label = `Run ${runId}`;
  panel.title.closable = true;
  app.shell.add(panel, 'main');
  app.shell.activateById(panel.id);
  return view;
}
