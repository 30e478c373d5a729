// The "ML Platform" sidebar: Features, Jobs, Models, Deployments, Pipelines. Every figure comes from
// /mlplat/api; actions (cancel, promote, rollback, open) ask for confirmation and show the server's errors.
import { Dialog, MainAreaWidget, showDialog } from '@jupyterlab/apputils';
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Widget } from '@lumino/widgets';
import {
  AliasEvent,
  Definition,
  Deployment,
  FeatureView,
  GateResult,
  Job,
  Lineage,
  ModelSummary,
  ModelVersion,
  Run,
  request,
  showError,
  streamJobLog
} from './api';
import { badge, h, table, when } from './dom';
import { openRunView, openStepNotebook } from './pipeline';

abstract class Section {
  /** refreshed on the sidebar's timer (states and metrics that change by themselves) */
  live = false;
  readonly node: HTMLDetailsElement;
  protected readonly content: HTMLElement;
  private readonly status: HTMLElement;
  private refreshes = 0;

  constructor(
    readonly id: string,
    title: string,
    open = true
  ) {
    this.content = h('div', { class: 'mlplat-section-body' });
    this.status = h('span', { class: 'mlplat-section-status' });
    const refresh = h('button', { class: 'mlplat-link', title: `Refresh ${title}`, onclick: () => void this.refresh() }, '↻');
    this.node = h(
      'details',
      { class: 'mlplat-section', 'data-section': id, open },
      h('summary', {}, h('span', { class: 'mlplat-section-title' }, title), this.status, refresh),
      this.content
    ) as HTMLDetailsElement;
  }

  async refresh(): Promise<void> {
    const mine = ++this.refreshes;
    this.node.setAttribute('aria-busy', 'true');   // until the newest content is in: what scripts and screen readers wait for
    try {
      const body = await this.load();
      if (mine === this.refreshes) {   // an older refresh that answers late must not overwrite a newer one
        this.content.replaceChildren(body);
        this.status.textContent = '';
      }
    } catch (err) {
      if (mine === this.refreshes) {
        this.status.textContent = '⚠';
        this.content.replaceChildren(
          h('div', { class: 'mlplat-error' }, err instanceof Error ? err.message : String(err))
        );
      }
    } finally {
      if (mine === this.refreshes) {
        this.node.removeAttribute('aria-busy');
      }
    }
  }

  protected abstract load(): Promise<HTMLElement>;
}

class FeaturesSection extends Section {
  constructor() {
    super('features', 'Features');
  }
  protected async load(): Promise<HTMLElement> {
    const views = await request<FeatureView[]>('features');
    if (!views.length) {
      return h('div', { class: 'mlplat-empty' }, 'No feature views yet: mlplat features apply FILE');
    }
    return h(
      'ul',
      { class: 'mlplat-list' },
      views.map(v => {
        const detail = h('div', { class: 'mlplat-detail' });
        const item = h(
          'li',
          { 'data-feature-view': v.name },
          h(
            'button',
            { class: 'mlplat-item', onclick: () => void this.expand(v.name, detail) },
            h('b', {}, `${v.name}`),
            ` v${v.version}`,
            h('span', { class: 'mlplat-muted' }, ` ${v.features.length} features · ${v.owner || 'no owner'} · ${v.classification || ''}`)
          ),
          detail
        );
        return item;
      })
    );
  }
  private async expand(name: string, detail: HTMLElement): Promise<void> {
    if (detail.childElementCount) {
      detail.replaceChildren();
      return;
    }
    try {
      const [versions, shown] = await Promise.all([
        request<Definition[]>(`features/${encodeURIComponent(name)}/versions`),
        request<Definition>(`features/${encodeURIComponent(name)}`)
      ]);
      const lineage = (shown as unknown as { lineage?: Lineage }).lineage;
      detail.replaceChildren(
        table(
          ['version', 'owner', 'source'],
          versions.map(v => [`v${v.version}`, String(v.definition.owner ?? '–'), String(v.definition.source ?? '–')])
        ),
        h('div', { class: 'mlplat-muted' }, 'upstream: ', (lineage?.upstream_nodes || []).join(', ') || '–'),
        h('div', { class: 'mlplat-muted' }, 'downstream: ', (lineage?.downstream_nodes || []).join(', ') || '–')
      );
    } catch (err) {
      await showError(`Feature view ${name}`, err);
    }
  }
}

type JobCost = NonNullable<Job['cost']>;

/** "0.0012 USD": small steps cost fractions of a cent, so no fixed two decimals. */
function money(c: JobCost): string {
  return `${Number(c.cost.toPrecision(3))} ${c.currency}`;
}

function costTitle(c: JobCost): string {
  return `${c.cpu_seconds.toFixed(1)} CPU-s over ${c.wall_seconds.toFixed(1)} s, ${c.attempts} attempt(s) measured`;
}

/** A job's log, streamed into the main area while it runs, with Cancel. */
export class JobLogView extends Widget {
  private readonly pre: HTMLElement;
  private readonly state: HTMLElement;
  private readonly abort = new AbortController();

  constructor(readonly jobId: string) {
    super();
    this.addClass('mlplat-joblog');
    this.id = `mlplat-job-${jobId}`;
    this.title.label = `Job ${jobId}`;
    this.title.closable = true;
    this.pre = h('pre', { class: 'mlplat-log', 'data-job-log': jobId });
    this.state = h('span', { class: 'mlplat-joblog-state' }, 'streaming…');
    const cancel = h('button', { class: 'jp-mod-styled jp-mod-warn', onclick: () => void this.cancel() }, 'Cancel job');
    this.node.append(h('div', { class: 'mlplat-toolbar' }, this.state, cancel), this.pre);
    void this.follow();
  }

  private async follow(): Promise<void> {
    try {
      await streamJobLog(this.jobId, text => {
        const atEnd = this.pre.scrollTop + this.pre.clientHeight >= this.pre.scrollHeight - 4;
        this.pre.append(text);
        if (atEnd) {
          this.pre.scrollTop = this.pre.scrollHeight;
        }
      }, this.abort.signal);
      const job = await request<Job>(`jobs/${encodeURIComponent(this.jobId)}`);
      this.state.replaceChildren('job ', badge(job.state), ...(job.cost ? [h('span', { class: 'mlplat-cost', title: costTitle(job.cost) }, ` · cost ${money(job.cost)}`)] : []));
    } catch (err) {
      if (!this.abort.signal.aborted) {
        this.state.textContent = 'log stream stopped';
        await showError(`Log of ${this.jobId}`, err);
      }
    }
  }

  private async cancel(): Promise<void> {
    const ok = await showDialog({
      title: `Cancel job ${this.jobId}?`,
      body: 'Every process of the job is stopped.',
      buttons: [Dialog.cancelButton({ label: 'Keep it running' }), Dialog.warnButton({ label: 'Cancel job' })]
    });
    if (!ok.button.accept) {
      return;
    }
    try {
      const job = await request<Job>(`jobs/${encodeURIComponent(this.jobId)}/cancel`, { method: 'POST' });
      this.state.replaceChildren('job ', badge(job.state));
    } catch (err) {
      await showError(`Cancel ${this.jobId}`, err);
    }
  }

  dispose(): void {
    this.abort.abort();
    super.dispose();
  }
}

class JobsSection extends Section {
  constructor(private readonly app: JupyterFrontEnd) {
    super('jobs', 'Jobs');
    this.live = true;
  }
  protected async load(): Promise<HTMLElement> {
    const jobs = await request<Job[]>('jobs', { query: { limit: 20 } });
    if (!jobs.length) {
      return h('div', { class: 'mlplat-empty' }, 'No jobs yet: mlplat jobs submit SPEC.yaml');
    }
    return h(
      'ul',
      { class: 'mlplat-list' },
      jobs.map(j =>
        h(
          'li',
          { 'data-job': j.id },
          h(
            'button',
            { class: 'mlplat-item', title: 'Open the live log', onclick: () => this.open(j.id) },
            badge(j.state),
            ' ',
            h('b', {}, j.name),
            h('span', { class: 'mlplat-muted' }, ` ${j.id} · ${j.backend} · ${when(j.submitted_at)}`),
            j.cost ? h('span', { class: 'mlplat-cost', 'data-job-cost': j.id, title: costTitle(j.cost) }, ` · ${money(j.cost)}`) : ''
          )
        )
      )
    );
  }
  open(jobId: string): void {
    const id = `mlplat-job-${jobId}`;
    const existing = Array.from(this.app.shell.widgets('main')).find(w => w.id === id);
    if (existing) {
      this.app.shell.activateById(id);
      return;
    }
    const w = new MainAreaWidget({ content: new JobLogView(jobId) });
    w.id = id;
    w.title.label = `Job ${jobId}`;
    this.app.shell.add(w, 'main');
    this.app.shell.activateById(id);
  }
}

class ModelsSection extends Section {
  constructor(private readonly defaultAlias: () => string) {
    super('models', 'Models');
  }
  protected async load(): Promise<HTMLElement> {
    const models = await request<ModelSummary[]>('models');
    if (!models.length) {
      return h('div', { class: 'mlplat-empty' }, 'No registered models yet: mlplat models register RUN_ID NAME');
    }
    return h(
      'ul',
      { class: 'mlplat-list' },
      models.map(m => {
        const detail = h('div', { class: 'mlplat-detail' });
        const aliases = Object.entries(m.aliases || {}).map(([a, v]) => `${a} → v${v}`).join(', ');
        return h(
          'li',
          { 'data-model': m.name },
          h(
            'button',
            { class: 'mlplat-item', onclick: () => void this.expand(m.name, detail, true) },
            h('b', {}, m.name),
            h('span', { class: 'mlplat-muted' }, ` latest v${m.latest_version ?? '–'} · ${aliases || 'no aliases'}`)
          ),
          detail
        );
      })
    );
  }

  async expand(name: string, detail: HTMLElement, toggle = false): Promise<void> {
    if (toggle && detail.childElementCount) {
      detail.replaceChildren();
      return;
    }
    try {
      const [versions, history] = await Promise.all([
        request<ModelVersion[]>(`models/${encodeURIComponent(name)}/versions`),
        request<AliasEvent[]>(`models/${encodeURIComponent(name)}/history`)
      ]);
      const rows = versions.map(v => [
        h('span', { 'data-version': v.version }, `v${v.version}`),
        v.aliases.join(', ') || '–',
        gateSummary(v),
        h(
          'button',
          { class: 'jp-mod-styled mlplat-small', 'data-promote': v.version, onclick: () => void this.promote(name, v, detail) },
          'Promote…'
        )
      ]);
      const aliasButtons = Array.from(new Set(versions.flatMap(v => v.aliases))).map(a =>
        h('button', { class: 'jp-mod-styled mlplat-small', 'data-rollback': a, onclick: () => void this.rollback(name, a, detail) }, `Roll back ${a}`)
      );
      detail.replaceChildren(
        table(['version', 'aliases', 'gates', ''], rows),
        h('div', { class: 'mlplat-actions' }, aliasButtons),
        h('div', { class: 'mlplat-subtitle' }, 'Alias history'),
        history.length
          ? table(
              ['when', 'alias', 'move', 'who', 'why'],
              [...history].reverse().map(e => [
                when(e.at),
                e.alias,
                `${e.action}: v${e.from_version ?? '–'} → v${e.to_version}`,
                e.principal || '–',
                e.reason || ''
              ])
            )
          : h('div', { class: 'mlplat-empty', 'data-history': 'empty' }, 'No alias has moved yet')
      );
      detail.setAttribute('data-loaded', name);
    } catch (err) {
      await showError(`Model ${name}`, err);
    }
  }

  private async promote(name: string, v: ModelVersion, detail: HTMLElement): Promise<void> {
    // every gate, run now: what the server will check again when the alias moves
    let results: GateResult[];
    try {
      results = await request<GateResult[]>(`models/${encodeURIComponent(name)}/versions/${v.version}/check`);
    } catch (err) {
      await showError(`Promote ${name} v${v.version}`, err);
      return;
    }
    const passed = results.every(g => g.passed);
    const gates = table(['gate', 'result', 'summary'], results.map(g => [g.gate, g.passed ? 'PASS' : 'FAIL', g.summary]));
    if (!passed) {
      await showDialog({
        title: `${name} v${v.version} cannot be promoted`,
        body: new Widget({ node: h('div', { class: 'mlplat-promote' }, h('p', {}, 'A gate fails:'), gates) }),
        buttons: [Dialog.okButton()]
      });
      return;
    }
    const alias = h('input', { class: 'jp-mod-styled', name: 'alias', value: this.defaultAlias() }) as HTMLInputElement;
    const reason = h('input', { class: 'jp-mod-styled', name: 'reason', placeholder: 'why (kept in the alias history)' }) as HTMLInputElement;
    const body = new Widget({
      node: h(
        'div',
        { class: 'mlplat-promote' },
        h('p', {}, `Every gate passes for ${name} v${v.version}:`),
        gates,
        h('label', {}, 'Alias ', alias),
        h('label', {}, 'Reason ', reason)
      )
    });
    const answer = await showDialog({
      title: `Promote ${name} v${v.version}`,
      body,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Promote' })],
      focusNodeSelector: 'input[name=alias]'
    });
    if (!answer.button.accept) {
      return;
    }
    try {
      await request<ModelVersion>(`models/${encodeURIComponent(name)}/promote`, {
        method: 'POST',
        body: { version: v.version, alias: alias.value.trim(), reason: reason.value }
      });
    } catch (err) {
      await showError(`Promote ${name} v${v.version}`, err);
    }
    await Promise.all([this.expand(name, detail), this.refreshSummary(name)]);
  }

  private async rollback(name: string, alias: string, detail: HTMLElement): Promise<void> {
    const answer = await showDialog({
      title: `Roll back ${name}@${alias}?`,
      body: `The alias goes back to the version it pointed at before its last move.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Roll back' })]
    });
    if (!answer.button.accept) {
      return;
    }
    try {
      await request<ModelVersion>(`models/${encodeURIComponent(name)}/rollback`, { method: 'POST', body: { alias, reason: 'rolled back from JupyterLab' } });
    } catch (err) {
      await showError(`Roll back ${name}@${alias}`, err);
    }
    await Promise.all([this.expand(name, detail), this.refreshSummary(name)]);
  }

  private async refreshSummary(name: string): Promise<void> {
    const li = this.node.querySelector(`li[data-model="${CSS.escape(name)}"] .mlplat-muted`);
    if (!li) {
      return;
    }
    const m = (await request<ModelSummary[]>('models')).find(x => x.name === name);
    if (m) {
      li.textContent = ` latest v${m.latest_version ?? '–'} · ${Object.entries(m.aliases || {}).map(([a, v]) => `${a} → v${v}`).join(', ') || 'no aliases'}`;
    }
  }
}

/** "✓ 5/5", or the failing gates' names; every gate's latest result in the tooltip. */
function gateSummary(v: ModelVersion): HTMLElement {
  const latest = new Map<string, boolean>();
  for (const g of v.gates) {
    latest.set(g.gate, g.passed);
  }
  const failed = Array.from(latest).filter(([, ok]) => !ok).map(([g]) => g);
  const text = !latest.size ? '–' : failed.length ? `✗ ${failed.join(', ')}` : `✓ ${latest.size}/${latest.size}`;
  const title = Array.from(latest, ([g, ok]) => `${g}: ${ok ? 'PASS' : 'FAIL'}`).join('\n');
  return h('span', { class: failed.length ? 'mlplat-gates-fail' : 'mlplat-gates-pass', title }, text);
}

class DeploymentsSection extends Section {
  constructor() {
    super('deployments', 'Deployments');
    this.live = true;
  }
  protected async load(): Promise<HTMLElement> {
    const deps = await request<Deployment[]>('deployments', { query: { window: '1h' } });
    if (!deps.length) {
      return h('div', { class: 'mlplat-empty' }, 'Nothing served yet: mlplat serve --config DEPLOYMENT.yaml');
    }
    return h(
      'div',
      {},
      deps.map(d =>
        h(
          'div',
          { class: 'mlplat-deployment', 'data-deployment': d.name },
          h('b', {}, d.name),
          h('span', { class: 'mlplat-muted' }, ` ${d.requests} requests in ${d.window} · last ${when(d.last_request)}`),
          h(
            'div',
            { class: 'mlplat-split' },
            Object.entries(d.variants)
              .filter(([, t]) => t.share !== null && t.share !== undefined)
              .map(([name, t], i) =>
                h('span', { class: `mlplat-split-part mlplat-c${i % 4}`, style: `flex: ${t.share}`, title: `${name}: ${((t.share || 0) * 100).toFixed(1)}%` }, name)
              )
          ),
          table(
            ['variant', 'weight', 'share', 'versions', 'p50 ms', 'p95 ms'],
            Object.entries(d.variants).map(([name, t]) => [
              name,
              d.weights?.[name] ?? '–',
              t.share === null || t.share === undefined ? 'shadow' : `${(t.share * 100).toFixed(1)}%`,
              t.versions.join(', '),
              t.p50_ms?.toFixed(2) ?? '–',
              t.p95_ms?.toFixed(2) ?? '–'
            ])
          )
        )
      )
    );
  }
}

class PipelinesSection extends Section {
  /** runs whose step table is open: a refresh keeps them open (it re-renders every run) */
  private readonly expanded = new Set<string>();

  constructor(private readonly app: JupyterFrontEnd) {
    super('pipelines', 'Pipelines');
  }
  protected async load(): Promise<HTMLElement> {
    const runs = await request<Run[]>('pipelines/runs', { query: { limit: 20 } });
    if (!runs.length) {
      return h('div', { class: 'mlplat-empty' }, 'No runs yet: run a notebook with parameters, or mlplat pipelines run FILE');
    }
    return h(
      'ul',
      { class: 'mlplat-list' },
      runs.map(r => {
        const steps = h('div', { class: 'mlplat-detail', hidden: !this.expanded.has(r.id) });
        steps.append(
          h(
            'div',
            { class: 'mlplat-actions' },
            h('button', { class: 'jp-mod-styled mlplat-small', 'data-open-run': r.id, onclick: () => void openRunView(this.app, r.id) }, 'Graph')
          ),
          table(
            ['step', 'status', 's', ''],
            r.steps.map(s => [
              s.name,
              badge(s.status === 'succeeded' && s.cached_from ? 'cached' : s.status),
              s.seconds?.toFixed(1) ?? '–',
              s.notebook
                ? h('button', { class: 'jp-mod-styled mlplat-small', 'data-open-step': s.name, onclick: () => void openStepNotebook(this.app, r.id, s.name) }, 'Open')
                : ''
            ])
          )
        );
        return h(
          'li',
          { 'data-run': r.id },
          h(
            'button',
            { class: 'mlplat-item', onclick: () => this.toggle(r.id, steps) },
            badge(r.status),
            ' ',
            h('b', {}, r.pipeline),
            h('span', { class: 'mlplat-muted' }, ` ${r.id} · ${when(r.created_at)}`)
          ),
          steps
        );
      })
    );
  }

  private toggle(runId: string, steps: HTMLElement): void {
    steps.hidden = !steps.hidden;
    if (steps.hidden) {
      this.expanded.delete(runId);
    } else {
      this.expanded.add(runId);
    }
  }
}

export class MlplatSidebar extends Widget {
  readonly sections: Section[];
  readonly jobs: JobsSection;
  private timer: number | undefined;

  constructor(app: JupyterFrontEnd, defaultAlias: () => string) {
    super();
    this.id = 'mlplat-sidebar';
    this.addClass('mlplat-sidebar');
    this.title.caption = 'ML Platform';
    this.jobs = new JobsSection(app);
    this.sections = [new FeaturesSection(), this.jobs, new ModelsSection(defaultAlias), new DeploymentsSection(), new PipelinesSection(app)];
    this.node.append(h('div', { class: 'mlplat-sidebar-title' }, 'ML Platform'), ...this.sections.map(s => s.node));
  }

  refresh(): Promise<void[]> {
    return Promise.all(this.sections.map(s => s.refresh()));
  }

  /** Refresh every `seconds` while the sidebar is shown (live job states and deployment metrics); 0 stops. */
  setInterval(seconds: number): void {
    window.clearInterval(this.timer);
    if (seconds > 0) {
      this.timer = window.setInterval(() => {
        if (this.isVisible) {
          this.sections.filter(s => s.live).forEach(s => void s.refresh());
        }
      }, seconds * 1000);
    }
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  dispose(): void {
    window.clearInterval(this.timer);
    super.dispose();
  }
}
