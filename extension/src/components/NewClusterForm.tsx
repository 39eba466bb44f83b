import * as React from 'react';

import {
  APIError,
  IJSONSchema,
  INewCluster,
  IProfile,
  IWhoAmI,
  SiteKind
} from '../api';
import { costText } from '../format';
import {
  FieldName,
  defaultText,
  fieldOfError,
  formBounds,
  formRequest,
  gpusPlaceholder,
  inputBounds
} from '../form';
import { describeBound, quotaBounds, quotaWarnings } from '../quota';
import { profileShape, requestedWorkers } from '../sites';

export interface INewClusterFormProps {
  whoami: IWhoAmI;
  profiles: IProfile[];
  /** The served schema of `POST clusters`: the count fields' bounds (none from an older server). */
  requestSchema?: IJSONSchema;
  defaultProfile: string;
  onSubmit(request: INewCluster): Promise<unknown>;
  onCancel(): void;
}

const KINDS: SiteKind[] = ['cloud', 'edge'];

/** A refusal under the field it is about. */
function FieldError(props: { error?: string | null }): JSX.Element | null {
  return props.error ? (
    <div className="lepton-Error" data-testid="lepton-form-error">
      {props.error}
    </div>
  ) : null;
}

/**
 * Team, profile, workers per site kind and GPUs (a number or `auto`). The limits left by the
 * tighter of the team's and the user's quota are shown; numbers are sent as
 * typed and an empty field sends nothing (the profile's default). A number
 * outside the bounds of the served request schema is refused under its field
 * in the server's words and not sent; otherwise the server decides, and its
 * one-line reason is shown under the field it is about.
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
  const [gpus, setGpus] = React.useState('');
  const [busy, setBusy] = React.useState(false);
  const [error, setError] = React.useState<string | null>(null);
  const [errorField, setErrorField] = React.useState<FieldName | null>(null);

  const shownKinds = KINDS.filter(k => shape.kinds[k] !== undefined);
  const fieldBounds = formBounds(props.requestSchema, shownKinds);
  const { request, errors } = formRequest(
    { team, profile, name, workers, gpus },
    shownKinds,
    fieldBounds
  );
  const shownFields: FieldName[] = [
    'name',
    ...shownKinds.map(k => `workers-${k}` as FieldName),
    'gpus'
  ];
  const editedFields = shownFields.filter(f =>
    f === 'name'
      ? !!name.trim()
      : f === 'gpus'
        ? !!gpus.trim()
        : !!workers[f.slice('workers-'.length) as SiteKind]?.trim()
  );
  // A field's own error (no number, or out of bounds), else the server's reason for it.
  const errorOf = (field: FieldName) =>
    errors[field] ?? (errorField === field ? error : null);
  const clearError = () => {
    setError(null);
    setErrorField(null);
  };

  const bounds = quotaBounds(whoami, team);
  // `auto` counts as none here: how many it takes is known only when the cluster starts.
  const gpusAsked = request.gpus ?? shape.gpus;
  const warnings = quotaWarnings(bounds, {
    workers: requestedWorkers(shape, request.workers ?? {}),
    gpus: gpusAsked === 'auto' ? 0 : gpusAsked
  });
  const selected = profiles.find(p => p.name === profile);
  const cost = (selected?.sites ?? []).reduce(
    (sum, site) => sum + site.cost_per_hour,
    0
  );

  const submit = async (event: React.FormEvent) => {
    event.preventDefault();
    if (Object.keys(errors).length > 0) {
      return;
    }
    setBusy(true);
    clearError();
    try {
      await props.onSubmit(request);
    } catch (e) {
      const message =
        e instanceof APIError || e instanceof Error ? e.message : String(e);
      setError(message);
      setErrorField(fieldOfError(message, editedFields, shownFields));
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
          onChange={e => {
            setTeam(e.target.value);
            clearError();
          }}
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
            setGpus('');
            clearError();
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
          {selected.description}
          {costText(cost) ? ` · about ${costText(cost)}` : ''}
        </div>
      )}
      <label>
        Name
        <input
          className="jp-mod-styled"
          name="name"
          placeholder="optional"
          value={name}
          onChange={e => {
            setName(e.target.value);
            clearError();
          }}
        />
      </label>
      <FieldError error={errorOf('name')} />
      {shownKinds.map(kind => (
        <React.Fragment key={kind}>
          <label
            title={`Workers on each ${kind} site (${shape.kinds[kind]!.sites} site${
              shape.kinds[kind]!.sites === 1 ? '' : 's'
            }); empty: the profile's default`}
          >
            Workers per {kind} site
            <input
              className="jp-mod-styled"
              type="number"
              step={1}
              {...inputBounds(fieldBounds[`workers-${kind}`])}
              name={`workers-${kind}`}
              placeholder={defaultText(shape, kind)}
              value={workers[kind] ?? ''}
              aria-invalid={!!errorOf(`workers-${kind}`)}
              onChange={e => {
                setWorkers({ ...workers, [kind]: e.target.value });
                clearError();
              }}
            />
          </label>
          <FieldError error={errorOf(`workers-${kind}`)} />
        </React.Fragment>
      ))}
      <div className="lepton-Hint" data-testid="lepton-limit-workers">
        workers: {describeBound(bounds.workers)}
      </div>
      <label title="GPUs for the cluster: a whole number, or auto (every free GPU of the machine); empty: the profile's default">
        GPUs
        <input
          className="jp-mod-styled"
          type="text"
          autoComplete="off"
          spellCheck={false}
          name="gpus"
          placeholder={gpusPlaceholder(shape, fieldBounds.gpus)}
          value={gpus}
          aria-invalid={!!errorOf('gpus')}
          onChange={e => {
            setGpus(e.target.value);
            clearError();
          }}
        />
      </label>
      <FieldError error={errorOf('gpus')} />
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
      {error && errorField === null && <FieldError error={error} />}
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
          // A field's error is shown under it; submitting then sends nothing.
          disabled={busy || !team || !profile}
        >
          {busy ? 'Starting…' : 'Create'}
        </button>
      </div>
    </form>
  );
}
