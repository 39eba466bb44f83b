/**
 * Formatting for the panel: pure functions, no JupyterLab imports, so they are
 * unit-tested as they are.
 */

import type { IStartedAgain } from './api';

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** `1536` → `"1.5 KiB"`; null or negative → `"–"`. */
export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !isFinite(bytes) || bytes < 0) {
    return '–';
  }
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const digits = unit === 0 || value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${value.toFixed(digits)} ${UNITS[unit]}`;
}

/** `"2.10 GiB / 8.00 GiB"`. */
export function formatMemory(used: number, limit: number): string {
  return `${formatBytes(used)} / ${formatBytes(limit)}`;
}

/** Compact `"1.3/2.0 GiB"` in the limit's unit, for narrow bars. */
export function formatMemoryShort(used: number, limit: number): string {
  if (!isFinite(used) || !isFinite(limit) || limit <= 0 || used < 0) {
    return formatMemory(used, limit);
  }
  let unit = 0;
  while (limit / 1024 ** unit >= 1024 && unit < UNITS.length - 1) {
    unit += 1;
  }
  const scale = 1024 ** unit;
  const digits = unit === 0 || limit / scale >= 100 ? 0 : 1;
  return `${(used / scale).toFixed(digits)}/${(limit / scale).toFixed(digits)} ${UNITS[unit]}`;
}

/** Percent with no decimals, clamped for display bars; null → `"–"`. */
export function formatPercent(value: number | null | undefined): string {
  if (value === null || value === undefined || !isFinite(value)) {
    return '–';
  }
  return `${Math.round(value)}%`;
}

/** A 0–100 width for a bar from `used / limit`. */
export function barWidth(used: number, limit: number): number {
  if (!limit || limit <= 0 || !isFinite(used)) {
    return 0;
  }
  return Math.max(0, Math.min(100, (100 * used) / limit));
}

/** `0.5` → `"$0.50/h"`; below a cent shows three decimals. */
export function formatCost(perHour: number | null | undefined): string {
  if (perHour === null || perHour === undefined || !isFinite(perHour)) {
    return '–';
  }
  const digits = perHour !== 0 && Math.abs(perHour) < 0.01 ? 3 : 2;
  return `$${perHour.toFixed(digits)}/h`;
}

/** A cost to show, or null where none is set (a cost of 0 is no cost set). */
export function costText(perHour: number | null | undefined): string | null {
  return perHour && isFinite(perHour) ? formatCost(perHour) : null;
}

/**
 * The age of something created at `created` (ISO 8601) seen at `now` (ms):
 * `"42s"`, `"5m"`, `"3h 20m"`, `"2d 4h"`.
 */
export function formatAge(created: string, now: number = Date.now()): string {
  const start = Date.parse(created);
  if (isNaN(start)) {
    return '–';
  }
  const seconds = Math.max(0, Math.floor((now - start) / 1000));
  if (seconds < 60) {
    return `${seconds}s`;
  }
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) {
    return `${minutes}m`;
  }
  const hours = Math.floor(minutes / 60);
  if (hours < 24) {
    return `${hours}h ${minutes % 60}m`;
  }
  const days = Math.floor(hours / 24);
  return `${days}d ${hours % 24}h`;
}

/** `{GPU: 1, MEM: 2e9}` → `"GPU 1, MEM 2e+9"`, sorted by name; empty → `"–"`. */
export function formatResources(resources: { [name: string]: number }): string {
  const names = Object.keys(resources || {}).sort();
  if (names.length === 0) {
    return '–';
  }
  return names
    .map(name => {
      const value = resources[name];
      const text = Number.isInteger(value)
        ? String(value)
        : Number(value.toPrecision(3)).toString();
      return `${name} ${text}`;
    })
    .join(', ');
}

/**
 * What to tell the user about a cluster started again: `success`, and a
 * `warning` with one `name: reason` line per deployment not served again
 * (null when every one was).
 */
export function startedAgainText(started: IStartedAgain): {
  success: string;
  warning: string | null;
} {
  const redeployed = started.redeployed ?? [];
  const reasons = Object.entries(started.not_redeployed ?? {});
  const success =
    `Started ${started.name} again` +
    (redeployed.length > 0 ? `; serving again: ${redeployed.join(', ')}` : '');
  const warning =
    reasons.length > 0
      ? ['Not served again:', ...reasons.map(([name, why]) => `${name}: ${why}`)].join('\n')
      : null;
  return { success, warning };
}
