import * as React from 'react';

import type { IJSONSchema } from '../api';
import { NewClusterForm } from '../components/NewClusterForm';
import {
  IScaleAnswer,
  countBounds,
  formBounds,
  formRequest,
  inputBounds,
  outOfBounds,
  scaleUntilAccepted
} from '../form';
// The `request` and `scale` schemas of `GET profiles`, as the server serves them.
import served from './fixtures/served-schemas.json';
import { ANALYST } from './fixtures/whoami';

declare function require(module: 'react-dom/server'): {
  renderToStaticMarkup(element: React.ReactElement): string;
};
const { renderToStaticMarkup } = require('react-dom/server');

const request = served.request as IJSONSchema;
const scale = served.scale as IJSONSchema;
const KINDS = ['cloud', 'edge'] as const;

const text = (workers: { cloud?: string; edge?: string }, gpus = '') => ({
  team: 'medical',
  profile: 'local',
  name: '',
  workers,
  gpus
});

describe('bounds come from the served request schema', () => {
  it('derives each count field: workers per kind, GPUs (or auto), threads', () => {
    const bounds = formBounds(request, [...KINDS]);
    for (const kind of KINDS) {
      expect(bounds[`workers-${kind}`]).toMatchObject({
        path: `workers.${kind}`,
        min: 0,
        max: 256,
        integer: true,
        auto: false
      });
    }
    expect(bounds.gpus).toMatchObject({ path: 'gpus', min: 0, max: 64, integer: true, auto: true });
    expect(countBounds(request, 'threads')).toMatchObject({ min: 1, max: 256, integer: true, auto: false });
    expect(countBounds(scale, 'workers')).toMatchObject({ path: 'workers', min: 0, max: 256, integer: true });
  });

  it('gives an input its min, max and step', () => {
    expect(inputBounds(countBounds(request, 'workers.edge'))).toEqual({ min: 0, max: 256, step: 1 });
    expect(inputBounds(null)).toEqual({});
  });

  it('finds no bound where the schema says no number', () => {
    expect(countBounds(request, 'name')).toBeNull();
    expect(countBounds(request, 'workers.fog')).toBeNull();
    expect(formBounds(request, ['edge'])).not.toHaveProperty('workers-cloud');
  });
});

describe('a number outside the served bounds is refused in the server words', () => {
  it('words it as the server does, field first', () => {
    const cloud = countBounds(request, 'workers.cloud');
    expect(outOfBounds(-1, cloud)).toBe('workers.cloud: must be a whole number from 0 to 256, got -1');
    expect(outOfBounds(300, cloud)).toBe('workers.cloud: must be a whole number from 0 to 256, got 300');
    expect(outOfBounds(2.5, cloud)).toBe('workers.cloud: must be a whole number from 0 to 256, got 2.5');
    expect(outOfBounds(65, countBounds(request, 'gpus'))).toBe(
      'gpus: a whole number from 0 to 64, or auto (every free GPU); got 65'
    );
    expect(outOfBounds(-1, countBounds(scale, 'workers'))).toBe(
      'workers: must be a whole number from 0 to 256, got -1'
    );
  });

  it('falls back to the plain keyword words where the schema has none', () => {
    const plain = countBounds({ properties: { n: { type: 'integer', minimum: 1, maximum: 9 } } }, 'n');
    expect(outOfBounds(0, plain)).toBe('n: must be >= 1, got 0');
    expect(outOfBounds(10, plain)).toBe('n: must be <= 9, got 10');
    expect(outOfBounds(1.5, plain)).toBe('n: must be a whole number, got a number');
  });

  it('refuses at the field and keeps the number as typed', () => {
    const { request: body, errors } = formRequest(
      text({ cloud: '-1', edge: '300' }, '65'),
      [...KINDS],
      formBounds(request, [...KINDS])
    );
    expect(errors).toEqual({
      'workers-cloud': 'workers.cloud: must be a whole number from 0 to 256, got -1',
      'workers-edge': 'workers.edge: must be a whole number from 0 to 256, got 300',
      gpus: 'gpus: a whole number from 0 to 64, or auto (every free GPU); got 65'
    });
    expect(body.workers).toEqual({ cloud: -1, edge: 300 });
    expect(body.gpus).toBe(65);
  });

  it('passes a number in bounds, the bounds included', () => {
    const { request: body, errors } = formRequest(
      text({ cloud: '0', edge: '256' }, '64'),
      [...KINDS],
      formBounds(request, [...KINDS])
    );
    expect(errors).toEqual({});
    expect(body).toEqual({ team: 'medical', profile: 'local', workers: { cloud: 0, edge: 256 }, gpus: 64 });
  });

  it('still sends nothing for an empty field: the profile decides', () => {
    const { request: body, errors } = formRequest(
      text({ cloud: '', edge: ' ' }),
      [...KINDS],
      formBounds(request, [...KINDS])
    );
    expect(errors).toEqual({});
    expect(body).toEqual({ team: 'medical', profile: 'local' });
  });

  it('has no bound of its own without a served schema (an older server)', () => {
    expect(formBounds(undefined, [...KINDS])).toEqual({});
    const { request: body, errors } = formRequest(text({ cloud: '-1', edge: '300' }, '65'), [...KINDS], formBounds(undefined, [...KINDS]));
    expect(errors).toEqual({});
    expect(body.workers).toEqual({ cloud: -1, edge: 300 });
    expect(outOfBounds(-1, countBounds(undefined, 'workers'))).toBeUndefined();
  });
});

describe('the scale dialog with served bounds', () => {
  const bounds = countBounds(scale, 'workers');

  it('asks again with the reason and sends nothing out of bounds', async () => {
    const answers: IScaleAnswer[] = [
      { accept: true, value: -1 },
      { accept: true, value: 3 }
    ];
    const asked: [number, string | undefined][] = [];
    const sent: number[] = [];
    const result = await scaleUntilAccepted(
      async (value, refusal) => {
        asked.push([value, refusal]);
        return answers.shift()!;
      },
      async n => {
        sent.push(n);
      },
      2,
      bounds
    );
    expect(result).toBe(3);
    expect(sent).toEqual([3]);
    expect(asked).toEqual([
      [2, undefined],
      [-1, 'workers: must be a whole number from 0 to 256, got -1']
    ]);
  });

  it('sends as typed without bounds', async () => {
    const sent: number[] = [];
    const answers: IScaleAnswer[] = [{ accept: true, value: -1 }];
    await scaleUntilAccepted(
      async () => answers.shift()!,
      async n => {
        sent.push(n);
      },
      2,
      null
    );
    expect(sent).toEqual([-1]);
  });
});

describe('the new-cluster form renders the served bounds', () => {
  const whoami = ANALYST;
  const profiles = [
    {
      name: 'local',
      description: '',
      sites: [
        { name: 'cloud', kind: 'cloud' as const, workers: 2, threads: 1, memory: '1 GiB', gpus: 0, cost_per_hour: 0 },
        { name: 'edge', kind: 'edge' as const, workers: 2, threads: 1, memory: '1 GiB', gpus: 0, cost_per_hour: 0 }
      ]
    }
  ];
  const render = (requestSchema?: IJSONSchema) =>
    renderToStaticMarkup(
      React.createElement(NewClusterForm, {
        whoami,
        profiles,
        requestSchema,
        defaultProfile: 'local',
        onSubmit: async () => undefined,
        onCancel: () => undefined
      })
    );
  const input = (html: string, field: string) => new RegExp(`<input[^>]*name="${field}"[^>]*>`).exec(html)![0];

  it('sets min, max and step from the schema', () => {
    const html = render(request);
    for (const kind of KINDS) {
      const field = input(html, `workers-${kind}`);
      expect(field).toContain('min="0"');
      expect(field).toContain('max="256"');
      expect(field).toContain('step="1"');
    }
    // GPUs also take `auto`: a text field whose placeholder says the bounds.
    expect(input(html, 'gpus')).toContain('type="text"');
    expect(input(html, 'gpus')).toContain('placeholder="0 (profile default); 0–64 or auto"');
  });

  it('sets no bound without a schema', () => {
    const html = render(undefined);
    for (const field of ['workers-cloud', 'workers-edge', 'gpus']) {
      expect(input(html, field)).not.toMatch(/\b(min|max)=/);
    }
  });
});
