"""Import GPTQ checkpoints (auto-gptq / gptqmodel format) into MatMulNBits, without re-rounding.

A GPTQ linear with `bits` b, `group_size` G, K inputs and N outputs is stored as
    qweight int32 [K * b / 32, N]   codes packed along K, lowest bits first
    qzeros  int32 [K / G, N * b / 32] zero points packed along N, same order
    scales  fp16  [K / G, N]
    g_idx   int32 [K]               the group of each input feature (optional; default k // G)
and means W[k, n] = scales[g_idx[k], n] * (code[k, n] - zero[g_idx[k], n]). Checkpoint format v1
("gptq", auto-gptq's) stores zero - 1; v2 ("gptq_v2") stores the zero itself.

MatMulNBits wants groups of G consecutive inputs. Without act-order g_idx is k // G and the codes are
used as they are. With act-order (desc_act) g_idx is a permuted grouping; sorting inputs by group gives
contiguous blocks and x @ W == x[:, P] @ W[P, :], so the import puts a Gather of the activations by P in
front of the MatMulNBits instead of passing g_idx (which onnxruntime runs on its slow path).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pgexport_runtime.errors import UserError

from pgexport.nbits import Packed, pack_codes


@dataclass
class GptqLinear:
    codes: np.ndarray  # uint8 [K, N]
    zeros: np.ndarray  # uint8 [groups, N] (the real zero points, v1 offset removed)
    scales: np.ndarray  # float32 [groups, N]
    g_idx: np.ndarray  # int64 [K]
    bits: int
    group_size: int


def _unpack_rows(packed: np.ndarray, bits: int) -> np.ndarray:
    """int32 [R, C] holding 32/bits values each along R -> uint8 [R * 32/bits, C]."""
    per = 32 // bits
    p = packed.astype(np.uint32)
    parts = [(p >> (bits * i)) & ((1 << bits) - 1) for i in range(per)]
    return np.stack(parts, axis=1).reshape(packed.shape[0] * per, packed.shape[1]).astype(np.uint8)


def _unpack_cols(packed: np.ndarray, bits: int) -> np.ndarray:
    """int32 [R, C] holding 32/bits values each along C -> uint8 [R, C * 32/bits]."""
    return np.ascontiguousarray(_unpack_rows(np.ascontiguousarray(packed.T), bits).T)


def read_linear(tensors: dict, prefix: str, bits: int, group_size: int, v1: bool) -> GptqLinear:
    """Decode one GPTQ linear from its checkpoint tensors (`prefix.qweight`, ...)."""
    if bits not in (4, 8):
        raise UserError(f"{prefix}: GPTQ with {bits} bits is not supported (4 or 8)")
    codes = _unpack_rows(np.asarray(tensors[f"{prefix}.qweight"]), bits)
    k, n = codes.shape
    zeros = _unpack_cols(np.asarray(tensors[f"{prefix}.qzeros"]), bits)[:, :n].astype(np.int64)
    if v1:
        zeros = (zeros + 1) & ((1 << bits) - 1)  # auto-gptq v1 stores zero - 1 (wrapping in b bits)
    scales = np.asarray(tensors[f"{prefix}.scales"]).astype(np.float32)
    group = k if group_size in (-1, 0) else group_size
    g_idx = np.asarray(tensors[f"{prefix}.g_idx"]).astype(np.int64) if f"{prefix}.g_idx" in tensors \
        else np.arange(k) // group
    if scales.shape != (-(-k // group), n) or g_idx.shape != (k,):
        raise UserError(f"{prefix}: inconsistent GPTQ shapes (qweight {codes.shape}, scales {scales.shape}, "
                        f"g_idx {g_idx.shape}, group {group})")
    return GptqLinear(codes, zeros.astype(np.uint8), scales, g_idx, bits, group)


def dequantize_linear(lin: GptqLinear) -> np.ndarray:
    """W as torch stores it: [N, K] float32."""
    w = lin.scales[lin.g_idx] * (lin.codes.astype(np.float32) - lin.zeros[lin.g_idx].astype(np.float32))
    return np.ascontiguousarray(w.T)


def to_matmulnbits(lin: GptqLinear) -> Packed:
    """The same integers and scales in MatMulNBits' block layout (+ an input permutation if act-order)."""
    k, n = lin.codes.shape
    group = lin.group_size
    if group < 16 or group & (group - 1):
        raise UserError(f"GPTQ group size {group} cannot be a MatMulNBits block (a power of two >= 16)")
    perm = None
    if not np.array_equal(lin.g_idx, np.arange(k) // group):
        perm = np.argsort(lin.g_idx, kind="stable")
        if not np.array_equal(lin.g_idx[perm], np.arange(k) // group):
            raise UserError("GPTQ g_idx does not assign exactly group_size inputs to each group")
    codes = lin.codes if perm is None else lin.codes[perm]
    groups = lin.scales.shape[0]
    padded = np.full((groups * group, n), 0, dtype=np.uint8)
    padded[:k] = codes
    padded[k:] = lin.zeros[-1]  # padding rows dequantize to 0
    blocks = np.ascontiguousarray(padded.T.reshape(n, groups, group))
    zero = lin.zeros.T  # [N, groups]
    symmetric = bool(np.all(zero == 2 ** (lin.bits - 1)))
    packed = pack_codes(blocks, lin.scales.T, None if symmetric else zero, lin.bits, group, k)
    packed.input_perm = None if perm is None else perm.astype(np.int64)
    return packed


# Checkpoint key prefixes of older PaliGemma checkpoints -> transformers 5.x module names (data, not code).
LEGACY_PREFIXES = {
    "language_model.model.": "model.language_model.",
    "language_model.lm_head.": "lm_head.",
    "vision_tower.": "model.vision_tower.",
    "multi_modal_projector.": "model.multi_modal_projector.",
}
DECODER_PREFIX = "model.language_model."  # exported decoder graph names drop this: "layers.0.mlp.up_proj"


def gptq_settings(config: dict) -> dict | None:
    """quantization_config of a GPTQ checkpoint (top level or in text_config), else None."""
    q = config.get("quantization_config") or config.get("text_config", {}).get("quantization_config")
    if not q or q.get("quant_method") != "gptq":
        return None
    return {"bits": int(q.get("bits", 4)), "group_size": int(q.get("group_size", 128)),
            "v1": q.get("checkpoint_format", "gptq") == "gptq"}


def _canonical(key: str) -> str:
    for old, new in LEGACY_PREFIXES.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def load_checkpoint(directory, settings: dict):
    """A float32 PaliGemma with the GPTQ linears dequantized, and their MatMulNBits packing by graph name."""
    from pathlib import Path

    import torch
    from safetensors.numpy import load_file
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    tensors: dict[str, np.ndarray] = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        tensors.update({_canonical(k): v for k, v in load_file(str(f)).items()})
    state, packed = {}, {}
    for key in [k for k in tensors if k.endswith(".qweight")]:
        prefix = key[: -len(".qweight")]
        lin = read_linear(tensors, prefix, settings["bits"], settings["group_size"], settings["v1"])
        state[prefix + ".weight"] = torch.from_numpy(dequantize_linear(lin))
        if prefix.startswith(DECODER_PREFIX):
            packed[prefix[len(DECODER_PREFIX):]] = to_matmulnbits(lin)
    gptq_parts = (".qweight", ".qzeros", ".scales", ".g_idx")
    for key, value in tensors.items():
        if not key.endswith(gptq_parts):
            state[key] = torch.from_numpy(np.asarray(value, dtype=np.float32))
    if not packed:
        raise UserError(f"{directory}: quantization_config says GPTQ but no decoder layer has a qweight")
    config = PaliGemmaConfig.from_pretrained(directory)
    for c in (config, config.text_config):
        if hasattr(c, "quantization_config"):
            delattr(c, "quantization_config")
    model = PaliGemmaForConditionalGeneration(config).to(torch.float32).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise UserError(f"{directory}: GPTQ checkpoint does not match the config: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]} ({len(missing)} / {len(unexpected)})")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model, packed
