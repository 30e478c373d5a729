// Calls to the mlplat server extension (/mlplat/api/...). The types come from extension/openapi.json, which
// `mlplat jupyter openapi` generates from the Python models: nothing here restates the contract by hand.
import { showDialog, Dialog } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import type { components } from './openapi';

export type Schemas = components['schemas'];
export type Job = Schemas['Job'];
export type LogChunk = Schemas['LogChunk'];
export type ModelSummary = Schemas['ModelSummary'];
export type ModelVersion = Schemas['ModelVersion'];
export type AliasEvent = Schemas['AliasEvent'];
export type GateResult = Schemas['GateResult'];
export type Deployment = Schemas['Deployment'];
export type FeatureView = Schemas['FeatureView'];
export type Definition = Schemas['Definition'];
export type Lineage = Schemas['Lineage'];
export type Run = Schemas['Run'];
export type Step = Schemas['Step'];
export type NotebookParameters = Schemas['NotebookParameters'];
export type NotebookParameter = Schemas['NotebookParameter'];
export type Schedule = Schemas['Schedule'];
export type Template = Schemas['Template'];
export type Copied = Schemas['Copied'];
export type ErrorBody = Schemas['ErrorBody'];

/** An error the server answered with: the core's message, and what to do about it. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly body: Partial<ErrorBody>
  ) {
    super(body.message || `HTTP ${status}`);
  }
  get hint(): string | null | undefined {
    return this.body.hint;
  }
}

const settings = () => ServerConnection.makeSettings();

function url(path: string, query?: Record<string, string | number | undefined>): string {
  const s = settings();
  let u = URLExt.join(s.baseUrl, 'mlplat', 'api', path);
  const q = Object.entries(query || {}).filter(([, v]) => v !== undefined && v !== '');
  if (q.length) {
    u += '?' + q.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`).join('&');
  }
  return u;
}

async function raiseFor(response: Response): Promise<never> {
  let body: Partial<ErrorBody> = {};
  try {
    body = await response.json();
  } catch {
    body = { message: `${response.status} ${response.statusText}` };
  }
  throw new ApiError(response.status, body);
}

/** GET/POST/DELETE a route; POST bodies are JSON. ServerConnection adds the token and the XSRF header. */
export async function request<T>(
  path: string,
  init: { method?: 'GET' | 'POST' | 'DELETE'; body?: unknown; query?: Record<string, string | number | undefined> } = {}
): Promise<T> {
  const response = await ServerConnection.makeRequest(
    url(path, init.query),
    {
      method: init.method || 'GET',
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
      headers: init.body === undefined ? undefined : { 'Content-Type': 'application/json' }
    },
    settings()
  );
  if (!response.ok) {
    await raiseFor(response);
  }
  if (response.status === 204) {
    return undefined as T;
  }
  return (await response.json()) as T;
}

/** Follow a job's log as the server streams it (chunked text), calling `onText` per chunk, until the job ends. */
export async function streamJobLog(jobId: string, onText: (text: string) => void, signal: AbortSignal): Promise<void> {
  const response = await ServerConnection.makeRequest(
    url(`jobs/${encodeURIComponent(jobId)}/log/stream`),
    { method: 'GET', signal },
    settings()
  );
  if (!response.ok) {
    await raiseFor(response);
  }
  const reader = response.body!.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) {
      break;
    }
    onText(decoder.decode(value, { stream: true }));
  }
}

/** Show a failed call in a dialog: the message, and the hint when the server gave one. */
export async function showError(title: string, err: unknown): Promise<void> {
  const body = document.createElement('div');
  body.className = 'mlplat-error';
  const msg = document.createElement('p');
  msg.textContent = err instanceof Error ? err.message : String(err);
  body.appendChild(msg);
  if (err instanceof ApiError && err.hint) {
    const hint = document.createElement('p');
    hint.className = 'mlplat-hint';
    hint.textContent = `What to do: ${err.hint}`;
    body.appendChild(hint);
  }
  const { Widget } = await import('@lumino/widgets');
  const w = new Widget({ node: body });
  await showDialog({ title, body: w, buttons: [Dialog.okButton()] });
}
