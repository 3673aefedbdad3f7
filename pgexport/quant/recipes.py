"""Quantization recipes: which precision each component of each graph gets, as data.

A recipe names a precision for five components — vision encoder, projector, decoder linear layers,
token embedding, lm_head — plus ordered overrides matched against module names (the exporter records
each MatMul's module path, e.g. `layers.3.mlp.down_proj` or `tower.encoder.layers.0.mlp.fc1`).
Named recipes live in RECIPES; a JSON file with the same fields is a custom recipe.

Precisions (what each means in the graph):
  fp32        unchanged
  fp16        weights stored in float16, cast to float32 at load (halves the file, same compute)
  int8        dynamic int8, per output channel (onnxruntime MatMulInteger path), activations per tensor
  int8-rows   int8, per output channel, activations quantized per row (MatMulIntegerToFloat): what runs on
              the CPU's int8 matrix units (AMX) or dot products (VNNI), and a row's result is its own
  int8-wo     8-bit weight-only blocks (MatMulNBits bits=8; GatherBlockQuantized for the embedding)
  int4        4-bit weight-only blocks, round to nearest (MatMulNBits bits=4)
  int4-gptq   4-bit blocks chosen by GPTQ on image+prompt calibration data (decoder linears, and the token table
              tied to the lm_head: calibrated as the lm_head)

A recipe with `awq` first folds activation-aware scales (quant/awq.py), searched on the same calibration data,
into the decoder's float32 weights; its 4-bit decoder linears are then rounded by RTN or GPTQ as their kind says.

A recipe with a `target_agreement` (`auto`) is a starting point: the build measures which of its 4-bit units
(each decoder linear, the token table, the vision encoder) cost the most agreement per byte and moves them to
8 bits until the target holds on the calibration samples (quant/auto.py); the manifest gets the plain recipe it
chose.

A tied lm_head shares the token embedding's table: `embedding` sets both and `lm_head` must agree.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from pgexport_runtime.errors import UserError

KINDS = ("fp32", "fp16", "int8", "int8-rows", "int8-wo", "int4", "int4-gptq")
COMPONENTS = ("vision_encoder", "projector", "decoder_linear", "embedding", "lm_head")
EMBEDDING_KINDS = ("fp32", "fp16", "int8-wo", "int4", "int4-gptq")  # a Gather table has no dynamic-int8 form
TABLE = "embed_tokens"  # the token table's name in the decoder graph, and its key among GPTQ's packed weights


@dataclass(frozen=True)
class Precision:
    kind: str = "fp32"
    block_size: int = 32  # block-wise kinds: weights per scale along the input dimension
    symmetric: bool = True  # no zero points: MatMulNBits' fastest path
    accuracy_level: int = 0  # MatMulNBits accuracy_level: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute

    @property
    def bits(self) -> int | None:
        return {"int8-wo": 8, "int4": 4, "int4-gptq": 4}.get(self.kind)

    def label(self) -> str:
        if self.bits is None:
            return self.kind
        return f"{self.kind}/b{self.block_size}" + ("" if self.symmetric else "/asym")

    def check(self, where: str) -> None:
        if self.kind not in KINDS:
            raise UserError(f"{where}: unknown precision {self.kind!r} (one of {', '.join(KINDS)})")
        if self.bits and (not 16 <= self.block_size <= 4096 or self.block_size & (self.block_size - 1)):
            raise UserError(f"{where}: block_size must be a power of two from 16 to 4096, got {self.block_size}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise UserError(f"{where}: accuracy_level must be 0..4, got {self.accuracy_level}")


@dataclass(frozen=True)
class Override:
    match: str  # fnmatch pattern over module names, e.g. "layers.0.*" or "*.down_proj"
    precision: Precision


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    vision_encoder: Precision = Precision()
    projector: Precision = Precision()
    decoder_linear: Precision = Precision()
    embedding: Precision = Precision()
    lm_head: Precision = Precision()
    overrides: tuple[Override, ...] = field(default_factory=tuple)
    calibration_samples: int = 32  # GPTQ and AWQ: image+prompt pairs
    awq: bool = False  # AWQ scales folded into the decoder before its 4-bit linears are quantized
    target_agreement: float | None = None  # `auto`: promote units to 8 bits until calibration agreement reaches it

    def precision_for(self, component: str, module: str | None) -> Precision:
        """The override that matches `module` first, else the component's precision."""
        if module:
            for o in self.overrides:
                if fnmatch.fnmatchcase(module, o.match):
                    return o.precision
        return getattr(self, component)

    @property
    def uses_gptq(self) -> bool:
        kinds = [getattr(self, c).kind for c in COMPONENTS] + [o.precision.kind for o in self.overrides]
        return "int4-gptq" in kinds

    @property
    def needs_calibration(self) -> bool:
        return self.uses_gptq or self.awq or self.target_agreement is not None

    @property
    def is_identity(self) -> bool:
        return all(getattr(self, c).kind == "fp32" for c in COMPONENTS) and not self.overrides

    def verify(self, tied_lm_head: bool) -> "Recipe":
        """Check the recipe against what the graphs can express; return it for chaining (with an int4-gptq
        table made int4 when the model's lm_head is not tied to it: GPTQ calibrates the table as that lm_head)."""
        for c in COMPONENTS:
            getattr(self, c).check(f"recipe {self.name}: {c}")
        for o in self.overrides:
            o.precision.check(f"recipe {self.name}: override {o.match}")
        if self.embedding.kind not in EMBEDDING_KINDS:
            raise UserError(f"recipe {self.name}: embedding cannot be {self.embedding.kind} "
                            f"(one of {', '.join(EMBEDDING_KINDS)})")
        for c in ("vision_encoder", "projector"):
            if getattr(self, c).kind == "int4-gptq":
                raise UserError(f"recipe {self.name}: int4-gptq is implemented for the decoder's linears and its "
                                f"tied token table, not {c}")
        if not tied_lm_head and "int4-gptq" in (self.embedding.kind, self.lm_head.kind):
            # GPTQ calibrates the table as the lm_head tied to it; untied, both are rounded to nearest
            return replace(self, embedding=replace(self.embedding, kind="int4") if self.embedding.kind == "int4-gptq"
                           else self.embedding, lm_head=replace(self.lm_head, kind="int4")
                           if self.lm_head.kind == "int4-gptq" else self.lm_head).verify(tied_lm_head)
        if tied_lm_head and self.lm_head != self.embedding:
            raise UserError(f"recipe {self.name}: the lm_head is tied to the embedding (one table); "
                            f"give both the same precision (embedding {self.embedding.label()}, "
                            f"lm_head {self.lm_head.label()})")
        return self

    def summary(self) -> dict:
        d = {c: getattr(self, c).label() for c in COMPONENTS}
        d["overrides"] = [{"match": o.match, "precision": o.precision.label()} for o in self.overrides]
        if self.awq:
            d["awq"] = True
        if self.target_agreement is not None:
            d["target_agreement"] = self.target_agreement
        return d

    def to_dict(self) -> dict:
        d = asdict(self)
        d["overrides"] = [{"match": o.match, "precision": asdict(o.precision)} for o in self.overrides]
        return d


def _p(kind: str, **kw) -> Precision:
    return Precision(kind=kind, **kw)


# accuracy_level 4 (int8 activations in the 4-bit GEMMs) for every 4-bit MatMulNBits. Measured at
# paligemma-3b-224 on an AVX2 CPU: decode 10.85 vs 2.90 tokens/s with level 0; on the demo model it changes
# neither agreement nor KL of the int4 recipe (benchmarks/quant_table.py with recipes/int4-rtn-acc0.json).
INT4_ACCURACY_LEVEL = 4
_INT4_Q = dict(block_size=32, accuracy_level=INT4_ACCURACY_LEVEL)
# accuracy_level 4 for the decoder's 8-bit MatMulNBits: at level 0 onnxruntime (1.32) has no 8-bit kernel and
# unpacks the whole weight to float32 on every call. Measured at paligemma-3b-224 on an AMX Xeon (`pgexport bench`,
# every 8-bit product at one level): decode 0.1 tokens/s at level 0, 5.8 at level 4; first token 16.3 s and 6.2 s.
# On 250 demo items it costs agreement with float32 (benchmarks/quant_table.py): 93.2 % at level 0 (`int8-wo`),
# 88.0 % with the decoder and table at level 4 (KL 1.0e-4 and 3.6e-4), 85.6 % with the vision encoder at level 4
# too (benchmarks/recipes/int8-acc4.json), which would halve its 2.2 s there.
INT8_ACCURACY_LEVEL = 4
_INT8_Q = dict(block_size=32, accuracy_level=INT8_ACCURACY_LEVEL)
AUTO_TARGET = 0.9  # `auto`'s default: sequence agreement with float32 on the calibration samples


def _int4(name: str, kind: str, block: int, description: str, awq: bool = False) -> Recipe:
    # SigLIP is more sensitive than the decoder and small next to it: dynamic int8 there, fp32 projector. The
    # table is rounded as the linears are: GPTQ recipes GPTQ it too (as the lm_head it is tied to).
    q = dict(block_size=block, accuracy_level=INT4_ACCURACY_LEVEL)
    return Recipe(name, description, vision_encoder=_p("int8"), projector=_p("fp32"),
                  decoder_linear=_p(kind, **q), embedding=_p(kind, **q), lm_head=_p(kind, **q), awq=awq)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe("fp32", "No quantization: the exported float32 graphs."),
        Recipe("fp16", "All weights stored in float16 (computed in float32 on CPU): half the size, ~same output.",
               *(_p("fp16"),) * 5),
        # 8-bit weight-only blocks everywhere but the fp32 projector, not dynamic int8 (benchmarks/quant_table.py,
        # 100 demo items). Dynamic int8 in the decoder (per-tensor activations) gave 50 % sequence agreement against
        # 91 % for weight-only. Dynamic int8 in the vision encoder cost nothing on the first demo model, which did
        # not read positions from the image; on the retrained one, which does, it costs 64 % vs 93 % agreement and
        # KL 1.3e-3 vs 1.2e-5. The decoder's blocks compute with int8 activations (INT8_ACCURACY_LEVEL); the vision
        # encoder's, run once per image, in float32.
        Recipe("int8", "Default 8-bit: 8-bit weight-only blocks of 32 (MatMulNBits) for the vision encoder "
               "(float32 compute), the decoder linears and the shared embedding/lm_head table (int8 compute, "
               "accuracy_level 4, as llama.cpp's Q8_0); fp32 projector.",
               vision_encoder=_p("int8-wo", block_size=32), projector=_p("fp32"),
               decoder_linear=_p("int8-wo", **_INT8_Q), embedding=_p("int8-wo", **_INT8_Q),
               lm_head=_p("int8-wo", **_INT8_Q)),
        Recipe("int8-dynamic", "Dynamic int8 per-channel linears (vision + decoder; fast int8 GEMMs, but "
               "per-tensor activation quantization in the decoder), 8-bit block table, fp32 projector.",
               vision_encoder=_p("int8"), projector=_p("fp32"), decoder_linear=_p("int8"),
               embedding=_p("int8-wo", **_INT8_Q), lm_head=_p("int8-wo", **_INT8_Q)),
        # the int8 GEMM is the only onnxruntime kernel that runs on AMX tiles: on a 2-core AMX Xeon it multiplied the
        # prefill's shapes at 1.6-2.1 TOP/s with activations per row, the 4-bit MatMulNBits at 0.22-0.38
        # (benchmarks/ort_kernels.py). The first token comes far sooner there; a decode step reads 8-bit weights.
        Recipe("int8-rows", "Fastest first token on CPUs with int8 matrix units (AMX) or dot products (VNNI): "
               "int8 weights per channel with activations quantized per row for the decoder linears; dynamic "
               "int8 vision encoder; 8-bit block table; fp32 projector. Decoding reads 8-bit weights.",
               vision_encoder=_p("int8"), projector=_p("fp32"), decoder_linear=_p("int8-rows"),
               embedding=_p("int8-wo", **_INT8_Q), lm_head=_p("int8-wo", **_INT8_Q)),
        Recipe("int8-wo", "8-bit weight-only blocks (MatMulNBits) everywhere but the projector, computed in float32 "
               "(accuracy_level 0): onnxruntime unpacks every weight on every call, so only for small models and "
               "accuracy studies (PaliGemma-3B decodes at 0.1 tokens/s).",
               vision_encoder=_p("int8-wo"), projector=_p("fp32"), decoder_linear=_p("int8-wo"),
               embedding=_p("int8-wo"), lm_head=_p("int8-wo")),
        # `int4` is the calibrated recipe: on 250 fresh demo items it kept 66.0 % and 64.0 % of answers (an AMD
        # EPYC, an Intel Xeon) against 58.4 % and 58.0 % for round-to-nearest (McNemar p = 0.005 and 0.02), with
        # 0.55x and 0.57x the KL (benchmarks/quant_table.py). RTN stays, by name, for builds that must be quick (no
        # calibration) or models with random weights.
        _int4("int4", "int4-gptq", 32, "Default 4-bit: AWQ scales (searched on image+prompt pairs, folded into the "
              "norms and up projections), then GPTQ blocks of 32 for the decoder linears and the shared "
              "embedding/lm_head table (int8 compute, accuracy_level 4); dynamic int8 vision encoder; fp32 "
              "projector. Calibrated: slower to build than int4-rtn-b32.", awq=True),
        # blocks of 128: a quarter of the scales to read and pack, so the quicker 4-bit where the GEMMs are bound by
        # them (benchmarks/perf_targets.py), for some agreement (benchmarks/recipes/int4-awq-gptq-b128-table.json
        # is this recipe in the quantization table)
        _int4("int4-b128", "int4-gptq", 128, "Faster 4-bit: as int4 (AWQ, then GPTQ for the decoder linears and the "
              "table), in blocks of 128: smaller and quicker to decode and prefill, slightly less accurate.",
              awq=True),
        _int4("int4-rtn-b32", "int4", 32, "int4 round-to-nearest, block 32: no calibration, the quickest 4-bit "
              "build (for random-weight presets and speed work)."),
        _int4("int4-rtn-b64", "int4", 64, "int4 round-to-nearest, block 64."),
        _int4("int4-rtn-b128", "int4", 128, "int4 round-to-nearest, block 128."),
        _int4("int4-gptq", "int4-gptq", 32, "int4 GPTQ (block 32, act-order with static groups) for decoder "
              "linears and the tied embedding/lm_head table, calibrated on image+prompt pairs; int8 vision."),
        _int4("int4-awq", "int4", 32, "int4 RTN blocks of 32 after AWQ scales (searched on image+prompt pairs, "
              "folded into the norms and up projections) for decoder linears; int4 RTN table; int8 vision.", awq=True),
        replace(_int4("auto", "int4-gptq", 32, "", awq=True), vision_encoder=_p("int4", **_INT4_Q),
                description="int4 (AWQ + GPTQ) with a 4-bit vision encoder to start from, then 8 bits for the units "
                            "(decoder linears, token table, vision encoder) that buy the most agreement per "
                            f"byte until {AUTO_TARGET:.0%} of the calibration samples' greedy answers (or "
                            "--min-agreement) match float32", calibration_samples=64, target_agreement=AUTO_TARGET),
    ]
}


def _precision(d: dict | str, where: str) -> Precision:
    if isinstance(d, str):
        return Precision(kind=d)
    if not isinstance(d, dict):
        raise UserError(f"{where}: a precision is a name or an object, not {type(d).__name__}")
    unknown = set(d) - {"kind", "block_size", "symmetric", "accuracy_level"}
    if unknown:
        raise UserError(f"{where}: unknown precision fields {sorted(unknown)}")
    types = {"kind": str, "block_size": int, "symmetric": bool, "accuracy_level": int}
    for key, value in d.items():
        if not isinstance(value, types[key]) or (types[key] is int and isinstance(value, bool)):
            raise UserError(f"{where}: {key} must be {types[key].__name__}, not {value!r}")
    return Precision(**d)


def recipe_from_dict(d: dict, name: str) -> Recipe:
    """A recipe file's content (untrusted): every field checked, each mistake one line naming it."""
    if not isinstance(d, dict):
        raise UserError(f"recipe {name}: a recipe file holds a JSON object, not {type(d).__name__}")
    base = RECIPES[d["base"]] if d.get("base") in RECIPES else RECIPES["fp32"]
    if d.get("base") and d["base"] not in RECIPES:
        raise UserError(f"recipe {name}: unknown base recipe {d['base']!r}")
    unknown = set(d) - {"base", "name", "description", "overrides", "calibration_samples", "awq", "target_agreement",
                        *COMPONENTS}
    if unknown:
        raise UserError(f"recipe {name}: unknown fields {sorted(unknown)}")
    changes = {c: _precision(d[c], f"recipe {name}: {c}") for c in COMPONENTS if c in d}
    raw_overrides = d.get("overrides", [])
    if not isinstance(raw_overrides, list):
        raise UserError(f"recipe {name}: overrides must be a list of {{\"match\", \"precision\"}} objects")
    overrides = []
    for i, o in enumerate(raw_overrides):
        if not isinstance(o, dict) or not isinstance(o.get("match"), str) or "precision" not in o:
            raise UserError(f"recipe {name}: override {i} needs a \"match\" pattern and a \"precision\"")
        overrides.append(Override(o["match"], _precision(o["precision"], f"recipe {name}: override {i}")))
    samples = d.get("calibration_samples", base.calibration_samples)
    if not isinstance(samples, int) or isinstance(samples, bool) or not 1 <= samples <= 100_000:
        raise UserError(f"recipe {name}: calibration_samples must be an integer from 1 to 100000")
    awq = d.get("awq", base.awq)
    if not isinstance(awq, bool):
        raise UserError(f"recipe {name}: awq must be true or false")
    target = d.get("target_agreement", base.target_agreement)
    if target is not None and (not isinstance(target, (int, float)) or isinstance(target, bool)
                               or not 0 < target <= 1):
        raise UserError(f"recipe {name}: target_agreement must be a number in (0, 1], or null")
    for field in ("name", "description"):
        if field in d and not isinstance(d[field], str):
            raise UserError(f"recipe {name}: {field} must be a string")
    return replace(base, name=d.get("name", name), description=d.get("description", base.description),
                   overrides=tuple(overrides) or base.overrides, calibration_samples=samples, awq=awq,
                   target_agreement=None if target is None else float(target), **changes)


def resolve_recipe(spec: str) -> Recipe:
    """A named recipe, or a path to a JSON recipe file."""
    if spec in RECIPES:
        return RECIPES[spec]
    path = Path(spec)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise UserError(f"recipe file not found: {path}")
        if path.stat().st_size > 1 << 20:
            raise UserError(f"recipe file {path}: over 1 MiB, not a recipe")
        try:
            data = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise UserError(f"recipe file {path}: invalid JSON ({exc})") from None
        return recipe_from_dict(data, path.stem)
    raise UserError(f"unknown recipe {spec!r}: use one of {', '.join(RECIPES)} or a recipe .json file")
