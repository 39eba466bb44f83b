import * as React from 'react';

import { Description } from '../components/Templates';
import { inlineMarkdown, plainText, shortDescription } from '../markdown';

declare function require(module: 'react-dom/server'): {
  renderToStaticMarkup(element: React.ReactElement): string;
};
const { renderToStaticMarkup } = require('react-dom/server');

describe('template descriptions', () => {
  it('parse the inline Markdown a paragraph uses', () => {
    expect(inlineMarkdown('with **monotone constraints** and `xgboost.dask`, *fast* [docs](http://x)')).toEqual([
      { text: 'with ' },
      { text: 'monotone constraints', bold: true },
      { text: ' and ' },
      { text: 'xgboost.dask', code: true },
      { text: ', ' },
      { text: 'fast', italic: true },
      { text: ' ' },
      { text: 'docs' }
    ]);
  });

  it('keep the first sentence when it is short', () => {
    const s = shortDescription(inlineMarkdown('Trains **one** model. Then much more follows here.'));
    expect(plainText(s)).toBe('Trains one model.');
    expect(s[1]).toEqual({ text: 'one', bold: true });
  });

  it('cut a long sentence at a word, never inside a mark', () => {
    const long = 'A default-risk model that a committee can sign off: trained with **monotone constraints** ' + 'and more words '.repeat(20) + '.';
    const s = shortDescription(inlineMarkdown(long), 100);
    const text = plainText(s);
    expect(text.length).toBeLessThanOrEqual(101);
    expect(text.endsWith('…')).toBe(true);
    expect(s.find(x => x.bold)).toEqual({ text: 'monotone constraints', bold: true });
  });

  it('render as elements, never as raw Markdown or injected HTML', () => {
    const html = renderToStaticMarkup(
      React.createElement(Description, { markdown: 'With **monotone constraints** <img src=x>.' })
    );
    expect(html).toContain('<strong>monotone constraints</strong>');
    expect(html).not.toContain('**');
    expect(html).toContain('&lt;img src=x&gt;');
  });
});
