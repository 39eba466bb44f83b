/**
 * Grouping of sites and workers by site and kind (cloud first, then edge),
 * shared by the cluster list and the live allocation view. Pure functions.
 */
import type {
  IClusterSite,
  IProfile,
  ISiteSnapshot,
  ISnapshot,
  IWorkerSnapshot,
  SiteKind
} from './api';

const KIND_ORDER: { [kind: string]: number } = { cloud: 0, edge: 1 };

/** Sort key: cloud, edge, then anything else; by name within a kind. */
export function compareSites(
  a: { kind: string; name: string },
  b: { kind: string; name: string }
): number {
  const ka = KIND_ORDER[a.kind] ?? 2;
  const kb = KIND_ORDER[b.kind] ?? 2;
  return ka !== kb ? ka - kb : a.name.localeCompare(b.name);
}

/** One site of a snapshot with its workers. */
export interface ISiteGroup {
  name: string;
  kind: string;
  /** The server's totals for the site; summed from workers if it sent none. */
  summary: ISiteSnapshot;
  workers: IWorkerSnapshot[];
}

/**
 * The workers of a snapshot grouped by site, sites ordered cloud → edge →
 * other, workers by name. A site the server lists without workers still shows
 * (it may be scaling up); a worker whose site is not listed gets a group of its own.
 */
export function groupWorkersBySite(snapshot: ISnapshot): ISiteGroup[] {
  const groups = new Map<string, ISiteGroup>();
  for (const site of snapshot.sites || []) {
    groups.set(site.name, {
      name: site.name,
      kind: site.kind,
      summary: site,
      workers: []
    });
  }
  const unlisted = new Set<string>();
  for (const worker of snapshot.workers || []) {
    const name = worker.site || 'unknown';
    let group = groups.get(name);
    if (!group) {
      group = {
        name,
        kind: worker.kind,
        summary: emptySite(name, worker.kind),
        workers: []
      };
      groups.set(name, group);
      unlisted.add(name);
    }
    group.workers.push(worker);
  }
  for (const name of unlisted) {
    const group = groups.get(name)!;
    group.summary = sumWorkers(name, group.kind, group.workers);
  }
  const result = Array.from(groups.values());
  for (const group of result) {
    group.workers.sort((a, b) =>
      a.name.localeCompare(b.name, undefined, { numeric: true })
    );
  }
  return result.sort(compareSites);
}

function emptySite(name: string, kind: string): ISiteSnapshot {
  return {
    name,
    kind,
    workers: 0,
    nthreads: 0,
    memory_used: 0,
    memory_limit: 0,
    gpus: 0,
    processing: 0,
    cost_per_hour: 0
  };
}

function sumWorkers(
  name: string,
  kind: string,
  workers: IWorkerSnapshot[]
): ISiteSnapshot {
  const site = emptySite(name, kind);
  for (const w of workers) {
    site.workers += 1;
    site.nthreads += w.nthreads;
    site.memory_used += w.memory_used;
    site.memory_limit += w.memory_limit;
    site.gpus += (w.gpus || []).length;
    site.processing += w.processing;
    site.cost_per_hour += w.cost_per_hour;
  }
  return site;
}

/** The sites of a cluster grouped by kind, with worker and GPU counts. */
export interface IKindGroup {
  kind: string;
  sites: IClusterSite[];
  workers: number;
  gpus: number;
}

export function groupSitesByKind(sites: IClusterSite[]): IKindGroup[] {
  const groups = new Map<string, IKindGroup>();
  for (const site of [...sites].sort(compareSites)) {
    let group = groups.get(site.kind);
    if (!group) {
      group = { kind: site.kind, sites: [], workers: 0, gpus: 0 };
      groups.set(site.kind, group);
    }
    group.sites.push(site);
    group.workers += site.workers;
    group.gpus += site.gpus;
  }
  return Array.from(groups.values());
}

/** The sites of one kind in a profile. */
export interface IKindShape {
  /** How many sites of this kind. */
  sites: number;
  /** Workers on each site, or null when the sites differ. */
  perSite: number | null;
  /** Workers on all sites of this kind. */
  total: number;
}

/** What a profile asks for by default, per site kind. */
export interface IProfileShape {
  kinds: { [kind in SiteKind]?: IKindShape };
  /** Sum of the sites' GPU counts, or `"auto"` when a site takes every GPU found. */
  gpus: number | 'auto';
}

/**
 * The default request of a profile. A request's `workers.<kind>` applies to each
 * site of that kind, so the form needs the number of sites per kind to count
 * the workers it asks for. Site `gpus` counts are per site, so they add up.
 */
export function profileShape(profile: IProfile | undefined): IProfileShape {
  const shape: IProfileShape = { kinds: {}, gpus: 0 };
  for (const site of profile?.sites || []) {
    const kind = shape.kinds[site.kind];
    if (!kind) {
      shape.kinds[site.kind] = { sites: 1, perSite: site.workers, total: site.workers };
    } else {
      kind.sites += 1;
      kind.total += site.workers;
      if (kind.perSite !== site.workers) {
        kind.perSite = null;
      }
    }
    if (site.gpus === 'auto' || shape.gpus === 'auto') {
      shape.gpus = 'auto';
    } else {
      shape.gpus += Number(site.gpus) || 0;
    }
  }
  return shape;
}

/** Workers a request would start: per-kind overrides apply to each site of the kind. */
export function requestedWorkers(
  shape: IProfileShape,
  overrides: { [kind in SiteKind]?: number }
): number {
  let total = 0;
  for (const kind of Object.keys(shape.kinds) as SiteKind[]) {
    const k = shape.kinds[kind]!;
    const asked = overrides[kind];
    total += asked === undefined ? k.total : asked * k.sites;
  }
  return total;
}
