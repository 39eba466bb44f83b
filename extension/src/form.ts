/**
 * What the new-cluster form sends for what was typed, and where a refusal is
 * shown. The form never changes a number: an empty field sends nothing (the
 * profile's default), anything else goes to the server as typed, and the
 * server's one-line reason comes back to the field it is about. Pure functions.
 */
import { APIError } from './api';
import type { INewCluster, SiteKind } from './api';
import type { IProfileShape } from './sites';

/** A form field that can be refused: the name, workers per site kind, GPUs. */
export type FieldName = 'name' | 'gpus' | 'workers-cloud' | 'workers-edge';

/** What a count field sends: nothing (`value` undefined), a number, or a refusal of its own. */
export interface ICountField {
  value?: number;
  /** Set when the text is no number at all (there is nothing to send). */
  error?: string;
}

/** A count field's text: empty → the profile's default (nothing sent); a number → as typed. */
export function countField(text: string | null | undefined): ICountField {
  const trimmed = (text ?? '').trim();
  if (trimmed === '') {
    return {};
  }
  const value = Number(trimmed);
  if (!isFinite(value)) {
    return { error: `not a number: ${JSON.stringify(trimmed)}` };
  }
  return { value };
}

/** The text of the form's fields; a field missing here was never touched. */
export interface IFormText {
  team: string;
  profile: string;
  name: string;
  workers: { [kind in SiteKind]?: string };
  gpus: string;
}

/** The request for the form's text, or the fields that cannot be sent. */
export interface IFormRequest {
  request: INewCluster;
  errors: { [field in FieldName]?: string };
}

export function formRequest(text: IFormText, kinds: SiteKind[]): IFormRequest {
  const request: INewCluster = { team: text.team, profile: text.profile };
  const errors: IFormRequest['errors'] = {};
  for (const kind of kinds) {
    const field = countField(text.workers[kind]);
    if (field.error) {
      errors[`workers-${kind}`] = field.error;
    } else if (field.value !== undefined) {
      request.workers = { ...request.workers, [kind]: field.value };
    }
  }
  const gpus = countField(text.gpus);
  if (gpus.error) {
    errors.gpus = gpus.error;
  } else if (gpus.value !== undefined) {
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
 * reason and the number that was refused. Resolves to the count accepted, or
 * null when cancelled. Errors other than a refusal (the server unreachable) reject.
 */
export async function scaleUntilAccepted(
  ask: (value: number, refusal?: string) => Promise<IScaleAnswer>,
  send: (workers: number) => Promise<unknown>,
  current: number
): Promise<number | null> {
  let value = current;
  let refusal: string | undefined;
  for (;;) {
    const answer = await ask(value, refusal);
    const workers = scaleValue(answer.value);
    if (!answer.accept || workers === null) {
      return null;
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
