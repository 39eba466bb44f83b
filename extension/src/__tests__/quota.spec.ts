import type { IWhoAmI } from '../api';
import { describeBound, quotaBounds, quotaWarnings } from '../quota';

const whoami: IWhoAmI = {
  name: 'alice',
  display_name: 'Alice',
  teams: ['medical', 'research'],
  roles: { medical: 'analyst', research: 'admin' },
  permissions: ['clusters:create'],
  quotas: {
    medical: { max_gpus: 2, max_workers: 8, max_clusters: null, used: { gpus: 1, workers: 2, clusters: 1 } },
    research: { max_gpus: null, max_workers: null, max_clusters: null, used: { gpus: 0, workers: 0, clusters: 0 } }
  },
  user_quota: { max_gpus: 4, max_workers: 5, max_clusters: 2, used: { gpus: 0, workers: 2, clusters: 2 } }
};

describe('quotaBounds', () => {
  it('takes the tighter of the team and user quotas', () => {
    const b = quotaBounds(whoami, 'medical');
    expect(b.gpus).toEqual({ remaining: 1, limitedBy: 'team medical', max: 2, used: 1 });
    expect(b.workers).toEqual({ remaining: 3, limitedBy: 'user', max: 5, used: 2 });
    expect(b.clusters.remaining).toBe(0);
    expect(describeBound(b.gpus)).toBe('limit 1 (team medical: 1 of 2 used)');
  });

  it('is unlimited only when every quota is', () => {
    const open = { ...whoami, user_quota: { ...whoami.user_quota, max_gpus: null } };
    expect(quotaBounds(open, 'research').gpus.remaining).toBeNull();
    expect(describeBound(quotaBounds(open, 'research').gpus)).toBe('no limit');
    // An unknown team falls back to the user's quota.
    expect(quotaBounds(whoami, 'nope').gpus.remaining).toBe(4);
  });
});

describe('quotaWarnings', () => {
  it('warns for each resource over its bound', () => {
    const b = quotaBounds(whoami, 'medical');
    expect(quotaWarnings(b, { workers: 4, gpus: 2 })).toEqual([
      '1 cluster asked, 0 left (user quota): the server will likely refuse.',
      '4 workers asked, 3 left (user quota): the server will likely refuse.',
      '2 GPUs asked, 1 left (team medical quota): the server will likely refuse.'
    ]);
    const roomy = quotaBounds({ ...whoami, user_quota: { ...whoami.user_quota, max_clusters: 3 } }, 'medical');
    expect(quotaWarnings(roomy, { workers: 3, gpus: 1 })).toEqual([]);
  });
});
