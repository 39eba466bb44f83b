import * as React from 'react';

import type { IJobSnapshot } from '../api';
import { JobTable } from '../components/JobTable';
import { formatDuration, jobPhase, jobProgress, jobStatus } from '../jobs';

// react-dom ships no types here; only this one function is used.
declare function require(module: 'react-dom/server'): {
  renderToStaticMarkup(element: React.ReactElement): string;
};
const { renderToStaticMarkup } = require('react-dom/server');

function job(extra: Partial<IJobSnapshot> = {}): IJobSnapshot {
  return {
    name: 'fraud-train',
    tasks: 0,
    workers: [],
    sites: [],
    resources: {},
    done: 0,
    total: 0,
    erred: 0,
    started: null,
    finished: null,
    elapsed: 0,
    ...extra
  };
}

const running = job({
  tasks: 2,
  workers: ['cloud-0', 'edge-hospital-a-1'],
  sites: ['cloud', 'edge-hospital-a'],
  resources: { threads: 2 },
  done: 118,
  total: 120,
  started: 1000,
  elapsed: 12.5
});
const finished = job({ name: 'score', done: 120, total: 120, started: 1000, finished: 1004.2, elapsed: 4.2 });

describe('formatDuration', () => {
  it('reads at a glance', () => {
    expect([0, 4.24, 59.96, 65, 3599, 3600, 7380].map(formatDuration)).toEqual([
      '0.0 s',
      '4.2 s',
      '60.0 s',
      '1m 05s',
      '59m 59s',
      '1h 00m',
      '2h 03m'
    ]);
    expect(formatDuration(-3)).toBe('0.0 s');
    expect(formatDuration(null)).toBe('–');
    expect(formatDuration(NaN)).toBe('–');
  });
});

describe('jobStatus', () => {
  it('says where a job stands', () => {
    const failed = job({ done: 3, erred: 2, total: 5, started: 1, finished: 2, elapsed: 1 });
    const stopped = job({ done: 1, total: 4, started: 1, finished: 4.1, elapsed: 3.1 });
    const waiting = job({ total: 8 });
    expect([running, finished, failed, stopped, waiting].map(jobStatus)).toEqual([
      'running 12.5 s',
      'done in 4.2 s',
      'done in 1.0 s, 2 erred',
      'stopped after 3.1 s',
      'waiting'
    ]);
    expect([running, finished, stopped, waiting].map(jobPhase)).toEqual([
      'running',
      'done',
      'stopped',
      'waiting'
    ]);
  });
});

describe('jobProgress', () => {
  it('splits the bar into done and erred parts', () => {
    expect(jobProgress(running)).toEqual({ done: (100 * 118) / 120, erred: 0, label: '118/120' });
    expect(jobProgress(job({ done: 3, erred: 2, total: 5 }))).toEqual({
      done: 60,
      erred: 40,
      label: '3/5'
    });
  });

  it('never overflows, nor divides by zero', () => {
    expect(jobProgress(job())).toEqual({ done: 0, erred: 0, label: '0/0' });
    expect(jobProgress(job({ done: 5, erred: 2, total: 5 }))).toEqual({
      done: 100,
      erred: 0,
      label: '5/5'
    });
  });
});

describe('JobTable', () => {
  it('shows done/total, a progress bar and the elapsed time of each job', () => {
    const html = renderToStaticMarkup(React.createElement(JobTable, { jobs: [running, finished] }));
    expect(html).toContain('data-job="fraud-train" data-phase="running"');
    expect(html).toContain('<span class="lepton-Bar-label">118/120</span>');
    expect(html).toMatch(/lepton-JobProgress-done" style="width:98\.3\d*%"/);
    expect(html).toContain('running 12.5 s');
    expect(html).toContain('title="cloud-0, edge-hospital-a-1">2 on cloud, edge-hospital-a</td>');
    expect(html).toContain('data-job="score" data-phase="done"');
    expect(html).toContain('<span class="lepton-Bar-label">120/120</span>');
    expect(html).toContain('done in 4.2 s');
  });

  it('says so when there is no job', () => {
    expect(renderToStaticMarkup(React.createElement(JobTable, { jobs: [] }))).toContain('No job is running.');
  });
});
