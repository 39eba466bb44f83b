/**
 * The little Markdown a one-paragraph description uses (`**bold**`, `*italic*`,
 * `` `code` ``, `[text](url)`), as plain segments the panel renders as React
 * elements: no HTML is ever injected. Pure functions.
 */

export interface ISegment {
  text: string;
  bold?: boolean;
  italic?: boolean;
  code?: boolean;
}

const TOKEN = /`([^`]+)`|\*\*([^*]+)\*\*|__([^_]+)__|\*([^*\s][^*]*)\*|_([^_\s][^_]*)_|\[([^\]]+)\]\([^)]*\)/g;

/** `"a **b** c"` → `[{text: 'a '}, {text: 'b', bold: true}, {text: ' c'}]`; links keep their text. */
export function inlineMarkdown(source: string): ISegment[] {
  const out: ISegment[] = [];
  let last = 0;
  const token = new RegExp(TOKEN.source, 'g');
  let m: RegExpExecArray | null;
  while ((m = token.exec(source)) !== null) {
    const at = m.index;
    if (at > last) {
      out.push({ text: source.slice(last, at) });
    }
    const [, code, bold1, bold2, em1, em2, link] = m;
    if (code !== undefined) {
      out.push({ text: code, code: true });
    } else if (bold1 !== undefined || bold2 !== undefined) {
      out.push({ text: (bold1 ?? bold2)!, bold: true });
    } else if (em1 !== undefined || em2 !== undefined) {
      out.push({ text: (em1 ?? em2)!, italic: true });
    } else {
      out.push({ text: link! });
    }
    last = at + m[0].length;
  }
  if (last < source.length) {
    out.push({ text: source.slice(last) });
  }
  return out;
}

/** The segments' text without the Markdown, e.g. for a tooltip. */
export function plainText(segments: ISegment[]): string {
  return segments.map(s => s.text).join('');
}

/**
 * A short description: the first sentence when it fits in `max` characters,
 * else cut at a word before `max` with `…`. Markdown marks are never cut in half.
 */
export function shortDescription(segments: ISegment[], max = 160): ISegment[] {
  const text = plainText(segments);
  const sentence = /^.+?[.!?](?=\s|$)/.exec(text);
  let limit = sentence && sentence[0].length <= max ? sentence[0].length : text.length;
  let ellipsis = false;
  if (limit > max) {
    const space = text.lastIndexOf(' ', max);
    limit = space > max / 2 ? space : max;
    ellipsis = true;
  }
  const out: ISegment[] = [];
  let used = 0;
  for (const segment of segments) {
    if (used >= limit) {
      break;
    }
    const take = segment.text.slice(0, limit - used);
    out.push({ ...segment, text: take });
    used += take.length;
  }
  if (ellipsis) {
    const tail = out[out.length - 1];
    tail.text = tail.text.replace(/[\s,;:]+$/, '');
    out.push({ text: '…' });
  }
  return out;
}
