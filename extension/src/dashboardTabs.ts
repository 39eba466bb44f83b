/**
 * Dask dashboard panes as JupyterLab main-area tabs, and the per-cluster menu
 * that lists them. The pages come through the Jupyter server's proxied,
 * permission-checked route (see `dashboard.ts`).
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { MainAreaWidget, Notification } from '@jupyterlab/apputils';
import { IFrame } from '@jupyterlab/ui-components';
import { ReadonlyPartialJSONObject } from '@lumino/coreutils';
import { Menu } from '@lumino/widgets';

import { ICluster } from './api';
import { paneById, panesFor, paneUrl, paneWidgetId, proxiedRoot } from './dashboard';
import { leptonIcon } from './icon';
import { LeptonModel } from './model';

export namespace DashboardCommandIDs {
  /** Open one pane (`args.pane`) of cluster `args.id` as a tab. */
  export const openPane = 'lepton:open-dashboard-pane';
  /** The menu of a cluster's panes, at `args.x`, `args.y`. */
  export const menu = 'lepton:dashboard-menu';
}

/** The cluster named by `args.id`, or the selected one. */
function clusterOf(model: LeptonModel, args: ReadonlyPartialJSONObject): ICluster | null {
  const id = typeof args.id === 'string' ? args.id : model.selectedId;
  return model.clusters.find(c => c.id === id) ?? null;
}

/** The open pane tabs, by widget id: a second click shows the same tab. */
const openTabs = new Map<string, MainAreaWidget<IFrame>>();

/**
 * Open `paneId` of a cluster as a tab. `cluster` is the sidebar's record, or
 * just the id and name a notebook's cluster view links with (the server decides
 * whether the user may see it).
 */
function openPane(
  app: JupyterFrontEnd,
  cluster: ICluster | { id: string; name: string },
  paneId: string
): void {
  const pane = paneById(paneId);
  const baseUrl = app.serviceManager.serverSettings.baseUrl;
  const url = !pane
    ? ''
    : 'sites' in cluster
      ? paneUrl(cluster, pane)
      : proxiedRoot(baseUrl, cluster.id) + pane.route;
  if (!pane || !url) {
    Notification.error(`No dashboard pane ${paneId} for cluster ${cluster.name}.`, {
      autoClose: 6000
    });
    return;
  }
  const id = paneWidgetId(cluster.id, pane);
  const existing = openTabs.get(id);
  if (existing && !existing.isDisposed) {
    app.shell.activateById(id);
    return;
  }
  // Scripts and same-origin: bokeh runs in the page and opens its WebSocket to this server.
  const content = new IFrame({ sandbox: ['allow-scripts', 'allow-same-origin'] });
  content.url = url;
  content.addClass('lepton-DashboardPane');
  const widget = new MainAreaWidget({ content });
  widget.id = id;
  widget.title.label = `${pane.label} · ${cluster.name}`;
  widget.title.caption = `Dask dashboard of ${cluster.name}: ${pane.label}`;
  widget.title.icon = leptonIcon;
  widget.title.closable = true;
  widget.node.dataset.testid = 'lepton-dashboard-tab';
  widget.node.dataset.pane = pane.id;
  widget.node.dataset.clusterId = cluster.id;
  openTabs.set(id, widget);
  widget.disposed.connect(() => openTabs.delete(id));
  app.shell.add(widget, 'main');
  app.shell.activateById(id);
}

/** Cluster ids as the server's routes accept them. */
const CLUSTER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/**
 * A click on a pane link of a notebook's cluster view (`data-lepton-pane`,
 * `data-lepton-cluster`, see `lepton_lab.views`) opens the pane as a tab
 * instead of a browser tab. The link only picks a cluster id and one of the
 * known panes: the URL is this server's own proxied route, nothing else.
 */
function onPaneLinkClick(app: JupyterFrontEnd, event: MouseEvent): void {
  if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) {
    return; // the browser's own "open in a new tab" stays possible
  }
  const link = (event.target as Element | null)?.closest?.('a[data-lepton-pane]');
  if (!(link instanceof HTMLElement)) {
    return;
  }
  const { leptonPane: pane, leptonCluster: id, leptonClusterName: name } = link.dataset;
  if (!pane || !id || !CLUSTER_ID.test(id) || !paneById(pane)) {
    return;
  }
  event.preventDefault();
  void app.commands.execute(DashboardCommandIDs.openPane, { id, pane, name: name ?? id });
}

export function registerDashboardCommands(app: JupyterFrontEnd, model: LeptonModel): void {
  const { commands } = app;
  document.body.addEventListener('click', event => onPaneLinkClick(app, event));

  commands.addCommand(DashboardCommandIDs.openPane, {
    label: args => {
      const pane = typeof args.pane === 'string' ? paneById(args.pane) : undefined;
      return pane ? pane.label : 'Open Dask Dashboard Pane';
    },
    caption: 'Open this pane of the Dask dashboard as a tab',
    isEnabled: args => {
      const cluster = clusterOf(model, args);
      return !!cluster && panesFor(cluster).some(p => p.id === args.pane);
    },
    execute: args => {
      if (typeof args.pane !== 'string' || typeof args.id !== 'string') {
        return;
      }
      const known = clusterOf(model, args);
      const name = typeof args.name === 'string' ? args.name : args.id;
      openPane(app, known ?? { id: args.id, name }, args.pane);
    }
  });

  commands.addCommand(DashboardCommandIDs.menu, {
    label: 'Dask Dashboard Panes…',
    isEnabled: args => {
      const cluster = clusterOf(model, args);
      return !!cluster && panesFor(cluster).length > 0;
    },
    execute: args => {
      const cluster = clusterOf(model, args);
      if (!cluster) {
        return;
      }
      const menu = new Menu({ commands });
      menu.addClass('lepton-DashboardMenu');
      menu.node.dataset.testid = 'lepton-dashboard-menu';
      for (const pane of panesFor(cluster)) {
        menu.addItem({ command: DashboardCommandIDs.openPane, args: { id: cluster.id, pane: pane.id } });
      }
      menu.addItem({ type: 'separator' });
      menu.addItem({ command: 'lepton:open-dashboard', args: { id: cluster.id } });
      menu.aboutToClose.connect(() => setTimeout(() => menu.dispose(), 0));
      const x = typeof args.x === 'number' ? args.x : window.innerWidth / 2;
      const y = typeof args.y === 'number' ? args.y : window.innerHeight / 3;
      menu.open(x, y);
    }
  });
}
