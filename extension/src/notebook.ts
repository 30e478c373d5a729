// "Run notebook with parameters" and "Schedule this notebook": a form generated from the notebook's
// `parameters` cell (read by the server with papermill's inspection), then the pipeline runner does the work.
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Widget } from '@lumino/widgets';
import { NotebookParameter, NotebookParameters, Run, Schedule, request, showError } from './api';
import { h } from './dom';
import { openStepNotebook } from './pipeline';

type Value = string | number | boolean | unknown[] | Record<string, unknown> | null;

/** The form's field for one parameter; `read()` gives the typed value, or undefined when left at the default. */
function field(p: NotebookParameter): { row: HTMLElement; read: () => Value | undefined } {
  const def = p.default === null || p.default === undefined ? '' : typeof p.default === 'string' ? p.default : JSON.stringify(p.default);
  const choices = p.choices ?? null;
  if (choices && choices.length) {
    const select = h(
      'select',
      { class: 'jp-mod-styled', name: p.name },
      choices.map((c, i) => h('option', { value: String(i), selected: JSON.stringify(c) === JSON.stringify(p.default) }, typeof c === 'string' ? c : JSON.stringify(c)))
    ) as HTMLSelectElement;
    const row = h(
      'label',
      { class: 'mlplat-param' },
      h('span', { class: 'mlplat-param-name' }, p.name),
      h('span', { class: 'mlplat-muted' }, 'choice'),
      select,
      p.help ? h('span', { class: 'mlplat-muted' }, p.help.replace(/^#\s*/, '')) : null
    );
    const read = (): Value | undefined => {
      const chosen = choices[Number(select.value)] as Value;
      return JSON.stringify(chosen) === JSON.stringify(p.default) && !p.required ? undefined : chosen;
    };
    return { row, read };
  }
  let input: HTMLInputElement;
  if (p.type === 'bool') {
    input = h('input', { type: 'checkbox', name: p.name, checked: p.default === true }) as HTMLInputElement;
  } else {
    input = h('input', {
      class: 'jp-mod-styled',
      name: p.name,
      type: p.type === 'int' || p.type === 'float' ? 'number' : 'text',
      step: p.type === 'float' ? 'any' : undefined,
      value: def,
      placeholder: p.required ? 'required' : ''
    }) as HTMLInputElement;
  }
  const row = h(
    'label',
    { class: 'mlplat-param' },
    h('span', { class: 'mlplat-param-name' }, p.name),
    h('span', { class: 'mlplat-muted' }, p.type || 'any'),
    input,
    p.help ? h('span', { class: 'mlplat-muted' }, p.help.replace(/^#\s*/, '')) : null
  );
  const read = (): Value | undefined => {
    if (p.type === 'bool') {
      return input.checked === (p.default === true) ? undefined : input.checked;
    }
    const raw = input.value;
    if (raw === def && !p.required) {
      return undefined;
    }
    if (p.type === 'int') {
      return raw === '' ? null : parseInt(raw, 10);
    }
    if (p.type === 'float') {
      return raw === '' ? null : parseFloat(raw);
    }
    if (p.type === 'list' || p.type === 'dict' || p.type === null || p.type === undefined) {
      try {
        return JSON.parse(raw);
      } catch {
        return raw;
      }
    }
    return raw;
  };
  return { row, read };
}

async function askParameters(path: string, extra: HTMLElement[] = [], okLabel = 'Run'): Promise<Record<string, Value> | null> {
  const info = await request<NotebookParameters>('notebooks/parameters', { query: { path } });
  const fields = info.parameters.map(field);
  const body = new Widget({
    node: h(
      'div',
      { class: 'mlplat-params' },
      ...extra,
      fields.length ? fields.map(f => f.row) : h('div', { class: 'mlplat-empty' }, 'The parameters cell sets nothing.')
    )
  });
  const answer = await showDialog({ title: `${okLabel}: ${path}`, body, buttons: [Dialog.cancelButton(), Dialog.okButton({ label: okLabel })] });
  if (!answer.button.accept) {
    return null;
  }
  const params: Record<string, Value> = {};
  info.parameters.forEach((p, i) => {
    const v = fields[i].read();
    if (v !== undefined) {
      params[p.name] = v;
    }
  });
  return params;
}

/** Run the notebook at `path` with the parameters the user gives; progress as a notification, then open the result. */
export async function runWithParameters(app: JupyterFrontEnd, path: string): Promise<Run | null> {
  let params: Record<string, Value> | null;
  try {
    params = await askParameters(path);
  } catch (err) {
    await showError(`Run ${path}`, err);
    return null;
  }
  if (params === null) {
    return null;
  }
  let run: Run;
  try {
    run = await request<Run>('notebooks/run', { method: 'POST', body: { path, parameters: params } });
  } catch (err) {
    await showError(`Run ${path}`, err);
    return null;
  }
  const id = Notification.emit(`Running ${path} (${run.id})…`, 'in-progress', { autoClose: false });
  while (run.status === 'running') {
    await new Promise(r => setTimeout(r, 1000));
    try {
      run = await request<Run>(`pipelines/runs/${encodeURIComponent(run.id)}`);
    } catch (err) {
      Notification.update({ id, message: `Lost track of ${run.id}: ${err instanceof Error ? err.message : err}`, type: 'error' });
      return null;
    }
  }
  const step = run.steps[0];
  const ok = run.status === 'succeeded';
  Notification.update({
    id,
    message: ok ? `${path} ran in ${step?.seconds?.toFixed(1) ?? '?'} s (${run.id})` : `${path} ${run.status}: ${step?.error?.split('\n')[0] ?? ''}`,
    type: ok ? 'success' : 'error',
    autoClose: 8000,
    actions: step?.notebook ? [{ label: 'Open result', callback: () => void openStepNotebook(app, run.id, step.name) }] : []
  });
  if (step?.notebook) {
    await openStepNotebook(app, run.id, step.name);
  }
  return run;
}

/** Schedule the notebook at `path` on a cron expression, with parameters. */
export async function scheduleNotebook(path: string): Promise<Schedule | null> {
  const stem = path.split('/').pop()!.replace(/\.ipynb$/, '').replace(/[^A-Za-z0-9._-]+/g, '-');
  const name = h('input', { class: 'jp-mod-styled', name: 'schedule-name', value: `${stem}-nightly` }) as HTMLInputElement;
  const cron = h('input', { class: 'jp-mod-styled', name: 'cron', value: '0 2 * * *', title: 'minute hour day month weekday; or @daily, @hourly' }) as HTMLInputElement;
  const tz = h('input', { class: 'jp-mod-styled', name: 'timezone', value: Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC' }) as HTMLInputElement;
  const extra = [
    h('label', { class: 'mlplat-param' }, h('span', { class: 'mlplat-param-name' }, 'name'), name),
    h('label', { class: 'mlplat-param' }, h('span', { class: 'mlplat-param-name' }, 'cron'), cron),
    h('label', { class: 'mlplat-param' }, h('span', { class: 'mlplat-param-name' }, 'time zone'), tz),
    h('div', { class: 'mlplat-subtitle' }, 'Parameters')
  ];
  try {
    const params = await askParameters(path, extra, 'Schedule');
    if (params === null) {
      return null;
    }
    const s = await request<Schedule>('schedules', {
      method: 'POST',
      body: { name: name.value.trim(), path, cron: cron.value.trim(), timezone: tz.value.trim(), parameters: params }
    });
    Notification.success(`Scheduled ${s.name}: next run ${s.next_slot ?? '–'} (needs a running \`mlplat scheduler\`)`, { autoClose: 8000 });
    return s;
  } catch (err) {
    await showError(`Schedule ${path}`, err);
    return null;
  }
}
