/**
 * What the new-cluster form sends for what was typed, and where a refusal is
 * shown. The form never changes a number: an empty field sends nothing (the
 * profile's default), the GPU field's `auto` asks for every free GPU,
 * anything else goes to the server as typed, and the
 * server's one-line reason comes back to the field it is about. Where the
 * server serves the schema of a request, a number outside its bounds is
 * refused here, in the server's own words, and nothing is sent. Pure functions.
 */
import { APIError } from './api';
import type { IJSONSchema, INewCluster, SiteKind } from './api';
import type { IProfileShape } from './sites';

/** A form field that can be refused: the name, workers per site kind, GPUs. */
export type FieldName = 'name' | 'gpus' | 'workers-cloud' | 'workers-edge';

/** What a count field sends: nothing (`value` undefined), a number, or a refusal of its own. */
export interface ICountField {
  value?: number;
  /** Set when the text is no number at all (there is nothing to send). */
  error?: string;
}

/** A decimal number as typed: `2`, `-1`, `2.5`, `.5`, `1e3` (no `0x10`, no `Infinity`). */
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

/** A count field's text: empty → the profile's default (nothing sent); a number → as typed. */
export function countField(text: string | null | undefined): ICountField {
  const trimmed = (text ?? '').trim();
  if (trimmed === '') {
    return {};
  }
  const value = Number(trimmed);
  if (!DECIMAL.test(trimmed) || !isFinite(value)) {
    return { error: `not a number: ${JSON.stringify(trimmed)}` };
  }
  return { value };
}

/** A count field's bounds, as the served schema of a request states them. */
export interface ICountBounds {
  /** The field as the server names it in a refusal, e.g. `workers.cloud`. */
  path: string;
  min?: number;
  max?: number;
  /** Whole numbers only. */
  integer: boolean;
  /** The field also takes `"auto"`. */
  auto: boolean;
  /** The field's schema, whose `x-reason` words a refusal. */
  schema: IJSONSchema;
  /** The branch of it a number must fit (the schema itself unless it offers alternatives). */
  numeric: IJSONSchema;
}

/** The bounds of the form's count fields; a field missing here has none (the server decides). */
export type FormBounds = { [field in FieldName]?: ICountBounds };

function typesOf(schema: IJSONSchema): string[] {
  const type = schema.type;
  return type === undefined ? [] : typeof type === 'string' ? [type] : type;
}

function isNumeric(schema: IJSONSchema): boolean {
  return (
    typesOf(schema).some(t => t === 'integer' || t === 'number') ||
    typeof schema.minimum === 'number' ||
    typeof schema.maximum === 'number'
  );
}

/**
 * The bounds of the count field at `path` (dotted, e.g. `workers.cloud`) of a
 * served request schema; null when the schema is absent or says no number there.
 */
export function countBounds(
  schema: IJSONSchema | null | undefined,
  path: string
): ICountBounds | null {
  let node: IJSONSchema | undefined = schema ?? undefined;
  for (const key of path.split('.')) {
    node = node?.properties?.[key];
  }
  if (!node) {
    return null;
  }
  const branches = node.anyOf ?? node.oneOf ?? [];
  const numeric = isNumeric(node) ? node : branches.find(isNumeric);
  if (!numeric) {
    return null;
  }
  const bounds: ICountBounds = {
    path,
    integer: typesOf(numeric).includes('integer'),
    auto: branches.some(b => b.const === 'auto'),
    schema: node,
    numeric
  };
  if (typeof numeric.minimum === 'number') {
    bounds.min = numeric.minimum;
  }
  if (typeof numeric.maximum === 'number') {
    bounds.max = numeric.maximum;
  }
  return bounds;
}

/** The bounds of the new-cluster form's count fields from the served `POST clusters` schema. */
export function formBounds(
  request: IJSONSchema | null | undefined,
  kinds: SiteKind[]
): FormBounds {
  const bounds: FormBounds = {};
  for (const kind of kinds) {
    const field = countBounds(request, `workers.${kind}`);
    if (field) {
      bounds[`workers-${kind}`] = field;
    }
  }
  const gpus = countBounds(request, 'gpus');
  if (gpus) {
    bounds.gpus = gpus;
  }
  return bounds;
}

/** An input's `min`, `max` and `step` for these bounds (none without bounds). */
export function inputBounds(bounds: ICountBounds | null | undefined): {
  min?: number;
  max?: number;
  step?: number | 'any';
} {
  if (!bounds) {
    return {};
  }
  return { min: bounds.min, max: bounds.max, step: bounds.integer ? 1 : 'any' };
}

/** The keyword of `bounds` that `value` breaks, if any, in the order the schema checks them. */
function brokenKeyword(value: number, bounds: ICountBounds): string | null {
  if (bounds.integer && !Number.isInteger(value)) {
    return 'type';
  }
  if (bounds.min !== undefined && value < bounds.min) {
    return 'minimum';
  }
  if (bounds.max !== undefined && value > bounds.max) {
    return 'maximum';
  }
  return null;
}

function reasonOf(schema: IJSONSchema, keyword: string): string | undefined {
  const reason = schema['x-reason'];
  return typeof reason === 'string' ? reason : reason?.[keyword];
}

/** The field's own words for a value no alternative of it takes (none without alternatives). */
function alternativesReason(bounds: ICountBounds): string | undefined {
  if (bounds.schema === bounds.numeric) {
    return undefined;
  }
  return reasonOf(bounds.schema, bounds.schema.oneOf ? 'oneOf' : 'anyOf');
}

const ESCAPES: { [c: string]: string } = {
  '\\': '\\\\',
  '\n': '\\n',
  '\r': '\\r',
  '\t': '\\t'
};

/** A string as Python's `repr` writes it, as the server's `{value!r}` shows text. */
function pythonRepr(text: string): string {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  const body = text.replace(/[\\\x00-\x1f\x7f']/g, c =>
    c === "'"
      ? quote === "'"
        ? "\\'"
        : c
      : (ESCAPES[c] ?? `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`)
  );
  return quote + body + quote;
}

/** A `str.format` template of the server's, filled as Python fills it. */
function fillTemplate(
  template: string,
  words: { [name: string]: string }
): string {
  return template.replace(
    /\{\{|\}\}|\{(\w+)(?:![rsa])?\}/g,
    (match, name?: string) =>
      name === undefined ? match[0] : (words[name] ?? '')
  );
}

/**
 * The one-line reason the server gives for `value` outside `bounds`
 * (`workers.cloud: must be a whole number from 0 to 256, got 300`), or
 * undefined when it fits or there are no bounds.
 */
export function outOfBounds(
  value: number | undefined,
  bounds: ICountBounds | null | undefined
): string | undefined {
  if (value === undefined || !bounds) {
    return undefined;
  }
  const keyword = brokenKeyword(value, bounds);
  if (keyword === null) {
    return undefined;
  }
  // The server words a failed alternative with the field's own reason, else the branch's.
  const template =
    alternativesReason(bounds) ??
    reasonOf(bounds.numeric, keyword) ??
    {
      type: `must be ${bounds.integer ? 'a whole' : 'a'} number, got {kind}`,
      minimum: `must be >= ${bounds.min}, got {value!r}`,
      maximum: `must be <= ${bounds.max}, got {value!r}`
    }[keyword]!;
  const reason = fillTemplate(template, {
    value: JSON.stringify(value),
    kind: 'a number',
    expected: bounds.integer ? 'a whole number' : 'a number'
  });
  return `${bounds.path}: ${reason}`;
}

/** What the GPU field sends: nothing, a number, `"auto"`, or a refusal of its own. */
export interface IGpusField {
  value?: number | 'auto';
  error?: string;
}

/**
 * The GPU field's text: empty → the profile's default (nothing sent); `auto`
 * (any case) → every free GPU; a number → as typed, refused outside the
 * served `bounds`. Other text is refused in the server's words where it
 * serves them, and nothing is sent. Without bounds `auto` is always offered.
 */
export function gpusField(
  text: string | null | undefined,
  bounds?: ICountBounds | null
): IGpusField {
  const trimmed = (text ?? '').trim();
  const takesAuto = !bounds || bounds.auto;
  if (takesAuto && trimmed.toLowerCase() === 'auto') {
    return { value: 'auto' };
  }
  const field = countField(trimmed);
  if (field.error === undefined) {
    const error = outOfBounds(field.value, bounds);
    return error ? { value: field.value, error } : field;
  }
  if (!bounds) {
    return { error: `not a number or auto: ${JSON.stringify(trimmed)}` };
  }
  const template =
    alternativesReason(bounds) ??
    reasonOf(bounds.numeric, 'type') ??
    'must be {expected}, got {kind}';
  const reason = fillTemplate(template, {
    value: pythonRepr(trimmed),
    kind: 'a string',
    expected: bounds.integer ? 'a whole number' : 'a number'
  });
  return { error: `${bounds.path}: ${reason}` };
}

/** The GPU field's placeholder: its default, then what it takes (`0–64 or auto`). */
export function gpusPlaceholder(
  shape: IProfileShape,
  bounds?: ICountBounds | null
): string {
  const range =
    bounds?.min !== undefined && bounds.max !== undefined
      ? `${bounds.min}–${bounds.max}`
      : 'a number';
  const auto = !bounds || bounds.auto ? ' or auto' : '';
  return `${defaultText(shape, 'gpus')}; ${range}${auto}`;
}

/** The text of the form's fields; a field missing here was never touched. */
export interface IFormText {
  team: string;
  profile: string;
  name: string;
  workers: { [kind in SiteKind]?: string };
  gpus: string;
}

/** The request for the form's text, and the fields that cannot be sent. */
export interface IFormRequest {
  request: INewCluster;
  errors: { [field in FieldName]?: string };
}

/**
 * The request for the form's text, or the fields that cannot be sent: no
 * number at all, or a number outside the served `bounds` (none: the server
 * alone decides). The request always holds the numbers as typed.
 */
export function formRequest(
  text: IFormText,
  kinds: SiteKind[],
  bounds: FormBounds = {}
): IFormRequest {
  const request: INewCluster = { team: text.team, profile: text.profile };
  const errors: IFormRequest['errors'] = {};
  for (const kind of kinds) {
    const field = countField(text.workers[kind]);
    const error =
      field.error ?? outOfBounds(field.value, bounds[`workers-${kind}`]);
    if (error) {
      errors[`workers-${kind}`] = error;
    }
    if (field.value !== undefined) {
      request.workers = { ...request.workers, [kind]: field.value };
    }
  }
  const gpus = gpusField(text.gpus, bounds.gpus);
  if (gpus.error) {
    errors.gpus = gpus.error;
  }
  if (gpus.value !== undefined) {
    request.gpus = gpus.value;
  }
  if (text.name.trim()) {
    request.name = text.name.trim();
  }
  return { request, errors };
}

/** What an empty field means, said in the field: `"2 (profile default)"`. */
export function defaultText(shape: IProfileShape, field: 'gpus' | SiteKind): string {
  if (field === 'gpus') {
    return shape.gpus === 'auto'
      ? 'every GPU found (profile default)'
      : `${shape.gpus} (profile default)`;
  }
  const kind = shape.kinds[field];
  if (!kind) {
    return '';
  }
  return kind.perSite === null
    ? `${kind.total} in all (profile default)`
    : `${kind.perSite} (profile default)`;
}

/**
 * The field a server refusal is about, so it is shown there (once); null when
 * it is about the whole request (a cluster quota, a permission, a team).
 * A worker quota goes to the first worker field the user changed, else the first shown.
 */
export function fieldOfError(
  message: string,
  edited: FieldName[],
  shown: FieldName[]
): FieldName | null {
  const kind = /^workers\.(cloud|edge)\b|--(cloud|edge)\b/.exec(message);
  if (kind) {
    return `workers-${(kind[1] ?? kind[2]) as SiteKind}`;
  }
  if (/^name\b/.test(message)) {
    return 'name';
  }
  if (/^gpus\b|--gpus\b|\bGPUs?\b/.test(message)) {
    return 'gpus';
  }
  if (/\bworkers?\b/.test(message)) {
    const workerField = (f: FieldName) => f.startsWith('workers-');
    return edited.find(workerField) ?? shown.find(workerField) ?? null;
  }
  return null;
}

/**
 * The worker count a scale request sends: the number as typed; `null` when the
 * dialog's field was left empty (nothing to do).
 */
export function scaleValue(value: number | null | undefined): number | null {
  return value === null || value === undefined || Number.isNaN(value) ? null : value;
}

/** One answer of the scale dialog. */
export interface IScaleAnswer {
  accept: boolean;
  value: number | null;
}

/**
 * Ask for a worker count and send it as typed until the server accepts it or
 * the user cancels; a refusal reopens the question with the server's one-line
 * reason and the number that was refused. A number outside the served `bounds`
 * is refused the same way without being sent. Resolves to the count accepted, or
 * null when cancelled. Errors other than a refusal (the server unreachable) reject.
 */
export async function scaleUntilAccepted(
  ask: (value: number, refusal?: string) => Promise<IScaleAnswer>,
  send: (workers: number) => Promise<unknown>,
  current: number,
  bounds: ICountBounds | null = null
): Promise<number | null> {
  let value = current;
  let refusal: string | undefined;
  for (;;) {
    const answer = await ask(value, refusal);
    const workers = scaleValue(answer.value);
    if (!answer.accept || workers === null) {
      return null;
    }
    // Outside the served bounds: asked again with the server's words, nothing sent.
    refusal = outOfBounds(workers, bounds);
    value = workers;
    if (refusal !== undefined) {
      continue;
    }
    try {
      await send(workers);
      return workers;
    } catch (error) {
      if (!(error instanceof APIError) || error.isNetworkError) {
        throw error;
      }
      refusal = error.message;
      value = workers;
    }
  }
}
