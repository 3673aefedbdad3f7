"""What a build will need, from the geometry and the recipe alone (`pgexport build --dry-run`, `--max-memory`).

Parameters are counted per recipe component (vision encoder, projector, decoder linears, embedding/lm_head
table) and sized at the precision the recipe gives each. Peak memory and time are fits through builds measured
on this project's 2-core AMD EPYC (AVX2), `benchmarks/build_memory.py`, peak RSS as /usr/bin/time -v's kB / 10^6:

- whole model: a line through the demo model's int4 build (5.1 M parameters, 0.58 GB) and PaliGemma-3B-224's
  int4 build of 2026-12-01 (2.92 B parameters, 17.5 GB, 25 min 3 s). It holds the float32 model in its PyTorch
  phase and onnxruntime's parity session over the float32 graphs after it: about 0.56 GB + 1.45 x (4 bytes x
  parameters). Time is linear in the parameters: the references and the gate are most of it;
- streamed: the PyTorch phase holds the table as stored (16-bit for presets and bf16 checkpoints), the projector,
  and the vision tower or two decoder layers, plus the KV cache of the gate reference's batch; scaled from the
  3B build streamed (4.97 GB over 2.71 GB resident, less its 0.18 GB of KV cache). The accuracy gate then runs
  the bundle's decoder alone in a child process: onnxruntime's packed 4-bit weights at 1.2 x their bytes on
  disk (float32 scales and block sums for int8 compute: measured), the runtime's two KV buffers for one
  sample, and the rest of the process, 0.56 GB, from the 10B int4 build of 2026-12-01 (7.94 GB). Time is a
  line through the 3B (18 min 38 s) and 10B (36 min 0 s) streamed builds, both of 2026-12-01.

They are estimates, not promises.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgexport_runtime.geometry import Geometry

BASE_RSS = 0.56e9  # bytes: Python, torch, transformers, onnxruntime, a tiny model (demo int4 build, measured)
RSS_PER_FP32_BYTE = (17.54e9 - BASE_RSS) / 11.68e9  # 3B int4 whole-model build: 17.54 GB over 11.68 GB of float32
BASE_SECONDS = 40.0
SECONDS_PER_PARAMETER = (1503 - BASE_SECONDS) / 2.92e9  # 3B int4, whole model: 25 min 3 s
# 3B int4 streamed: its PyTorch phase, the peak, less the gate batch's KV cache (counted apart, below)
STREAM_RSS_PER_RESIDENT_BYTE = (4.97e9 - BASE_RSS - 0.18e9) / 2.71e9
# The streamed gate reference runs its samples in batches whose float32 KV cache stays within this: 16 samples
# at 3B (0.18 GB); at 10B, 16 samples held 3.5 GB and took the PyTorch phase over 8.9 GB: now two batches of 8
GATE_KV_BUDGET = 2.0e9
GATE_BATCH_MOST = 16
GATE_PROMPT_TOKENS = 32  # room for <bos>, a gate prompt and "\n" after the image tokens
GATE_PACKED_PER_BYTE = 1.2  # MatMulNBits packed for int8 compute: 0.75 bytes a 4-bit weight against 0.625 stored
GATE_BASE_RSS = 0.56e9  # the gate process besides those and the KV cache (10B int4 streamed build: 7.94 GB)
# GPTQ (int4-gptq), timed here: quantizing one linear W [N, K] takes about GPTQ_K3 * K^3 + GPTQ_NK2 * N * K^2
# seconds (the Cholesky factors of its Hessian, then the column sweep), a fit through 3584 x 3584 (2.0 s),
# 2048 x 16384 (46 s) and 3584 x 14336 (36 s); calibration runs every sample through each layer twice and
# accumulates x^T x per linear, at MATMUL_FLOPS (a 300-token linear ran at 194 GFLOPS; attention and the
# rest run slower). Streamed, the calibration answers are generated in batches, every pass reading every layer:
# STREAM_PASS_SECONDS_PER_PARAMETER from the 10B gate reference (877 s for 66 passes of 8 samples).
GPTQ_K3, GPTQ_NK2 = 6.5e-12, 3.2e-11
MATMUL_FLOPS = 150e9
STREAM_PASS_SECONDS_PER_PARAMETER = 877 / 66 / 9.66e9
GPTQ_ANSWER_TOKENS = 32  # quant.calibration.ANSWER_TOKENS
# AWQ's scale search, per decoder layer: linear in the layer's linear weights and the samples, from the
# streamed PaliGemma-3B-224 int4-awq build (about 100 s a layer of 110 M weights on 32 samples)
AWQ_SECONDS_PER_WEIGHT_SAMPLE = 100 / (110.1e6 * 32)
# streamed build time: a line through 3B int4 (2.92 B parameters, 1118 s) and 10B int4 (9.66 B, 2160 s)
STREAM_SECONDS_PER_PARAMETER = (2160 - 1118) / (9.66e9 - 2.92e9)
STREAM_BASE_SECONDS = 1118 - STREAM_SECONDS_PER_PARAMETER * 2.92e9


# The parity checks run the parity batch (two prompts after the image) through the decoder at the whole prefix's
# length, a layer at a time: transients that grow with the image tokens, not with the weights. Per row, the
# attention scores [heads, S, S] in float32 are held twice (before and after the softmax) and the MLP's
# [S, intermediate] activations three times (gate, up, their product). The fits above were measured at 224
# pixels (256 image tokens), so they hold that much; a longer prefix adds the difference. PaliGemma-3B-896's
# streamed build peaked at 8.1 GB in its layer parity, where the fits alone say 4.8 GB.
PARITY_ROWS = 2  # verify.parity.PROMPTS
PARITY_TEXT_TOKENS = 16  # <bos>, the longer prompt and "\n", rounded up
FITTED_IMAGE_TOKENS = 256
ATTENTION_COPIES, MLP_COPIES = 2, 3


def parity_transient_bytes(g: Geometry) -> int:
    """What the parity checks' activations hold beyond those of the builds the fits were measured on."""
    def held(image_tokens: int) -> int:
        seq = image_tokens + PARITY_TEXT_TOKENS
        return 4 * PARITY_ROWS * seq * (ATTENTION_COPIES * g.num_heads * seq + MLP_COPIES * g.text_intermediate)

    return max(0, held(g.num_image_tokens) - held(FITTED_IMAGE_TOKENS))


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
                f"time        about {self.seconds / 60:.0f} min on 2 AVX2 cores (scaled from measured builds)"]


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
    return {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int8-rows": 1.0}[precision.kind]


def kv_bytes(g: Geometry, new_tokens: int, windowed: bool = True) -> int:
    """One sample's float32 KV cache: image tokens, prompt and new tokens. windowed: in the PyTorch reference,
    where a sliding-window layer keeps the last window - 1 positions, as transformers' cache does; the runtime's
    buffers hold every position of every layer."""
    positions = g.num_image_tokens + GATE_PROMPT_TOKENS + new_tokens
    window = (g.sliding_window or positions + 1) - 1 if windowed else positions
    held = sum(min(positions, window) if sliding else positions for sliding in g.sliding_layers)
    return 2 * g.num_kv_heads * g.head_dim * 4 * held


def gate_batch(g: Geometry, new_tokens: int, samples: int = GATE_BATCH_MOST) -> int:
    """How many gate samples a streamed build's reference generates together: as few batches as GATE_KV_BUDGET
    allows (each batch reads every layer once per token), of even sizes, at most GATE_BATCH_MOST."""
    fits = max(1, min(GATE_BATCH_MOST, int(GATE_KV_BUDGET // kv_bytes(g, new_tokens))))
    batches = -(-max(samples, 1) // fits)
    return -(-max(samples, 1) // batches)


def _linears(g: Geometry) -> list[tuple[int, int]]:
    """(N, K) of each linear in a decoder layer: q, k, v, o, gate, up, down."""
    q, kv, dt, it = g.num_heads * g.head_dim, g.num_kv_heads * g.head_dim, g.text_hidden, g.text_intermediate
    return [(q, dt), (kv, dt), (kv, dt), (dt, q), (it, dt), (it, dt), (dt, it)]


def gptq_bytes(g: Geometry, samples: int) -> int:
    """What GPTQ holds besides the model: every sample's hidden states between layers, and one layer's Hessians
    (float32 K x K per linear) while it calibrates, or the largest one's, permuted, and its weight's copies while
    that is quantized."""
    tokens = g.num_image_tokens + GATE_PROMPT_TOKENS + GPTQ_ANSWER_TOKENS
    states = samples * tokens * (g.text_hidden + 2 * g.head_dim) * 4
    linears = _linears(g)
    n, k = max(linears, key=lambda nk: nk[1])
    return states + max(4 * sum(k * k for _, k in linears), 8 * k * k + 12 * n * k)


def gptq_seconds(g: Geometry, samples: int, stream: bool) -> float:
    tokens = samples * (g.num_image_tokens + GATE_PROMPT_TOKENS + GPTQ_ANSWER_TOKENS)
    linears = _linears(g)
    flops = sum(2 * 2 * tokens * n * k + 2 * tokens * k * k for n, k in linears)  # two passes, then x^T x
    seconds = sum(GPTQ_K3 * k**3 + GPTQ_NK2 * n * k * k for n, k in linears) + flops / MATMUL_FLOPS
    seconds *= g.text_layers
    if stream:  # the answers: generated a batch at a time, every token a pass over every layer
        passes = -(-samples // gate_batch(g, GPTQ_ANSWER_TOKENS, samples)) * (GPTQ_ANSWER_TOKENS + 1)
        seconds += passes * STREAM_PASS_SECONDS_PER_PARAMETER * sum(parameters(g).values())
    return seconds


AUTO_SENSITIVITY_SAMPLES = 16  # quant.auto.SENSITIVITY_SAMPLES
AUTO_TABLE_ROWS, AUTO_POSITIONS = 16384, 256  # quant.layerwise.ROWS and POSITIONS


def awq_seconds(g: Geometry, samples: int, stream: bool) -> float:
    """AWQ's search over every layer, and streamed, its calibration answers (as GPTQ's)."""
    seconds = g.text_layers * AWQ_SECONDS_PER_WEIGHT_SAMPLE * samples * sum(n * k for n, k in _linears(g))
    if stream:
        passes = -(-samples // gate_batch(g, GPTQ_ANSWER_TOKENS, samples)) * (GPTQ_ANSWER_TOKENS + 1)
        seconds += passes * STREAM_PASS_SECONDS_PER_PARAMETER * sum(parameters(g).values())
    return seconds


def auto_bytes(g: Geometry, samples: int) -> int:
    """What `--quant auto` holds besides the model (quant/layerwise.py): every sample's layer-0 states, image
    embeddings with the vision encoder formed, and the hidden states of a pass (two depths at once); one branch
    per linear of a layer for the sensitivity samples; a formed layer (or vision tower) beside the one read; and
    a slice of the table formed and scored against a chunk of positions."""
    tokens = g.num_image_tokens + GATE_PROMPT_TOKENS + GPTQ_ANSWER_TOKENS
    state = tokens * (g.text_hidden + 2 * g.head_dim) * 4 + 3 * g.image_size**2 * 4
    hidden = tokens * g.text_hidden * 4
    branches = len(_linears(g)) * min(samples, AUTO_SENSITIVITY_SAMPLES) * hidden
    params = parameters(g)
    formed = 4 * max(params["vision_encoder"], (params["decoder_linear"] - g.text_hidden) / g.text_layers)
    scoring = 2 * AUTO_TABLE_ROWS * g.text_hidden * 4 + 8 * AUTO_POSITIONS * AUTO_TABLE_ROWS * 8
    vision = g.num_image_tokens * g.text_hidden * 4
    return int(samples * (state + vision + 2 * hidden) + branches + formed + scoring)


def auto_seconds(g: Geometry, samples: int, units: int, stream: bool) -> float:
    """`--quant auto`'s passes at MATMUL_FLOPS: the float32 reference, each decoder linear alone from its layer to
    the last and the table and vision encoder alone through every layer (on the sensitivity samples), then
    the bisection's passes, each scored against the table. Streamed, each pass also reads the layers it runs
    (at the rate the gate reference read them) and the answers are generated a batch at a time."""
    per_token = 2 * sum(n * k for n, k in _linears(g))  # one layer
    tokens = g.num_image_tokens + GATE_PROMPT_TOKENS + GPTQ_ANSWER_TOKENS
    head = 2 * 2 * GPTQ_ANSWER_TOKENS * g.vocab_size * g.text_hidden  # float32 and formed logits, per sample
    layers = g.text_layers
    sens = min(samples, AUTO_SENSITIVITY_SAMPLES)
    alone = sens * (tokens * per_token * (len(_linears(g)) * layers * (layers + 1) / 2 + 2 * layers)
                    + (len(_linears(g)) * layers + 2) * head)
    passes = 3 + max(units, 1).bit_length()  # the reference, both ends, then the bisection
    seconds = (alone + passes * samples * (tokens * per_token * layers + head)) / MATMUL_FLOPS
    if stream:  # layers read: (L + 1) / 2 passes' worth alone, then the passes; and the answers
        reads = (layers + 1) / 2 + 2 + passes
        answers = -(-samples // gate_batch(g, GPTQ_ANSWER_TOKENS, samples)) * (GPTQ_ANSWER_TOKENS + 1)
        seconds += (reads + answers) * STREAM_PASS_SECONDS_PER_PARAMETER * sum(parameters(g).values())
    return seconds


def estimate(g: Geometry, recipe, stream: bool = False, table_itemsize: int = 2, gate_tokens: int = 32,
             gate_samples: int = 64, int8_prefill: bool = False) -> Estimate:
    """stream: the PyTorch phase holds the projector, the embedding table (`table_itemsize` bytes a value, as the
    checkpoint stores it), and the vision tower or one decoder layer at a time (twice, as one is read while
    the last is freed); a quantized bundle is then run for the accuracy gate. int8_prefill: the bundle also
    holds decoder_int8 (a byte a decoder weight, and its own copy of the table), which the gate loads beside
    the decoder."""
    params = parameters(g)
    fp32 = 4 * sum(params.values())
    bundle = int(sum(n * bytes_per_parameter(recipe.precision_for(c, None)) for c, n in params.items()))
    table = params["embedding"] * bytes_per_parameter(recipe.precision_for("embedding", None))
    int8_graph = int(params["decoder_linear"] + table) if int8_prefill else 0  # int8-rows: a byte a weight
    bundle += int8_graph
    peak = BASE_RSS + RSS_PER_FP32_BYTE * fp32 + parity_transient_bytes(g)
    if stream:
        layer = (params["decoder_linear"] - g.text_hidden) / g.text_layers
        resident = (table_itemsize * params["embedding"]
                    + 4 * (params["projector"] + max(params["vision_encoder"], 2 * layer)))
        peak = BASE_RSS + STREAM_RSS_PER_RESIDENT_BYTE * resident + parity_transient_bytes(g)
        if not recipe.is_identity and gate_samples > 0:  # the gate reference's batch, then the gate
            peak += gate_batch(g, gate_tokens, gate_samples) * kv_bytes(g, gate_tokens)
            decoder = sum(params[c] * bytes_per_parameter(recipe.precision_for(c, None))
                          for c in ("decoder_linear", "embedding"))
            peak = max(peak, GATE_BASE_RSS + GATE_PACKED_PER_BYTE * (decoder + int8_graph)
                       + 2 * kv_bytes(g, gate_tokens, windowed=False))
    seconds = BASE_SECONDS + SECONDS_PER_PARAMETER * sum(params.values())
    if stream:
        seconds = STREAM_BASE_SECONDS + STREAM_SECONDS_PER_PARAMETER * sum(params.values())
    if recipe.needs_calibration:  # beside what the model holds: the table and a layer, or all of it
        held = BASE_RSS + (resident if stream else fp32)
        peak = max(peak, held + gptq_bytes(g, recipe.calibration_samples))
        if recipe.uses_gptq:
            seconds += gptq_seconds(g, recipe.calibration_samples, stream)
    if recipe.awq:
        seconds += awq_seconds(g, recipe.calibration_samples, stream)
    if recipe.target_agreement is not None:
        peak = max(peak, held + auto_bytes(g, recipe.calibration_samples))
        seconds += auto_seconds(g, recipe.calibration_samples, len(_linears(g)) * g.text_layers + 2, stream)
    written = fp32  # the float32 graphs, quantized afterwards; streamed, the decoder is quantized as it is written
    if stream and not recipe.is_identity:
        written = 4 * (params["vision_encoder"] + params["projector"])
    return Estimate(params, bundle, written + (0 if recipe.is_identity else bundle), int(peak), seconds)
