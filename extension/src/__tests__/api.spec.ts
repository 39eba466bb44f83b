import { ServerConnection } from '@jupyterlab/services';

import { APIError, IStartedAgain, LeptonAPI } from '../api';
import { startedAgainText } from '../format';

describe('LeptonAPI.streamUrl', () => {
  const settings = { wsUrl: 'ws://127.0.0.1:8888/' } as any;
  const api = new LeptonAPI(settings);

  it('asks the server for the panel refresh interval, in seconds', () => {
    expect(api.streamUrl('c-1', '', 2500)).toBe(
      'ws://127.0.0.1:8888/lepton/api/clusters/c-1/stream?interval=2.5'
    );
  });

  it('appends the token and escapes the cluster id', () => {
    expect(api.streamUrl('a b', 't&k', 1000)).toBe(
      'ws://127.0.0.1:8888/lepton/api/clusters/a%20b/stream?interval=1&token=t%26k'
    );
  });
});

describe('LeptonAPI.startClusterAgain', () => {
  const settings = { baseUrl: 'http://127.0.0.1:8888/' } as any;
  const api = new LeptonAPI(settings);
  afterEach(() => jest.restoreAllMocks());

  it('POSTs {} to the cluster start route and reads what was served again', async () => {
    const answer = {
      id: 'c-2',
      name: 'local-ann-1',
      status: 'starting',
      sites: [],
      redeployed: ['fraud', 'triage'],
      not_redeployed: { xray: 'model xray v3 is no longer in the registry' }
    };
    const request = jest
      .spyOn(ServerConnection, 'makeRequest')
      .mockResolvedValue(new Response(JSON.stringify(answer), { status: 201 }));
    const started = await api.startClusterAgain('c 1');
    const [url, init] = request.mock.calls[0];
    expect(url).toBe('http://127.0.0.1:8888/lepton/api/clusters/c%201/start');
    expect(init.method).toBe('POST');
    expect(init.body).toBe('{}');
    expect(started.id).toBe('c-2');
    expect(started.redeployed).toEqual(['fraud', 'triage']);
    expect(started.not_redeployed).toEqual({
      xray: 'model xray v3 is no longer in the registry'
    });
  });

  it("throws the server's one line when the cluster is running", async () => {
    jest
      .spyOn(ServerConnection, 'makeRequest')
      .mockImplementation(async () =>
        new Response(JSON.stringify({ message: 'cluster local-ann-1 is running' }), {
          status: 409
        })
      );
    const failed = api.startClusterAgain('c-1');
    await expect(failed).rejects.toBeInstanceOf(APIError);
    await expect(failed).rejects.toMatchObject({
      status: 409,
      message: 'cluster local-ann-1 is running'
    });
  });
});

describe('startedAgainText', () => {
  const base = { id: 'c-2', name: 'local-ann-1' } as IStartedAgain;

  it('says the cluster started and what is served again', () => {
    expect(startedAgainText({ ...base, redeployed: [], not_redeployed: {} })).toEqual({
      success: 'Started local-ann-1 again',
      warning: null
    });
    expect(
      startedAgainText({ ...base, redeployed: ['a', 'b'], not_redeployed: {} }).success
    ).toBe('Started local-ann-1 again; serving again: a, b');
  });

  it('warns with one line per deployment not served again', () => {
    const text = startedAgainText({
      ...base,
      redeployed: ['a'],
      not_redeployed: { b: 'the team has no GPU left', c: 'model c was deleted' }
    });
    expect(text.warning).toBe(
      'Not served again:\nb: the team has no GPU left\nc: model c was deleted'
    );
  });
});
