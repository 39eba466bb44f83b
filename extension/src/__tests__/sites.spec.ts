import type { IClusterSite, ISnapshot, IWorkerSnapshot } from '../api';
import { groupSitesByKind, groupWorkersBySite, profileShape, requestedWorkers } from '../sites';

function worker(name: string, site: string, kind: any, extra: Partial<IWorkerSnapshot> = {}): IWorkerSnapshot {
  return {
    name,
    address: `tls://127.0.0.1:${name.length}`,
    site,
    kind,
    nthreads: 2,
    memory_used: 100,
    memory_limit: 1000,
    cpu: 10,
    gpus: [],
    processing: 1,
    resources: {},
    used_resources: {},
    jobs: {},
    cost_per_hour: 0.1,
    ...extra
  };
}

function snapshot(workers: IWorkerSnapshot[], sites: ISnapshot['sites']): ISnapshot {
  return {
    cluster: 'c1',
    time: 0,
    scheduler: 'tls://127.0.0.1:8786',
    workers,
    sites,
    jobs: [],
    totals: { workers: 0, nthreads: 0, memory_used: 0, memory_limit: 0, gpus: 0, processing: 0, cost_per_hour: 0 }
  };
}

const site = (name: string, kind: string, workers: number) => ({
  name, kind, workers, nthreads: 0, memory_used: 0, memory_limit: 0, gpus: 0, processing: 0, cost_per_hour: 0
});

describe('groupWorkersBySite', () => {
  it('orders cloud before edge and workers naturally', () => {
    const groups = groupWorkersBySite(
      snapshot(
        [worker('edge-10', 'edge', 'edge'), worker('cloud-0', 'cloud', 'cloud'), worker('edge-2', 'edge', 'edge')],
        [site('edge', 'edge', 2), site('cloud', 'cloud', 1)]
      )
    );
    expect(groups.map(g => g.name)).toEqual(['cloud', 'edge']);
    expect(groups[1].workers.map(w => w.name)).toEqual(['edge-2', 'edge-10']);
    expect(groups[1].summary.workers).toBe(2);
  });

  it('keeps empty sites and sums sites the server did not list', () => {
    const groups = groupWorkersBySite(
      snapshot(
        [
          worker('x1', 'lab', 'unknown', { gpus: [{ index: 0, name: 'T4', utilization: 5, memory_used: 1, memory_total: 2 }] }),
          worker('x2', 'lab', 'unknown')
        ],
        [site('edge', 'edge', 0)]
      )
    );
    expect(groups.map(g => [g.name, g.workers.length])).toEqual([['edge', 0], ['lab', 2]]);
    const lab = groups[1].summary;
    expect([lab.workers, lab.nthreads, lab.memory_limit, lab.gpus, lab.processing]).toEqual([2, 4, 2000, 1, 2]);
    expect(lab.cost_per_hour).toBeCloseTo(0.2);
  });
});

describe('groupSitesByKind and profileShape', () => {
  const sites: IClusterSite[] = [
    { name: 'edge-b', kind: 'edge' as const, workers: 1, gpus: 0, threads: 1, memory: '1GiB', cost_per_hour: 0 },
    { name: 'gpu', kind: 'cloud' as const, workers: 2, gpus: 1, threads: 4, memory: '8GiB', cost_per_hour: 1 },
    { name: 'edge-a', kind: 'edge' as const, workers: 2, gpus: 0, threads: 1, memory: '1GiB', cost_per_hour: 0 }
  ];
  it('groups sites by kind with worker and GPU totals', () => {
    const groups = groupSitesByKind(sites);
    expect(groups.map(g => [g.kind, g.workers, g.gpus, g.sites.map(s => s.name)])).toEqual([
      ['cloud', 2, 1, ['gpu']],
      ['edge', 3, 0, ['edge-a', 'edge-b']]
    ]);
  });
  it('derives the default request of a profile and counts overrides per site', () => {
    const shape = profileShape({ name: 'hybrid', description: '', sites });
    expect(shape).toEqual({
      kinds: {
        edge: { sites: 2, perSite: null, total: 3 },
        cloud: { sites: 1, perSite: 2, total: 2 }
      },
      gpus: 1
    });
    expect(requestedWorkers(shape, {})).toBe(5);
    // edge: 4 means 4 on each of the two edge sites.
    expect(requestedWorkers(shape, { edge: 4 })).toBe(10);
    const auto = profileShape({ name: 'g', description: '', sites: [{ ...sites[1], gpus: 'auto' }, sites[0]] });
    expect(auto.gpus).toBe('auto');
    expect(profileShape(undefined)).toEqual({ kinds: {}, gpus: 0 });
  });
});
