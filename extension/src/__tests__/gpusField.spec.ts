import * as React from 'react';

import type { IJSONSchema } from '../api';
import { NewClusterForm } from '../components/NewClusterForm';
import { countBounds, formBounds, formRequest, gpusField, gpusPlaceholder } from '../form';
import { profileShape } from '../sites';
// The `request` schema of `GET profiles`, as the server serves it.
import served from './fixtures/served-schemas.json';
import { ANALYST } from './fixtures/whoami';

declare function require(module: 'react-dom/server'): {
  renderToStaticMarkup(element: React.ReactElement): string;
};
const { renderToStaticMarkup } = require('react-dom/server');

const request = served.request as IJSONSchema;
const bounds = countBounds(request, 'gpus');
const SERVER_WORDS = 'gpus: a whole number from 0 to 64, or auto (every free GPU); got';

const text = (gpus: string) => ({ team: 'medical', profile: 'local', name: '', workers: {}, gpus });

describe('the GPU field with the served schema', () => {
  it('finds the whole-number branch beside null and auto', () => {
    expect(request.properties!.gpus.anyOf).toBeDefined();
    expect(bounds).toMatchObject({ path: 'gpus', min: 0, max: 64, integer: true, auto: true });
  });

  it.each([
    ['', {}],
    ['   ', {}],
    ['auto', { value: 'auto' }],
    [' AUTO ', { value: 'auto' }],
    ['Auto', { value: 'auto' }],
    ['0', { value: 0 }],
    ['2', { value: 2 }],
    [' 64 ', { value: 64 }]
  ])('takes %j', (typed, expected) => {
    expect(gpusField(typed, bounds)).toEqual(expected);
  });

  it.each([
    ['65', `${SERVER_WORDS} 65`],
    ['-1', `${SERVER_WORDS} -1`],
    ['1.5', `${SERVER_WORDS} 1.5`],
    ['lots', `${SERVER_WORDS} 'lots'`],
    ['auto-ish', `${SERVER_WORDS} 'auto-ish'`],
    ['0x10', `${SERVER_WORDS} '0x10'`],
    ["it's", `${SERVER_WORDS} "it's"`],
    ['Infinity', `${SERVER_WORDS} 'Infinity'`]
  ])('refuses %j in one line, as the server words it', (typed, words) => {
    const field = gpusField(typed, bounds);
    expect(field.error).toBe(words);
    expect(field.error).not.toContain('\n');
  });

  it('sends auto as the string, a number as a number, nothing when empty', () => {
    const sent = (typed: string) => formRequest(text(typed), [], formBounds(request, []));
    expect(sent(' AUTO ')).toEqual({ request: { team: 'medical', profile: 'local', gpus: 'auto' }, errors: {} });
    expect(sent('2')).toEqual({ request: { team: 'medical', profile: 'local', gpus: 2 }, errors: {} });
    expect(sent('')).toEqual({ request: { team: 'medical', profile: 'local' }, errors: {} });
  });

  it('refuses at the field: the form sends nothing while an error stands', () => {
    for (const typed of ['lots', '-1', '1.5', '65']) {
      const { request: body, errors } = formRequest(text(typed), [], formBounds(request, []));
      expect(Object.keys(errors)).toEqual(['gpus']);
      expect(errors.gpus).toMatch(/^gpus: /);
      expect(body.gpus).toBe(typed === 'lots' ? undefined : Number(typed));
    }
  });
});

describe('the GPU field under other schemas', () => {
  it('finds the integer branch of a oneOf and words a refusal with its reason', () => {
    const schema: IJSONSchema = {
      properties: {
        gpus: {
          oneOf: [{ const: 'auto' }, { type: 'integer', minimum: 1, maximum: 8 }],
          'x-reason': { oneOf: '1 to 8, or auto; got {value!r}' }
        }
      }
    };
    const oneOf = countBounds(schema, 'gpus');
    expect(oneOf).toMatchObject({ min: 1, max: 8, integer: true, auto: true });
    expect(gpusField('auto', oneOf)).toEqual({ value: 'auto' });
    expect(gpusField('8', oneOf)).toEqual({ value: 8 });
    expect(gpusField('0', oneOf).error).toBe('gpus: 1 to 8, or auto; got 0');
    expect(gpusField('many', oneOf).error).toBe("gpus: 1 to 8, or auto; got 'many'");
  });

  it('refuses auto where the served schema takes only a number', () => {
    const plain = countBounds({ properties: { gpus: { type: 'integer', minimum: 0, maximum: 4 } } }, 'gpus');
    expect(plain).toMatchObject({ auto: false });
    expect(gpusField('auto', plain).error).toBe('gpus: must be a whole number, got a string');
    expect(gpusField('3', plain)).toEqual({ value: 3 });
    expect(gpusPlaceholder(profileShape(undefined), plain)).toBe('0 (profile default); 0–4');
  });

  it('without a served schema takes auto and sends numbers as typed (the server decides)', () => {
    expect(gpusField(' auto ')).toEqual({ value: 'auto' });
    expect(gpusField('-1')).toEqual({ value: -1 });
    expect(gpusField('1.5')).toEqual({ value: 1.5 });
    expect(gpusField('lots')).toEqual({ error: 'not a number or auto: "lots"' });
    expect(gpusPlaceholder(profileShape(undefined))).toBe('0 (profile default); a number or auto');
  });
});

describe('the new-cluster form offers auto', () => {
  const whoami = ANALYST;
  const site = { name: 'cloud', kind: 'cloud' as const, workers: 1, threads: 1, memory: '1 GiB', cost_per_hour: 0 };
  const render = (gpus: number | 'auto', requestSchema?: IJSONSchema) =>
    renderToStaticMarkup(
      React.createElement(NewClusterForm, {
        whoami,
        profiles: [{ name: 'gpu', description: '', sites: [{ ...site, gpus }] }],
        requestSchema,
        defaultProfile: 'gpu',
        onSubmit: async () => undefined,
        onCancel: () => undefined
      })
    );
  const gpusInput = (html: string) => /<input[^>]*name="gpus"[^>]*>/.exec(html)![0];

  it('is a text field saying the default and that it takes auto', () => {
    const field = gpusInput(render('auto', request));
    expect(field).toContain('type="text"');
    expect(field).not.toMatch(/\b(min|max|step)=/);
    expect(field).toContain('placeholder="every GPU found (profile default); 0–64 or auto"');
    expect(gpusInput(render(2))).toContain('placeholder="2 (profile default); a number or auto"');
  });
});
