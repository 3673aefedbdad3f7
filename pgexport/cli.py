"""The pgexport command line: a thin layer over pgexport.build.bundle_steps and pgexport_runtime."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from pgexport.build.plan import BuildOptions
from pgexport.quant.recipes import RECIPES
from pgexport_runtime import describe, limits
from pgexport_runtime.errors import UserError
from pgexport_runtime.manifest import KV_LAYOUTS
from pgexport_runtime.terminal import printable
from pgexport_runtime.out_of_memory import is_out_of_memory, out_of_memory
from pgexport_runtime.session import INT8_PREFILL_GRAPH

DEFAULTS = BuildOptions()  # the build's defaults, declared once in BuildOptions


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="pgexport")
def cli():
    """Export PaliGemma to ONNX edge bundles and prove they are still the same model.

    \b
    Typical use:
      pgexport build --out bundle                 # the embedded demo model
      pgexport run bundle --image cat.png --prompt "caption en"
      pgexport inspect bundle

    --model takes a preset (see `pgexport models`), a local Hugging Face checkpoint directory, or a hub id.
    """
    # SIGTERM (kill, a container stop) cleans up as Ctrl-C does: temp directories removed, the child stopped
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@cli.command()
@click.option("--model", "model", metavar="SRC", default=None,
              help="Preset name, checkpoint directory or hub id. Default: the embedded demo model.")
@click.option("--adapter", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="A peft adapter (LoRA, ...) as peft's save_pretrained writes it: merged into --model by peft "
                   "before export; parity and the accuracy gate compare with the peft model. An adapter "
                   "directory may also be given as --model when its config names a base found here.")
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULTS.out, show_default=True,
              help="Bundle directory to create.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out (only once the new one is complete).")
@click.option("--parity-tokens", type=click.IntRange(1, 512), default=DEFAULTS.parity_tokens, show_default=True,
              help="Greedy tokens compared with transformers at the end of the build.")
@click.option("--tolerance", type=click.FloatRange(0, 1), default=DEFAULTS.tolerance.relative, show_default=True,
              help="Largest relative logit/feature difference allowed per graph.")
@click.option("--skip-parity", is_flag=True, help="Do not compare with PyTorch (the manifest records that).")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=DEFAULTS.max_new_tokens, show_default=True,
              help="Default generation length stored in the bundle.")
@click.option("--mask-decoder", "mask_decoder", type=click.Path(path_type=Path), default=None, metavar="PATH",
              help="big_vision's segmentation mask-decoder weights (.npz or .safetensors), exported as "
                   "mask_decoder.onnx. Default: vqvae.safetensors / vae-oid.npz in the checkpoint directory.")
@click.option("--quant", "quant", default=DEFAULTS.quant, show_default=True, metavar="RECIPE",
              help=f"Quantization recipe: {', '.join(RECIPES)}, or a recipe .json file (`pgexport recipes` says "
                   "what each does per component). int4 calibrates (AWQ, then GPTQ, on image+prompt samples: "
                   "the most accurate 4-bit, and the slowest to build); int4-rtn-b32 is the same size with no "
                   "calibration.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=None,
              help="Fail the build if the quantized bundle's greedy sequences agree with PyTorch on fewer than "
                   "this fraction of held-out samples. With --quant auto, also the target the 8-bit units are "
                   "chosen for on the calibration samples (default 0.9 there, without failing the build).")
@click.option("--gate-samples", type=click.IntRange(0, 10_000), default=DEFAULTS.gate_samples, show_default=True,
              help="Held-out samples for the accuracy gate of quantized builds (0 = skip the gate).")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="JSONL of {\"image\": path, \"prompt\": text} for GPTQ, AWQ and auto (default: generated samples).")
@click.option("--max-memory", type=click.FloatRange(min=0.01), default=None, metavar="GB",
              help="Refuse, before anything starts, a build whose estimated peak memory is larger "
                   "(default: this machine's memory; see --dry-run for the estimate).")
@click.option("--stream/--no-stream", default=None,
              help="Hold one decoder layer in memory at a time: weights are read from the checkpoint's safetensors "
                   "as each layer is needed, parity is checked layer by layer, and the peak is about the vision "
                   "tower, the embedding table and one layer. Default: only when the whole model does not fit "
                   "in --max-memory. Works with --adapter (peft merges it module by module) and with the calibrated "
                   "recipes (AWQ, GPTQ and auto measure layer by layer); not yet with a GPTQ checkpoint.")
@click.option("--kv-cache", type=click.Choice(KV_LAYOUTS), default=DEFAULTS.kv_cache, show_default=True,
              help="How the decoder takes its KV cache. concat: a new present buffer each step (every runtime). "
                   "shared: one buffer per layer written in place by onnxruntime's GroupQueryAttention (no copy of "
                   "the past per token: the faster decode on native CPU kernels); onnxruntime >= 1.30, CPU only "
                   "(onnxruntime's CUDA kernel takes no attention bias), not yet on WebGPU. static: the same "
                   "in-place buffer of "
                   "a fixed length and no dynamic dimension in any graph (batch 1, a prefill graph per prefix "
                   "length, sharing the decoder's weights), for execution providers that want fixed shapes; the "
                   "Python runtime only.")
@click.option("--prefill-lengths", default=None, metavar="N,N,...",
              help="--kv-cache static: the prefix lengths (image tokens + <bos> + prompt + newline) to write a "
                   "prefill graph for; a prompt is padded up to the next. Default: image tokens + 16 and + 64.")
@click.option("--max-len", type=click.IntRange(2), default=None,
              help="--kv-cache static: the KV cache's fixed length, prefix and answer. Default: the longest "
                   "prefill length + --max-new-tokens; the runtime stops an answer when the cache is full.")
@click.option("--int8-prefill", is_flag=True,
              help="Also write decoder_int8: the quantized decoder with its 4- or 8-bit products as int8 GEMMs "
                   "(activations in int8 per row). The runtime runs prefills on it where the CPU has int8 "
                   "matrix units (Intel AMX: the first token several times sooner) and decode steps on the "
                   "decoder; elsewhere it is not read. About twice the decoder's size on disk, and in memory where "
                   "it is used; the accuracy gate measures both paths. Node runs it as Python does; browsers never "
                   "read it.")
@click.option("--dry-run", is_flag=True, help="Print the steps, memory, disk and time the build will need; build nothing.")
def build(model, adapter, out, force, parity_tokens, tolerance, skip_parity, max_new_tokens, mask_decoder, quant,
          min_agreement, gate_samples, calibration, max_memory, stream, kv_cache, prefill_lengths, max_len,
          int8_prefill, dry_run):
    """Export a checkpoint to a bundle: vision encoder, projector and decoder-with-past ONNX graphs, tokenizer
    and manifest, checked against PyTorch (features, logits and greedy tokens) before it is written.

    The bundle is built in a temporary directory next to --out and renamed into place only when every
    step, the parity check included, has passed.
    """
    from pgexport.build.bundle_steps import BuildOptions, GateError, ParityError, build as run_build, planned_steps
    from pgexport.build.writer import GraphFilesError
    from pgexport.build.plan import Plan, steps
    from pgexport.verify.parity import Tolerance

    opts = BuildOptions(model=model, adapter=adapter, out=out, force=force, parity_tokens=parity_tokens,
                        tolerance=Tolerance(relative=tolerance), skip_parity=skip_parity, max_new_tokens=max_new_tokens,
                        mask_decoder=mask_decoder, quant=quant, min_agreement=min_agreement,
                        gate_samples=gate_samples, calibration=calibration, max_memory=max_memory, stream=stream,
                        kv_cache=kv_cache, prefill_lengths=_lengths(prefill_lengths), max_len=max_len,
                        int8_prefill=int8_prefill)
    plan = Plan.of(opts, check_memory=not dry_run)  # dry run: the figures, whether or not they fit
    if dry_run:
        for line in plan.estimate.lines():
            click.echo(line)
        click.echo("mode        " + ("streamed, one decoder layer at a time" + (
            "; the decoder quantized as it is exported" if plan.quantize else "") if plan.stream else "whole model")
                   + f" ({plan.stream_reason})")
        click.echo("steps       " + ", ".join(s.name for s in steps(plan)))
        return
    bars: list = []  # created at the first step, so that an early user error prints no empty bar
    step_bar = _step_bar(bars, planned_steps(plan))
    step = ["starting"]  # named when memory runs out

    def progress(name: str) -> None:
        step[0] = name
        step_bar(name)

    try:
        path = run_build(plan, progress, lambda text: bars and bars[0].set_postfix_str(text))
        if bars:
            bars[0].update(1)
    except (ParityError, GateError, GraphFilesError) as exc:
        raise UserError(f"{exc}; nothing was written") from None
    except UserError:
        raise
    except Exception as exc:  # onnxruntime's and numpy's words for it, in the build process: one line
        if not is_out_of_memory(exc):
            raise
        raise out_of_memory(f"building (step {step[0]!r})", exc, plan.estimate and plan.estimate.peak_rss_bytes,
                            "nothing was written; free memory, or use a machine with more") from None
    finally:
        for bar in bars:
            bar.close()
    manifest = json.loads((path / "manifest.json").read_text())
    parity = manifest.get("parity")
    quant_info = manifest.get("quantization")
    verdict = "parity not checked" if parity is None else f"parity ok{describe.parity_label(quant_info)}: {describe.parity_line(parity)}"
    click.echo(printable(f"wrote {path} ({_size(path)}); {verdict}"))
    if quant_info:  # a recipe file's name and overrides are the user's text
        click.echo(printable(f"recipe {quant_info['recipe']['name']}: {describe.recipe_line(quant_info['summary'])}"))
        if quant_info.get("auto"):
            click.echo(printable(f"auto: {describe.auto_line(quant_info['auto'])}; "
                                 f"the recipe is {path / 'recipe.json'}"))
        if quant_info.get("accuracy"):
            reference = "PyTorch fp32" + (" (base + adapter, peft)" if opts.adapter or
                                          (manifest.get("source") or {}).get("adapter") else "")
            click.echo(f"accuracy vs {reference}: " + describe.accuracy_line(quant_info["accuracy"]))
            int8 = quant_info["accuracy"].get(INT8_PREFILL_GRAPH)
            if int8:
                click.echo(f"  with prefills on {INT8_PREFILL_GRAPH}: " + describe.accuracy_line(int8))


_RUNTIME_CLI = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


@cli.command(context_settings=_RUNTIME_CLI, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(args):
    """Answer one image with the torch-free runtime: one answer per --prompt (`pgexport run --help`)."""
    from pgexport_runtime.cli import main as runtime_main

    sys.exit(runtime_main(["run", *args], prog="pgexport"))


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory for the packaged bundle.")
@click.option("--format", "fmt", type=click.Choice(["ort", "onnx"]), default="ort", show_default=True,
              help="ort: onnxruntime's ORT format, what its mobile packages (Android, iOS, React Native) load; "
                   "onnx: stay ONNX (with --activations fp16).")
@click.option("--activations", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="fp16: float16 compute for GPU/NPU execution providers (inputs and outputs stay float32); "
                   "measured against the source bundle and recorded.")
@click.option("--force", is_flag=True, help="Replace --out if it already holds a bundle.")
@click.option("--no-mobile-check", is_flag=True, help="Skip onnxruntime's NNAPI/CoreML usability checker.")
@click.option("--samples", type=click.IntRange(1, 10_000), default=64, show_default=True,
              help="--activations fp16: held-out items the variant is compared with its source bundle on (the "
                   "demo model's evaluation split for a demo bundle, generated images otherwise).")
def package(bundle: Path, out: Path, fmt: str, activations: str, force: bool, no_mobile_check: bool, samples: int):
    """Package a built bundle for other targets. --format ort (mobile apps): every graph converted to ORT
    format by onnxruntime's own tool, plus required_operators.config for a reduced onnxruntime build.
    --activations fp16 (GPU/NPU providers): float16 compute, measured against the source bundle. Both record
    onnxruntime's mobile usability verdicts (how much NNAPI and CoreML could take); `pgexport inspect` shows them.

    An fp32 ORT package answers exactly as the bundle it came from; both runtimes load every variant unchanged.
    """
    from pgexport.package import package as run_package

    path = run_package(bundle, out, fmt, force=force, mobile_check=not no_mobile_check, activations=activations,
                       progress=lambda name: click.echo(f"  {name}", err=True), samples=samples)
    click.echo(printable(f"wrote {path} ({_size(path)})"))
    from pgexport_runtime.describe import package_lines
    from pgexport_runtime.manifest import load_manifest

    for line in package_lines(load_manifest(path).record.package):
        click.echo(printable(line))


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address or name to listen on (the default serves this machine only; beyond loopback, \"\" "
                   "and 0.0.0.0 included, a warning says that other machines can load the page and the bundle).")
def serve(bundle: Path, port: int, host: str):
    """Serve the JavaScript runtime's page for BUNDLE: pick an image, type a prompt, watch the answer
    stream, with boxes, masks and per-stage timings (runs in the browser: onnxruntime-web, WASM or WebGPU).

    Needs `npm ci` in runtimes/web (a source checkout). Only the page, the runtime, the onnxruntime-web files
    it loads and the files the manifest lists are served: to requests that name this server in their Host
    header, and each bundle file only while it matches its sha256 in the manifest.
    """
    from pgexport.serve import serve as serve_bundle

    serve_bundle(bundle, port, host)


@cli.command(context_settings=_RUNTIME_CLI, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def inspect(args):
    """Show a bundle's graphs, sizes, precisions, I/O, geometry and parity (`pgexport inspect --help`)."""
    from pgexport_runtime.cli import main as runtime_main

    sys.exit(runtime_main(["inspect", *args], prog="pgexport"))


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("bundles/demo"), show_default=True,
              help="Where the default model's bundle is built (reused on later runs).")
@click.option("--rebuild", is_flag=True, help="Build the bundle again even if it exists.")
def demo(out, rebuild):
    """Build the embedded default model (first run only), answer one held-out sample image per task with the
    bundle and with transformers, and show whether their tokens are the same: the two-minute tour of what
    pgexport does and proves, offline. Detect and segment answers are drawn into overlay PNGs."""
    from pgexport.build.bundle_steps import BuildOptions, ParityError, planned_steps
    from pgexport.files import write_errors
    from pgexport.demo import run_demo

    bars: list = []
    try:
        with write_errors(out):  # the bundle and the sample images: a full disk is one line
            bundle, answers = run_demo(out, _step_bar(bars, planned_steps(BuildOptions())), rebuild)
    except ParityError as exc:
        raise UserError(f"{exc}; nothing was written") from None
    finally:
        for bar in bars:
            bar.close()
    click.echo(printable(f"bundle: {bundle}"))
    for a in answers:  # the models' answers are printed escaped, as `run` prints them
        q = a.question
        click.echo()
        click.echo(printable(f"[{q.task or 'sample'}] {q.image}"))
        click.echo(printable(f"  prompt:       {q.prompt}"))
        if q.expected is not None:
            click.echo(printable(f"  ground truth: {q.expected}"))
        click.echo(printable(f"  transformers: {a.reference}"))
        click.echo(printable(f"  bundle:       {a.answer}"))
        click.echo(f"  tokens:       {'the same' if a.same_tokens else 'DIFFERENT'}")
        if a.overlay is not None:
            click.echo(printable(f"  overlay:      {a.overlay}"))
    same = sum(a.same_tokens for a in answers)
    click.echo(f"\nbundle = transformers on {same}/{len(answers)}")


@cli.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--reference", metavar="SRC", default=None,
              help="Model source of the PyTorch reference. Default: the source recorded in each bundle's manifest.")
@click.option("--reference-dtype", "reference_dtypes", multiple=True, type=click.Choice(["bf16", "fp32"]),
              help="Reference precision (repeatable; accuracy is measured against the first). "
                   "Default: fp32 (full mode: the model as trained), bf16 and fp32 (speed mode).")
@click.option("--eval", "eval_set", metavar="SET", default=None,
              help="'demo' (the demo model's held-out set) or a JSONL of {image, prompt, answer?, task?, boxes?, "
                   "masks?} (see pgexport/verify/image_prompts.py). "
                   "Default: demo, or generated inputs in speed mode.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Items to run. Default: 20 (1 in speed mode).")
@click.option("--mode", type=click.Choice(["auto", "full", "speed"]), default="auto", show_default=True,
              help="full: latency + accuracy; speed: latency and memory only. auto: speed when the source is a "
                   "random-weight preset.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True, help="Untimed runs first.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, help="Timed runs per model.")
@click.option("--threads", type=int, default=0, show_default=True,
              help="Threads for onnxruntime and torch alike (0 = every CPU; at most min(256, 4 x CPUs)).")
@click.option("--new-tokens", type=click.IntRange(min=1), default=32, show_default=True,
              help="Speed mode: tokens generated per run (EOS ignored).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Full mode: cap on generated tokens per item (default: per task, 32 for JSONL).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench"), show_default=True,
              help="Where bench.json, bench.md and the plots go (worker files under OUT/work).")
@click.option("--json", "as_json", is_flag=True, help="Print the report JSON on stdout.")
def bench(bundles, reference, reference_dtypes, eval_set, limit, mode, warmup, repeats, threads, new_tokens,
          max_new_tokens, out, as_json):
    """Latency per stage, peak memory, size and accuracy of bundles against their PyTorch reference.

    Every bundle and every reference runs in its own process on the same pixel values and token ids.
    The report's schema is pgexport/bench/schema.json.
    """
    from tqdm import tqdm

    from pgexport.bench import BenchOptions, run_bench
    from pgexport.bench.report import write_outputs
    from pgexport.files import check_folder_target, remove_except, write_errors

    limits.check_threads(threads, "--threads")  # the bound `run` and the API apply
    check_folder_target(out)

    opts = BenchOptions(bundles=tuple(bundles), reference=reference, reference_dtypes=reference_dtypes or None,
                        eval_set=eval_set, limit=limit, mode=mode, warmup=warmup, repeats=repeats, threads=threads,
                        new_tokens=new_tokens, max_new_tokens=max_new_tokens, work_dir=out / "work")
    bars: list = []  # created at the first progress report, so that an early user error prints no empty bar

    def progress(name: str, done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, file=sys.stderr, dynamic_ncols=True, disable=None,
                             bar_format="{desc:<28} {bar} {n_fmt}/{total_fmt} [{elapsed}]"))
        bars[0].set_description_str(name[:28])
        bars[0].update(done - bars[0].n)

    # what this run creates, removed if it fails or is interrupted (all of --out, or its work folder); the log
    # of a failed worker stays where the message points
    created = next((p for p in (out, opts.work_dir) if not p.exists()), None)
    try:
        with write_errors(out):  # a full disk or read-only --out: one line, and no half-written report
            report = run_bench(opts, progress)
            paths = write_outputs(report, out)
    except (UserError, KeyboardInterrupt) as exc:
        if created is not None:
            remove_except(created, getattr(exc, "log", None))
        raise
    finally:
        for bar in bars:
            bar.close()
    for note in report["notes"]:
        if note.startswith("warning: "):
            click.echo(printable(note), err=True)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:  # the report names bundles and sources from their manifests: escaped line by line
        for line in (out / "bench.md").read_text().splitlines():
            click.echo(printable(line))
        click.echo(printable("wrote " + ", ".join(str(p) for p in paths.values())))


def _lengths(text: str | None) -> tuple[int, ...] | None:
    """--prefill-lengths "272,320" -> (272, 320)."""
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--prefill-lengths takes comma-separated token counts, like 272,320; got {text!r}") from None
    return values


def _step_bar(bars: list, steps: list[str]):
    """A progress callback that shows one bar over the build steps, created at the first step."""
    from tqdm import tqdm

    def progress(name: str) -> None:
        if not bars:
            # disable=None: a bar only on a terminal; piped stderr (CI logs, scripts) keeps to one-line messages
            bars.append(tqdm(total=len(steps), file=sys.stderr, dynamic_ncols=True, disable=None,
                             bar_format="{desc:<24} {bar} {n_fmt}/{total_fmt} [{elapsed}]{postfix}"))
        else:
            bars[0].update(1)
        bars[0].set_description_str(name)
        bars[0].set_postfix_str("")  # a step's detail ("layer 3/42", GPTQ and layer parity) until the next step

    return progress


@cli.command()
def models():
    """List the presets and the default model."""
    from pgexport.source import sources

    click.echo(f"default: {sources.default_model()}")
    for name in sources.list_presets():
        desc = json.loads((sources.PRESETS_DIR / f"{name}.json").read_text()).get("description", "")
        click.echo(f"  {name:<20} {desc}")


@cli.command()
@click.option("--model", "model", metavar="SRC", default=None, help="Preset, checkpoint directory or hub id.")
@click.option("--quant", "quant", default="int4-rtn-b32", show_default=True, metavar="RECIPE",
              help="Recipe whose per-layer precisions are measured.")
@click.option("--samples", type=click.IntRange(1, 1000), default=8, show_default=True,
              help="Image+prompt calibration samples.")
@click.option("--top", type=click.IntRange(1, 10_000), default=15, show_default=True, help="Rows to print.")
@click.option("--keep", type=click.IntRange(1, 10_000), default=3, show_default=True,
              help="How many of the most sensitive layers the suggested recipe keeps at 8 bits.")
@click.option("--write-recipe", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Write the suggested recipe here (a file for `pgexport build --quant FILE`).")
@click.option("--json", "as_json", is_flag=True, help="Print every layer as JSON.")
def sensitivity(model, quant, samples, top, keep, write_recipe, as_json):
    """Show how much error each quantized layer adds on its own (relative output error on image+prompt
    activations), most sensitive first, with the recipe overrides that would keep the worst at 8 bits."""
    import torch

    from pgexport.source import sources
    from pgexport.verify import samples as sample_sets
    from pgexport.quant.recipes import resolve_recipe
    from pgexport.files import atomic_path, write_errors
    from pgexport.quant.sensitivity import layer_errors, suggest_recipe, summary_stats

    source = sources.resolve(model)
    g = sources.load_geometry(source)
    recipe = resolve_recipe(quant).verify(g.tie_word_embeddings)
    if recipe.awq:
        raise UserError(f"sensitivity measures each layer on the checkpoint's own weights, without AWQ scales; "
                        f"{recipe.name} searches them (give int4-gptq or int4-rtn-b32)")
    calib = sample_sets.calibration_samples(source, samples, g.image_size)
    errors = layer_errors(sources.load_model(source, torch.float32), source.directory, g, recipe, calib)
    suggested = suggest_recipe(recipe, errors, keep)
    if write_recipe is not None:
        with write_errors(write_recipe), atomic_path(write_recipe) as tmp:
            tmp.write_text(json.dumps(suggested, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps({"recipe": recipe.name, "summary": summary_stats(errors),
                               "layers": [e.__dict__ for e in errors], "suggested_recipe": suggested}, indent=2))
        return
    stats = summary_stats(errors)
    click.echo(f"recipe {recipe.name}: {stats['quantized']} of {stats['layers']} linears quantized; relative output "
               f"error median {stats['median']:.2e}, max {stats['max']:.2e}")
    for e in errors[:top]:
        click.echo(f"  {e.relative_error:10.3e}  {e.precision:<14} {e.module}")
    where = f"written to {write_recipe}" if write_recipe else "save it and pass it to build --quant FILE"
    click.echo(f"a recipe that keeps the {keep} worst at 8 bits ({where}):")
    click.echo(json.dumps(suggested, indent=2))


@cli.command()
def recipes():
    """List the named quantization recipes and what each does per component."""
    from pgexport.quant.recipes import RECIPES

    for name, r in RECIPES.items():
        click.echo(f"{name:<14} {r.description}")
        click.echo(f"{'':<14} {describe.recipe_line(r.summary())}")


def _size(path: Path) -> str:
    return describe.fmt_bytes(sum(p.stat().st_size for p in path.iterdir() if p.is_file()))


def main() -> None:
    """Entry point: user mistakes become one line on stderr and exit status 2, never a traceback."""
    try:
        rc = cli.main(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except click.exceptions.Abort:
        click.echo("interrupted; nothing was written", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:  # `pgexport` alone: the help text, as click prints it
        exc.show()
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        # an unknown option, a missing or unparsable value: one line like every other user error, not
        # click's usage block (which the command's --help still shows)
        click.echo(f"error: {printable(' '.join(exc.format_message().split()))}", err=True)
        sys.exit(2)
    except UserError as exc:
        click.echo(f"error: {printable(exc)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted; nothing was written", err=True)
        sys.exit(130)
    except Exception as exc:  # memory ran out where no command could say what it was doing
        if not is_out_of_memory(exc):
            raise
        words = " ".join(sys.argv[1:2])
        click.echo(f"error: {out_of_memory(f'running pgexport {words}'.rstrip(), exc)}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
