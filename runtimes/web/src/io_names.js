// The graph input/output names (pgexport_runtime/io_names.py; optimum / transformers.js naming).

// vision encoder
export const PIXEL_VALUES = 'pixel_values'; // [batch, 3, height, width] float32, SigLIP-normalised
export const VISION_FEATURES = 'vision_features'; // [batch, num_image_tokens, vision_hidden]

// projector
export const IMAGE_EMBEDS = 'image_embeds'; // [batch, num_image_tokens, text_hidden]

// decoder-with-past
export const INPUT_IDS = 'input_ids'; // [batch, seq] int64; <image> placeholders are filled from image_embeds
export const DECODER_IMAGE_EMBEDS = 'image_embeds'; // [batch, num_image_tokens or 0, text_hidden]
export const ATTENTION_MASK = 'attention_mask'; // [batch, past + seq] int64, 1 = real token, 0 = padding
export const POSITION_IDS = 'position_ids'; // [batch, seq] int64, 1-based for PaliGemma
export const TOKEN_TYPE_IDS = 'token_type_ids'; // [batch, seq] int64, 0 = prefix (bidirectional), 1 = suffix
export const LOGITS_INDEX = 'logits_index'; // [batch, k] int64: positions within seq whose logits are computed
export const LOGITS = 'logits'; // [batch, k, vocab] float32

// mask decoder (optional graph)
export const SEG_CODES = 'seg_codes'; // [batch, 16] int64
export const MASKS = 'masks'; // [batch, 64, 64] float32, > 0 is the object

export const pastKey = (i) => `past_key_values.${i}.key`;
export const pastValue = (i) => `past_key_values.${i}.value`;
export const presentKey = (i) => `present.${i}.key`;
export const presentValue = (i) => `present.${i}.value`;

/** The names the runtime feeds or fetches on `graph`, each with the axes whose size the manifest fixes. */
export function expected(graph, g, imageHW) {
  if (graph === 'vision_encoder') return { [PIXEL_VALUES]: { 1: 3, 2: imageHW[0], 3: imageHW[1] }, [VISION_FEATURES]: {} };
  if (graph === 'projector') return { [VISION_FEATURES]: {}, [IMAGE_EMBEDS]: { 2: g.text_hidden } };
  if (graph === 'mask_decoder') return { [SEG_CODES]: { 1: 16 }, [MASKS]: {} };
  const kv = { 1: g.num_kv_heads, 3: g.head_dim };
  const names = {
    [INPUT_IDS]: {}, [DECODER_IMAGE_EMBEDS]: { 2: g.text_hidden }, [ATTENTION_MASK]: {}, [POSITION_IDS]: {},
    [TOKEN_TYPE_IDS]: {}, [LOGITS_INDEX]: {}, [LOGITS]: { 2: g.vocab_size },
  };
  for (let i = 0; i < g.text_layers; i++) {
    Object.assign(names, { [pastKey(i)]: kv, [pastValue(i)]: kv, [presentKey(i)]: kv, [presentValue(i)]: kv });
  }
  return names;
}
