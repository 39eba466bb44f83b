import * as React from 'react';

import { ICluster, IClusterSite } from '../api';
import { costText, formatAge } from '../format';
import { groupSitesByKind } from '../sites';

export interface IClusterActions {
  select(id: string): void;
  scale(id: string, site: string, workers: number): void;
  shutdown(id: string): void;
  /** Forget a stopped cluster's record. */
  remove(id: string): void;
  /**
   * Start a stopped cluster again with its settings and deployments; a
   * returned promise settles when the request is done.
   */
  startAgain(id: string): Promise<unknown> | void;
  /** Forget every stopped cluster's record. */
  clearStopped(): void;
  useInNotebook(id: string): void;
  /** The menu of the cluster's dashboard panes, at the page position `at`. */
  openDashboard(id: string, at?: { x: number; y: number }): void;
}

function SiteRow(props: {
  cluster: ICluster;
  site: IClusterSite;
  actions: IClusterActions;
}): JSX.Element {
  const { cluster, site, actions } = props;
  const scale = (workers: number) => (event: React.MouseEvent) => {
    event.stopPropagation();
    actions.scale(cluster.id, site.name, workers);
  };
  const running = cluster.status !== 'stopped';
  return (
    <li
      className="lepton-SiteRow"
      data-testid={`lepton-scale-${site.name}`}
      data-kind={site.kind}
      data-workers={site.workers}
    >
      <div className="lepton-SiteRow-main">
        <span className="lepton-SiteRow-name">{site.name}</span>
        {site.gpus > 0 && (
          <span className="lepton-Badge lepton-Badge-gpu">{site.gpus} GPU</span>
        )}
        <div className="lepton-SiteRow-detail">
          {site.threads} thr · {site.memory}
          {costText(site.cost_per_hour) ? ` · ${costText(site.cost_per_hour)}` : ''}
        </div>
      </div>
      <span className="lepton-Scale">
        <button
          className="lepton-IconButton lepton-scale-down"
          title={`One worker less on ${site.name}`}
          disabled={!running || site.workers <= 0}
          onClick={scale(site.workers - 1)}
        >
          −
        </button>
        <span className="lepton-Scale-count" data-testid="lepton-site-workers">
          {site.workers}
        </span>
        <button
          className="lepton-IconButton lepton-scale-up"
          title={`One worker more on ${site.name}`}
          disabled={!running}
          onClick={scale(site.workers + 1)}
        >
          +
        </button>
      </span>
    </li>
  );
}

function ClusterItem(props: {
  cluster: ICluster;
  selected: boolean;
  now: number;
  actions: IClusterActions;
}): JSX.Element {
  const { cluster, selected, now, actions } = props;
  const act = (f: (id: string) => void) => (event: React.MouseEvent) => {
    event.stopPropagation();
    f(cluster.id);
  };
  return (
    <li
      className={`lepton-ClusterItem${selected ? ' lepton-mod-selected' : ''}`}
      data-testid="lepton-cluster-item"
      data-cluster-id={cluster.id}
      data-status={cluster.status}
      onClick={() => actions.select(cluster.id)}
    >
      <div className="lepton-ClusterItem-header">
        <span className="lepton-ClusterItem-name" title={cluster.id}>
          {cluster.name}
        </span>
        <span className={`lepton-Status lepton-Status-${cluster.status}`}>
          {cluster.status}
        </span>
        {costText(cluster.cost_per_hour) && (
          <span className="lepton-ClusterItem-cost">
            {costText(cluster.cost_per_hour)}
          </span>
        )}
      </div>
      <div className="lepton-ClusterItem-meta">
        {cluster.owner} · {cluster.team} · {cluster.profile} ·{' '}
        {formatAge(cluster.created, now)}
      </div>
      {groupSitesByKind(cluster.sites).map(group => (
        <div key={group.kind} className="lepton-KindGroup">
          <div className="lepton-KindGroup-title">
            <span className={`lepton-Badge lepton-Badge-${group.kind}`}>
              {group.kind}
            </span>
            {group.workers} worker{group.workers === 1 ? '' : 's'}
            {group.gpus > 0 ? ` · ${group.gpus} GPU` : ''}
          </div>
          <ul className="lepton-SiteList">
            {group.sites.map(site => (
              <SiteRow
                key={site.name}
                cluster={cluster}
                site={site}
                actions={actions}
              />
            ))}
          </ul>
        </div>
      ))}
      <div className="lepton-ClusterItem-actions">
        <button
          className="jp-mod-styled jp-mod-accept"
          data-testid="lepton-use-in-notebook"
          onClick={act(actions.useInNotebook)}
        >
          Use in notebook
        </button>
        <button
          className="jp-mod-styled"
          data-testid="lepton-open-dashboard"
          onClick={event => {
            event.stopPropagation();
            const box = event.currentTarget.getBoundingClientRect();
            actions.openDashboard(cluster.id, { x: box.left, y: box.bottom });
          }}
          disabled={!cluster.dashboard_link}
          title="Open the Dask dashboard's panes as tabs"
          aria-haspopup="menu"
        >
          Dashboard ▾
        </button>
        <button
          className="jp-mod-styled jp-mod-warn"
          data-testid="lepton-shutdown"
          onClick={act(actions.shutdown)}
        >
          Shut down
        </button>
      </div>
    </li>
  );
}

/** When and why a stopped cluster stopped: `"stopped 5m ago: the Jupyter server stopped"`. */
export function stoppedText(cluster: ICluster, now: number = Date.now()): string {
  const when = cluster.stopped_at
    ? `stopped ${formatAge(cluster.stopped_at, now)} ago`
    : 'stopped';
  return cluster.stopped_reason ? `${when}: ${cluster.stopped_reason}` : when;
}

/** A stopped cluster: what it was, when and why it stopped, "Start again" and "Remove". */
function StoppedItem(props: {
  cluster: ICluster;
  now: number;
  actions: IClusterActions;
}): JSX.Element {
  const { cluster, now, actions } = props;
  const [starting, setStarting] = React.useState(false);
  const startAgain = () => {
    setStarting(true);
    void Promise.resolve(actions.startAgain(cluster.id))
      .catch(() => undefined)
      .then(() => setStarting(false));
  };
  const workers = groupSitesByKind(cluster.sites)
    .map(g => `${g.workers} ${g.kind}`)
    .join(' + ');
  return (
    <li
      className="lepton-ClusterItem lepton-mod-stopped"
      data-testid="lepton-cluster-item"
      data-cluster-id={cluster.id}
      data-status={cluster.status}
    >
      <div className="lepton-ClusterItem-header">
        <span className="lepton-ClusterItem-name" title={cluster.id}>
          {cluster.name}
        </span>
        <span className="lepton-Status lepton-Status-stopped">stopped</span>
        <button
          className="jp-mod-styled jp-mod-accept lepton-StartAgainButton"
          data-testid="lepton-start-again"
          title="Start this cluster again with its settings and deployments"
          disabled={starting}
          onClick={startAgain}
        >
          Start again
        </button>
        <button
          className="jp-mod-styled lepton-RemoveButton"
          data-testid="lepton-remove"
          title="Forget this stopped cluster"
          onClick={() => actions.remove(cluster.id)}
        >
          Remove
        </button>
      </div>
      <div className="lepton-ClusterItem-meta">
        {cluster.owner} · {cluster.team} · {cluster.profile}
        {workers ? ` · ${workers} workers` : ''}
      </div>
      <div
        className="lepton-ClusterItem-meta lepton-StoppedReason"
        data-testid="lepton-stopped-reason"
        title={cluster.stopped_at ? new Date(cluster.stopped_at).toString() : undefined}
      >
        {stoppedText(cluster, now)}
      </div>
    </li>
  );
}

/**
 * The clusters the user may see; clicking a running one selects it for the
 * live view. Stopped ones are collapsed under "Stopped (n)".
 */
export function ClusterList(props: {
  clusters: ICluster[];
  selectedId: string | null;
  actions: IClusterActions;
  now?: number;
}): JSX.Element {
  const now = props.now ?? Date.now();
  const running = props.clusters.filter(c => c.status !== 'stopped');
  const stopped = props.clusters.filter(c => c.status === 'stopped');
  return (
    <>
      {running.length === 0 ? (
        <div className="lepton-Empty" data-testid="lepton-no-clusters">
          No running cluster. Start one with “New cluster”.
        </div>
      ) : (
        <ul className="lepton-ClusterList" data-testid="lepton-cluster-list">
          {running.map(cluster => (
            <ClusterItem
              key={cluster.id}
              cluster={cluster}
              selected={cluster.id === props.selectedId}
              now={now}
              actions={props.actions}
            />
          ))}
        </ul>
      )}
      {stopped.length > 0 && (
        <details className="lepton-Stopped" data-testid="lepton-stopped">
          <summary>
            <span className="lepton-Stopped-title">Stopped ({stopped.length})</span>
            <button
              className="jp-mod-styled lepton-RemoveButton"
              data-testid="lepton-clear-stopped"
              title="Forget every stopped cluster"
              onClick={event => {
                event.preventDefault();
                props.actions.clearStopped();
              }}
            >
              Clear stopped
            </button>
          </summary>
          <ul className="lepton-ClusterList">
            {stopped.map(cluster => (
              <StoppedItem
                key={cluster.id}
                cluster={cluster}
                now={now}
                actions={props.actions}
              />
            ))}
          </ul>
        </details>
      )}
    </>
  );
}
