"""What a build does: its options, and the one list of steps they select.

Plan.of resolves the options once, in the build process: the source, its geometry, the recipe, and every
decision the steps depend on. The PyTorch child gets the plan itself (to_json / from_json), not the options
to plan again.

STEPS is the whole build in order. Each step names the process it runs in ("torch": the PyTorch child,
torch_steps.py; "bundle": the build process, bundle_steps.py) and the condition under which it runs. Both
processes execute their share through `execute`, which looks each step's work up by name, and the progress
bar's total is the length of the same list: a step cannot be run without being counted, or counted without
being run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from pgexport_runtime.errors import UserError
from pgexport_runtime.geometry import Geometry
from pgexport_runtime.kv_layout import LAYOUTS
from pgexport_runtime.manifest import KV_LAYOUTS, MAX_PREFILL_GRAPHS, KvCache

from pgexport.estimate import Estimate, estimate
from pgexport.source.sources import Source
from pgexport.verify.parity import Tolerance

TORCH, BUNDLE = "torch", "bundle"


@dataclass(frozen=True)
class BuildOptions:
    model: str | None = None
    adapter: Path | None = None  # a peft adapter directory, merged into the model before export
    out: Path = Path("bundle")
    force: bool = False
    parity_tokens: int = 16
    tolerance: Tolerance = Tolerance()
    skip_parity: bool = False
    mask_decoder: Path | None = None  # big_vision mask-decoder weights; default: the checkpoint directory's own
    max_new_tokens: int = 64
    quant: str = "fp32"  # recipe name or recipe .json file
    min_agreement: float | None = None  # fail the build if the gate's sequence agreement is lower
    gate_samples: int = 64  # enough that a 5-point difference shows beyond the 95 % interval
    gate_tokens: int = 32
    calibration: Path | None = None  # JSONL of {"image", "prompt"} for GPTQ; default: generated samples
    max_memory: float | None = None  # GB: refuse a build whose estimated peak memory is larger (default: this
    # machine's physical memory)
    stream: bool | None = None  # one decoder layer in memory at a time; None: when the whole model does not fit
    kv_cache: str = "concat"  # the decoder's KV-cache layout: "concat" (every runtime), "shared" (in place) or
    # "static" (every shape fixed: a cache of max_len tokens, a prefill graph per prefix length)
    prefill_lengths: tuple[int, ...] | None = None  # static: default image tokens + 16 and + 64
    max_len: int | None = None  # static: default the longest prefill + max_new_tokens
    int8_prefill: bool = False  # also write decoder_int8: the quantized decoder with int8 products, for prefills

    def to_json(self) -> dict:
        """For the child process: paths as strings, the tolerance as its fields."""
        d = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}

    @classmethod
    def from_json(cls, d: dict) -> "BuildOptions":
        kw = {k: Path(v) if k in _PATHS and v is not None else v for k, v in d.items()}
        kw["tolerance"] = Tolerance(**d["tolerance"])
        if kw.get("prefill_lengths") is not None:
            kw["prefill_lengths"] = tuple(kw["prefill_lengths"])
        return cls(**kw)


_PATHS = ("adapter", "out", "mask_decoder", "calibration")


@dataclass(frozen=True)
class Plan:
    """The decisions a build's options and source imply; the conditions of STEPS read only these."""

    options: BuildOptions
    source: Source  # the resolved --model and --adapter
    geometry: Geometry
    recipe: object  # quant.recipes.Recipe, checked against the geometry
    kv: KvCache  # the manifest's kv_cache section: the layout, and a fixed-shape layout's lengths
    parity: bool  # PyTorch reference, then the parity check of the float32 graphs
    gate: bool  # quantized, with held-out samples: gate reference, then the accuracy gate
    adapter: bool  # a peft adapter to merge after the references
    calibrate: bool  # GPTQ (or a GPTQ checkpoint's own integers)
    quantize: bool  # the recipe changes the float32 graphs
    mask_weights: Path | None  # mask-decoder (VQ-VAE) weights: --mask-decoder or the checkpoint's own
    stream: bool = False  # the PyTorch phase holds one decoder layer at a time; parity is checked per layer
    awq: bool = False  # AWQ scales searched and folded into the float32 decoder before export
    auto: bool = False  # `--quant auto`: the recipe's 8-bit units chosen to its target_agreement before export
    int8_prefill: bool = False  # --int8-prefill: decoder_int8 derived from the quantized decoder
    estimate: Estimate | None = None  # memory, disk and time the build will need (estimate.py; not sent to the child)
    stream_reason: str = ""  # why the build streams or holds the whole model (--dry-run says it)

    _FLAGS = ("parity", "gate", "adapter", "calibrate", "awq", "auto", "quantize", "stream", "stream_reason",
              "int8_prefill")

    def to_json(self) -> dict:
        """For the PyTorch child: everything but the estimate, which only the build process reads."""
        return {"options": self.options.to_json(), "source": self.source.to_json(),
                "geometry": self.geometry.to_dict(), "recipe": self.recipe.to_dict(), "kv": self.kv.to_dict(),
                "mask_weights": None if self.mask_weights is None else str(self.mask_weights),
                **{k: getattr(self, k) for k in self._FLAGS}}

    @classmethod
    def from_json(cls, d: dict) -> "Plan":
        from pgexport.quant.recipes import recipe_from_dict

        g = Geometry.from_dict(d["geometry"])
        return cls(BuildOptions.from_json(d["options"]), Source.from_json(d["source"]), g,
                   recipe_from_dict(d["recipe"], d["recipe"]["name"]), KvCache.from_dict(d["kv"], g),
                   mask_weights=None if d["mask_weights"] is None else Path(d["mask_weights"]),
                   **{k: d[k] for k in cls._FLAGS})

    @classmethod
    def of(cls, opts: BuildOptions, check_memory: bool = True) -> "Plan":
        """Resolve the source and recipe, and (check_memory) hold the estimate against the memory budget: user
        errors surface here, before any step starts."""
        from pgexport.source import checkpoint, sources
        from pgexport.export import mask_decoder
        from pgexport.quant.recipes import resolve_recipe

        source = sources.resolve(opts.model, opts.adapter)
        g = sources.load_geometry(source)
        checkpoint.check_image_processor(source.directory, g.image_size)
        recipe = resolve_recipe(opts.quant).verify(g.tie_word_embeddings)
        auto = recipe.target_agreement is not None
        if auto and opts.min_agreement is not None:  # the target the units are chosen for, and the gate's bar
            recipe = replace(recipe, target_agreement=opts.min_agreement)
        if opts.calibration is not None and not recipe.needs_calibration:
            raise UserError(f"--calibration is only used by recipes that calibrate (GPTQ, AWQ or auto); "
                            f"{recipe.name} does not")
        if opts.calibration is not None:  # read now, as GPTQ will (a bad line is found before the PyTorch phase)
            from pgexport.verify import image_prompts

            image_prompts.read(opts.calibration, None, recipe.calibration_samples, "calibration")
        if opts.kv_cache not in KV_LAYOUTS:
            raise UserError(f"unknown --kv-cache {opts.kv_cache!r} (use one of {', '.join(KV_LAYOUTS)})")
        quantize = not recipe.is_identity
        if opts.int8_prefill:
            _check_int8_prefill(recipe, opts.kv_cache)
        mask = mask_decoder.find_weights(source.directory if source.kind != "preset" else None, opts.mask_decoder)
        kv = kv_section(opts, g)
        whole = estimate(g, recipe, int8_prefill=opts.int8_prefill)
        streamed = estimate(g, recipe, stream=True, table_itemsize=_table_itemsize(source),
                            gate_tokens=opts.gate_tokens, gate_samples=opts.gate_samples,
                            int8_prefill=opts.int8_prefill)
        budget = opts.max_memory * 1e9 if opts.max_memory is not None else machine_memory()
        stream = opts.stream if opts.stream is not None else whole.peak_rss_bytes > budget
        limit = "--max-memory" if opts.max_memory is not None else "this machine's memory"
        reason = (("--stream" if stream else "--no-stream") + " given" if opts.stream is not None else
                  f"a whole-model build needs about {whole.peak_rss_bytes / 1e9:.1f} GB; "
                  f"{limit} is {budget / 1e9:.1f} GB")
        if recipe.awq and source.kind != "preset" and sources.gptq_settings(source) is not None:
            raise UserError(f"recipe {recipe.name} searches AWQ scales on float32 weights; a GPTQ checkpoint's "
                            "weights are already integers (use --quant int4-gptq to keep them)")
        if auto and source.kind != "preset" and sources.gptq_settings(source) is not None:
            raise UserError(f"recipe {recipe.name} chooses between 4- and 8-bit forms of float32 weights; a GPTQ "
                            "checkpoint's weights are already integers (use --quant int4-gptq to keep them)")
        if stream:
            _check_streamable(source, opts.stream is None)
        need = streamed if stream else whole
        if check_memory and need.peak_rss_bytes > budget:
            over = (f"--max-memory {opts.max_memory:g} GB" if opts.max_memory is not None else
                    f"this machine's {budget / 1e9:.1f} GB (--max-memory raises the limit)")
            how = ("streaming one decoder layer at a time" if stream else
                   f"holding the float32 model; --stream needs about {streamed.peak_rss_bytes / 1e9:.1f} GB")
            raise UserError(f"this build needs about {need.peak_rss_bytes / 1e9:.1f} GB of memory ({how}; "
                            f"estimated for {need.total_parameters / 1e9:.2f} B parameters, see --dry-run), "
                            f"more than {over}")
        return cls(opts, source, g, recipe, kv, parity=not opts.skip_parity, gate=quantize and opts.gate_samples > 0,
                   adapter=source.adapter is not None, calibrate=recipe.uses_gptq, awq=recipe.awq, auto=auto, quantize=quantize,
                   mask_weights=mask, stream=stream, estimate=need, stream_reason=reason,
                   int8_prefill=opts.int8_prefill)


def kv_section(opts: BuildOptions, g) -> KvCache:
    """The manifest's KV-cache section: the layout, and a fixed-shape layout's lengths, checked (the other
    layouts take neither option)."""
    layout = LAYOUTS[opts.kv_cache]
    if not layout.fixed_shape:
        if opts.prefill_lengths is not None or opts.max_len is not None:
            raise UserError("--prefill-lengths and --max-len fix the shapes of --kv-cache static; "
                            f"--kv-cache {opts.kv_cache} takes any length")
        return KvCache(layout)
    shortest = g.num_image_tokens + 2  # the image, <bos> and "\n"
    lengths = opts.prefill_lengths or (g.num_image_tokens + 16, g.num_image_tokens + 64)
    if len(lengths) > MAX_PREFILL_GRAPHS or list(lengths) != sorted(set(lengths)) or lengths[0] < shortest:
        raise UserError(f"--prefill-lengths must be at most {MAX_PREFILL_GRAPHS} increasing lengths of at least "
                        f"{shortest} tokens ({g.num_image_tokens} image tokens, <bos> and the newline)")
    max_len = opts.max_len if opts.max_len is not None else lengths[-1] + opts.max_new_tokens
    if not lengths[-1] < max_len <= g.max_position_embeddings:
        raise UserError(f"--max-len must be longer than the longest prefill ({lengths[-1]}) and at most the "
                        f"model's {g.max_position_embeddings} positions")
    return KvCache(layout, max_len=max_len, prefill_lengths=tuple(lengths))


def _check_int8_prefill(recipe, kv_cache: str) -> None:
    """--int8-prefill rewrites the decoder's 4- and 8-bit block products (quant/int8_prefill.py): a recipe must
    make them, and the layout must take prefills of any length."""
    kinds = {recipe.decoder_linear.kind} | {o.precision.kind for o in recipe.overrides}
    if not kinds & {"int4", "int4-gptq", "int8-wo"}:
        raise UserError(f"--int8-prefill makes int8 products from a decoder's 4- or 8-bit block products; recipe "
                        f"{recipe.name} has none in its decoder linears ({recipe.decoder_linear.label()}; "
                        "int8-rows already prefills in int8)")
    if LAYOUTS[kv_cache].fixed_shape:
        raise UserError(f"--int8-prefill writes a decoder that takes any length; --kv-cache {kv_cache} has its own "
                        "fixed-shape prefill graphs")


def _table_itemsize(source) -> int:
    """Bytes a value of the embedding table takes as the source stores it, which a streamed build keeps: 2 for
    bf16 or fp16 (presets are written in bf16), else 4. Read from the safetensors headers only."""
    from pgexport.source import checkpoint

    if source.kind == "preset":
        return 2
    for path in checkpoint.check_directory(source.directory).weights:
        for key, (dtype, *_) in checkpoint.tensor_index(path).items():
            if key.endswith("embed_tokens.weight"):
                return 2 if dtype in ("BF16", "F16") else 4
    return 4


def _check_streamable(source, automatic: bool) -> None:
    """What a streamed build does not do yet: a one-line refusal naming it."""
    from pgexport.source import sources

    saved = source.adapter.config.get("modules_to_save") if source.adapter is not None else None
    why = ("an adapter with modules_to_save (merge it into the checkpoint with peft first)" if saved else
           "a GPTQ checkpoint" if source.kind != "preset" and sources.gptq_settings(source) is not None else None)
    if why is not None:
        lead = "the whole model does not fit in memory, so the build must stream, but" if automatic else "--stream"
        raise UserError(f"{lead} does not yet support {why}")


def machine_memory() -> float:
    """Physical memory in bytes (the default --max-memory)."""
    import os

    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: no default budget
        return float("inf")


@dataclass(frozen=True)
class Step:
    name: str
    process: str  # TORCH or BUNDLE
    when: Callable[[Plan], bool] = lambda plan: True


STEPS = (
    Step("load model", TORCH),
    Step("PyTorch reference", TORCH, lambda p: p.parity),
    Step("gate reference", TORCH, lambda p: p.gate),
    Step("merge adapter", TORCH, lambda p: p.adapter),
    Step("AWQ", TORCH, lambda p: p.awq),
    Step("GPTQ", TORCH, lambda p: p.calibrate),
    Step("choose precision", TORCH, lambda p: p.auto),
    Step("export vision encoder", TORCH),
    Step("export projector", TORCH),
    Step("export decoder", TORCH),
    Step("layer parity", TORCH, lambda p: p.parity and p.stream),
    Step("export mask decoder", BUNDLE, lambda p: p.mask_weights is not None),
    Step("write manifest", BUNDLE),
    Step("parity check", BUNDLE, lambda p: p.parity),
    Step("quantize vision encoder", BUNDLE, lambda p: p.quantize),
    Step("quantize projector", BUNDLE, lambda p: p.quantize),
    Step("quantize decoder", BUNDLE, lambda p: p.quantize and not p.stream),  # streamed: as it is exported
    Step("rewrite manifest", BUNDLE, lambda p: p.quantize),
    Step("int8 prefill graph", BUNDLE, lambda p: p.int8_prefill),
    Step("fix shapes", BUNDLE, lambda p: p.kv.layout.fixed_shape),
    Step("accuracy gate", BUNDLE, lambda p: p.gate),
)


def steps(plan: Plan, process: str | None = None) -> list[Step]:
    """The steps this plan runs, in order (all of them, or one process's)."""
    return [s for s in STEPS if s.when(plan) and process in (None, s.process)]


def execute(plan: Plan, process: str, work: dict[str, Callable[[], None]], progress: Callable[[str], None]) -> None:
    """Run one process's steps in order: progress(name), then its work, then free memory back to the OS."""
    names = {s.name for s in STEPS if s.process == process}
    if set(work) != names:  # a programming error: every step of the process has exactly one piece of work
        raise AssertionError(f"{process} steps without work: {sorted(names - set(work))}; "
                             f"work without a step: {sorted(set(work) - names)}")
    from pgexport.memory import trim

    for s in steps(plan, process):
        progress(s.name)
        work[s.name]()
        trim()
