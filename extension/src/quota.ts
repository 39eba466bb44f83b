/**
 * Quota bounds of the new-cluster form. The server is the authority (it answers
 * 403 with its own message); these bounds only set the inputs' limits and warn
 * early. Pure functions.
 */
import type { IQuota, IWhoAmI } from './api';

export type Resource = 'gpus' | 'workers' | 'clusters';

/** What is left of one resource for a request. */
export interface IBound {
  /** Most the user may still ask for; `null` when unlimited. */
  remaining: number | null;
  /** The quota that binds (`"team medical"` or `"user"`), or null when unlimited. */
  limitedBy: string | null;
  /** That quota's maximum and current use, to show "used of max". */
  max: number | null;
  used: number;
}

export type IBounds = { [r in Resource]: IBound };

const MAX_KEY: { [r in Resource]: keyof IQuota } = {
  gpus: 'max_gpus',
  workers: 'max_workers',
  clusters: 'max_clusters'
};

function remainingOf(quota: IQuota | undefined, resource: Resource) {
  if (!quota) {
    return null;
  }
  const max = quota[MAX_KEY[resource]] as number | null;
  if (max === null || max === undefined) {
    return null;
  }
  const used = quota.used?.[resource] ?? 0;
  return { remaining: Math.max(0, max - used), max, used };
}

/** The tighter of the team's and the user's quota for each resource. */
export function quotaBounds(whoami: IWhoAmI, team: string): IBounds {
  const result = {} as IBounds;
  for (const resource of ['gpus', 'workers', 'clusters'] as Resource[]) {
    const candidates: [string, ReturnType<typeof remainingOf>][] = [
      [`team ${team}`, remainingOf(whoami.quotas?.[team], resource)],
      ['user', remainingOf(whoami.user_quota, resource)]
    ];
    let bound: IBound = {
      remaining: null,
      limitedBy: null,
      max: null,
      used: 0
    };
    for (const [label, r] of candidates) {
      if (r && (bound.remaining === null || r.remaining < bound.remaining)) {
        bound = { remaining: r.remaining, limitedBy: label, max: r.max, used: r.used };
      }
    }
    result[resource] = bound;
  }
  return result;
}

/** `"limit 4 (team medical: 2 of 6 used)"`, or `"no limit"`. */
export function describeBound(bound: IBound): string {
  if (bound.remaining === null) {
    return 'no limit';
  }
  return `limit ${bound.remaining} (${bound.limitedBy}: ${bound.used} of ${bound.max} used)`;
}

/** The request the form would send, reduced to what quotas count. */
export interface IRequestSize {
  /** Workers in all. */
  workers: number;
  gpus: number;
}

/**
 * Warnings for a request over the bounds, one line each; empty when it fits.
 * The form still lets the user send it: the server decides.
 */
export function quotaWarnings(bounds: IBounds, request: IRequestSize): string[] {
  const warnings: string[] = [];
  const workers = request.workers;
  const check = (resource: Resource, asked: number, noun: string) => {
    const bound = bounds[resource];
    if (bound.remaining !== null && asked > bound.remaining) {
      warnings.push(
        `${asked} ${noun}${asked === 1 ? '' : 's'} asked, ${bound.remaining} left (${bound.limitedBy} quota): the server will likely refuse.`
      );
    }
  };
  check('clusters', 1, 'cluster');
  check('workers', workers, 'worker');
  check('gpus', request.gpus, 'GPU');
  return warnings;
}
