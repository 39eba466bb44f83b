import { APIError } from '../api';
import {
  countField,
  defaultText,
  fieldOfError,
  formRequest,
  scaleUntilAccepted,
  IScaleAnswer
} from '../form';
import { profileShape } from '../sites';

const local = profileShape({
  name: 'local',
  description: '',
  sites: [
    { name: 'cloud', kind: 'cloud', workers: 2, threads: 1, memory: '1 GiB', gpus: 0, cost_per_hour: 0 },
    { name: 'edge', kind: 'edge', workers: 2, threads: 1, memory: '1 GiB', gpus: 0, cost_per_hour: 0 }
  ]
});

const text = (workers: { cloud?: string; edge?: string }, gpus = '') => ({
  team: 'medical',
  profile: 'local',
  name: '',
  workers,
  gpus
});

describe('the new-cluster form sends what was typed', () => {
  it('sends nothing for an empty field: the profile decides', () => {
    expect(countField('')).toEqual({});
    expect(countField('   ')).toEqual({});
    expect(countField(undefined)).toEqual({});
    const { request, errors } = formRequest(text({ cloud: '', edge: '' }), ['cloud', 'edge']);
    expect(request).toEqual({ team: 'medical', profile: 'local' });
    expect(errors).toEqual({});
  });

  it('says what an empty field means', () => {
    expect(defaultText(local, 'cloud')).toBe('2 (profile default)');
    expect(defaultText(local, 'gpus')).toBe('0 (profile default)');
    expect(defaultText({ ...local, gpus: 'auto' }, 'gpus')).toBe('every GPU found (profile default)');
  });

  it('never clamps a negative number', () => {
    const { request, errors } = formRequest(text({ cloud: '-1' }), ['cloud', 'edge']);
    expect(request.workers).toEqual({ cloud: -1 });
    expect(errors).toEqual({});
  });

  it('never rounds a fractional number', () => {
    const { request } = formRequest(text({ edge: '2.5' }, '0.5'), ['cloud', 'edge']);
    expect(request.workers).toEqual({ edge: 2.5 });
    expect(request.gpus).toBe(0.5);
  });

  it('sends an over-quota number as typed (the server decides)', () => {
    const { request } = formRequest(text({ cloud: '600' }), ['cloud', 'edge']);
    expect(request.workers).toEqual({ cloud: 600 });
  });

  it('refuses text that is no number at its field, sending nothing', () => {
    const { request, errors } = formRequest(text({ cloud: 'lots' }), ['cloud', 'edge']);
    expect(request.workers).toBeUndefined();
    expect(errors).toEqual({ 'workers-cloud': 'not a number: "lots"' });
  });
});

describe('a refusal is shown at the field it is about', () => {
  const shown = ['name', 'workers-cloud', 'workers-edge', 'gpus'] as const;

  it('names the field from the server message', () => {
    expect(fieldOfError('workers.cloud: a whole number from 0 to 256', [], [...shown])).toBe('workers-cloud');
    expect(fieldOfError('workers.edge: a whole number from 0 to 256', [], [...shown])).toBe('workers-edge');
    expect(fieldOfError('gpus: a whole number from 0 to 64', [], [...shown])).toBe('gpus');
    expect(fieldOfError("name: letters, digits, '_', '.', '-' (at most 64)", [], [...shown])).toBe('name');
    expect(fieldOfError('profile local: --edge must be at most 64', [], [...shown])).toBe('workers-edge');
  });

  it('puts a worker quota refusal at the worker field the user changed', () => {
    const quota = 'team finance may hold 4 workers; 0 are in use and this request asks for 12';
    expect(fieldOfError(quota, ['workers-edge'], [...shown])).toBe('workers-edge');
    expect(fieldOfError(quota, [], [...shown])).toBe('workers-cloud');
    expect(fieldOfError('user bob may hold 0 GPUs; 0 are in use and this request asks for 1', [], [...shown])).toBe('gpus');
  });

  it('keeps a refusal of the whole request for the form', () => {
    expect(fieldOfError('user bob may hold 1 cluster; 1 is in use', [], [...shown])).toBeNull();
    expect(fieldOfError("unknown team 'physics' (teams: medical, finance)", [], [...shown])).toBeNull();
  });
});

describe('the scale dialog', () => {
  const refusal = new APIError(400, 'workers: a whole number from 0 to 256');

  function dialog(answers: IScaleAnswer[]) {
    const asked: [number, string | undefined][] = [];
    const ask = async (value: number, reason?: string) => {
      asked.push([value, reason]);
      return answers.shift()!;
    };
    return { asked, ask };
  }

  it('sends -1 as typed and asks again with the server reason and the refused number', async () => {
    const { asked, ask } = dialog([
      { accept: true, value: -1 },
      { accept: true, value: 3 }
    ]);
    const sent: number[] = [];
    const send = async (n: number) => {
      sent.push(n);
      if (n < 0 || !Number.isInteger(n)) {
        throw refusal;
      }
    };
    await expect(scaleUntilAccepted(ask, send, 2)).resolves.toBe(3);
    expect(sent).toEqual([-1, 3]);
    expect(asked).toEqual([
      [2, undefined],
      [-1, 'workers: a whole number from 0 to 256']
    ]);
  });

  it('sends a fractional number unrounded and stops when cancelled', async () => {
    const { asked, ask } = dialog([
      { accept: true, value: 1.5 },
      { accept: false, value: 1.5 }
    ]);
    const sent: number[] = [];
    const send = async (n: number) => {
      sent.push(n);
      throw refusal;
    };
    await expect(scaleUntilAccepted(ask, send, 2)).resolves.toBeNull();
    expect(sent).toEqual([1.5]);
    expect(asked[1]).toEqual([1.5, 'workers: a whole number from 0 to 256']);
  });

  it('an empty field sends nothing', async () => {
    const { ask } = dialog([{ accept: true, value: NaN }]);
    const send = jest.fn();
    await expect(scaleUntilAccepted(ask, send, 2)).resolves.toBeNull();
    expect(send).not.toHaveBeenCalled();
  });

  it('an unreachable server is not a refusal: it rejects', async () => {
    const { ask } = dialog([{ accept: true, value: 1 }]);
    const down = new APIError(0, 'The Jupyter server cannot be reached; Lepton will retry.');
    await expect(scaleUntilAccepted(ask, async () => Promise.reject(down), 2)).rejects.toBe(down);
  });
});
