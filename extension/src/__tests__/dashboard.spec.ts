import type { ICluster } from '../api';
import {
  DASHBOARD_PANES,
  clusterGpus,
  dashboardRoot,
  paneById,
  paneUrl,
  paneWidgetId,
  panesFor,
  proxiedRoot
} from '../dashboard';

function cluster(extra: Partial<ICluster> = {}, gpus = 0): ICluster {
  return {
    id: 'abc123',
    name: 'ward',
    owner: 'ann',
    team: 'medical',
    profile: 'local',
    created: '2026-03-01T10:00:00Z',
    status: 'running',
    scheduler_address: 'tls://127.0.0.1:1234',
    dashboard_link: '/user/ann/lepton/dashboard/abc123/status',
    cost_per_hour: 0,
    connect_code: '',
    sites: [
      { name: 'cloud', kind: 'cloud', workers: 2, gpus, threads: 1, memory: '1 GiB', cost_per_hour: 0 },
      { name: 'edge', kind: 'edge', workers: 1, gpus: 0, threads: 1, memory: '1 GiB', cost_per_hour: 0 }
    ],
    ...extra
  };
}

describe('dashboard pane URLs', () => {
  it('sit below the proxied dashboard link, base URL included', () => {
    const task = paneById('task-stream')!;
    expect(paneUrl(cluster(), task)).toBe('/user/ann/lepton/dashboard/abc123/individual-task-stream');
    expect(paneUrl(cluster(), 'individual-progress')).toBe('/user/ann/lepton/dashboard/abc123/individual-progress');
    expect(paneUrl(cluster(), '/individual-workers')).toBe('/user/ann/lepton/dashboard/abc123/individual-workers');
  });

  it('work for a direct link and drop its query and fragment', () => {
    expect(dashboardRoot('http://127.0.0.1:8787/status')).toBe('http://127.0.0.1:8787/');
    expect(dashboardRoot('/lepton/dashboard/x/status?theme=dark#top')).toBe('/lepton/dashboard/x/');
    expect(dashboardRoot('/lepton/dashboard/x/')).toBe('/lepton/dashboard/x/');
    const direct = cluster({ dashboard_link: 'http://127.0.0.1:8787/status' });
    expect(paneUrl(direct, 'individual-task-stream')).toBe('http://127.0.0.1:8787/individual-task-stream');
  });

  it('are empty for a cluster without a dashboard', () => {
    expect(dashboardRoot('')).toBe('');
    expect(paneUrl(cluster({ dashboard_link: '' }), 'individual-task-stream')).toBe('');
    expect(paneUrl(cluster({ status: 'stopped' }), 'individual-task-stream')).toBe('');
  });

  it('for a cluster known only by id, use this server\'s proxied route, id quoted', () => {
    expect(proxiedRoot('/user/ann/', 'abc123')).toBe('/user/ann/lepton/dashboard/abc123/');
    expect(proxiedRoot('http://127.0.0.1:8888', 'a b/c')).toBe('http://127.0.0.1:8888/lepton/dashboard/a%20b%2Fc/');
  });
});

describe('panes offered', () => {
  it('leave out the GPU panes for a cluster without GPUs', () => {
    const ids = panesFor(cluster()).map(p => p.id);
    expect(ids).toEqual(['task-stream', 'progress', 'workers', 'memory', 'cluster-memory']);
  });

  it('include the GPU panes when a site has GPUs', () => {
    const c = cluster({}, 2);
    expect(clusterGpus(c)).toBe(2);
    expect(panesFor(c).map(p => p.id)).toContain('gpu-utilization');
    expect(panesFor(c)).toHaveLength(DASHBOARD_PANES.length);
  });

  it('are none for a stopped cluster', () => {
    expect(panesFor(cluster({ status: 'stopped', dashboard_link: '' }))).toEqual([]);
  });

  it('name one tab per cluster and pane', () => {
    const task = paneById('task-stream')!;
    expect(paneWidgetId('abc123', task)).toBe('lepton-dashboard-abc123-task-stream');
    expect(paneWidgetId('abc123', task)).not.toBe(paneWidgetId('def456', task));
    expect(new Set(DASHBOARD_PANES.map(p => p.route)).size).toBe(DASHBOARD_PANES.length);
  });
});
