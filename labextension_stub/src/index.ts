/**
 * jupyter-offline-token launcher: a Launcher card and a command palette entry that open the
 * server extension's dashboard (`<base_url>offline-token/`) in a main-area tab.
 *
 * The dashboard is a plain page served by the server extension; this plugin only frames it,
 * passing the current JupyterLab theme as `?theme=light|dark`.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  ICommandPalette,
  IFrame,
  IThemeManager,
  MainAreaWidget,
  WidgetTracker
} from '@jupyterlab/apputils';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ILauncher } from '@jupyterlab/launcher';
import { LabIcon } from '@jupyterlab/ui-components';

const PLUGIN_ID = 'jupyter-offline-token-launcher:plugin';
const COMMAND_ID = 'offline-token:open-dashboard';
const LABEL = 'Offline tokens';

const keyIcon = new LabIcon({
  name: 'jupyter-offline-token:key',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16" height="16">' +
    '<path class="jp-icon3" fill="#616161" d="M7 14a2 2 0 1 1 0-4 2 2 0 0 1 0 4zm5.65-4A6 6 0 ' +
    '1 0 12.65 14H17v4h4v-4h2v-4H12.65z"/></svg>'
});

/**
 * Sandbox exceptions for the dashboard frame. The page needs scripts, same-origin fetches with
 * the XSRF cookie, forms, and a popup for the provider's consent page; the popup escapes the
 * sandbox so the provider's login page runs as an ordinary tab. (JupyterLab's type spells that
 * token without its `allow-` prefix, hence the cast.)
 */
const SANDBOX = [
  'allow-same-origin',
  'allow-scripts',
  'allow-forms',
  'allow-popups',
  'allow-popups-to-escape-sandbox'
] as IFrame.SandboxExceptions[];

function dashboardUrl(themeManager: IThemeManager | null): string {
  const url = URLExt.join(PageConfig.getBaseUrl(), 'offline-token/');
  const theme = themeManager?.theme;
  if (!themeManager || !theme) {
    return url;
  }
  return `${url}?theme=${themeManager.isLight(theme) ? 'light' : 'dark'}`;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Open the offline tokens dashboard from the Launcher and the command palette.',
  autoStart: true,
  optional: [ILauncher, ICommandPalette, ILayoutRestorer, IThemeManager],
  activate: (
    app: JupyterFrontEnd,
    launcher: ILauncher | null,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    themeManager: IThemeManager | null
  ) => {
    const tracker = new WidgetTracker<MainAreaWidget<IFrame>>({
      namespace: 'offline-token-dashboard'
    });

    app.commands.addCommand(COMMAND_ID, {
      label: args => (args['isPalette'] ? 'Open offline tokens dashboard' : LABEL),
      caption: 'Offline tokens and the tasks that use them',
      icon: args => (args['isPalette'] ? undefined : keyIcon),
      execute: () => {
        const existing = tracker.currentWidget ?? tracker.find(() => true);
        if (existing && !existing.isDisposed) {
          app.shell.activateById(existing.id);
          return existing;
        }
        const content = new IFrame({ sandbox: SANDBOX, referrerPolicy: 'no-referrer' });
        // Lets the page's "Copy ID" button use the async clipboard API inside the frame.
        content.node.querySelector('iframe')?.setAttribute('allow', 'clipboard-write');
        content.url = dashboardUrl(themeManager);
        content.title.label = LABEL;
        const widget = new MainAreaWidget({ content });
        widget.id = 'offline-token-dashboard';
        widget.title.label = LABEL;
        widget.title.icon = keyIcon;
        widget.title.closable = true;
        widget.addClass('jp-OfflineTokenDashboard');
        void tracker.add(widget);
        app.shell.add(widget, 'main');
        app.shell.activateById(widget.id);
        return widget;
      }
    });

    if (launcher) {
      launcher.add({ command: COMMAND_ID, category: 'Other', rank: 50 });
    }
    if (palette) {
      palette.addItem({ command: COMMAND_ID, category: LABEL, args: { isPalette: true } });
    }
    if (restorer) {
      void restorer.restore(tracker, { command: COMMAND_ID, name: () => 'dashboard' });
    }
  }
};

export default plugin;
