/**
 * The Dask dashboard's panes a cluster card offers, and their URLs under the
 * cluster's dashboard link: the Jupyter server's proxied route
 * `<baseUrl>lepton/dashboard/<id>/`, which checks the user's right to read the
 * cluster. Pure functions: no widgets here.
 */
import type { ICluster } from './api';

/** One pane of Dask's dashboard (the page distributed serves at `route`). */
export interface IDashboardPane {
  /** Stable id, part of the tab's id. */
  id: string;
  label: string;
  /** Path below the dashboard's root, as distributed names it. */
  route: string;
  /** Shown only for a cluster with GPUs. */
  gpu?: boolean;
}

export const DASHBOARD_PANES: readonly IDashboardPane[] = [
  { id: 'task-stream', label: 'Task Stream', route: 'individual-task-stream' },
  { id: 'progress', label: 'Progress', route: 'individual-progress' },
  { id: 'workers', label: 'Workers', route: 'individual-workers' },
  { id: 'memory', label: 'Worker Memory', route: 'individual-workers-memory' },
  { id: 'cluster-memory', label: 'Cluster Memory', route: 'individual-cluster-memory' },
  { id: 'gpu-utilization', label: 'GPU Utilization', route: 'individual-gpu-utilization', gpu: true },
  { id: 'gpu-memory', label: 'GPU Memory', route: 'individual-gpu-memory', gpu: true }
];

/** GPUs held by the cluster's workers, over all its sites. */
export function clusterGpus(cluster: ICluster): number {
  return cluster.sites.reduce((n, s) => n + (s.gpus > 0 ? s.gpus : 0), 0);
}

/** The panes worth opening for `cluster`: none when it has no dashboard. */
export function panesFor(cluster: ICluster): IDashboardPane[] {
  if (cluster.status === 'stopped' || !cluster.dashboard_link) {
    return [];
  }
  const gpus = clusterGpus(cluster) > 0;
  return DASHBOARD_PANES.filter(p => gpus || !p.gpu);
}

/**
 * The dashboard's root, ending in `/`: the cluster's link without its last
 * segment (`/lepton/dashboard/abc/status` -> `/lepton/dashboard/abc/`), query and
 * fragment dropped. The server names the link: its proxied route wherever the
 * dashboard is served through Jupyter.
 */
export function dashboardRoot(link: string): string {
  const bare = link.split(/[?#]/, 1)[0];
  return bare ? bare.slice(0, bare.lastIndexOf('/') + 1) : '';
}

/**
 * The proxied dashboard root of a cluster known only by its id (a link in a
 * notebook's cluster view): `<baseUrl>lepton/dashboard/<id>/` on this server.
 */
export function proxiedRoot(baseUrl: string, clusterId: string): string {
  const base = baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`;
  return `${base}lepton/dashboard/${encodeURIComponent(clusterId)}/`;
}

/**
 * The URL of `pane` (a pane or a dashboard page such as `status`) for `cluster`,
 * or '' when the cluster has no dashboard (stopped, or no bokeh where it runs).
 */
export function paneUrl(cluster: ICluster, pane: IDashboardPane | string): string {
  const root = cluster.status === 'stopped' ? '' : dashboardRoot(cluster.dashboard_link);
  if (!root) {
    return '';
  }
  const route = typeof pane === 'string' ? pane : pane.route;
  return root + route.replace(/^\/+/, '');
}

/** The pane with this id, or undefined. */
export function paneById(id: string): IDashboardPane | undefined {
  return DASHBOARD_PANES.find(p => p.id === id);
}

/** The id of the main-area tab showing `pane` of cluster `clusterId`: one tab each. */
export function paneWidgetId(clusterId: string, pane: IDashboardPane): string {
  return `lepton-dashboard-${clusterId}-${pane.id}`;
}
