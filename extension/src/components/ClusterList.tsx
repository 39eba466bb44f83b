import * as React from 'react';

import { ICluster, IClusterSite } from '../api';
import { formatAge, formatCost } from '../format';
import { groupSitesByKind } from '../sites';

export interface IClusterActions {
  select(id: string): void;
  scale(id: string, site: string, workers: number): void;
  shutdown(id: string): void;
  useInNotebook(id: string): void;
  openDashboard(id: string): void;
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
          {site.threads} thr · {site.memory} · {formatCost(site.cost_per_hour)}
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
        <span className="lepton-ClusterItem-cost">
          {formatCost(cluster.cost_per_hour)}
        </span>
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
          disabled={cluster.status === 'stopped'}
        >
          Use in notebook
        </button>
        <button
          className="jp-mod-styled"
          data-testid="lepton-open-dashboard"
          onClick={act(actions.openDashboard)}
          disabled={!cluster.dashboard_link}
        >
          Dashboard
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

/** The clusters the user may see; clicking one selects it for the live view. */
export function ClusterList(props: {
  clusters: ICluster[];
  selectedId: string | null;
  actions: IClusterActions;
  now?: number;
}): JSX.Element {
  const now = props.now ?? Date.now();
  if (props.clusters.length === 0) {
    return (
      <div className="lepton-Empty" data-testid="lepton-no-clusters">
        No clusters yet. Start one with “New cluster”.
      </div>
    );
  }
  return (
    <ul className="lepton-ClusterList" data-testid="lepton-cluster-list">
      {props.clusters.map(cluster => (
        <ClusterItem
          key={cluster.id}
          cluster={cluster}
          selected={cluster.id === props.selectedId}
          now={now}
          actions={props.actions}
        />
      ))}
    </ul>
  );
}
