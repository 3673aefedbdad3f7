// The model geometry: every size and special-token id the graphs and the runtime depend on, read once from the
// manifest and passed everywhere (pgexport_runtime/geometry.py). The bounds are far above any PaliGemma and keep a
// tampered manifest from sizing a KV cache or a logits buffer by a garbage number.

import * as typed_json from './typed_json.js';
import { BundleError } from './errors.js';
import contract from './contract.js';

export const FAMILIES = contract.geometry.families;
const INT_BOUNDS = contract.geometry.int_bounds;
// Special token ids live here (not in manifest.tokenizer, where schema v2 no longer repeats them).
const TOKEN_IDS = ['image_token_id', 'bos_token_id', 'eos_token_id', 'pad_token_id'];

/**
 * @typedef {{family: string, image_size: number, patch_size: number, num_image_tokens: number,
 *   text_hidden: number, text_layers: number, num_heads: number, num_kv_heads: number, head_dim: number,
 *   vocab_size: number, max_position_embeddings: number, image_token_id: number, bos_token_id: number,
 *   eos_token_id: number, pad_token_id: number}} Geometry
 */

/** @returns {Readonly<Geometry>} */
export function geometryFromDict(d) {
  const w = 'geometry';
  const g = {};
  for (const [name, [lo, hi]] of Object.entries(INT_BOUNDS)) g[name] = typed_json.integer(d, name, w, lo, hi);
  g.family = typed_json.text(d, 'family', w, { choices: FAMILIES });
  for (const name of TOKEN_IDS) g[name] = typed_json.integer(d, name, w, 0, g.vocab_size - 1);
  if (g.num_heads % g.num_kv_heads) {
    throw new BundleError(`${w}: num_heads ${g.num_heads} is not a multiple of num_kv_heads ${g.num_kv_heads}`);
  }
  // sizes the runtime does not use itself (softcaps, rope) are the graphs' business; fields appended later are ignored
  return Object.freeze(g);
}
