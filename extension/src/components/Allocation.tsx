import * as React from 'react';

import { ICluster, ISnapshot, IWorkerSnapshot } from '../api';
import {
  barWidth,
  formatBytes,
  costText,
  formatMemory,
  formatMemoryShort,
  formatPercent
} from '../format';
import { groupWorkersBySite } from '../sites';
import { StreamMode } from '../stream';
import { JobTable } from './JobTable';

function Bar(props: {
  value: number;
  label: string;
  kind?: string;
}): JSX.Element {
  const width = Math.max(0, Math.min(100, props.value));
  const level = width > 90 ? ' lepton-mod-high' : width > 70 ? ' lepton-mod-mid' : '';
  return (
    <div className={`lepton-Bar${level}`} title={props.label}>
      <div
        className={`lepton-Bar-fill lepton-Bar-${props.kind ?? 'cpu'}`}
        style={{ width: `${width}%` }}
      />
      <span className="lepton-Bar-label">{props.label}</span>
    </div>
  );
}

function WorkerRow(props: { worker: IWorkerSnapshot }): JSX.Element {
  const w = props.worker;
  const jobs = Object.keys(w.jobs || {});
  return (
    <tr
      className="lepton-WorkerRow"
      data-testid="lepton-worker-row"
      data-site={w.site}
      data-kind={w.kind}
      title={w.address}
    >
      <td className="lepton-WorkerRow-name">{w.name}</td>
      <td>
        <Bar value={w.cpu} label={formatPercent(w.cpu)} kind="cpu" />
      </td>
      <td>
        <Bar
          value={barWidth(w.memory_used, w.memory_limit)}
          label={formatMemoryShort(w.memory_used, w.memory_limit)}
          kind="memory"
        />
      </td>
      <td className="lepton-WorkerRow-gpus">
        {(w.gpus || []).length === 0
          ? '–'
          : w.gpus.map(g => (
              <span
                key={g.index}
                className="lepton-Badge lepton-Badge-gpu"
                title={`${g.name}${
                  g.memory_total
                    ? ` · ${formatMemory(g.memory_used ?? 0, g.memory_total)}`
                    : ''
                }`}
              >
                GPU{g.index} {formatPercent(g.utilization)}
              </span>
            ))}
      </td>
      <td className="lepton-Num" title={jobs.join(', ')}>
        {w.processing}
      </td>
    </tr>
  );
}

/** Live view of the selected cluster: per site and per worker, then the jobs. */
export function Allocation(props: {
  cluster: ICluster | null;
  snapshot: ISnapshot | null;
  mode: StreamMode;
  error: string | null;
}): JSX.Element {
  const { cluster, snapshot, mode, error } = props;
  if (!cluster) {
    return (
      <section className="lepton-Allocation" data-testid="lepton-allocation">
        <div className="lepton-Empty">Select a cluster to see its workers.</div>
      </section>
    );
  }
  return (
    <section
      className="lepton-Allocation"
      data-testid="lepton-allocation"
      data-cluster-id={cluster.id}
      data-mode={mode}
    >
      {error && <div className="lepton-Error">{error}</div>}
      {!snapshot ? (
        <div className="lepton-Empty">Waiting for the first snapshot of {cluster.name}…</div>
      ) : (
        <AllocationBody snapshot={snapshot} />
      )}
    </section>
  );
}

function AllocationBody(props: { snapshot: ISnapshot }): JSX.Element {
  const { snapshot } = props;
  const t = snapshot.totals;
  return (
    <>
      <div className="lepton-Totals" data-testid="lepton-totals">
        {t.workers} workers · {t.nthreads} threads ·{' '}
        {formatMemory(t.memory_used, t.memory_limit)} · {t.gpus} GPU ·{' '}
        {t.processing} tasks
        {costText(t.cost_per_hour) ? ` · ${costText(t.cost_per_hour)}` : ''}
      </div>
      {groupWorkersBySite(snapshot).map(group => (
        <div
          key={group.name}
          className="lepton-SiteBlock"
          data-testid="lepton-site"
          data-site={group.name}
          data-kind={group.kind}
        >
          <div className="lepton-SiteBlock-header">
            <span className={`lepton-Badge lepton-Badge-${group.kind}`}>
              {group.kind}
            </span>
            <span className="lepton-SiteBlock-name">{group.name}</span>
            <span className="lepton-SiteBlock-summary">
              {group.summary.workers} w · {group.summary.processing} tasks ·{' '}
              {formatBytes(group.summary.memory_used)}
              {costText(group.summary.cost_per_hour)
                ? ` · ${costText(group.summary.cost_per_hour)}`
                : ''}
            </span>
          </div>
          <table className="lepton-Table lepton-WorkerTable">
            <colgroup>
              <col className="lepton-col-worker" />
              <col className="lepton-col-cpu" />
              <col className="lepton-col-memory" />
              <col className="lepton-col-gpu" />
              <col className="lepton-col-tasks" />
            </colgroup>
            <thead>
              <tr>
                <th>worker</th>
                <th>CPU</th>
                <th>memory</th>
                <th>GPU</th>
                <th>tasks</th>
              </tr>
            </thead>
            <tbody>
              {group.workers.map(w => (
                <WorkerRow key={w.address || w.name} worker={w} />
              ))}
            </tbody>
          </table>
        </div>
      ))}
      <JobTable jobs={snapshot.jobs} />
    </>
  );
}
