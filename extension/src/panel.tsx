/**
 * The Lepton sidebar panel: lays out the components and turns their clicks
 * into commands. It holds no state of its own beyond the model.
 */
import { CommandRegistry } from '@lumino/commands';
import { Message } from '@lumino/messaging';
import { ReactWidget } from '@jupyterlab/ui-components';
import * as React from 'react';

import { ITemplate } from './api';
import { CommandIDs } from './commands';
import { Allocation } from './components/Allocation';
import { ClusterList, IClusterActions } from './components/ClusterList';
import { DashboardCommandIDs } from './dashboardTabs';
import { NewClusterForm } from './components/NewClusterForm';
import { PlanPanel } from './components/PlanPanel';
import { Templates } from './components/Templates';
import { WhoAmI } from './components/WhoAmI';
import { leptonIcon } from './icon';
import { LeptonModel } from './model';

export const PANEL_ID = 'lepton-lab-panel';

export class LeptonPanel extends ReactWidget {
  constructor(options: LeptonPanel.IOptions) {
    super();
    this.model = options.model;
    this._commands = options.commands;
    this._defaultProfile = options.defaultProfile;
    this.id = PANEL_ID;
    this.title.icon = leptonIcon;
    this.title.caption = 'Lepton Lab';
    this.addClass('lepton-Panel');
    this.node.dataset.testid = 'lepton-panel';
    this.model.stateChanged.connect(this.update, this);
  }

  readonly model: LeptonModel;

  /** Profile preselected in the new-cluster form (from the settings). */
  get defaultProfile(): string {
    return this._defaultProfile();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.model.setVisible(true);
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.model.setVisible(false);
  }

  dispose(): void {
    this.model.stateChanged.disconnect(this.update, this);
    super.dispose();
  }

  private _run(id: string, args: Record<string, any> = {}): Promise<any> {
    // Commands report their own errors; the promise is for the caller.
    return this._commands.execute(id, args);
  }

  private _actions: IClusterActions = {
    select: id => this.model.select(id),
    scale: (id, site, workers) =>
      void this._run(CommandIDs.scaleCluster, { id, site, workers }).catch(
        () => undefined
      ),
    shutdown: id =>
      void this._run(CommandIDs.shutdownCluster, { id }).catch(() => undefined),
    remove: id =>
      void this._run(CommandIDs.removeCluster, { id }).catch(() => undefined),
    startAgain: id =>
      this._run(CommandIDs.startAgain, { id }).catch(() => undefined),
    clearStopped: () =>
      void this._run(CommandIDs.clearStopped).catch(() => undefined),
    useInNotebook: id =>
      void this._run(CommandIDs.useInNotebook, { id }).catch(() => undefined),
    openDashboard: (id, at) =>
      void this._run(DashboardCommandIDs.menu, { id, ...(at ?? {}) })
  };

  private _openTemplate = (t: ITemplate) =>
    this._run(CommandIDs.openTemplate, {
      team: t.team,
      name: t.name,
      title: t.title
    });

  protected render(): JSX.Element {
    const model = this.model;
    const whoami = model.whoami;
    return (
      <div className="lepton-Panel-body">
        <header className="lepton-Panel-header">
          <leptonIcon.react tag="span" className="lepton-Panel-icon" />
          <h2>Lepton Lab</h2>
          <button
            className="lepton-IconButton"
            title="Refresh"
            data-testid="lepton-refresh"
            onClick={() => void this._run(CommandIDs.refresh)}
          >
            ⟳
          </button>
        </header>
        {model.error && (
          <div className="lepton-Error lepton-Banner" data-testid="lepton-error">
            {model.error}
          </div>
        )}
        {!model.loaded && !model.error && (
          <div className="lepton-Empty" data-testid="lepton-loading">
            Connecting to Lepton…
          </div>
        )}
        {model.loaded && (
          <>
            <WhoAmI whoami={whoami} />
            <section className="lepton-Section" data-testid="lepton-clusters">
              <div className="lepton-Section-header">
                <h3>Clusters</h3>
                <button
                  className="jp-mod-styled jp-mod-accept"
                  data-testid="lepton-new-cluster"
                  onClick={() => (model.formOpen = !model.formOpen)}
                >
                  {model.formOpen ? 'Close form' : 'New cluster'}
                </button>
              </div>
              {model.formOpen && whoami && (
                <NewClusterForm
                  whoami={whoami}
                  profiles={model.profiles}
                  requestSchema={model.schemas.request}
                  defaultProfile={this.defaultProfile}
                  onSubmit={request =>
                    // The form shows a refusal at its field: no toast as well.
                    this._run(CommandIDs.newCluster, { ...request, quiet: true })
                  }
                  onCancel={() => (model.formOpen = false)}
                />
              )}
              <ClusterList
                clusters={model.clusters}
                selectedId={model.selectedId}
                actions={this._actions}
              />
            </section>
            <section className="lepton-Section">
              <div className="lepton-Section-header">
                <h3>
                  Live allocation
                  {model.selected ? ` · ${model.selected.name}` : ''}
                </h3>
              </div>
              <Allocation
                cluster={model.selected}
                snapshot={model.snapshot}
                mode={model.streamMode}
                error={model.snapshotError}
              />
            </section>
            <section className="lepton-Section" data-testid="lepton-plan-section">
              <div className="lepton-Section-header">
                <h3>Plan</h3>
              </div>
              <PlanPanel
                key={model.selected?.id ?? ''}
                clusterId={model.selected?.id ?? null}
                sites={(model.selected?.sites ?? []).map(s => s.name)}
              />
            </section>
            <section className="lepton-Section">
              <div className="lepton-Section-header">
                <h3>Templates</h3>
              </div>
              <Templates
                templates={model.templates}
                onOpen={this._openTemplate}
              />
            </section>
          </>
        )}
      </div>
    );
  }

  private _commands: CommandRegistry;
  private _defaultProfile: () => string;
}

export namespace LeptonPanel {
  export interface IOptions {
    model: LeptonModel;
    commands: CommandRegistry;
    defaultProfile: () => string;
  }
}
