// Typed answers: a generation result plus the detections and segments its text describes
// (pgexport_runtime/typed_answers.py), and their JSON, the same as `pgexport run --json`.

import { collapse, isStructuredPrompt, parseObjects, taskWarning } from './answers.js';
import { repr } from './escape.js';
import { MASK_SIZE, maskToRle, pasteMask } from './masks.js';

/** Python's round(v, 2): round half to even on the exact binary value (JS's toFixed rounds ties up). */
export function round2(v) {
  const eighths = v * 8; // a float64 tie at the third decimal is an odd number of eighths (…125, …375, …)
  if (Number.isInteger(eighths) && Math.abs(eighths) % 2 === 1) {
    const lo = Math.floor(v * 100);
    return (lo % 2 === 0 ? lo : lo + 1) / 100;
  }
  return Number(v.toFixed(2));
}

/**
 * Parse `result.text` for an image of width x height and decode its masks (one batched call).
 * @param {{prompt: string, text: string, tokens: number[]}} result
 * @param {import('./masks.js').MaskDecoder|null} maskDecoder
 */
export async function toAnswer(result, width, height, maskDecoder) {
  const parsed = parseObjects(result.text, width, height, isStructuredPrompt(result.prompt));
  const warnings = [taskWarning(result.prompt)].filter(Boolean).concat(parsed.warnings);
  const withMask = parsed.objects.filter((o) => o.codes !== null);
  let masks64 = null;
  if (withMask.length && maskDecoder === null) {
    warnings.push('the answer has masks but the bundle has no mask decoder; masks not decoded');
  } else if (withMask.length) {
    masks64 = await maskDecoder.decode(withMask.map((o) => o.codes));
  }
  const detections = [];
  const segments = [];
  for (const o of parsed.objects) {
    if (o.codes === null) {
      detections.push({ label: o.label, box: o.box, score: null });
      continue;
    }
    let mask = null;
    if (masks64 !== null) {
      const n = MASK_SIZE * MASK_SIZE;
      mask = pasteMask(masks64.subarray(segments.length * n, (segments.length + 1) * n), o.box, width, height);
      if (!mask.includes(1)) warnings.push(`segment ${repr(o.label)}: empty mask`);
    }
    segments.push({ label: o.label, box: o.box, mask, codes: o.codes, score: null });
  }
  return { prompt: result.prompt, text: result.text, tokens: result.tokens, detections, segments,
    warnings: collapse(warnings), width, height };
}

/** The JSON of `pgexport run --json`: boxes rounded to 0.01 px, masks as COCO uncompressed RLE. */
export function answerToJson(a) {
  const box = (b) => b.map(round2);
  return {
    prompt: a.prompt, text: a.text, tokens: [...a.tokens],
    detections: a.detections.map((d) => ({ label: d.label, box: box(d.box), score: d.score })),
    segments: a.segments.map((s) => ({
      label: s.label, box: box(s.box), score: s.score,
      area: s.mask === null ? null : s.mask.reduce((n, v) => n + v, 0),
      mask: s.mask === null ? null : maskToRle(s.mask, a.width, a.height),
      codes: [...s.codes],
    })),
    warnings: [...a.warnings],
  };
}
