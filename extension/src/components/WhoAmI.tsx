import * as React from 'react';

import { IQuota, IWhoAmI } from '../api';

function used(max: number | null, n: number): string {
  return max === null || max === undefined ? `${n} / ∞` : `${n} / ${max}`;
}

function QuotaRow(props: { label: string; quota: IQuota }): JSX.Element {
  const { label, quota } = props;
  return (
    <tr className="lepton-QuotaRow" data-testid={`lepton-quota-${label}`}>
      <th>{label}</th>
      <td>{used(quota.max_gpus, quota.used?.gpus ?? 0)}</td>
      <td>{used(quota.max_workers, quota.used?.workers ?? 0)}</td>
      <td>{used(quota.max_clusters, quota.used?.clusters ?? 0)}</td>
    </tr>
  );
}

/** The user, their teams and roles, and each quota's use. */
export function WhoAmI(props: { whoami: IWhoAmI | null }): JSX.Element {
  const { whoami } = props;
  if (!whoami) {
    return (
      <section className="lepton-WhoAmI" data-testid="lepton-whoami">
        <div className="lepton-Empty">Not signed in to Lepton yet.</div>
      </section>
    );
  }
  return (
    <section className="lepton-WhoAmI" data-testid="lepton-whoami">
      <div className="lepton-WhoAmI-user">
        <span className="lepton-WhoAmI-name" title={whoami.name}>
          {whoami.display_name || whoami.name}
        </span>
        {whoami.teams.map(team => (
          <span
            key={team}
            className="lepton-Badge lepton-Badge-team"
            data-testid="lepton-team"
            title={`role in ${team}`}
          >
            {team}: {whoami.roles[team] ?? 'member'}
          </span>
        ))}
      </div>
      {whoami.teams.length === 0 && (
        <div className="lepton-Warning" data-testid="lepton-no-team">
          You are in no team of the Lepton policy: ask an admin to add you.
        </div>
      )}
      <table className="lepton-Table lepton-QuotaTable">
        <thead>
          <tr>
            <th>quota</th>
            <th>GPUs</th>
            <th>workers</th>
            <th>clusters</th>
          </tr>
        </thead>
        <tbody>
          {Object.keys(whoami.quotas || {})
            .sort()
            .map(team => (
              <QuotaRow key={team} label={team} quota={whoami.quotas[team]} />
            ))}
          {whoami.user_quota && (
            <QuotaRow label="you" quota={whoami.user_quota} />
          )}
        </tbody>
      </table>
    </section>
  );
}
