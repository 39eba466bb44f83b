import * as React from 'react';

import { APIError, INewCluster, IProfile, IWhoAmI, SiteKind } from '../api';
import { formatCost } from '../format';
import { describeBound, parseCount, quotaBounds, quotaWarnings } from '../quota';
import { profileShape, requestedWorkers } from '../sites';

export interface INewClusterFormProps {
  whoami: IWhoAmI;
  profiles: IProfile[];
  defaultProfile: string;
  onSubmit(request: INewCluster): Promise<unknown>;
  onCancel(): void;
}

const KINDS: SiteKind[] = ['cloud', 'edge'];

/**
 * Team, profile, workers per site kind and GPUs. Inputs are bounded by the
 * tighter of the team's and the user's quota, with the limit shown; the server
 * still decides, and its message is shown here when it refuses.
 */
export function NewClusterForm(props: INewClusterFormProps): JSX.Element {
  const { whoami, profiles } = props;
  const initialProfile =
    profiles.find(p => p.name === props.defaultProfile)?.name ??
    profiles[0]?.name ??
    props.defaultProfile;
  const [team, setTeam] = React.useState(whoami.teams[0] ?? '');
  const [profile, setProfile] = React.useState(initialProfile);
  const [name, setName] = React.useState('');
  const shape = profileShape(profiles.find(p => p.name === profile));
  const [workers, setWorkers] = React.useState<{ [k in SiteKind]?: string }>(
    {}
  );
  const [gpus, setGpus] = React.useState<string | null>(null);
  const [busy, setBusy] = React.useState(false);
  const [error, setError] = React.useState<string | null>(null);

  const shownKinds = KINDS.filter(k => shape.kinds[k] !== undefined);
  // Untouched fields follow the profile and are not sent.
  const workerText = (kind: SiteKind) => {
    const perSite = shape.kinds[kind]?.perSite;
    return workers[kind] ?? (perSite === null || perSite === undefined ? '' : String(perSite));
  };
  const gpuText = gpus ?? (shape.gpus === 'auto' ? '' : String(shape.gpus));

  const request: INewCluster = { team, profile };
  for (const kind of shownKinds) {
    if (workers[kind] !== undefined) {
      request.workers = { ...request.workers, [kind]: parseCount(workers[kind]!) };
    }
  }
  if (gpus !== null) {
    request.gpus = parseCount(gpus);
  }
  if (name.trim()) {
    request.name = name.trim();
  }

  const bounds = quotaBounds(whoami, team);
  const warnings = quotaWarnings(bounds, {
    workers: requestedWorkers(shape, request.workers ?? {}),
    gpus: request.gpus ?? (shape.gpus === 'auto' ? 0 : shape.gpus)
  });
  const selected = profiles.find(p => p.name === profile);
  const cost = (selected?.sites ?? []).reduce(
    (sum, site) => sum + site.cost_per_hour,
    0
  );

  const submit = async (event: React.FormEvent) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await props.onSubmit(request);
    } catch (e) {
      setError(e instanceof APIError || e instanceof Error ? e.message : String(e));
    } finally {
      setBusy(false);
    }
  };

  return (
    <form
      className="lepton-NewClusterForm"
      data-testid="lepton-new-cluster-form"
      // The limits guide; the server decides (and explains a refusal).
      noValidate
      onSubmit={submit}
    >
      <label>
        Team
        <select
          className="jp-mod-styled"
          name="team"
          value={team}
          onChange={e => setTeam(e.target.value)}
        >
          {whoami.teams.map(t => (
            <option key={t} value={t}>
              {t}
            </option>
          ))}
        </select>
      </label>
      <label>
        Profile
        <select
          className="jp-mod-styled"
          name="profile"
          value={profile}
          onChange={e => {
            setProfile(e.target.value);
            setWorkers({});
            setGpus(null);
          }}
        >
          {profiles.map(p => (
            <option key={p.name} value={p.name} title={p.description}>
              {p.name}
            </option>
          ))}
        </select>
      </label>
      {selected?.description && (
        <div className="lepton-Hint">
          {selected.description} · about {formatCost(cost)}
        </div>
      )}
      <label>
        Name
        <input
          className="jp-mod-styled"
          name="name"
          placeholder="optional"
          value={name}
          onChange={e => setName(e.target.value)}
        />
      </label>
      {shownKinds.map(kind => (
        <label
          key={kind}
          title={`Workers on each ${kind} site (${shape.kinds[kind]!.sites} site${
            shape.kinds[kind]!.sites === 1 ? '' : 's'
          })`}
        >
          Workers per {kind} site
          <input
            className="jp-mod-styled"
            type="number"
            min={0}
            max={
              bounds.workers.remaining === null
                ? undefined
                : Math.floor(bounds.workers.remaining / shape.kinds[kind]!.sites)
            }
            name={`workers-${kind}`}
            placeholder="as profile"
            value={workerText(kind)}
            onChange={e => setWorkers({ ...workers, [kind]: e.target.value })}
          />
        </label>
      ))}
      <div className="lepton-Hint" data-testid="lepton-limit-workers">
        workers: {describeBound(bounds.workers)}
      </div>
      <label>
        GPUs
        <input
          className="jp-mod-styled"
          type="number"
          min={0}
          max={bounds.gpus.remaining ?? undefined}
          name="gpus"
          placeholder={shape.gpus === 'auto' ? 'auto' : undefined}
          value={gpuText}
          onChange={e => setGpus(e.target.value)}
        />
      </label>
      <div className="lepton-Hint" data-testid="lepton-limit-gpus">
        GPUs: {describeBound(bounds.gpus)}
      </div>
      <div className="lepton-Hint" data-testid="lepton-limit-clusters">
        clusters: {describeBound(bounds.clusters)}
      </div>
      {warnings.map(w => (
        <div key={w} className="lepton-Warning" data-testid="lepton-quota-warning">
          {w}
        </div>
      ))}
      {error && (
        <div className="lepton-Error" data-testid="lepton-form-error">
          {error}
        </div>
      )}
      <div className="lepton-FormButtons">
        <button
          type="button"
          className="jp-mod-styled jp-mod-reject"
          onClick={props.onCancel}
        >
          Cancel
        </button>
        <button
          type="submit"
          className="jp-mod-styled jp-mod-accept"
          data-testid="lepton-create-cluster"
          disabled={busy || !team || !profile}
        >
          {busy ? 'Starting…' : 'Create'}
        </button>
      </div>
    </form>
  );
}
