"""The graph input/output names and the sizes the manifest fixes on them, from contract.json.

Names follow optimum / transformers.js (`past_key_values.{i}.key`, `present.{i}.key`) so that tools
that know those exports recognise ours. The exporter and both runtimes take them from the contract;
nothing else spells them.
"""

from pgexport_runtime.contract import CONTRACT

_N, _A = CONTRACT["names"], CONTRACT["axes"]

# vision encoder
PIXEL_VALUES = _N["PIXEL_VALUES"]  # [batch, 3, height, width] float32, SigLIP-normalised
VISION_FEATURES = _N["VISION_FEATURES"]  # [batch, num_image_tokens, vision_hidden]

# projector
IMAGE_EMBEDS = _N["IMAGE_EMBEDS"]  # [batch, num_image_tokens, text_hidden]

# decoder-with-past
INPUT_IDS = _N["INPUT_IDS"]  # [batch, seq] int64; <image> placeholders are filled from image_embeds
DECODER_IMAGE_EMBEDS = _N["DECODER_IMAGE_EMBEDS"]  # [batch, num_images_tokens or 0, text_hidden]
ATTENTION_MASK = _N["ATTENTION_MASK"]  # [batch, past + seq] int64, 1 = real token, 0 = padding
POSITION_IDS = _N["POSITION_IDS"]  # [batch, seq] int64, 1-based for PaliGemma
TOKEN_TYPE_IDS = _N["TOKEN_TYPE_IDS"]  # [batch, seq] int64, 0 = prefix (bidirectional), 1 = suffix (causal)
LOGITS_INDEX = _N["LOGITS_INDEX"]  # [batch, k] int64: positions within seq whose logits are computed
LOGITS = _N["LOGITS"]  # [batch, k, vocab] float32

PAST_KEY = _N["PAST_KEY"]  # [batch, kv_heads, past, head_dim]
PAST_VALUE = _N["PAST_VALUE"]
PRESENT_KEY = _N["PRESENT_KEY"]  # [batch, kv_heads, past + seq, head_dim]
PRESENT_VALUE = _N["PRESENT_VALUE"]


def past_key(i: int) -> str:
    return PAST_KEY.format(i=i)


def past_value(i: int) -> str:
    return PAST_VALUE.format(i=i)


def present_key(i: int) -> str:
    return PRESENT_KEY.format(i=i)


def present_value(i: int) -> str:
    return PRESENT_VALUE.format(i=i)


# named dynamic axes, the same in every graph
BATCH = _A["BATCH"]
SEQ = _A["SEQ"]
PAST = _A["PAST"]
TOTAL = _A["TOTAL"]
IMAGE_TOKENS = _A["IMAGE_TOKENS"]
KEEP = _A["KEEP"]

# mask decoder (optional graph: segmentation's VQ-VAE decoder)
SEG_CODES = _N["SEG_CODES"]  # [batch, 16] int64, the <segNNN> codes of one object (row-major 4x4)
MASKS = _N["MASKS"]  # [batch, 64, 64] float32, nominally in [-1, 1]; > 0 is the object


def expected(graph: str, g, image_hw: tuple[int, int]) -> dict[str, dict[int, int]]:
    """The names the runtime feeds or binds on `graph`, each with the axes whose size it derives from the
    manifest (geometry, preprocessing size): session.check_io compares them with the loaded graph. The
    contract gives a size as a number, a geometry field, or the image's height or width. A graph the contract
    does not name is a decoder at another length (the static layout's decoder_prefill_<n>)."""
    sizes = {"image_height": image_hw[0], "image_width": image_hw[1]}

    def axes(spec) -> dict[int, int]:
        return {int(a): v if isinstance(v, int) else sizes.get(v) or getattr(g, v) for a, v in spec.items()}

    table = CONTRACT["graphs"]
    graph = graph if graph in table else "decoder"
    names = {_N[k]: axes(spec) for k, spec in table[graph].items()}
    if graph == "decoder":
        for i in range(g.text_layers):
            names |= {_N[k].format(i=i): axes(spec) for k, spec in table["decoder_per_layer"].items()}
    return names
