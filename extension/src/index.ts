// The mlplat JupyterLab extension: the "ML Platform" sidebar, "Run notebook with parameters" and "Schedule this
// notebook" (command palette and notebook toolbar), and launcher entries that copy templates into the current folder.
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, ToolbarButton } from '@jupyterlab/apputils';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { ILauncher } from '@jupyterlab/launcher';
import { INotebookModel, INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';
import { DisposableDelegate, IDisposable } from '@lumino/disposable';
import { Copied, Template, request, showError } from './api';
import { runWithParameters, scheduleNotebook } from './notebook';
import { openRunView } from './pipeline';
import { MlplatSidebar } from './sidebar';

const ICON = new LabIcon({
  name: 'mlplat:icon',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">' +
    '<circle cx="5" cy="6" r="2.5"/><circle cx="5" cy="18" r="2.5"/><circle cx="19" cy="12" r="2.5"/>' +
    '<path d="M7 7l10 4M7 17l10-4" stroke="#616161" stroke-width="1.6" fill="none"/></g></svg>'
});

const CMD = {
  run: 'mlplat:run-notebook',
  schedule: 'mlplat:schedule-notebook',
  refresh: 'mlplat:refresh',
  openJob: 'mlplat:open-job-log',
  openRun: 'mlplat:open-pipeline-run',
  copy: 'mlplat:copy-template'
};

/** Adds "Run with parameters" to every notebook's toolbar. */
class RunButton implements DocumentRegistry.IWidgetExtension<NotebookPanel, INotebookModel> {
  constructor(
    private readonly app: JupyterFrontEnd,
    private readonly done: () => void
  ) {}
  createNew(panel: NotebookPanel): IDisposable {
    const button = new ToolbarButton({
      className: 'mlplat-run-button',
      icon: ICON,
      label: 'Run with parameters',
      tooltip: 'Run this notebook with parameters through the mlplat pipeline runner',
      onClick: async () => {
        await panel.context.save();
        await runWithParameters(this.app, panel.context.path);
        this.done();
      }
    });
    panel.toolbar.insertItem(10, 'mlplatRun', button);
    return new DisposableDelegate(() => button.dispose());
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'mlplat:plugin',
  description: 'mlplat: features, jobs, models, deployments and pipelines in JupyterLab',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ILauncher, ILayoutRestorer, ISettingRegistry, IDefaultFileBrowser],
  activate: (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker,
    palette: ICommandPalette | null,
    launcher: ILauncher | null,
    restorer: ILayoutRestorer | null,
    settings: ISettingRegistry | null,
    browser: IDefaultFileBrowser | null
  ) => {
    let defaultAlias = 'champion';
    const sidebar = new MlplatSidebar(app, () => defaultAlias);
    sidebar.title.icon = ICON;
    app.shell.add(sidebar, 'left', { rank: 900 });
    restorer?.add(sidebar, sidebar.id);

    if (settings) {
      void settings.load(plugin.id).then(s => {
        const apply = () => {
          sidebar.setInterval(s.get('refreshSeconds').composite as number);
          defaultAlias = s.get('defaultAlias').composite as string;
        };
        apply();
        s.changed.connect(apply);
      });
    } else {
      sidebar.setInterval(10);
    }

    const currentPath = () => notebooks.currentWidget?.context.path;
    app.commands.addCommand(CMD.run, {
      label: 'Run notebook with parameters',
      caption: 'Run the current notebook through the pipeline runner with parameters from its parameters cell',
      isEnabled: () => !!currentPath(),
      execute: async () => {
        const panel = notebooks.currentWidget;
        if (!panel) {
          return;
        }
        await panel.context.save();
        const run = await runWithParameters(app, panel.context.path);
        void sidebar.refresh();
        return run;
      }
    });
    app.commands.addCommand(CMD.schedule, {
      label: 'Schedule this notebook',
      caption: 'Run the current notebook on a cron schedule with parameters',
      isEnabled: () => !!currentPath(),
      execute: async () => {
        const path = currentPath();
        return path ? scheduleNotebook(path) : null;
      }
    });
    app.commands.addCommand(CMD.refresh, { label: 'Refresh the ML Platform sidebar', execute: () => sidebar.refresh() });
    app.commands.addCommand(CMD.openJob, {
      label: args => `Open the log of job ${args.jobId ?? ''}`,
      execute: args => sidebar.jobs.open(String(args.jobId))
    });
    app.commands.addCommand(CMD.openRun, {
      label: args => `Open pipeline run ${args.runId ?? ''}`,
      caption: 'The run as a graph: each step live, its duration and backend; click a step for its notebook',
      execute: args => openRunView(app, String(args.runId))
    });
    app.commands.addCommand(CMD.copy, {
      label: args => String(args.label ?? args.name ?? 'Copy an mlplat template'),
      caption: args => String(args.description ?? ''),
      icon: ICON,
      execute: async args => {
        const folder = browser?.model.path ?? '';
        try {
          const copied = await request<Copied>('templates/copy', { method: 'POST', body: { name: String(args.name), folder } });
          await browser?.model.refresh();
          return app.commands.execute('docmanager:open', { path: copied.paths[0] });
        } catch (err) {
          await showError(`Copy template ${args.name}`, err);
        }
      }
    });
    for (const command of [CMD.run, CMD.schedule, CMD.refresh]) {
      palette?.addItem({ command, category: 'ML Platform' });
    }
    app.docRegistry.addWidgetExtension('Notebook', new RunButton(app, () => void sidebar.refresh()));

    if (launcher) {
      void request<Template[]>('templates')
        .then(templates =>
          templates.forEach((t, rank) =>
            launcher.add({
              command: CMD.copy,
              category: 'ML Platform',
              rank,
              args: { name: t.name, label: `${t.kind}: ${t.name}`, description: t.description }
            })
          )
        )
        .catch(err => console.warn('mlplat: no templates for the launcher', err));
    }
  }
};

export default plugin;
