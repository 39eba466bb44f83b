/**
 * The Lepton Lab frontend plugin: wires the model, the sidebar panel, the
 * commands and the settings together. All behaviour lives in the modules it
 * imports.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, Notification } from '@jupyterlab/apputils';
import { PageConfig } from '@jupyterlab/coreutils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { LeptonAPI } from './api';
import { registerCommands } from './commands';
import { registerDashboardCommands } from './dashboardTabs';
import { LeptonModel } from './model';
import { LeptonPanel, PANEL_ID } from './panel';

const PLUGIN_ID = 'lepton-lab:plugin';

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'The Lepton sidebar: clusters, live allocation and templates.',
  autoStart: true,
  optional: [ICommandPalette, ILayoutRestorer, INotebookTracker, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    notebooks: INotebookTracker | null,
    settingRegistry: ISettingRegistry | null
  ) => {
    let defaultProfile = 'local';
    const model = new LeptonModel({
      api: new LeptonAPI(app.serviceManager.serverSettings),
      refreshInterval: 1,
      token: PageConfig.getToken()
    });
    const panel = new LeptonPanel({
      model,
      commands: app.commands,
      defaultProfile: () => defaultProfile
    });
    app.shell.add(panel, 'left', { rank: 300 });
    restorer?.add(panel, PANEL_ID);

    registerCommands({ app, model, panelId: PANEL_ID, notebooks, palette });
    registerDashboardCommands(app, model);

    model.connectionChanged.connect((_, error) => {
      if (error) {
        Notification.error(error, { autoClose: 10_000 });
      }
    });

    // Settings arrive after activation: the shell does not wait for them.
    settingRegistry
      ?.load(PLUGIN_ID)
      .then(settings => {
        const apply = () => {
          model.refreshInterval = Number(
            settings.get('refreshInterval').composite ?? 1
          );
          defaultProfile = String(
            settings.get('defaultProfile').composite ?? 'local'
          );
          panel.update();
        };
        settings.changed.connect(apply);
        apply();
      })
      .catch(reason => {
        console.warn('Lepton Lab: settings could not be loaded', reason);
      });
  }
};

export default plugin;
