// The graph input/output names and the sizes the manifest fixes on them, from the contract
// (pgexport_runtime/io_names.py reads the same file; optimum / transformers.js naming).

import contract from './contract.js';

const N = contract.names;

// vision encoder: [batch, 3, height, width] float32, SigLIP-normalised -> [batch, num_image_tokens, vision_hidden]
export const PIXEL_VALUES = N.PIXEL_VALUES;
export const VISION_FEATURES = N.VISION_FEATURES;
// projector: -> [batch, num_image_tokens, text_hidden]
export const IMAGE_EMBEDS = N.IMAGE_EMBEDS;
// decoder-with-past
export const INPUT_IDS = N.INPUT_IDS; // [batch, seq] int64; <image> placeholders are filled from image_embeds
export const DECODER_IMAGE_EMBEDS = N.DECODER_IMAGE_EMBEDS; // [batch, num_image_tokens or 0, text_hidden]
export const ATTENTION_MASK = N.ATTENTION_MASK; // [batch, past + seq] int64, 1 = real token, 0 = padding
export const POSITION_IDS = N.POSITION_IDS; // [batch, seq] int64, 1-based for PaliGemma
export const TOKEN_TYPE_IDS = N.TOKEN_TYPE_IDS; // [batch, seq] int64, 0 = prefix (bidirectional), 1 = suffix
export const LOGITS_INDEX = N.LOGITS_INDEX; // [batch, k] int64: positions within seq whose logits are computed
export const LOGITS = N.LOGITS; // [batch, k, vocab] float32
// mask decoder (optional graph)
export const SEG_CODES = N.SEG_CODES; // [batch, 16] int64
export const MASKS = N.MASKS; // [batch, 64, 64] float32, > 0 is the object

const layer = (pattern) => (i) => pattern.replace('{i}', String(i));
export const pastKey = layer(N.PAST_KEY);
export const pastValue = layer(N.PAST_VALUE);
export const presentKey = layer(N.PRESENT_KEY);
export const presentValue = layer(N.PRESENT_VALUE);

/** The names the runtime feeds or fetches on `graph`, each with the axes whose size the manifest fixes: a number,
 *  a geometry field, or the image's height or width. A graph the contract does not name is a decoder. */
export function expected(name, g, imageHW) {
  const graph = name in contract.graphs ? name : 'decoder';
  const sizes = { image_height: imageHW[0], image_width: imageHW[1] };
  const axes = (spec) => Object.fromEntries(Object.entries(spec).map(([axis, v]) =>
    [Number(axis), typeof v === 'number' ? v : (sizes[v] ?? g[v])]));
  const names = {};
  for (const [key, spec] of Object.entries(contract.graphs[graph])) names[N[key]] = axes(spec);
  if (graph === 'decoder') {
    for (let i = 0; i < g.text_layers; i++) {
      for (const [key, spec] of Object.entries(contract.graphs.decoder_per_layer)) names[layer(N[key])(i)] = axes(spec);
    }
  }
  return names;
}
