import * as React from 'react';

import {
  DEFAULT_PLAN,
  IPlanChoice,
  IPlanForm,
  PLAN_KINDS,
  PlanKind,
  checkPlanForm,
  fetchPlan,
  planRows
} from '../plan';

/** Pick a job's kind and size; see where the planner would put it on the selected cluster. */
export function PlanPanel(props: {
  clusterId: string | null;
  /** The cluster's sites, offered as data sites. */
  sites: string[];
  ask?: (clusterId: string, form: IPlanForm) => Promise<IPlanChoice>;
}): JSX.Element {
  const [form, setForm] = React.useState<IPlanForm>(DEFAULT_PLAN);
  const [choice, setChoice] = React.useState<IPlanChoice | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const [busy, setBusy] = React.useState(false);
  if (!props.clusterId) {
    return (
      <div className="lepton-Empty" data-testid="lepton-plan-none">
        Select a cluster to plan a job on it.
      </div>
    );
  }
  const clusterId = props.clusterId;
  const set = (patch: Partial<IPlanForm>) => {
    setForm({ ...form, ...patch });
    setChoice(null);
    setError(null);
  };
  const whole = (value: string) => Math.floor(Number(value));
  const plan = async () => {
    const invalid = checkPlanForm(form);
    if (invalid) {
      setError(invalid);
      return;
    }
    setBusy(true);
    try {
      setChoice(await (props.ask ?? fetchPlan)(clusterId, form));
      setError(null);
    } catch (e) {
      setChoice(null);
      setError(e instanceof Error ? e.message : String(e));
    } finally {
      setBusy(false);
    }
  };
  return (
    <div className="lepton-Plan" data-testid="lepton-plan">
      <div className="lepton-Plan-form">
        <label>
          Job
          <select
            value={form.kind}
            onChange={e => set({ kind: e.target.value as PlanKind })}
          >
            {PLAN_KINDS.map(k => (
              <option key={k} value={k}>
                {k}
              </option>
            ))}
          </select>
        </label>
        <label>
          Workers
          <input
            type="number"
            min={1}
            value={form.workers}
            onChange={e => set({ workers: whole(e.target.value) })}
          />
        </label>
        <label>
          GPUs
          <input
            type="number"
            min={0}
            value={form.gpus}
            onChange={e => set({ gpus: whole(e.target.value) })}
          />
        </label>
        <label>
          Memory
          <input
            type="text"
            placeholder="2GiB"
            value={form.memory}
            onChange={e => set({ memory: e.target.value })}
          />
        </label>
        <label>
          Data on
          <select
            value={form.dataSite}
            onChange={e => set({ dataSite: e.target.value })}
          >
            <option value="">no site</option>
            {props.sites.map(s => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </label>
        {form.dataSite ? (
          <label>
            <input
              type="checkbox"
              checked={form.dataStays}
              onChange={e => set({ dataStays: e.target.checked })}
            />
            data stays there
          </label>
        ) : null}
        <button
          className="jp-mod-styled jp-mod-accept"
          disabled={busy}
          onClick={() => void plan()}
        >
          {busy ? 'Planning…' : 'Plan'}
        </button>
      </div>
      {error ? (
        <div className="lepton-Error" data-testid="lepton-plan-error">
          {error}
        </div>
      ) : null}
      {choice ? (
        <div className="lepton-Plan-choice" data-testid="lepton-plan-choice">
          <div className="lepton-Plan-line">{choice.line}</div>
          <ul>
            {planRows(choice).map(row => (
              <li key={row}>{row}</li>
            ))}
          </ul>
          <ul className="lepton-Plan-why">
            {choice.why.map(w => (
              <li key={w}>because {w}</li>
            ))}
          </ul>
        </div>
      ) : null}
    </div>
  );
}
