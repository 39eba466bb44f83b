/**
 * Every user action is a command, so the palette, the panel's buttons and
 * other extensions share one path. Failures become `Notification.error` with
 * the server's one-line message, then reject for the caller.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import {
  Dialog,
  ICommandPalette,
  InputDialog,
  Notification,
  showDialog
} from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ReadonlyPartialJSONObject } from '@lumino/coreutils';

import { APIError, ICluster, INewCluster } from './api';
import {
  countBounds,
  gpusField,
  outOfBounds,
  scaleUntilAccepted
} from './form';
import { startedAgainText } from './format';
import { LeptonModel } from './model';
import { insertAndRun } from './notebook';
import { askWorkers } from './workersDialog';

export namespace CommandIDs {
  export const openPanel = 'lepton:open-panel';
  export const newCluster = 'lepton:new-cluster';
  export const scaleCluster = 'lepton:scale-cluster';
  export const shutdownCluster = 'lepton:shutdown-cluster';
  export const removeCluster = 'lepton:remove-cluster';
  export const startAgain = 'lepton:start-cluster-again';
  export const clearStopped = 'lepton:clear-stopped';
  export const useInNotebook = 'lepton:use-in-notebook';
  export const openDashboard = 'lepton:open-dashboard';
  export const openTemplate = 'lepton:open-template';
  export const refresh = 'lepton:refresh';
}

const CATEGORY = 'Lepton Lab';

export interface ICommandContext {
  app: JupyterFrontEnd;
  model: LeptonModel;
  /** The sidebar panel's id, to reveal it. */
  panelId: string;
  notebooks: INotebookTracker | null;
  palette: ICommandPalette | null;
}

/** Show the error to the user, then rethrow it for the caller. */
function report(error: unknown): never {
  const message =
    error instanceof APIError || error instanceof Error
      ? error.message
      : String(error);
  Notification.error(message, { autoClose: 10_000 });
  throw error;
}

/** The cluster named by `args.id`, or the selected one. */
function clusterOf(
  model: LeptonModel,
  args: ReadonlyPartialJSONObject
): ICluster | null {
  const id = typeof args.id === 'string' ? args.id : model.selectedId;
  return model.clusters.find(c => c.id === id) ?? null;
}

/** The stopped cluster the command is about (`args.id`, else the selected one), or null. */
function stoppedOf(
  model: LeptonModel,
  args: ReadonlyPartialJSONObject
): ICluster | null {
  const cluster = clusterOf(model, args);
  return cluster?.status === 'stopped' ? cluster : null;
}

export function registerCommands(context: ICommandContext): void {
  const { app, model, panelId, notebooks, palette } = context;
  const { commands } = app;
  const hasCluster = (args: ReadonlyPartialJSONObject) =>
    clusterOf(model, args) !== null;

  commands.addCommand(CommandIDs.openPanel, {
    label: 'Open the Lepton Panel',
    execute: () => app.shell.activateById(panelId)
  });

  commands.addCommand(CommandIDs.refresh, {
    label: 'Refresh Lepton',
    execute: () => model.refresh()
  });

  commands.addCommand(CommandIDs.newCluster, {
    label: 'New Lepton Cluster…',
    caption:
      'Start a cluster; with `team` and `profile` arguments it starts at once, otherwise the form opens (`quiet`: the caller shows a refusal)',
    execute: async args => {
      if (typeof args.team !== 'string' || typeof args.profile !== 'string') {
        app.shell.activateById(panelId);
        model.formOpen = true;
        return;
      }
      const request: INewCluster = { team: args.team, profile: args.profile };
      if (typeof args.name === 'string' && args.name) {
        request.name = args.name;
      }
      if (args.workers && typeof args.workers === 'object') {
        request.workers = args.workers as INewCluster['workers'];
      }
      try {
        if (typeof args.gpus === 'number') {
          request.gpus = args.gpus;
        } else if (typeof args.gpus === 'string') {
          const gpus = gpusField(args.gpus);
          if (gpus.error) {
            throw new Error(`gpus: ${gpus.error}`);
          }
          request.gpus = gpus.value;
        }
        const cluster = await model.createCluster(request);
        Notification.success(`Cluster ${cluster.name} is starting.`, {
          autoClose: 4000
        });
        return cluster.id;
      } catch (error) {
        if (args.quiet === true) {
          throw error;
        }
        report(error);
      }
    }
  });

  commands.addCommand(CommandIDs.scaleCluster, {
    label: args =>
      typeof args.site === 'string'
        ? `Scale Site ${args.site}…`
        : 'Scale Lepton Cluster…',
    isEnabled: hasCluster,
    execute: async args => {
      const cluster = clusterOf(model, args);
      if (!cluster) {
        return;
      }
      let site = typeof args.site === 'string' ? args.site : null;
      if (site === null) {
        const names = cluster.sites.map(s => s.name);
        const choice = await InputDialog.getItem({
          title: `Scale ${cluster.name}: which site?`,
          items: names
        });
        if (!choice.button.accept || !choice.value) {
          return;
        }
        site = choice.value;
      }
      const current =
        cluster.sites.find(s => s.name === site || s.kind === site)?.workers ??
        0;
      // The served bounds of a scale request (none from an older server: the server decides).
      const bounds = countBounds(model.schemas.scale, 'workers');
      if (typeof args.workers === 'number' || typeof args.delta === 'number') {
        const workers =
          typeof args.workers === 'number'
            ? args.workers
            : current + (args.delta as number);
        try {
          const refusal = outOfBounds(workers, bounds);
          if (refusal !== undefined) {
            throw new Error(refusal);
          }
          await model.scaleCluster(cluster.id, site, workers);
        } catch (error) {
          report(error);
        }
        return;
      }
      try {
        await scaleUntilAccepted(
          (value, refusal) =>
            askWorkers(`Workers on ${site}`, value, refusal, bounds),
          workers => model.scaleCluster(cluster.id, site!, workers),
          current,
          bounds
        );
      } catch (error) {
        report(error);
      }
    }
  });

  commands.addCommand(CommandIDs.shutdownCluster, {
    label: 'Shut Down Lepton Cluster…',
    isEnabled: hasCluster,
    execute: async args => {
      const cluster = clusterOf(model, args);
      if (!cluster) {
        return;
      }
      const answer = await showDialog({
        title: 'Shut down the cluster?',
        body: `${cluster.name} (${cluster.id}) and its workers stop; running work is lost.`,
        buttons: [
          Dialog.cancelButton(),
          Dialog.warnButton({ label: 'Shut down' })
        ]
      });
      if (!answer.button.accept) {
        return;
      }
      try {
        await model.shutdownCluster(cluster.id);
        Notification.info(`Cluster ${cluster.name} was shut down.`, {
          autoClose: 4000
        });
      } catch (error) {
        report(error);
      }
    }
  });

  commands.addCommand(CommandIDs.removeCluster, {
    label: 'Remove Stopped Lepton Cluster',
    isEnabled: args => stoppedOf(model, args) !== null,
    execute: async args => {
      const cluster = stoppedOf(model, args);
      if (!cluster) {
        return;
      }
      try {
        await model.shutdownCluster(cluster.id);
      } catch (error) {
        report(error);
      }
    }
  });

  commands.addCommand(CommandIDs.startAgain, {
    label: 'Start Stopped Lepton Cluster Again',
    caption: 'Start this cluster again with its settings and deployments',
    isEnabled: args => stoppedOf(model, args) !== null,
    execute: async args => {
      const cluster = stoppedOf(model, args);
      if (!cluster) {
        return;
      }
      try {
        const started = await model.startClusterAgain(cluster.id);
        const { success, warning } = startedAgainText(started);
        Notification.success(success, { autoClose: 6000 });
        if (warning) {
          Notification.warning(warning, { autoClose: 10_000 });
        }
        return started.id;
      } catch (error) {
        report(error);
      }
    }
  });

  commands.addCommand(CommandIDs.clearStopped, {
    label: 'Clear Stopped Lepton Clusters',
    isEnabled: () => model.clusters.some(c => c.status === 'stopped'),
    execute: async () => {
      const kept = await model.clearStopped();
      if (kept.length > 0) {
        report(new Error(`Not removed: ${kept.join('; ')}`));
      }
    }
  });

  commands.addCommand(CommandIDs.useInNotebook, {
    label: 'Use Lepton Cluster in Notebook',
    caption: 'Insert a cell that connects to the cluster and run it',
    isEnabled: args => notebooks !== null && hasCluster(args),
    execute: async args => {
      const cluster = clusterOf(model, args);
      if (!cluster || !notebooks) {
        return;
      }
      try {
        const ok = await insertAndRun(app, notebooks, cluster.connect_code);
        if (!ok) {
          Notification.warning(
            'The connect cell did not run cleanly: see its output.',
            { autoClose: 6000 }
          );
        }
      } catch (error) {
        report(error);
      }
    }
  });

  commands.addCommand(CommandIDs.openDashboard, {
    label: 'Open Dask Dashboard in a Browser Tab',
    isEnabled: args => !!clusterOf(model, args)?.dashboard_link,
    execute: args => {
      const cluster = clusterOf(model, args);
      if (cluster?.dashboard_link) {
        window.open(cluster.dashboard_link, '_blank', 'noopener');
      }
    }
  });

  commands.addCommand(CommandIDs.openTemplate, {
    label: args =>
      typeof args.name === 'string'
        ? `Open a Copy of ${args.title ?? args.name}`
        : 'Open a Copy of a Lepton Template',
    execute: async args => {
      if (typeof args.team !== 'string' || typeof args.name !== 'string') {
        app.shell.activateById(panelId);
        return;
      }
      try {
        const path = await model.copyTemplate(args.team, args.name);
        return await commands.execute('docmanager:open', { path });
      } catch (error) {
        report(error);
      }
    }
  });

  if (palette) {
    for (const command of [
      CommandIDs.openPanel,
      CommandIDs.newCluster,
      CommandIDs.scaleCluster,
      CommandIDs.shutdownCluster,
      CommandIDs.removeCluster,
      CommandIDs.startAgain,
      CommandIDs.clearStopped,
      CommandIDs.useInNotebook,
      CommandIDs.openDashboard,
      CommandIDs.openTemplate,
      CommandIDs.refresh
    ]) {
      palette.addItem({ command, category: CATEGORY });
    }
  }
}
