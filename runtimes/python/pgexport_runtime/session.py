"""onnxruntime sessions for a bundle's graphs: providers, threads, optimisation level."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from pgexport_runtime import limits
from pgexport_runtime.cpu import int8_matrix_units, int8_weights_saturate
from pgexport_runtime.errors import BundleError, UserError
from pgexport_runtime.out_of_memory import is_out_of_memory, out_of_memory

PREFILL_CHOICES = ("auto", "int8", "decoder")
INT8_PREFILL_GRAPH = "decoder_int8"  # the optional graph SessionConfig.prefill chooses

_OPT = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class SessionConfig:
    """How to run the graphs. device "cuda" uses onnxruntime-gpu with the KV cache on the device."""

    device: str = "cpu"  # "cpu" or "cuda"
    device_id: int = 0
    intra_op_threads: int = 0  # 0 = onnxruntime's default (one per physical core)
    inter_op_threads: int = 0
    optimization: str = "all"
    # Prepacking copies MatMul weights into kernel-friendly heap buffers at load: faster, but a second copy
    # of every weight. Off, onnxruntime serves external-data weights from the mmapped file (page cache).
    prepack: bool = True
    # While each graph loads and after, give back the resident pages of its mmapped weight files that
    # prepacking has copied (mapped.py): about 330 MB less RSS at PaliGemma-3B int4, same outputs. Linux only.
    release_mapped_weights: bool = True
    # onnxruntime's CPU memory arena keeps every extent it has grown to, and grew on each generation with new
    # shapes: PaliGemma-3B-896 int4 peaked at 14.9 GB after two generations with it, 7.5 GB after three
    # without (benchmarks/memory_stages.py). Off, large buffers go back to the system after each call.
    mem_arena: bool = False
    # After the vision encoder and after the prefill, give the heap's free pages back to the system (glibc's
    # malloc_trim; nothing elsewhere, heap.py): their large buffers otherwise stay resident, and the next
    # generation's peak lands on top of them.
    trim_heap: bool = True
    # From the first PaliGemma on, blocks of this many bytes or more get their own mapping from glibc, returned to
    # the system when freed (heap.py; process-wide; 0 leaves glibc's own threshold, nothing happens elsewhere than
    # glibc). Loading a graph frees its weights' staging buffers between packed weights that stay; in the heap
    # those holes were the load's peak: PaliGemma-3B-224 int4 peaked at 2.21 GB with glibc's threshold, 2.12 GB
    # with 1 MiB (docs/memory.md).
    mmap_threshold: int = 1 << 20
    # onnxruntime's KleidiAI kernels (ARM64 CPUs with int8 dot product or i8mm; nothing changes elsewhere) for the
    # 4-bit matrix products: off, ARM answers as x86 does, on which the build's accuracy gate ran. On the demo
    # model's int4 bundle, emulated, they changed 10 and 6 of 60 held-out answers against x86 (qemu's cortex-a76
    # and max CPU models), onnxruntime's own ARM kernels 2 and 3 (docs/measurements/arm64_parity.md). On for their
    # speed, once the answers are measured on that CPU.
    kleidiai: bool = False
    # onnxruntime's per-node profiler: a JSON trace per graph, PREFIX_<graph>_<time>.json, written when the
    # session's end_profiling() is called (benchmarks/profile_ops.py reads them). Off by default.
    profile_prefix: str = ""
    # Which graph runs the prefill of a bundle that carries an int8 one (`pgexport build --int8-prefill`):
    # "auto" takes decoder_int8 where the CPU has int8 matrix units (AMX: its int8 GEMM is several times the 4-bit
    # products' rate there) and the decoder elsewhere; "int8" always takes it (an error if the bundle has none);
    # "decoder" never loads it. Decode steps always run on the decoder.
    prefill: str = "auto"

    def __post_init__(self):
        # before any graph loads: onnxruntime starts every thread it is given (--threads 100000 hung)
        limits.check_threads(self.intra_op_threads, "intra_op_threads")
        limits.check_threads(self.inter_op_threads, "inter_op_threads")
        limits.check_mmap_threshold(self.mmap_threshold)
        if self.prefill not in PREFILL_CHOICES:
            raise UserError(f"unknown prefill {self.prefill!r} (use one of {', '.join(PREFILL_CHOICES)})")

    def int8_prefill(self, available: bool) -> bool:
        """Whether prefills run on the bundle's decoder_int8 graph (`available`: the bundle has one)."""
        if self.prefill == "int8" and not available:
            raise UserError("prefill 'int8' needs a bundle built with --int8-prefill (this one has no decoder_int8 "
                            "graph); use prefill 'auto' or 'decoder'")
        if self.prefill == "auto":
            return available and self.device == "cpu" and int8_matrix_units()
        return self.prefill == "int8"

    @property
    def providers(self) -> list:
        if self.device == "cuda":
            return [("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    @property
    def ort_device(self) -> str:
        return "cuda" if self.device == "cuda" else "cpu"


def create_session(path: Path, cfg: SessionConfig) -> ort.InferenceSession:
    if cfg.device not in ("cpu", "cuda"):
        raise UserError(f"unknown device {cfg.device!r} (use cpu or cuda)")
    if cfg.optimization not in _OPT:
        raise UserError(f"unknown optimization level {cfg.optimization!r} (use one of {', '.join(_OPT)})")
    if cfg.device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise UserError("device cuda needs onnxruntime-gpu (from a pgexport checkout: "
                        "pip install './runtimes/python[gpu]') and a CUDA GPU")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cfg.intra_op_threads
    opts.inter_op_num_threads = cfg.inter_op_threads
    opts.graph_optimization_level = _OPT[cfg.optimization]
    opts.log_severity_level = 4  # fatal only: its errors come back as exceptions, which say them in one line
    opts.enable_cpu_mem_arena = cfg.mem_arena
    if not cfg.prepack:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    # Dynamic int8 graphs hold int8 weights, which onnxruntime multiplies with the int8 dot-product instructions
    # (VNNI; ARM64) exactly. x86 without VNNI sums pairs of those products in int16 and saturates: there this makes
    # onnxruntime turn the weights into uint8 at load, for the same integers more slowly. Only there: onnxruntime
    # would convert them on an AVX-512 VNNI CPU too (its test is coarser), and lose the VNNI speed.
    if int8_weights_saturate():
        opts.add_session_config_entry("session.x64quantprecision", "1")
    if not cfg.kleidiai:
        opts.add_session_config_entry("mlas.disable_kleidiai", "1")
    if cfg.profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = f"{cfg.profile_prefix}_{Path(path).stem}"
    try:
        # no fallback on the CPU: onnxruntime would print a banner and retry the very same provider
        return ort.InferenceSession(str(path), sess_options=opts, providers=cfg.providers,
                                    enable_fallback=int(cfg.device != "cpu"))
    except Exception as exc:  # onnxruntime's own errors (Fail, InvalidGraph, NoSuchFile, ...): a broken bundle
        if is_out_of_memory(exc):  # a graph that does not fit is not a broken one
            raise out_of_memory(f"loading {Path(path).name}", exc) from None
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{Path(path).name}: onnxruntime cannot load this graph ({first[:300]})") from None


def check_io(session: ort.InferenceSession, path: Path, expected: dict[str, dict[int, int]], entry=None) -> None:
    """The names the runtime will feed or bind (io_names.expected) must be the ones the manifest's graph entry
    lists and the graph's own, with the sizes it derives from the manifest. A manifest whose geometry
    disagrees with its sha256-checked graphs is then a bundle error at load, not an onnxruntime error in
    the middle of a generation."""
    listed = set(entry.inputs) | set(entry.outputs) if entry is not None else set(expected)
    if listed != set(expected):
        odd = sorted(listed ^ set(expected))
        raise BundleError(f"{Path(path).name}: the manifest lists inputs/outputs this runtime does not use or "
                          f"lacks some it does ({', '.join(odd[:4])})")
    shapes = {a.name: a.shape for a in (*session.get_inputs(), *session.get_outputs())}
    for name, axes in expected.items():
        if name not in shapes:
            raise BundleError(f"{Path(path).name}: the graph has no {name}; graph and manifest do not belong together")
        shape = shapes[name]
        for axis, size in axes.items():
            have = shape[axis] if axis < len(shape) else None
            if isinstance(have, int) and have != size:
                raise BundleError(f"{Path(path).name}: {name} has size {have} on axis {axis} where the manifest "
                                  f"says {size}; graph and manifest do not belong together")


def run_rows(session: ort.InferenceSession, output: str, feeds: dict, one_row: bool = False):
    """session.run for one output; one_row: a batch row at a time (a static bundle's graphs take batch 1)."""
    batch = len(next(iter(feeds.values())))
    if not one_row or batch <= 1:
        return session.run([output], feeds)[0]
    import numpy as np

    return np.concatenate([session.run([output], {k: v[i:i + 1] for k, v in feeds.items()})[0] for i in range(batch)])


def check_kv_layout(session: ort.InferenceSession, path: Path, layout, past: str, present: str) -> None:
    """The manifest's KV-cache layout must be the decoder graph's: a "shared" graph returns a present as long as
    its past (the one buffer, written in place), a "concat" graph one longer by this call's tokens. Bound the
    wrong way, onnxruntime would fail in the middle of a generation."""
    shapes = {a.name: a.shape for a in (*session.get_inputs(), *session.get_outputs())}
    in_place = shapes[past][2] == shapes[present][2]
    if in_place != layout.in_place:
        does = "writes its KV cache in place" if in_place else "returns past + new tokens as its present"
        raise BundleError(f"{Path(path).name} {does}, but the manifest says KV-cache layout {layout.name!r}; graph and "
                          "manifest do not belong together")


def check_static(graphs, paths: dict, layout, building: bool = False) -> None:
    """The shapes a KV-cache layout promises must be the decoder graphs' own, read from the loaded sessions.

    A fixed-shape layout: the decode graph takes one token, every prefill graph the length the manifest lists
    it under, and each holds a cache of the manifest's max_len; a prefill length without its graph is refused.
    Any other layout: the decoder takes any number of tokens. Otherwise onnxruntime would fail in the middle of
    a generation, or, for a dynamic bundle relabelled static, run on a cache whose rows it never wrote. While
    a static bundle is being built (`building`: a partial manifest) its graphs may still take any shape: they
    are fixed by the build's last steps. `paths`: graph name -> its file, for the messages."""
    from pgexport_runtime import io_names

    def shapes(session) -> dict:
        return {a.name: a.shape for a in (*session.get_inputs(), *session.get_outputs())}

    def tokens(n) -> str:
        return f"{n} token" + ("" if n == 1 else "s")

    def check(dims: dict, length: int, file: str) -> None:
        takes = dims[io_names.INPUT_IDS][1]
        if takes != length:
            role = "the decode graph, which takes one" if length == 1 else f"the prefill graph for {length}"
            raise BundleError(f"{file} takes {tokens(takes)} at a time, but the manifest lists it as {role}; graphs "
                              "and manifest do not belong together")
        for tensor, axis in ((io_names.ATTENTION_MASK, 1), (io_names.past_key(0), 2)):
            holds = dims[tensor][axis]
            if holds != graphs.max_len:
                raise BundleError(f"{file} holds a KV cache of {tokens(holds)}, but the manifest says "
                                  f"kv_cache.max_len {graphs.max_len}; graphs and manifest do not belong together")

    decoder = shapes(graphs.decoder)
    seq = decoder[io_names.INPUT_IDS][1]
    name = Path(paths["decoder"]).name
    if not layout.fixed_shape:
        if isinstance(seq, int):
            raise BundleError(f"{name} has fixed shapes ({tokens(seq)} at a time), but the manifest says KV-cache "
                              f"layout {layout.name!r}, whose graphs take any length; graph and manifest do not "
                              "belong together")
        return
    if not isinstance(seq, int):
        if building and not graphs.prefill:
            return
        raise BundleError(f"{name} takes any number of tokens, but the manifest says KV-cache layout "
                          f"{layout.name!r}, whose graphs have fixed shapes; graph and manifest do not belong together")
    check(decoder, 1, name)
    missing = [n for n in graphs.prefill_lengths if n not in graphs.prefill]
    if missing:
        raise BundleError(f"{name} takes one token at a time, and the manifest lists no prefill graph "
                          f"for {missing[0]} tokens; graphs and manifest do not belong together")
    for n in graphs.prefill_lengths:
        check(shapes(graphs.prefill[n]), n, Path(paths[f"prefill:{n}"]).name)
