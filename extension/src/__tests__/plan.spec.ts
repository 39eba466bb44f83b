import { ServerConnection } from '@jupyterlab/services';

import { APIError } from '../api';
import {
  DEFAULT_PLAN,
  IPlanChoice,
  checkPlanForm,
  fetchPlan,
  planQuery,
  planRows
} from '../plan';

const choice: IPlanChoice = {
  kind: 'train',
  picks: [
    { site: 'edge-hospital-a', kind: 'edge', workers: 2, gpus: 0, cost_per_hour: 0.24 },
    { site: 'cloud', kind: 'cloud', workers: 1, gpus: 1, cost_per_hour: 2.48 }
  ],
  cost_per_hour: 2.72,
  data_site: 'edge-hospital-a',
  data_local: false,
  moved_gb: 0,
  waits: false,
  why: ['cloud costs $2.48 per worker-hour'],
  site: 'edge-hospital-a',
  line: 'planner: train on edge-hospital-a×2, cloud×1 at $2.72/h'
};

describe('planQuery', () => {
  it('asks only what differs from the defaults', () => {
    expect(planQuery(DEFAULT_PLAN)).toBe('kind=train');
    expect(
      planQuery({
        ...DEFAULT_PLAN,
        kind: 'tune',
        workers: 4,
        gpus: 1,
        memory: ' 2GiB ',
        dataSite: 'edge-hospital-a',
        dataGb: 1.5,
        dataStays: true
      })
    ).toBe(
      'kind=tune&workers=4&gpus=1&memory=2GiB&data_site=edge-hospital-a&data_gb=1.5&data_stays=1'
    );
  });

  it('leaves out data options without a data site', () => {
    expect(planQuery({ ...DEFAULT_PLAN, dataGb: 3, dataStays: true })).toBe('kind=train');
  });
});

describe('checkPlanForm', () => {
  it('names the first bad field in one line', () => {
    expect(checkPlanForm(DEFAULT_PLAN)).toBeNull();
    expect(checkPlanForm({ ...DEFAULT_PLAN, workers: 0 })).toMatch(/^Workers/);
    expect(checkPlanForm({ ...DEFAULT_PLAN, gpus: 2 })).toMatch(/at most as many as workers/);
    expect(checkPlanForm({ ...DEFAULT_PLAN, hours: 0 })).toMatch(/^Hours/);
    expect(checkPlanForm({ ...DEFAULT_PLAN, dataStays: true })).toMatch(/data site/);
  });
});

describe('planRows', () => {
  it('shows each site with its workers, GPUs and cost', () => {
    expect(planRows(choice)).toEqual([
      'edge-hospital-a × 2 · $0.24/h',
      'cloud × 1 (1 GPU) · $2.48/h'
    ]);
  });
});

describe('fetchPlan', () => {
  const settings = { baseUrl: 'http://127.0.0.1:8888/' } as any;
  afterEach(() => jest.restoreAllMocks());

  it('asks the cluster plan route with the form as its query', async () => {
    const request = jest
      .spyOn(ServerConnection, 'makeRequest')
      .mockResolvedValue(new Response(JSON.stringify(choice), { status: 200 }));
    const got = await fetchPlan('c 1', { ...DEFAULT_PLAN, workers: 2 }, settings);
    expect(got.line).toBe(choice.line);
    expect(request.mock.calls[0][0]).toBe(
      'http://127.0.0.1:8888/lepton/api/clusters/c%201/plan?kind=train&workers=2'
    );
  });

  it("throws the server's one line when the job cannot fit", async () => {
    jest
      .spyOn(ServerConnection, 'makeRequest')
      .mockImplementation(async () =>
        new Response(JSON.stringify({ message: 'capacity: train takes 5 workers' }), {
          status: 400
        })
      );
    const failed = fetchPlan('c1', { ...DEFAULT_PLAN, workers: 5 }, settings);
    await expect(failed).rejects.toBeInstanceOf(APIError);
    await expect(fetchPlan('c1', DEFAULT_PLAN, settings)).rejects.toThrow(
      'capacity: train takes 5 workers'
    );
  });
});
