import * as React from 'react';

import type { IJobSnapshot } from '../api';
import { formatResources } from '../format';
import { jobPhase, jobProgress, jobStatus } from '../jobs';

/** A job's done/total as a bar: done in green, erred in red. */
export function JobProgressBar(props: { job: IJobSnapshot }): JSX.Element {
  const p = jobProgress(props.job);
  return (
    <div
      className="lepton-Bar lepton-JobProgress"
      title={`${p.label} tasks done${props.job.erred ? `, ${props.job.erred} erred` : ''}`}
    >
      <div className="lepton-JobProgress-done" style={{ width: `${p.done}%` }} />
      <div className="lepton-JobProgress-erred" style={{ width: `${p.erred}%` }} />
      <span className="lepton-Bar-label">{p.label}</span>
    </div>
  );
}

export function JobRow(props: { job: IJobSnapshot }): JSX.Element {
  const { job } = props;
  const phase = jobPhase(job);
  return (
    <tr data-testid="lepton-job-row" data-job={job.name} data-phase={phase}>
      <td className="lepton-JobRow-name" title={job.name}>
        {job.name}
      </td>
      <td>
        <JobProgressBar job={job} />
        <div className={`lepton-JobRow-status lepton-mod-${phase}`}>
          {jobStatus(job)}
        </div>
      </td>
      <td title={job.workers.join(', ')}>
        {job.tasks > 0 ? `${job.tasks} on ${job.sites.join(', ')}` : '–'}
      </td>
      <td>{formatResources(job.resources)}</td>
    </tr>
  );
}

/** The jobs of a snapshot: running ones first, then those that finished. */
export function JobTable(props: { jobs: IJobSnapshot[] }): JSX.Element {
  return (
    <table className="lepton-Table lepton-JobTable" data-testid="lepton-jobs">
      <colgroup>
        <col className="lepton-col-job" />
        <col className="lepton-col-progress" />
        <col className="lepton-col-running" />
        <col className="lepton-col-holds" />
      </colgroup>
      <thead>
        <tr>
          <th>job</th>
          <th>done</th>
          <th>running</th>
          <th>holds</th>
        </tr>
      </thead>
      <tbody>
        {props.jobs.length === 0 ? (
          <tr>
            <td colSpan={4} className="lepton-Empty">
              No job is running.
            </td>
          </tr>
        ) : (
          props.jobs.map(job => <JobRow key={job.name} job={job} />)
        )}
      </tbody>
    </table>
  );
}
