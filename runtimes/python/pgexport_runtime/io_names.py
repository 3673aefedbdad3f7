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
