"""Parity of the mask-decoder graph: onnxruntime against the PyTorch decoder, on every code value.

Called from build after `parity.compare`; it adds a "mask_decoder" entry to the same report, so a failure
names this graph like any other and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pgexport_runtime.masks import MaskDecoder as OrtMaskDecoder

from pgexport.export.mask_decoder import NUM_TOKENS, MaskDecoder


def parity_codes(num_codes: int, rows: int = 12, seed: int = 0) -> np.ndarray:
    """Random rows plus rows that walk through every code value, so every codebook entry is exercised."""
    rng = np.random.default_rng(seed)
    walk = np.arange(-(-num_codes // NUM_TOKENS) * NUM_TOKENS) % num_codes
    rows_random = rng.integers(0, num_codes, (rows, NUM_TOKENS))
    return np.concatenate([rows_random, walk.reshape(-1, NUM_TOKENS)]).astype(np.int64)


def check(onnx_path: Path, module: MaskDecoder, relative: float) -> dict:
    codes = parity_codes(module._vq_vae._embedding.shape[0])
    with torch.no_grad():
        ref = module(torch.from_numpy(codes)).numpy()
    got = OrtMaskDecoder(Path(onnx_path))(codes)
    diff = float(np.abs(got.astype(np.float64) - ref).max())
    rel = diff / max(float(np.abs(ref).max()), 1e-12)
    # the threshold at 0 is what users see: count the 64x64 pixels whose side of it changes
    flipped = int(((got > 0) != (ref > 0)).sum())
    return {"max_abs": diff, "relative": rel, "limit": relative, "pixels_flipped": flipped,
            "codes_checked": int(codes.shape[0]), "ok": bool(rel <= relative)}


def add_to_report(report: dict, entry: dict) -> dict:
    """The report with checks["mask_decoder"] added and its verdict recomputed."""
    report["checks"]["mask_decoder"] = entry
    report["ok"] = all(c["ok"] for c in report["checks"].values())
    report["first_failure"] = next((k for k, c in report["checks"].items() if not c["ok"]), None)
    return report
