"""What a build will need, from the geometry and the recipe alone (`pgexport build --dry-run`, `--max-memory`).

Parameters are counted per recipe component (vision encoder, projector, decoder linears, embedding/lm_head
table) and sized at the precision the recipe gives each. Peak memory and time are linear fits through two builds
measured on this project's 2-core AMD EPYC (AVX2): the demo model's int4 build (5.1 M parameters, 0.58 GB peak
RSS) and PaliGemma-3B-224's int4 build (2.92 B parameters, 16.1 GB peak RSS, 8 min 54 s). A build holds the
float32 model in its PyTorch phase and the float32 graphs while it quantizes them, so peak memory grows with the
float32 size: about 0.56 GB + 1.33 x (4 bytes x parameters). A streamed build (--stream) holds the table, the
projector and the vision tower or two decoder layers, then loads the finished bundle for the gate; its figures
scale one measured streamed 3B build. They are estimates, not promises.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgexport_runtime.geometry import Geometry

BASE_RSS = 0.56e9  # bytes: Python, torch, transformers, onnxruntime, a tiny model (demo int4 build, measured)
RSS_PER_FP32_BYTE = 1.33  # (16.1 GB - 0.56 GB) / 11.7 GB of float32 weights (3B int4 build, measured)
BASE_SECONDS = 40.0
SECONDS_PER_PARAMETER = (534 - BASE_SECONDS) / 2.92e9  # 3B int4: 8 min 54 s
# Streamed, one measured build (3B int4, 2-core EPYC, 2026-11-30): the PyTorch phase peaked at 5.7 GB over 3.77 GB
# of resident float32 (table, projector, vision tower or two layers); the build process at 6.2 GB during the
# accuracy gate, with the 2.0 GB int4 bundle loaded. Larger models are extrapolated from this one point.
STREAM_RSS_PER_RESIDENT_BYTE = (5.7e9 - BASE_RSS) / 3.77e9
BUNDLE_RSS_PER_BYTE = (6.2e9 - BASE_RSS) / 1.99e9
STREAM_TIME_FACTOR = 1233 / 534  # that build took 20 min 33 s; the whole-model one 8 min 54 s


@dataclass(frozen=True)
class Estimate:
    parameters: dict[str, int]  # per recipe component
    bundle_bytes: int  # the finished bundle
    disk_bytes: int  # at the peak: the float32 graphs written plus the bundle being written
    peak_rss_bytes: int
    seconds: float

    @property
    def total_parameters(self) -> int:
        return sum(self.parameters.values())

    def lines(self) -> list[str]:
        gb = lambda b: f"{b / 1e9:.1f} GB" if b >= 1e9 else f"{b / 1e6:.0f} MB"  # noqa: E731
        parts = ", ".join(f"{k} {v / 1e6:,.1f} M" for k, v in self.parameters.items())
        return [f"parameters  {self.total_parameters / 1e6:,.1f} M ({parts})",
                f"memory      about {gb(self.peak_rss_bytes)} peak RSS",
                f"disk        about {gb(self.disk_bytes)} at the peak; the bundle about {gb(self.bundle_bytes)}",
                f"time        about {self.seconds / 60:.0f} min on 2 AVX2 cores (scaled from a measured 3B build)"]


def parameters(g: Geometry) -> dict[str, int]:
    dv, iv, dt, it = g.vision_hidden, g.vision_intermediate, g.text_hidden, g.text_intermediate
    vision_layer = 4 * (dv * dv + dv) + dv * iv + iv + iv * dv + dv + 4 * dv  # attention, MLP, two LayerNorms
    vision = 3 * g.patch_size**2 * dv + dv + g.num_image_tokens * dv + g.vision_layers * vision_layer + 2 * dv
    q, kv = g.num_heads * g.head_dim, g.num_kv_heads * g.head_dim
    norms = (4 if g.family == "paligemma2" else 2) * dt
    decoder_layer = dt * q + 2 * dt * kv + q * dt + 3 * dt * it + norms
    table = g.vocab_size * dt * (1 if g.tie_word_embeddings else 2)
    return {"vision_encoder": vision, "projector": dv * dt + dt, "decoder_linear": g.text_layers * decoder_layer + dt,
            "embedding": table}


def bytes_per_parameter(precision) -> float:
    if precision.bits:  # block-wise: packed integers plus a float32 scale (and a zero point) per block
        return precision.bits / 8 + (4 + (0 if precision.symmetric else 0.5)) / precision.block_size
    return {"fp32": 4.0, "fp16": 2.0, "int8": 1.0}[precision.kind]


def estimate(g: Geometry, recipe, stream: bool = False) -> Estimate:
    """stream: the PyTorch phase holds the projector and the embedding table, and the vision tower or one
    decoder layer at a time (twice, as one is read while the last is freed); a quantized bundle is then loaded
    whole for the accuracy gate."""
    params = parameters(g)
    fp32 = 4 * sum(params.values())
    bundle = int(sum(n * bytes_per_parameter(recipe.precision_for(c, None)) for c, n in params.items()))
    peak = BASE_RSS + RSS_PER_FP32_BYTE * fp32
    if stream:
        layer = (params["decoder_linear"] - g.text_hidden) / g.text_layers
        resident = 4 * (params["projector"] + params["embedding"] + max(params["vision_encoder"], 2 * layer))
        gate = 0 if recipe.is_identity else BUNDLE_RSS_PER_BYTE * bundle
        peak = BASE_RSS + max(STREAM_RSS_PER_RESIDENT_BYTE * resident, gate)
    seconds = BASE_SECONDS + SECONDS_PER_PARAMETER * sum(params.values())
    written = fp32  # the float32 graphs, quantized afterwards; streamed, the decoder is quantized as it is written
    if stream and not recipe.is_identity:
        written = 4 * (params["vision_encoder"] + params["projector"])
    return Estimate(params, bundle, written + (0 if recipe.is_identity else bundle), int(peak),
                    seconds * (STREAM_TIME_FACTOR if stream else 1.0))
