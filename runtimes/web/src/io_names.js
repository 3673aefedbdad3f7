// The graph input/output names (pgexport_runtime/io_names.py; optimum / transformers.js naming).

export const PIXEL_VALUES = 'pixel_values';
export const VISION_FEATURES = 'vision_features';
export const IMAGE_EMBEDS = 'image_embeds';
export const INPUT_IDS = 'input_ids';
export const DECODER_IMAGE_EMBEDS = 'image_embeds';
export const ATTENTION_MASK = 'attention_mask';
export const POSITION_IDS = 'position_ids';
export const TOKEN_TYPE_IDS = 'token_type_ids';
export const LOGITS_INDEX = 'logits_index';
export const LOGITS = 'logits';
export const SEG_CODES = 'seg_codes';
export const MASKS = 'masks';

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
