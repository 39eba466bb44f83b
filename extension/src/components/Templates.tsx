import * as React from 'react';

import { ITemplate } from '../api';
import { ISegment, inlineMarkdown, plainText, shortDescription } from '../markdown';

/** A template's description: its first sentence, Markdown rendered, the whole paragraph on hover. */
export function Description(props: { markdown: string }): JSX.Element {
  const segments = inlineMarkdown(props.markdown);
  const render = (s: ISegment, i: number) =>
    s.code ? (
      <code key={i}>{s.text}</code>
    ) : s.bold ? (
      <strong key={i}>{s.text}</strong>
    ) : s.italic ? (
      <em key={i}>{s.text}</em>
    ) : (
      <React.Fragment key={i}>{s.text}</React.Fragment>
    );
  return (
    <div
      className="lepton-TemplateItem-description"
      data-testid="lepton-template-description"
      title={plainText(segments)}
    >
      {shortDescription(segments).map(render)}
    </div>
  );
}

/** The team templates the user may copy, grouped by team. */
export function Templates(props: {
  templates: ITemplate[];
  onOpen(template: ITemplate): Promise<unknown>;
}): JSX.Element {
  const [busy, setBusy] = React.useState<string | null>(null);
  if (props.templates.length === 0) {
    return (
      <div className="lepton-Empty" data-testid="lepton-no-templates">
        No templates for your teams.
      </div>
    );
  }
  const open = async (template: ITemplate) => {
    const key = `${template.team}/${template.name}`;
    setBusy(key);
    try {
      await props.onOpen(template);
    } catch {
      // The command already told the user.
    } finally {
      setBusy(null);
    }
  };
  return (
    <ul className="lepton-TemplateList" data-testid="lepton-templates">
      {props.templates.map(t => {
        const key = `${t.team}/${t.name}`;
        return (
          <li
            key={key}
            className="lepton-TemplateItem"
            data-testid="lepton-template-item"
            data-team={t.team}
            data-name={t.name}
          >
            <div className="lepton-TemplateItem-text">
              <div className="lepton-TemplateItem-title">
                <span className="lepton-Badge lepton-Badge-team">{t.team}</span>
                {t.title || t.name}
              </div>
              {t.description && <Description markdown={t.description} />}
            </div>
            <button
              className="jp-mod-styled"
              data-testid="lepton-template-open"
              disabled={busy === key}
              onClick={() => void open(t)}
            >
              Open a copy
            </button>
          </li>
        );
      })}
    </ul>
  );
}
