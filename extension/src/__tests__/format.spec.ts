import {
  barWidth,
  formatAge,
  formatBytes,
  formatCost,
  formatMemoryShort,
  formatPercent,
  formatResources
} from '../format';

describe('formatBytes', () => {
  it('picks binary units with few digits', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1536)).toBe('1.50 KiB');
    expect(formatBytes(8 * 1024 ** 3)).toBe('8.00 GiB');
    expect(formatBytes(300 * 1024 ** 2)).toBe('300 MiB');
  });
  it('shows a dash for missing values', () => {
    expect(formatBytes(null)).toBe('–');
    expect(formatBytes(-1)).toBe('–');
  });
});

describe('formatAge', () => {
  const created = '2024-05-01T10:00:00Z';
  const at = (s: number) => Date.parse(created) + s * 1000;
  it('grows from seconds to days', () => {
    expect(formatAge(created, at(42))).toBe('42s');
    expect(formatAge(created, at(5 * 60 + 3))).toBe('5m');
    expect(formatAge(created, at(3 * 3600 + 20 * 60))).toBe('3h 20m');
    expect(formatAge(created, at(2 * 86400 + 4 * 3600))).toBe('2d 4h');
  });
  it('never goes negative and tolerates garbage', () => {
    expect(formatAge(created, at(-10))).toBe('0s');
    expect(formatAge('not a date', at(0))).toBe('–');
  });
});

describe('small formatters', () => {
  it('formats cost, percent, bars and resources', () => {
    expect(formatCost(0.5)).toBe('$0.50/h');
    expect(formatCost(0.004)).toBe('$0.004/h');
    expect(formatPercent(37.6)).toBe('38%');
    expect(formatPercent(null)).toBe('–');
    expect(barWidth(3, 4)).toBe(75);
    expect(barWidth(9, 4)).toBe(100);
    expect(barWidth(1, 0)).toBe(0);
    expect(formatResources({ MEM: 2.5e9, GPU: 1 })).toBe('GPU 1, MEM 2500000000');
    expect(formatResources({})).toBe('–');
    expect(formatMemoryShort(1.31 * 1024 ** 3, 2 * 1024 ** 3)).toBe('1.3/2.0 GiB');
    expect(formatMemoryShort(700 * 1024 ** 2, 512 * 1024 ** 2)).toBe('700/512 MiB');
  });
});
