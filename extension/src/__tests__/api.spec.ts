import { LeptonAPI } from '../api';

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
