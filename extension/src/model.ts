/**
 * The panel's state: who the user is, the profiles, clusters and templates
 * they may see, the selected cluster and its live allocation.
 *
 * One `Poll` keeps identity and clusters fresh (backing off while the server is
 * away, standing by while the panel or the browser tab is hidden); an
 * `AllocationStream` follows the selected cluster.
 */
import { IDisposable } from '@lumino/disposable';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import {
  APIError,
  ICluster,
  INewCluster,
  IProfile,
  IRequestSchemas,
  ISnapshot,
  IStartedAgain,
  ITemplate,
  IWhoAmI,
  LeptonAPI
} from './api';
import { AllocationStream, StreamMode } from './stream';

/** Clusters and identity are polled this many times slower than the live view. */
const LIST_INTERVAL_FACTOR = 3;
const MAX_BACKOFF_MS = 15_000;

export class LeptonModel implements IDisposable {
  constructor(options: LeptonModel.IOptions) {
    this.api = options.api;
    this._token = options.token;
    this._refreshInterval = options.refreshInterval;
    this._poll = new Poll({
      factory: () => this._load(),
      frequency: {
        interval: this._listInterval,
        backoff: true,
        max: MAX_BACKOFF_MS
      },
      name: 'lepton:clusters',
      // Stand by while the panel is hidden, and while the browser tab is.
      standby: () => !this._visible || 'when-hidden'
    });
  }

  readonly api: LeptonAPI;

  /** Anything shown by the panel changed. */
  get stateChanged(): ISignal<this, void> {
    return this._stateChanged;
  }

  /** The server became unreachable or failed (a one-line message), or came back (`null`). */
  get connectionChanged(): ISignal<this, string | null> {
    return this._connectionChanged;
  }

  get whoami(): IWhoAmI | null {
    return this._whoami;
  }

  get profiles(): IProfile[] {
    return this._profiles;
  }

  /** The served schemas of a cluster and a scale request (empty from an older server). */
  get schemas(): IRequestSchemas {
    return this._schemas;
  }

  get clusters(): ICluster[] {
    return this._clusters;
  }

  get templates(): ITemplate[] {
    return this._templates;
  }

  /** True once identity and clusters were loaded at least once. */
  get loaded(): boolean {
    return this._whoami !== null;
  }

  /** The connection error, or null while the server answers. */
  get error(): string | null {
    return this._error;
  }

  get selectedId(): string | null {
    return this._selectedId;
  }

  get selected(): ICluster | null {
    return this._clusters.find(c => c.id === this._selectedId) ?? null;
  }

  get snapshot(): ISnapshot | null {
    return this._snapshot?.cluster === this._selectedId ? this._snapshot : null;
  }

  get snapshotError(): string | null {
    return this._snapshotError;
  }

  get streamMode(): StreamMode {
    return this._stream?.mode ?? 'stopped';
  }

  /** Whether the new-cluster form is open. */
  get formOpen(): boolean {
    return this._formOpen;
  }
  set formOpen(open: boolean) {
    if (open !== this._formOpen) {
      this._formOpen = open;
      this._stateChanged.emit();
    }
  }

  /** Seconds between two live snapshots when polling. */
  get refreshInterval(): number {
    return this._refreshInterval;
  }
  set refreshInterval(seconds: number) {
    if (seconds > 0 && seconds !== this._refreshInterval) {
      this._refreshInterval = seconds;
      this._poll.frequency = {
        ...this._poll.frequency,
        interval: this._listInterval
      };
      this._restartStream();
    }
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /** Follow the selected cluster's allocation. */
  select(id: string | null): void {
    if (id === this._selectedId) {
      return;
    }
    this._selectedId = id;
    this._snapshot = null;
    this._snapshotError = null;
    this._syncStream();
    this._stateChanged.emit();
  }

  /** The panel was shown or hidden: nothing is fetched while it is hidden. */
  setVisible(visible: boolean): void {
    if (visible === this._visible) {
      return;
    }
    this._visible = visible;
    this._syncStream();
    if (visible) {
      void this._poll.refresh();
    }
  }

  /** Reload everything now, profiles and templates included. */
  async refresh(): Promise<void> {
    this._staticLoaded = false;
    await this._poll.refresh();
  }

  async createCluster(request: INewCluster): Promise<ICluster> {
    const cluster = await this.api.createCluster(request);
    this._upsert(cluster);
    this._formOpen = false;
    this.select(cluster.id);
    this._stateChanged.emit();
    void this._poll.refresh();
    return cluster;
  }

  async scaleCluster(id: string, site: string, workers: number): Promise<ICluster> {
    const cluster = await this.api.scaleCluster(id, { site, workers });
    this._upsert(cluster);
    this._stateChanged.emit();
    void this._poll.refresh();
    return cluster;
  }

  /** Start a stopped cluster again from its record; the new one is selected. */
  async startClusterAgain(id: string): Promise<IStartedAgain> {
    const started = await this.api.startClusterAgain(id);
    this._upsert(started);
    this.select(started.id);
    this._stateChanged.emit();
    void this._poll.refresh();
    return started;
  }

  async shutdownCluster(id: string): Promise<void> {
    await this.api.shutdownCluster(id);
    this._clusters = this._clusters.filter(c => c.id !== id);
    if (this._selectedId === id) {
      this.select(this._clusters[0]?.id ?? null);
    }
    this._stateChanged.emit();
    void this._poll.refresh();
  }

  /**
   * Forget every stopped cluster's record; resolves to the one-line reasons of
   * those the server kept (empty when all went).
   */
  async clearStopped(): Promise<string[]> {
    const stopped = this._clusters.filter(c => c.status === 'stopped');
    const kept: string[] = [];
    const gone = new Set<string>();
    await Promise.all(
      stopped.map(async c => {
        try {
          await this.api.shutdownCluster(c.id);
          gone.add(c.id);
        } catch (error) {
          kept.push(`${c.name}: ${error instanceof Error ? error.message : String(error)}`);
        }
      })
    );
    this._clusters = this._clusters.filter(c => !gone.has(c.id));
    this._stateChanged.emit();
    void this._poll.refresh();
    return kept;
  }

  /** Copy a team template into the user's space; resolves to its path. */
  copyTemplate(team: string, name: string): Promise<string> {
    return this.api.copyTemplate(team, name);
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._poll.dispose();
    this._stream?.dispose();
    this._stream = null;
    Signal.clearData(this);
  }

  private get _listInterval(): number {
    return this._refreshInterval * 1000 * LIST_INTERVAL_FACTOR;
  }

  private async _load(): Promise<void> {
    try {
      // Profiles and templates change rarely: fetched with the first load (all four
      // requests at once, one round trip) and after an outage.
      const statics = this._staticLoaded
        ? null
        : Promise.all([this.api.profileList(), this.api.templates()]);
      const [whoami, clusters, fresh] = await Promise.all([
        this.api.whoami(),
        this.api.clusters(),
        statics
      ]);
      if (fresh) {
        const [list, templates] = fresh;
        this._profiles = list.profiles;
        this._schemas = { request: list.request, scale: list.scale };
        this._templates = templates;
        this._staticLoaded = true;
      }
      this._whoami = whoami;
      this._clusters = clusters;
    } catch (error) {
      this._setError(error instanceof APIError ? error.message : String(error));
      // After an outage, profiles and templates may have changed too.
      this._staticLoaded = false;
      this._stateChanged.emit();
      throw error; // Poll backs off
    }
    this._setError(null);
    if (!this.selected || this.selected.status === 'stopped') {
      // A stopped cluster has no live view: follow the first running one, if any.
      const first = this._clusters.find(c => c.status !== 'stopped');
      this._selectedId = null;
      this.select(first?.id ?? null);
    }
    this._syncStream();
    this._stateChanged.emit();
  }

  private _upsert(cluster: ICluster): void {
    const index = this._clusters.findIndex(c => c.id === cluster.id);
    this._clusters =
      index < 0
        ? [...this._clusters, cluster]
        : this._clusters.map(c => (c.id === cluster.id ? cluster : c));
  }

  private _setError(error: string | null): void {
    if (error !== this._error) {
      this._error = error;
      this._connectionChanged.emit(error);
    }
  }

  /** Run a stream for the selected cluster exactly while the panel is visible. */
  private _syncStream(): void {
    const cluster = this.selected;
    const wanted =
      this._visible && cluster !== null && cluster.status !== 'stopped';
    if (this._stream && (!wanted || this._stream.clusterId !== cluster?.id)) {
      this._stream.dispose();
      this._stream = null;
    }
    if (!wanted || !cluster) {
      return;
    }
    if (!this._stream) {
      const stream = new AllocationStream({
        api: this.api,
        clusterId: cluster.id,
        interval: this._refreshInterval * 1000,
        token: this._token
      });
      stream.snapshotChanged.connect((_, snapshot) => {
        this._snapshot = snapshot;
        this._stateChanged.emit();
      });
      stream.errorChanged.connect((_, error) => {
        this._snapshotError = error;
        this._stateChanged.emit();
      });
      this._stream = stream;
    }
    this._stream.start();
  }

  private _restartStream(): void {
    this._stream?.dispose();
    this._stream = null;
    this._syncStream();
  }

  private _token: string;
  private _refreshInterval: number;
  private _poll: Poll;
  private _stream: AllocationStream | null = null;
  private _visible = false;
  private _staticLoaded = false;
  private _whoami: IWhoAmI | null = null;
  private _profiles: IProfile[] = [];
  private _schemas: IRequestSchemas = {};
  private _clusters: ICluster[] = [];
  private _templates: ITemplate[] = [];
  private _selectedId: string | null = null;
  private _snapshot: ISnapshot | null = null;
  private _snapshotError: string | null = null;
  private _error: string | null = null;
  private _formOpen = false;
  private _isDisposed = false;
  private _stateChanged = new Signal<this, void>(this);
  private _connectionChanged = new Signal<this, string | null>(this);
}

export namespace LeptonModel {
  export interface IOptions {
    api: LeptonAPI;
    /** Seconds between live snapshots; clusters refresh a few times slower. */
    refreshInterval: number;
    /** Token appended to WebSocket URLs (empty for none). */
    token: string;
  }
}
