/**
 * The sidebar's Plan section: what it asks the planner and how it shows the answer.
 *
 * `GET /lepton/api/clusters/{id}/plan?kind=...` answers where the placement planner
 * would put a job of that size on the cluster now (nothing starts).
 */
import { ServerConnection } from '@jupyterlab/services';

import { APIError, apiUrl } from './api';

export const PLAN_KINDS = ['train', 'serve', 'tune', 'federate'] as const;
export type PlanKind = (typeof PLAN_KINDS)[number];

/** What the user fills in. */
export interface IPlanForm {
  kind: PlanKind;
  workers: number;
  gpus: number;
  /** Per worker: bytes or a size such as `2GiB`; empty for none. */
  memory: string;
  hours: number;
  /** The site the job's data lives on; empty for none. */
  dataSite: string;
  dataGb: number;
  /** The data may not leave its site. */
  dataStays: boolean;
}

export const DEFAULT_PLAN: IPlanForm = {
  kind: 'train',
  workers: 1,
  gpus: 0,
  memory: '',
  hours: 1,
  dataSite: '',
  dataGb: 0,
  dataStays: false
};

/** One site of a plan. */
export interface IPlanPick {
  site: string;
  kind: string;
  workers: number;
  gpus: number;
  cost_per_hour: number;
}

/** The planner's answer (`Choice.to_dict()` on the server). */
export interface IPlanChoice {
  kind: string;
  picks: IPlanPick[];
  cost_per_hour: number;
  data_site: string | null;
  data_local: boolean | null;
  moved_gb: number;
  waits: boolean;
  why: string[];
  site: string;
  line: string;
}

/** A one-line complaint about the form, or null when it may be asked. */
export function checkPlanForm(form: IPlanForm): string | null {
  if (!Number.isInteger(form.workers) || form.workers < 1) {
    return 'Workers must be a whole number of at least 1.';
  }
  if (!Number.isInteger(form.gpus) || form.gpus < 0) {
    return 'GPUs must be a whole number of at least 0.';
  }
  if (form.gpus > form.workers) {
    return 'GPUs count GPU workers: at most as many as workers.';
  }
  if (!(form.hours > 0)) {
    return 'Hours must be more than 0.';
  }
  if (!(form.dataGb >= 0)) {
    return 'Data size must be 0 GB or more.';
  }
  if (form.dataStays && !form.dataSite.trim()) {
    return 'Name the data site the data stays on.';
  }
  return null;
}

/** The query string of a form: only what differs from the planner's defaults. */
export function planQuery(form: IPlanForm): string {
  const q = new URLSearchParams({ kind: form.kind });
  if (form.workers !== 1) {
    q.set('workers', String(form.workers));
  }
  if (form.gpus) {
    q.set('gpus', String(form.gpus));
  }
  if (form.memory.trim()) {
    q.set('memory', form.memory.trim());
  }
  if (form.hours !== 1) {
    q.set('hours', String(form.hours));
  }
  if (form.dataSite.trim()) {
    q.set('data_site', form.dataSite.trim());
    if (form.dataGb) {
      q.set('data_gb', String(form.dataGb));
    }
    if (form.dataStays) {
      q.set('data_stays', '1');
    }
  }
  return q.toString();
}

/** One row per site of the plan: `edge-hospital-a × 2 (1 GPU) · $0.24/h`. */
export function planRows(choice: IPlanChoice): string[] {
  return choice.picks.map(p => {
    const gpus = p.gpus ? ` (${p.gpus} GPU${p.gpus === 1 ? '' : 's'})` : '';
    return `${p.site} × ${p.workers}${gpus} · $${p.cost_per_hour.toFixed(2)}/h`;
  });
}

/** Ask the planner; an {@link APIError} with the server's one line when the job cannot fit. */
export async function fetchPlan(
  clusterId: string,
  form: IPlanForm,
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<IPlanChoice> {
  const url = `${apiUrl(settings, 'clusters', clusterId, 'plan')}?${planQuery(form)}`;
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, {}, settings);
  } catch (error) {
    throw new APIError(0, 'The Jupyter server cannot be reached.', String(error));
  }
  let data: any = undefined;
  try {
    data = await response.json();
  } catch {
    data = undefined;
  }
  if (!response.ok) {
    const message =
      data && typeof data.message === 'string' && data.message
        ? data.message
        : `The planner answered ${response.status}.`;
    throw new APIError(response.status, message, data?.reason);
  }
  return data as IPlanChoice;
}
