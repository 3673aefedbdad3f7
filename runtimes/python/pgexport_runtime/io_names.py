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


def past_key(i: int) -> str:
    return f"past_key_values.{i}.key"


def past_value(i: int) -> str:
    return f"past_key_values.{i}.value"


def present_key(i: int) -> str:
    return f"present.{i}.key"


def present_value(i: int) -> str:
    return f"present.{i}.value"


# named dynamic axes, the same in every graph
BATCH = "batch"
SEQ = "sequence"
PAST = "past_sequence"
TOTAL = "total_sequence"
IMAGE_TOKENS = "image_tokens"
KEEP = "logits_kept"
