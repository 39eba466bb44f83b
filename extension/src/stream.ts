/**
 * Live allocation of one cluster: a WebSocket to `clusters/{id}/stream`, with
 * a fallback to polling `clusters/{id}/allocation` when the socket cannot be
 * opened or drops. The owner stops it when the panel is hidden.
 */
import { IDisposable } from '@lumino/disposable';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { APIError, ISnapshot, LeptonAPI } from './api';

export type StreamMode = 'websocket' | 'poll' | 'stopped';

/** Longest wait between two polls while the server is unreachable. */
const MAX_BACKOFF_MS = 15_000;
/** First wait before trying the socket again after it failed; doubles, capped. */
const SOCKET_RETRY_MS = 10_000;
const SOCKET_RETRY_MAX_MS = 60_000;

export class AllocationStream implements IDisposable {
  constructor(options: AllocationStream.IOptions) {
    this._api = options.api;
    this.clusterId = options.clusterId;
    this._interval = options.interval;
    this._token = options.token;
  }

  readonly clusterId: string;

  /** A new snapshot arrived. */
  get snapshotChanged(): ISignal<this, ISnapshot> {
    return this._snapshotChanged;
  }

  /** The last fetch failed (a one-line message) or recovered (`null`). */
  get errorChanged(): ISignal<this, string | null> {
    return this._errorChanged;
  }

  get mode(): StreamMode {
    return this._mode;
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /** Start (or resume) receiving snapshots. */
  start(): void {
    if (this._running || this._isDisposed) {
      return;
    }
    this._running = true;
    this._openSocket();
  }

  /** Stop receiving: close the socket and stop polling. */
  stop(): void {
    this._running = false;
    this._mode = 'stopped';
    this._closeSocket();
    void this._poll?.stop();
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this.stop();
    this._poll?.dispose();
    this._poll = null;
    this._isDisposed = true;
    Signal.clearData(this);
  }

  private _openSocket(): void {
    if (this._socket || !this._running) {
      return;
    }
    let socket: WebSocket;
    try {
      socket = new this._api.settings.WebSocket(
        this._api.streamUrl(this.clusterId, this._token, this._interval)
      );
    } catch {
      this._fallback();
      return;
    }
    this._socket = socket;
    socket.onopen = () => {
      this._mode = 'websocket';
      this._socketFailures = 0;
      void this._poll?.stop();
    };
    socket.onmessage = (event: MessageEvent) => {
      this._receive(event.data);
    };
    socket.onclose = () => {
      if (this._socket !== socket) {
        return;
      }
      this._socket = null;
      this._socketFailures += 1;
      const wait = Math.min(
        SOCKET_RETRY_MAX_MS,
        SOCKET_RETRY_MS * 2 ** (this._socketFailures - 1)
      );
      this._nextSocketTry = Date.now() + wait;
      if (this._running) {
        this._fallback();
      }
    };
  }

  private _closeSocket(): void {
    const socket = this._socket;
    this._socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = null;
      socket.close();
    }
  }

  private _receive(data: unknown): void {
    let message: any;
    try {
      message = JSON.parse(String(data));
    } catch {
      return;
    }
    if (message && Array.isArray(message.workers)) {
      this._setError(null);
      this._snapshotChanged.emit(message as ISnapshot);
    } else if (message && typeof message.message === 'string') {
      this._setError(message.message);
    }
  }

  private _fallback(): void {
    this._mode = 'poll';
    if (!this._poll) {
      this._poll = new Poll({
        auto: false,
        factory: () => this._pollOnce(),
        frequency: {
          interval: this._interval,
          backoff: true,
          max: MAX_BACKOFF_MS
        },
        name: `lepton:allocation:${this.clusterId}`,
        standby: 'when-hidden'
      });
    }
    void this._poll.start();
  }

  private async _pollOnce(): Promise<void> {
    if (!this._running) {
      return;
    }
    let snapshot: ISnapshot;
    try {
      snapshot = await this._api.allocation(this.clusterId);
    } catch (error) {
      this._setError(
        error instanceof APIError ? error.message : String(error)
      );
      throw error; // Poll backs off
    }
    this._setError(null);
    this._snapshotChanged.emit(snapshot);
    // The server answers again: give the socket another chance.
    if (Date.now() >= this._nextSocketTry) {
      this._openSocket();
    }
  }

  private _setError(error: string | null): void {
    if (error !== this._error) {
      this._error = error;
      this._errorChanged.emit(error);
    }
  }

  private _api: LeptonAPI;
  private _interval: number;
  private _token: string;
  private _running = false;
  private _mode: StreamMode = 'stopped';
  private _socket: WebSocket | null = null;
  private _socketFailures = 0;
  private _nextSocketTry = 0;
  private _poll: Poll | null = null;
  private _error: string | null = null;
  private _isDisposed = false;
  private _snapshotChanged = new Signal<this, ISnapshot>(this);
  private _errorChanged = new Signal<this, string | null>(this);
}

export namespace AllocationStream {
  export interface IOptions {
    api: LeptonAPI;
    clusterId: string;
    /** Polling interval in ms when the socket is not available. */
    interval: number;
    /** Appended as `?token=` when non-empty, as JupyterLab does for its sockets. */
    token: string;
  }
}
