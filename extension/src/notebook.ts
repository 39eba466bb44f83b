/**
 * "Use in notebook": put the cluster's connect code in a code cell of the
 * active notebook (a new one when none is open) and run it.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import {
  INotebookTracker,
  NotebookActions,
  NotebookPanel
} from '@jupyterlab/notebook';

/** The notebook to use: the current one, or a new one on the default kernel. */
async function targetNotebook(
  app: JupyterFrontEnd,
  tracker: INotebookTracker
): Promise<NotebookPanel> {
  const current = tracker.currentWidget;
  if (current) {
    return current;
  }
  await app.serviceManager.kernelspecs.ready;
  const kernelName =
    app.serviceManager.kernelspecs.specs?.default || 'python3';
  return (await app.commands.execute('notebook:create-new', {
    kernelName
  })) as NotebookPanel;
}

/**
 * Insert `code` below the active cell (or into it when it is an empty code
 * cell) and run it. Resolves to whether the cell ran without error.
 */
export async function insertAndRun(
  app: JupyterFrontEnd,
  tracker: INotebookTracker,
  code: string
): Promise<boolean> {
  const panel = await targetNotebook(app, tracker);
  app.shell.activateById(panel.id);
  await panel.context.ready;
  await panel.sessionContext.ready;
  const notebook = panel.content;
  const active = notebook.activeCell;
  const reuse =
    active !== null &&
    active !== undefined &&
    active.model.type === 'code' &&
    active.model.sharedModel.getSource().trim() === '';
  if (!reuse) {
    NotebookActions.insertBelow(notebook);
  }
  const cell = notebook.activeCell;
  if (!cell) {
    return false;
  }
  cell.model.sharedModel.setSource(code);
  return NotebookActions.run(notebook, panel.sessionContext);
}
