import * as React from 'react';

import type { ICluster } from '../api';
import { ClusterList, IClusterActions, stoppedText } from '../components/ClusterList';
import { NewClusterForm } from '../components/NewClusterForm';
import { ANALYST } from './fixtures/whoami';

// react-dom ships no types here; only this one function is used.
declare function require(module: 'react-dom/server'): {
  renderToStaticMarkup(element: React.ReactElement): string;
};
declare function require(module: 'react'): typeof React;
const { renderToStaticMarkup } = require('react-dom/server');

const NOW = Date.parse('2026-03-01T12:00:00Z');

function cluster(id: string, status: ICluster['status'], extra: Partial<ICluster> = {}): ICluster {
  return {
    id,
    name: `local-ann-${id}`,
    owner: 'ann',
    team: 'medical',
    profile: 'local',
    created: '2026-03-01T10:00:00Z',
    status,
    scheduler_address: status === 'stopped' ? '' : 'tls://127.0.0.1:1234',
    dashboard_link: status === 'stopped' ? '' : 'http://127.0.0.1:8787/status',
    cost_per_hour: 0,
    connect_code: '',
    sites: [
      { name: 'cloud', kind: 'cloud', workers: 2, gpus: 0, threads: 1, memory: '1 GiB', cost_per_hour: 0 },
      { name: 'edge', kind: 'edge', workers: 1, gpus: 0, threads: 1, memory: '1 GiB', cost_per_hour: 0 }
    ],
    ...extra
  };
}

const actions: IClusterActions = {
  select: () => undefined,
  scale: () => undefined,
  shutdown: () => undefined,
  remove: () => undefined,
  startAgain: () => undefined,
  clearStopped: () => undefined,
  useInNotebook: () => undefined,
  openDashboard: () => undefined
};

function render(clusters: ICluster[]): HTMLElementLike {
  const html: string = renderToStaticMarkup(
    React.createElement(ClusterList, { clusters, selectedId: null, actions, now: NOW })
  );
  return new HTMLElementLike(html);
}

/** Just enough of a DOM for these checks, over the rendered markup. */
class HTMLElementLike {
  constructor(readonly html: string) {}
  count(pattern: RegExp): number {
    return (this.html.match(new RegExp(pattern, 'g')) ?? []).length;
  }
  /** The markup inside `<details ...>...</details>`, or ''. */
  get stopped(): string {
    const m = /<details[^>]*data-testid="lepton-stopped"[^>]*>([\s\S]*)<\/details>/.exec(this.html);
    return m ? m[1] : '';
  }
  /** The markup before the stopped section. */
  get running(): string {
    const i = this.html.indexOf('<details');
    return i < 0 ? this.html : this.html.slice(0, i);
  }
}

const stopped = (id: string, minutesAgo: number) =>
  cluster(id, 'stopped', {
    stopped_reason: 'the Jupyter server stopped',
    stopped_at: new Date(NOW - minutesAgo * 60_000).toISOString()
  });

describe('stopped clusters', () => {
  it('are collapsed under "Stopped (n)" below the running ones', () => {
    const view = render([stopped('1', 5), cluster('2', 'running'), stopped('3', 90)]);
    expect(view.count(/<details/)).toBe(1);
    expect(view.html).not.toMatch(/<details[^>]* open/);
    expect(view.stopped).toContain('Stopped (2)');
    expect(view.running).toContain('data-cluster-id="2"');
    expect(view.running).not.toContain('data-cluster-id="1"');
    expect(view.stopped).toContain('data-cluster-id="1"');
    expect(view.stopped).toContain('data-cluster-id="3"');
  });

  it('say when and why they stopped', () => {
    const view = render([stopped('1', 5), stopped('3', 90)]);
    expect(view.stopped).toContain('stopped 5m ago: the Jupyter server stopped');
    expect(view.stopped).toContain('stopped 1h 30m ago: the Jupyter server stopped');
    expect(stoppedText(cluster('4', 'stopped'), NOW)).toBe('stopped');
  });

  it('offer "Remove" and "Clear stopped", never "Shut down" or a dashboard', () => {
    const view = render([stopped('1', 5), stopped('3', 90)]);
    expect(view.stopped.match(/data-testid="lepton-remove"[^>]*>Remove</g)).toHaveLength(2);
    expect(view.stopped).toMatch(/data-testid="lepton-clear-stopped"[^>]*>Clear stopped</);
    expect(view.stopped).not.toContain('Shut down');
    expect(view.stopped).not.toContain('lepton-open-dashboard');
    expect(view.stopped).not.toContain('lepton-use-in-notebook');
    expect(view.running).toContain('No running cluster');
  });

  it('offer "Start again" beside "Remove", each with its cluster', () => {
    const view = render([stopped('1', 5), stopped('3', 90)]);
    const buttons = view.stopped.match(
      /<button[^>]*data-testid="lepton-start-again"[^>]*>Start again<\/button><button[^>]*data-testid="lepton-remove"/g
    );
    expect(buttons).toHaveLength(2);
    expect(buttons![0]).toContain('title="Start this cluster again with its settings and deployments"');
    expect(buttons![0]).not.toContain('disabled');
    expect(render([cluster('2', 'running')]).html).not.toContain('lepton-start-again');
  });

  it('leave a running cluster its dashboard and "Shut down"', () => {
    const view = render([cluster('2', 'running')]);
    expect(view.count(/<details/)).toBe(0);
    expect(view.running).toContain('lepton-open-dashboard');
    expect(view.running).toContain('Shut down');
    expect(view.running).not.toContain('Remove');
  });

  it('show a cost only where the profile sets one', () => {
    expect(render([cluster('2', 'running')]).html).not.toContain('$');
    const paid = cluster('5', 'running', { cost_per_hour: 2.5 });
    paid.sites[0] = { ...paid.sites[0], cost_per_hour: 2.5 };
    const html = render([paid]).html;
    expect(html).toContain('$2.50/h');
    expect(html).not.toContain('$0.00/h');
  });
});

describe('the new-cluster form', () => {
  it('starts with empty fields that say the profile decides', () => {
    const html: string = renderToStaticMarkup(
      React.createElement(NewClusterForm, {
        whoami: ANALYST,
        profiles: [
          {
            name: 'local',
            description: '2 cloud + 2 edge workers',
            sites: [
              { name: 'cloud', kind: 'cloud', workers: 2, threads: 1, memory: '1 GiB', gpus: 0, cost_per_hour: 0 },
              { name: 'edge', kind: 'edge', workers: 2, threads: 1, memory: '1 GiB', gpus: 0, cost_per_hour: 0 }
            ]
          }
        ],
        defaultProfile: 'local',
        onSubmit: async () => undefined,
        onCancel: () => undefined
      })
    );
    for (const field of ['workers-cloud', 'workers-edge', 'gpus']) {
      const input = new RegExp(`<input[^>]*name="${field}"[^>]*>`).exec(html)![0];
      expect(input).toContain('value=""');
      expect(input).toContain('(profile default)');
      expect(input).not.toMatch(/\bmin=/);
      expect(input).not.toMatch(/\bmax=/);
    }
    expect(html).not.toContain('lepton-form-error');
    expect(html).not.toContain('$0.00');
  });
});

/** The host elements of a tree, function components called in place. */
function hostElements(node: React.ReactNode): React.ReactElement[] {
  if (Array.isArray(node)) {
    return node.flatMap(hostElements);
  }
  if (!React.isValidElement(node)) {
    return [];
  }
  const element = node as React.ReactElement<any>;
  if (typeof element.type === 'function') {
    return hostElements((element.type as (props: any) => React.ReactNode)(element.props));
  }
  const children = element.type === 'button' ? [] : hostElements(element.props.children);
  return [element, ...children];
}

/** Resolves once every pending promise callback has run. */
const settled = () => new Promise(resolve => setTimeout(resolve, 0));

describe('"Start again" on a stopped cluster', () => {
  afterEach(() => jest.restoreAllMocks());

  /** Click the cluster's button; `busy` records what the button's state was set to. */
  function click(id: string, startAgain: IClusterActions['startAgain']): boolean[] {
    const busy: boolean[] = [];
    jest
      .spyOn(require('react'), 'useState')
      .mockImplementation(((initial: unknown) => [initial, (v: boolean) => busy.push(v)]) as any);
    const tree = ClusterList({
      clusters: [stopped('1', 5), stopped('3', 90)],
      selectedId: null,
      actions: { ...actions, startAgain },
      now: NOW
    });
    const items = hostElements(tree).filter(
      (e: React.ReactElement<any>) => e.type === 'li' && e.props['data-cluster-id'] === id
    );
    expect(items).toHaveLength(1);
    const button = hostElements(items[0].props.children).find(
      (e: React.ReactElement<any>) => e.props['data-testid'] === 'lepton-start-again'
    ) as React.ReactElement<any>;
    button.props.onClick({ stopPropagation: () => undefined });
    return busy;
  }

  it('calls startAgain with its id and is disabled until the request ends', async () => {
    let finish: () => void = () => undefined;
    const startAgain = jest.fn(() => new Promise<void>(resolve => (finish = resolve)));
    const busy = click('3', startAgain);
    expect(startAgain).toHaveBeenCalledTimes(1);
    expect(startAgain).toHaveBeenCalledWith('3');
    expect(busy).toEqual([true]);
    finish();
    await settled();
    expect(busy).toEqual([true, false]);
  });

  it('is enabled again after a failed request', async () => {
    const busy = click('1', () => Promise.reject(new Error('cluster local-ann-1 is running')));
    await settled();
    expect(busy).toEqual([true, false]);
  });
});
