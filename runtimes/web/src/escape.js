// Text from outside the runtime (manifest strings, file names, prompts, generated text) made safe to show: the
// characters a terminal acts on instead of showing are written as escapes, as Python's repr() writes them
// (`\x1b`, `\n`, `\u202e`), so a message stays one line and an answer cannot recolour, retitle or reorder the
// terminal. `--json` output is not escaped here: JSON carries the exact text.

// What a terminal acts on: C0 and C1 controls and DEL (ESC starts colour, cursor, title and hyperlink sequences; a
// newline splits a one-line message), lone surrogates, the line and paragraph separators, and the bidirectional
// controls that reorder what is shown (Trojan Source).
const UNSAFE = /[\p{Cc}\p{Cs}\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/gu;

// What Python's str.isprintable() refuses, and so repr() escapes: the above, every other format character, private
// use and unassigned code points, and every space but ' '.
const NOT_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/gu;

const NAMED = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/** One character as Python's repr() escapes it. */
function escapeChar(c) {
  if (NAMED[c]) return NAMED[c];
  const cp = c.codePointAt(0);
  const hex = cp.toString(16);
  if (cp < 0x100) return `\\x${hex.padStart(2, '0')}`;
  if (cp < 0x10000) return `\\u${hex.padStart(4, '0')}`;
  return `\\U${hex.padStart(8, '0')}`;
}

/** Text with what a terminal would act on escaped; everything else (accents, CJK, emoji, backslashes) as it is. */
export function visible(text) {
  return String(text).replace(UNSAFE, escapeChar);
}

/** Python's repr() of a string, number, boolean or null, for messages worded as the Python runtime's. */
export function repr(value) {
  if (value === null || value === undefined) return 'None';
  if (typeof value === 'boolean') return value ? 'True' : 'False';
  if (typeof value !== 'string') return visible(typeof value === 'object' ? JSON.stringify(value) : String(value));
  const q = value.includes("'") && !value.includes('"') ? '"' : "'";
  const body = value.replace(/\\/g, '\\\\').replace(NOT_PRINTABLE, (c) => (c === ' ' ? c : escapeChar(c)));
  return q + body.replaceAll(q, `\\${q}`) + q;
}
