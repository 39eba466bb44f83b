/**
 * How far a job has come, as the job rows show it: pure functions, unit-tested as they are.
 */
import type { IJobSnapshot } from './api';

/** `4.2` → `"4.2 s"`, `65` → `"1m 05s"`, `7380` → `"2h 03m"`; not a number → `"–"`. */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) {
    return '–';
  }
  const s = Math.max(0, seconds);
  if (s < 60) {
    return `${s.toFixed(1)} s`;
  }
  const whole = Math.floor(s);
  const pad = (n: number): string => String(n).padStart(2, '0');
  if (whole < 3600) {
    return `${Math.floor(whole / 60)}m ${pad(whole % 60)}s`;
  }
  return `${Math.floor(whole / 3600)}h ${pad(Math.floor(whole / 60) % 60)}m`;
}

export type JobPhase = 'waiting' | 'running' | 'done' | 'stopped';

/**
 * `done` once nothing is left to run and every task finished or erred; `stopped` when it
 * ended with tasks that never finished (cancelled); `waiting` before a task started.
 */
export function jobPhase(job: IJobSnapshot): JobPhase {
  if (job.finished !== null && job.finished !== undefined) {
    return (job.done ?? 0) + (job.erred ?? 0) >= (job.total ?? 0) ? 'done' : 'stopped';
  }
  return job.started === null || job.started === undefined ? 'waiting' : 'running';
}

/** `"done in 4.2 s"`, `"running 12.0 s"`, `"waiting"`, `"stopped after 3.1 s"`; erred tasks named. */
export function jobStatus(job: IJobSnapshot): string {
  const erred = job.erred ? `, ${job.erred} erred` : '';
  const elapsed = formatDuration(job.elapsed ?? 0);
  switch (jobPhase(job)) {
    case 'done':
      return `done in ${elapsed}${erred}`;
    case 'stopped':
      return `stopped after ${elapsed}${erred}`;
    case 'waiting':
      return `waiting${erred}`;
    default:
      return `running ${elapsed}${erred}`;
  }
}

/** The progress bar of a job: widths (0–100) of its done and erred parts, and its label. */
export interface IJobProgress {
  done: number;
  erred: number;
  label: string;
}

export function jobProgress(job: IJobSnapshot): IJobProgress {
  const total = job.total ?? 0;
  const done = job.done ?? 0;
  const erred = job.erred ?? 0;
  const pct = (n: number): number =>
    total > 0 ? Math.max(0, Math.min(100, (100 * n) / total)) : 0;
  const donePct = pct(done);
  return {
    done: donePct,
    erred: Math.min(pct(erred), 100 - donePct),
    label: `${done}/${total}`
  };
}
