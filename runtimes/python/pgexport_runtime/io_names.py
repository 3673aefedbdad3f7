"""The one table of graph input/output names, shared by the exporter and the runtime.

Names follow optimum / transformers.js (`past_key_values.{i}.key`, `present.{i}.key`) so that tools
that know those exports recognise ours. The exporter imports this module; nothing else spells them.
"""

# vision encoder
PIXEL_VALUES = "pixel_values"  # [batch, 3, height, width] float32, SigLIP-normalised
VISION_FEATURES = "vision_features"  # [batch, num_image_tokens, vision_hidden]

# projector
IMAGE_EMBEDS = "image_embeds"  # [batch, num_image_tokens, text_hidden]

# decoder-with-past
INPUT_IDS = "input_ids"  # [batch, seq] int64; <image> placeholders are filled from image_embeds
DECODER_IMAGE_EMBEDS = "image_embeds"  # [batch, num_images_tokens or 0, text_hidden]
ATTENTION_MASK = "attention_mask"  # [batch, past + seq] int64, 1 = real token, 0 = padding
POSITION_IDS = "position_ids"  # [batch, seq] int64, 1-based for PaliGemma
TOKEN_TYPE_IDS = "token_type_ids"  # [batch, seq] int64, 0 = prefix (bidirectional), 1 = suffix (causal)
LOGITS_INDEX = "logits_index"  # [batch, k] int64: positions within seq whose logits are computed
LOGITS = "logits"  # [batch, k, vocab] float32


PAST_KEY = "past_key_values.{i}.key"  # [batch, kv_heads, past, head_dim]
PAST_VALUE = "past_key_values.{i}.value"
PRESENT_KEY = "present.{i}.key"  # [batch, kv_heads, past + seq, head_dim]
PRESENT_VALUE = "present.{i}.value"


def past_key(i: int) -> str:
    return PAST_KEY.format(i=i)


def past_value(i: int) -> str:
    return PAST_VALUE.format(i=i)


def present_key(i: int) -> str:
    return PRESENT_KEY.format(i=i)


def present_value(i: int) -> str:
    return PRESENT_VALUE.format(i=i)


# named dynamic axes, the same in every graph
BATCH = "batch"
SEQ = "sequence"
PAST = "past_sequence"
TOTAL = "total_sequence"
IMAGE_TOKENS = "image_tokens"
KEEP = "logits_kept"

# mask decoder (optional graph: segmentation's VQ-VAE decoder)
SEG_CODES = "seg_codes"  # [batch, 16] int64, the <segNNN> codes of one object (row-major 4x4)
MASKS = "masks"  # [batch, 64, 64] float32, nominally in [-1, 1]; > 0 is the object


def expected(graph: str, g, image_hw: tuple[int, int]) -> dict[str, dict[int, int]]:
    """The names the runtime feeds or binds on `graph`, each with the axes whose size it derives from the
    manifest (geometry, preprocessing size): session.check_io compares them with the loaded graph."""
    if graph == "vision_encoder":
        return {PIXEL_VALUES: {1: 3, 2: image_hw[0], 3: image_hw[1]}, VISION_FEATURES: {}}
    if graph == "projector":
        return {VISION_FEATURES: {}, IMAGE_EMBEDS: {2: g.text_hidden}}
    if graph == "mask_decoder":
        return {SEG_CODES: {1: 16}, MASKS: {}}
    kv = {1: g.num_kv_heads, 3: g.head_dim}  # KVCache sizes its buffers from these
    names = {INPUT_IDS: {}, DECODER_IMAGE_EMBEDS: {2: g.text_hidden}, ATTENTION_MASK: {}, POSITION_IDS: {},
             TOKEN_TYPE_IDS: {}, LOGITS_INDEX: {}, LOGITS: {2: g.vocab_size}}  # logits are bound at vocab_size
    for i in range(g.text_layers):
        names |= {past_key(i): kv, past_value(i): kv, present_key(i): kv, present_value(i): kv}
    return names
