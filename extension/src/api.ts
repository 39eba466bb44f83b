/**
 * The Lepton REST API: every JSON shape the server sends, and one typed
 * `requestAPI<T>()` over `ServerConnection.makeRequest`.
 *
 * The server owns all logic; this module only moves JSON and turns non-2xx
 * answers into an `APIError` carrying the server's one-line message.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export type SiteKind = 'cloud' | 'edge';
export type WorkerKind = SiteKind | 'unknown';
export type ClusterStatus = 'running' | 'starting' | 'stopped';

/** Usage counted against a quota. */
export interface IUsage {
  gpus: number;
  workers: number;
  clusters: number;
}

/** A quota; `null` means unlimited. */
export interface IQuota {
  max_gpus: number | null;
  max_workers: number | null;
  max_clusters: number | null;
  used: IUsage;
}

/** `GET whoami`. */
export interface IWhoAmI {
  name: string;
  display_name: string;
  teams: string[];
  roles: { [team: string]: string };
  permissions: string[];
  quotas: { [team: string]: IQuota };
  user_quota: IQuota;
}

/** One site of a cluster profile. */
export interface IProfileSite {
  name: string;
  kind: SiteKind;
  workers: number;
  threads: number;
  memory: string;
  /** GPU workers; `"auto"` = every GPU the server finds. */
  gpus: number | 'auto';
  cost_per_hour: number;
}

export interface IProfile {
  name: string;
  description: string;
  sites: IProfileSite[];
}

/**
 * The part of a JSON Schema (Draft 2020-12) the form reads: types, numeric
 * bounds, alternatives, nested fields, and `x-reason`, the server's words for
 * a refusal (a `str.format` template over `value`, or one per keyword).
 */
export interface IJSONSchema {
  type?: string | string[];
  minimum?: number;
  maximum?: number;
  const?: unknown;
  anyOf?: IJSONSchema[];
  oneOf?: IJSONSchema[];
  properties?: { [field: string]: IJSONSchema };
  required?: string[];
  'x-reason'?: string | { [keyword: string]: string };
  [keyword: string]: unknown;
}

/** `GET profiles`. */
export interface IProfileList {
  profiles: IProfile[];
  /** What `POST clusters` accepts (absent from older servers). */
  request?: IJSONSchema;
  /** What `PATCH clusters/{id}` accepts (absent from older servers). */
  scale?: IJSONSchema;
  /** What one site of a profile may hold. */
  site?: IJSONSchema;
}

/** The served schemas the forms draw their bounds from; empty for an older server. */
export interface IRequestSchemas {
  request?: IJSONSchema;
  scale?: IJSONSchema;
}

/** One site of a running cluster. */
export interface IClusterSite {
  name: string;
  kind: SiteKind;
  workers: number;
  gpus: number;
  threads: number;
  memory: string;
  cost_per_hour: number;
}

export interface ICluster {
  id: string;
  name: string;
  owner: string;
  team: string;
  profile: string;
  /** ISO 8601. */
  created: string;
  status: ClusterStatus;
  scheduler_address: string;
  dashboard_link: string;
  cost_per_hour: number;
  /** Why a stopped cluster stopped, e.g. `"the Jupyter server stopped"`. */
  stopped_reason?: string;
  /** When a stopped cluster stopped (ISO 8601). */
  stopped_at?: string;
  /** The code "Use in notebook" inserts; the server decides it. */
  connect_code: string;
  sites: IClusterSite[];
}

/**
 * `POST clusters/{id}/start`: the new cluster started from a stopped one's
 * record, with the deployments served again and why the others were not.
 */
export interface IStartedAgain extends ICluster {
  redeployed: string[];
  /** Deployment name → one-line reason. */
  not_redeployed: Record<string, string>;
}

/** `GET clusters`. */
export interface IClusterList {
  clusters: ICluster[];
}

/** `POST clusters` body. */
export interface INewCluster {
  team: string;
  profile: string;
  name?: string;
  workers?: { [kind in SiteKind]?: number };
  /** `"auto"`: every free GPU the machine has. */
  gpus?: number | 'auto';
}

/** `PATCH clusters/{id}` body: `site` is a site name or a kind. */
export interface IScaleRequest {
  site: string;
  workers: number;
}

export interface IGPU {
  index: number;
  name: string;
  utilization: number | null;
  memory_used: number | null;
  memory_total: number | null;
}

export interface IWorkerSnapshot {
  name: string;
  address: string;
  site: string;
  kind: WorkerKind;
  nthreads: number;
  memory_used: number;
  memory_limit: number;
  /** Percent. */
  cpu: number;
  gpus: IGPU[];
  processing: number;
  resources: { [name: string]: number };
  used_resources: { [name: string]: number };
  jobs: { [job: string]: number };
  cost_per_hour: number;
}

export interface ISiteSnapshot {
  name: string;
  kind: string;
  workers: number;
  nthreads: number;
  memory_used: number;
  memory_limit: number;
  gpus: number;
  processing: number;
  cost_per_hour: number;
}

export interface IJobSnapshot {
  name: string;
  /** Tasks running now, on `workers` of `sites`, holding `resources`. */
  tasks: number;
  workers: string[];
  sites: string[];
  resources: { [name: string]: number };
  /** Tasks finished (in memory or released after running) of all the scheduler knows. */
  done: number;
  total: number;
  erred: number;
  /** Seconds since the epoch; null before a task started. */
  started: number | null;
  /** Set once no task is left to run (null while the job runs or waits). */
  finished: number | null;
  /** Seconds from `started` to `finished`, or to the snapshot while running. */
  elapsed: number;
}

export interface ITotals {
  workers: number;
  nthreads: number;
  memory_used: number;
  memory_limit: number;
  gpus: number;
  processing: number;
  cost_per_hour: number;
}

/** `GET clusters/{id}/allocation` and each message of `clusters/{id}/stream`. */
export interface ISnapshot {
  cluster: string;
  /** Seconds since the epoch. */
  time: number;
  scheduler: string;
  workers: IWorkerSnapshot[];
  sites: ISiteSnapshot[];
  jobs: IJobSnapshot[];
  totals: ITotals;
}

export interface ITemplate {
  team: string;
  name: string;
  title: string;
  description: string;
  path: string;
}

/** `GET templates`. */
export interface ITemplateList {
  templates: ITemplate[];
}

/** `POST templates/copy` answer: a contents-API path. */
export interface ICopiedTemplate {
  path: string;
}

/** The body of every non-2xx answer. */
export interface IErrorBody {
  message: string;
  reason?: string;
}

/**
 * A failed API call. `status` is the HTTP status (0 when the server could not
 * be reached); `message` is one line meant for the user.
 */
export class APIError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly reason?: string
  ) {
    super(message);
    this.name = 'APIError';
  }

  /** True when the server was not reached at all. */
  get isNetworkError(): boolean {
    return this.status === 0;
  }
}

/** The URL of an API path, e.g. `apiUrl(settings, 'clusters', id)`. */
export function apiUrl(
  settings: ServerConnection.ISettings,
  ...parts: string[]
): string {
  return URLExt.join(
    settings.baseUrl,
    'lepton',
    'api',
    ...parts.map(encodeURIComponent)
  );
}

/**
 * Call the Lepton API and return its JSON answer (`undefined` for 204).
 *
 * @throws {APIError} on a network failure or a non-2xx answer.
 */
export async function requestAPI<T>(
  path: string[],
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url = apiUrl(settings, ...path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new APIError(
      0,
      'The Jupyter server cannot be reached; Lepton will retry.',
      String(error)
    );
  }
  const text = await response.text();
  let data: any = undefined;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      data = undefined;
    }
  }
  if (!response.ok) {
    const body = data as Partial<IErrorBody> | undefined;
    const message =
      body && typeof body.message === 'string' && body.message
        ? body.message
        : fallbackMessage(response.status, path);
    throw new APIError(response.status, message, body?.reason);
  }
  return data as T;
}

/** A one-line message for answers that carry no JSON body (e.g. a proxy error). */
function fallbackMessage(status: number, path: string[]): string {
  if (status === 404 && path.length <= 1) {
    return 'The Lepton server extension is not running: enable it with `jupyter server extension enable lepton_lab` and restart Jupyter.';
  }
  return `The Lepton API answered ${status} for ${path.join('/')}.`;
}

function jsonInit(method: string, body?: unknown): RequestInit {
  return body === undefined
    ? { method }
    : {
        method,
        body: JSON.stringify(body),
        headers: { 'Content-Type': 'application/json' }
      };
}

/** Typed calls, one per route of the REST contract. */
export class LeptonAPI {
  constructor(
    readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {}

  whoami(): Promise<IWhoAmI> {
    return requestAPI<IWhoAmI>(['whoami'], {}, this.settings);
  }

  async profiles(): Promise<IProfile[]> {
    return (await this.profileList()).profiles;
  }

  /** The profiles with the schemas of what a request may ask. */
  profileList(): Promise<IProfileList> {
    return requestAPI<IProfileList>(['profiles'], {}, this.settings);
  }

  async clusters(): Promise<ICluster[]> {
    const data = await requestAPI<IClusterList>(
      ['clusters'],
      {},
      this.settings
    );
    return data.clusters;
  }

  createCluster(request: INewCluster): Promise<ICluster> {
    return requestAPI<ICluster>(
      ['clusters'],
      jsonInit('POST', request),
      this.settings
    );
  }

  scaleCluster(id: string, request: IScaleRequest): Promise<ICluster> {
    return requestAPI<ICluster>(
      ['clusters', id],
      jsonInit('PATCH', request),
      this.settings
    );
  }

  /** Start a stopped cluster again from its record, with its deployments. */
  startClusterAgain(id: string): Promise<IStartedAgain> {
    return requestAPI<IStartedAgain>(
      ['clusters', id, 'start'],
      jsonInit('POST', {}),
      this.settings
    );
  }

  async shutdownCluster(id: string): Promise<void> {
    await requestAPI<void>(
      ['clusters', id],
      jsonInit('DELETE'),
      this.settings
    );
  }

  allocation(id: string): Promise<ISnapshot> {
    return requestAPI<ISnapshot>(
      ['clusters', id, 'allocation'],
      {},
      this.settings
    );
  }

  async templates(): Promise<ITemplate[]> {
    const data = await requestAPI<ITemplateList>(
      ['templates'],
      {},
      this.settings
    );
    return data.templates;
  }

  async copyTemplate(team: string, name: string): Promise<string> {
    const data = await requestAPI<ICopiedTemplate>(
      ['templates', 'copy'],
      jsonInit('POST', { team, name }),
      this.settings
    );
    return data.path;
  }

  /**
   * The WebSocket URL of a cluster's allocation stream: one snapshot every
   * `intervalMs` (the server keeps it between 0.2 s and 30 s), token appended.
   */
  streamUrl(id: string, token: string, intervalMs: number): string {
    const url = URLExt.join(
      this.settings.wsUrl,
      'lepton',
      'api',
      'clusters',
      encodeURIComponent(id),
      'stream'
    );
    const query: Record<string, string> = {
      interval: String(Math.round(intervalMs) / 1000)
    };
    if (token) {
      query.token = token;
    }
    return url + URLExt.objectToQueryString(query);
  }
}
