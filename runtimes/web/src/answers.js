// PaliGemma's answer grammar for detect / segment / refer: text -> located objects (pgexport_runtime/answers.py,
// the same parsing and the same warnings, word for word).
//
//     answer  = object { " ; " object }
//     object  = loc loc loc loc [ seg x 16 ] " " label
//     loc     = "<locNNNN>"   NNNN in 0..1023, in the order y_min, x_min, y_max, x_max
//     seg     = "<segNNN>"    NNN in 0..127, the 4x4 codes of the VQ-VAE mask decoder (masks.js)
//
// De-binning: coord = bin / 1023 * size, with size the ORIGINAL image's height for y and width for x (big_vision's
// evaluator, and the exact inverse of the binning of the training targets; not the HF demo's / 1024). Nothing here
// throws on model output: a malformed answer gives what can be parsed plus warnings.

import { repr } from './escape.js';

export const NUM_LOC_BINS = 1024;
export const NUM_SEG_TOKENS = 16;
export const NUM_SEG_CODES = 128;
export const STRUCTURED_TASKS = ['detect', 'segment', 'refer'];
export const TASK_PREFIXES = ['caption', 'describe', 'answer', 'question', 'ocr', ...STRUCTURED_TASKS];

const TOKEN_RE = /<loc(\d{4})>|<seg(\d{3})>|(<[^<>]*>)|([^<]+|<)/g;
const OBJECT_WARNING = /^object (\d+): ([\s\S]*)$/;
const TOKEN_NUMBER = /<(loc|seg)(\d+)>/g;

const words = (prompt) => prompt.trim().split(/\s+/).filter(Boolean);

export function binToCoord(b, size) {
  return (Math.min(Math.max(b, 0), NUM_LOC_BINS - 1) / (NUM_LOC_BINS - 1)) * size;
}

export function isStructuredPrompt(prompt) {
  const w = words(prompt);
  return w.length > 0 && STRUCTURED_TASKS.includes(w[0].toLowerCase());
}

/** A warning for a prompt that starts with no known task prefix; the model still answers it. */
export function taskWarning(prompt) {
  const w = words(prompt);
  if (w.length && TASK_PREFIXES.includes(w[0].toLowerCase())) return null;
  const first = w.length ? [...w[0]].slice(0, 40).join('') : '';
  return `unknown task prefix ${repr(first)} (PaliGemma knows ${TASK_PREFIXES.join(', ')}); answered anyway`;
}

/** Repeated warnings as one counted line each, naming the objects they came from. */
export function collapse(warnings) {
  const groups = new Map(); // key -> [first text, object numbers, count]
  for (const w of warnings) {
    const m = OBJECT_WARNING.exec(w);
    const [body, n] = m ? [m[2], Number(m[1])] : [w, null];
    const key = body.replace(TOKEN_NUMBER, (_, kind, digits) => `<${kind}${'N'.repeat(digits.length)}>`);
    if (!groups.has(key)) groups.set(key, [body, [], 0]);
    const g = groups.get(key);
    if (n !== null) g[1].push(n);
    g[2] += 1;
  }
  const out = [];
  for (const [key, [body, objects, count]] of groups) {
    if (count === 1) {
      out.push(objects.length ? `object ${objects[0]}: ${body}` : body);
      continue;
    }
    const uniq = [...new Set(objects)].sort((a, b) => a - b);
    const where = !uniq.length ? '' : uniq.length === 1 ? `object ${uniq[0]}: `
      : `${uniq.length} objects (${uniq[0]}..${uniq[uniq.length - 1]}): `;
    out.push(`${where}${key} (${count} times)`);
  }
  return out;
}

/** (y0, x0, y1, x1) bins -> ordered, clamped (x0, y0, x1, y1) pixels of a width x height image. */
export function binsToBox([y0, x0, y1, x1], width, height) {
  const ys = [binToCoord(y0, height), binToCoord(y1, height)].sort((a, b) => a - b);
  const xs = [binToCoord(x0, width), binToCoord(x1, width)].sort((a, b) => a - b);
  const clamp = (v, hi) => Math.min(Math.max(v, 0), hi);
  return [clamp(xs[0], width), clamp(ys[0], height), clamp(xs[1], width), clamp(ys[1], height)];
}

/**
 * Parse an answer for an image of width x height pixels (the original image). structured=false (a caption or
 * VQA prompt) reads an answer without any <loc>/<seg> token as plain text: no objects, no warnings.
 * @returns {{objects: {label: string, box: number[], bins: number[], codes: number[]|null}[], warnings: string[]}}
 */
export function parseObjects(text, width, height, structured = true) {
  if (!structured && !/<(loc\d{4}|seg\d{3})>/.test(text)) return { objects: [], warnings: [] };
  const objects = [];
  const warnings = [];
  text.split(';').forEach((chunk, n) => {
    if (chunk.trim()) parseChunk(chunk, n, width, height, objects, warnings);
    else if (text.trim()) warnings.push(`object ${n}: empty (stray ';')`);
  });
  return { objects, warnings: collapse(warnings) };
}

function parseChunk(chunk, n, width, height, objects, warnings) {
  let locs = [];
  let segs = [];
  let label = [];
  const where = `object ${n}`;
  const name = () => label.join('').trim();

  function flush() {
    if (!locs.length) {
      if (name() || segs.length) warnings.push(`${where}: ${segs.length ? 'seg tokens' : repr(name())} without a box; ignored`);
      return;
    }
    if (locs.length < 4) {
      warnings.push(`${where}: partial box (${locs.length} of 4 <loc> tokens); ignored`);
      return;
    }
    if (!name()) warnings.push(`${where}: missing label`);
    let codes = null;
    if (segs.length === NUM_SEG_TOKENS) codes = segs.slice();
    else if (segs.length) warnings.push(`${where}: partial mask (${segs.length} of ${NUM_SEG_TOKENS} <seg> tokens); box kept`);
    const bins = locs.slice(0, 4);
    if (bins[2] < bins[0] || bins[3] < bins[1]) warnings.push(`${where}: box corners out of order; swapped`);
    objects.push({ label: name(), box: binsToBox(bins, width, height), bins, codes });
  }

  for (const m of chunk.matchAll(TOKEN_RE)) {
    const [, loc, seg, other, plain] = m;
    if (loc !== undefined) {
      if (segs.length || name()) { // a new loc group: the current object is finished
        if (locs.length === 4) warnings.push(`${where}: next box without ' ; ' separator`);
        flush();
        [locs, segs, label] = [[], [], []];
      }
      if (locs.length === 4) warnings.push(`${where}: extra <loc${loc}> ignored`);
      else locs.push(Number(loc));
    } else if (seg !== undefined) {
      if (locs.length < 4) warnings.push(`${where}: <seg${seg}> without a complete box; ignored`);
      else if (segs.length === NUM_SEG_TOKENS || name()) warnings.push(`${where}: extra <seg${seg}> ignored`);
      else if (Number(seg) >= NUM_SEG_CODES) {
        warnings.push(`${where}: <seg${seg}> is outside the codebook (0..${NUM_SEG_CODES - 1}); ignored`);
      } else segs.push(Number(seg));
    } else if (other !== undefined) {
      warnings.push(`${where}: unknown token ${other} ignored`);
    } else {
      label.push(plain);
    }
  }
  flush();
}
