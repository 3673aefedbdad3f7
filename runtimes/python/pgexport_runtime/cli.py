"""The runtime's own command line, torch-free: `pgexport-run run|inspect` (or `python -m pgexport_runtime`).
`pgexport run` and `pgexport inspect` are this command line too: their options are declared here only.

`run_and_print` is the whole of a `run`, shared with `pgexport run`: every bound first (limits.py), then the
image and the overlay path, all before the slower bundle load; the answers (one per --prompt, the image
encoded once); the overlay. Mistakes are one
line on stderr and exit status 2, as in `pgexport`. What is printed for people (answers, `inspect`, errors)
goes through terminal.printable: the model's text, the manifest's strings and paths are data, never escape
sequences the terminal obeys; JSON output is printed as json.dumps writes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from typing import TYPE_CHECKING

from pgexport_runtime import import_error, limits
from pgexport_runtime.errors import UserError
from pgexport_runtime.out_of_memory import is_out_of_memory, out_of_memory, reported_while
from pgexport_runtime.terminal import printable

if TYPE_CHECKING:  # numpy and onnxruntime load inside main's error handling: a failure there is one line too
    from pgexport_runtime.sampling import Sampling


def run_prompts(bundle, image, prompts: list[str], *, max_new_tokens: int | None = None,
                sampling: Sampling | None = None, stop: tuple[str, ...] = (), device: str = "cpu", threads: int = 0,
                max_image_pixels: int = limits.DEFAULT_MAX_IMAGE_PIXELS, overlay: Path | None = None,
                prefill: str = "auto", on_token=None, on_answer=None) -> list:
    """One image, one or more prompts, answered in order (the vision encoder runs once: the image cache).
    on_token(row, token, text) streams; on_answer(i, answer) is called as each answer is complete."""
    try:
        from PIL import Image

        from pgexport_runtime.images import load_image
        from pgexport_runtime.overlay import check_output_path, save_overlay
        from pgexport_runtime.pipeline import PaliGemma
        from pgexport_runtime.sampling import Sampling
        from pgexport_runtime.session import SessionConfig
    except ImportError as exc:  # a missing package, or one that cannot load (out of memory?): one line
        raise import_error(exc) from None

    if overlay is not None and len(prompts) != 1:
        raise UserError("--overlay draws one answer: give one --prompt with it")
    limits.check_request(prompts, max_new_tokens, stop)  # the bounds that need the model are the API's
    limits.check_threads(threads, "--threads")
    session = SessionConfig(device=device, intra_op_threads=threads, prefill=prefill)
    if overlay is not None:
        check_output_path(overlay, image)
    warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow's guard: our one-line error
    with reported_while(f"reading {image}"):
        img = load_image(image, max_image_pixels)
    with reported_while(f"loading the bundle {bundle}"):
        pg = PaliGemma(bundle, session, max_image_pixels=max_image_pixels)
    results = []
    for i, prompt in enumerate(prompts):
        with reported_while(f"answering {prompt!r}"[:80]):
            result = pg.answer(img, prompt, max_new_tokens=max_new_tokens, stop_strings=stop, on_token=on_token,
                               sampling=sampling or Sampling())
        if overlay is not None:  # (one prompt) written before anything is printed: a failure is the only line
            save_overlay(img, result, overlay)
        results.append(result)
        if on_answer is not None:
            on_answer(i, result)
    return results


def run_and_print(bundle, image, prompts: list[str], *, as_json: bool, stream: bool, out, err, **kwargs) -> None:
    """`run` in both command lines: answers (or JSON objects, one per line), warnings on err, with a
    `[prompt]` line before each answer when there are several prompts. The model's text is escaped for the
    terminal in the human output (a token may decode to ESC); JSON lines are json.dumps's, ASCII only."""
    from pgexport_runtime import describe

    stream = stream and not as_json
    several = len(prompts) > 1

    def started(i: int) -> None:
        if several and not as_json:
            out(f"[{printable(prompts[i])}]")

    def on_answer(i: int, result) -> None:
        for w in () if as_json else result.warnings:
            err(f"warning: {printable(w)}")
        if stream:
            out("")
        for line in describe.answer_lines(result, as_json, streamed=stream):
            out(line if as_json else printable(line))
        if i + 1 < len(prompts):
            started(i + 1)

    started(0)
    on_token = (lambda row, tok, text: out(printable(text), end="")) if stream else None
    run_prompts(bundle, image, prompts, on_token=on_token, on_answer=on_answer, **kwargs)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other mistake (argparse prints usage + message)
        raise UserError(message)


def _parser(prog: str) -> argparse.ArgumentParser:
    """The one declaration of `run` and `inspect`: `pgexport run|inspect` hands its arguments here."""
    p = _Parser(prog=prog, description="Answer prompts about an image with a pgexport bundle, or inspect one; "
                                       "needs only onnxruntime, numpy, pillow and tokenizers (no torch).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="{run,inspect}")
    run = sub.add_parser("run", help="answer one image: one answer per --prompt, the image encoded once",
                         description="Answer one image with a bundle: one answer per --prompt, in order (the image "
                                     "is encoded once for all of them).")
    run.add_argument("bundle", type=Path, help="a bundle directory (pgexport build --out)")
    run.add_argument("--image", required=True, type=Path, metavar="PATH",
                     help="image file (any format Pillow reads)")
    run.add_argument("--prompt", required=True, action="append", metavar="TEXT",
                     help='task prompt: "caption en", "answer en <q>", "ocr", "detect <obj>", "segment <obj>"; '
                          "repeatable: several prompts about one image, answered in order")
    run.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                     help="default: the bundle's setting; image + prompt tokens + N must fit the model's positions")
    run.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    run.add_argument("--temperature", type=float, default=1.0, metavar="T", help="finite, >= 1e-6 (default 1.0)")
    run.add_argument("--top-k", type=int, default=0, metavar="K", help="0 = off; at most the vocabulary (default 0)")
    run.add_argument("--top-p", type=float, default=1.0, metavar="P", help="in (0, 1]; 1 = off (default 1.0)")
    run.add_argument("--seed", type=int, default=None, metavar="S", help="seed for sampling, 0 .. 2**64-1")
    run.add_argument("--stop", action="append", default=[], metavar="TEXT",
                     help="stop when this (non-empty) string appears (repeatable)")
    run.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    run.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                     help="cuda needs onnxruntime-gpu: pip install './runtimes/python[gpu]' (default cpu)")
    run.add_argument("--threads", type=int, default=0, metavar="N",
                     help="0 = onnxruntime's default; at most min(256, 4 x CPUs) (default 0)")
    run.add_argument("--prefill", choices=["auto", "int8", "decoder"], default="auto",
                     help="the graph that runs the prefill of a bundle built with --int8-prefill: auto takes its "
                          "decoder_int8 where the CPU has int8 matrix units (AMX), int8 always, decoder never "
                          "(default auto; `inspect` says which this CPU takes)")
    run.add_argument("--max-image-pixels", type=int, default=limits.DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                     help="refuse larger images before decoding them: a small PNG can expand to gigabytes "
                          f"(default {limits.DEFAULT_MAX_IMAGE_PIXELS})")
    run.add_argument("--json", action="store_true",
                     help="a JSON object per prompt, one per line: text, tokens, detections and segments (boxes in "
                          "pixels, masks as RLE)")
    run.add_argument("--overlay", type=Path, default=None, metavar="PNG",
                     help="also write the image with the answer's boxes, labels and masks drawn on it (one --prompt)")
    inspect = sub.add_parser("inspect", help="graphs, sizes, precisions, I/O, geometry, parity and accuracy",
                             description="Show a bundle's graphs, sizes, precisions, inputs/outputs, geometry, "
                                         "parity and accuracy results.")
    inspect.add_argument("bundle", type=Path, help="a bundle directory")
    inspect.add_argument("--json", action="store_true", help="print the manifest as JSON")
    inspect.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the bundle files")
    return p


def main(argv: list[str] | None = None, prog: str = "pgexport-run") -> int:
    command = ""
    try:
        args = _parser(prog).parse_args(argv)
        command = f" {args.command}"
        if args.command == "inspect":
            from pgexport_runtime import describe
            from pgexport_runtime.manifest import load_manifest

            m = load_manifest(args.bundle, verify=not args.no_verify)
            lines = [json.dumps(m.raw, indent=2)] if args.json else [printable(x) for x in describe.describe(m)]
        else:
            from pgexport_runtime.sampling import Sampling

            sampling = Sampling(do_sample=args.sample, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, seed=args.seed)
            run_and_print(args.bundle, args.image, args.prompt, as_json=args.json, stream=args.stream,
                          out=lambda line, end="\n": print(line, end=end, flush=True),
                          err=lambda line: print(line, file=sys.stderr), max_new_tokens=args.max_new_tokens,
                          sampling=sampling, stop=tuple(args.stop), device=args.device, threads=args.threads,
                          max_image_pixels=args.max_image_pixels, overlay=args.overlay, prefill=args.prefill)
            lines = []
    except UserError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ImportError as exc:  # a package missing or unable to load: how to install it, or why it cannot load
        print(f"error: {' '.join(str(import_error(exc)).split())}", file=sys.stderr)
        return 2
    except Exception as exc:  # memory ran out where no step above could say what it was doing
        if not is_out_of_memory(exc):
            raise
        try:
            message = str(out_of_memory(f"running {prog}{command}", exc))
        except MemoryError:  # not even room for the sentence
            message = "out of memory"
        print(f"error: {message}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0
