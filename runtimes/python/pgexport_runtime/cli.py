"""The runtime's own command line, torch-free: `python -m pgexport_runtime run|inspect` (or `pgexport-run`).

`run_and_print` is the whole of a `run`, shared with `pgexport run`: every bound first (limits.py), then the
image and the overlay path, all before the slower bundle load; the answers (one per --prompt, the image
encoded once); the overlay. Mistakes are one
line on stderr and exit status 2, as in `pgexport`.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from . import describe, limits
from .errors import UserError
from .sampling import Sampling


def run_prompts(bundle, image, prompts: list[str], *, max_new_tokens: int | None = None,
                sampling: Sampling | None = None, stop: tuple[str, ...] = (), device: str = "cpu", threads: int = 0,
                max_image_pixels: int = limits.DEFAULT_MAX_IMAGE_PIXELS, overlay: Path | None = None,
                on_token=None, on_answer=None) -> list:
    """One image, one or more prompts, answered in order (the vision encoder runs once: the image cache).
    on_token(row, token, text) streams; on_answer(i, answer) is called as each answer is complete."""
    from PIL import Image

    from .images import load_image
    from .overlay import check_output_path, save_overlay
    from .pipeline import PaliGemma
    from .session import SessionConfig

    if overlay is not None and len(prompts) != 1:
        raise UserError("--overlay draws one answer: give one --prompt with it")
    limits.check_request(prompts, max_new_tokens, stop)  # the bounds that need the model are the API's
    limits.check_threads(threads, "--threads")
    session = SessionConfig(device=device, intra_op_threads=threads)
    if overlay is not None:
        check_output_path(overlay, image)
    warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow's guard: our one-line error
    img = load_image(image, max_image_pixels)
    pg = PaliGemma(bundle, session, max_image_pixels=max_image_pixels)
    results = []
    for i, prompt in enumerate(prompts):
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
    `[prompt]` line before each answer when there are several prompts."""
    stream = stream and not as_json
    several = len(prompts) > 1

    def started(i: int) -> None:
        if several and not as_json:
            out(f"[{prompts[i]}]")

    def on_answer(i: int, result) -> None:
        for w in () if as_json else result.warnings:
            err(f"warning: {w}")
        if stream:
            out("")
        for line in describe.answer_lines(result, as_json, streamed=stream):
            out(line)
        if i + 1 < len(prompts):
            started(i + 1)

    started(0)
    on_token = (lambda row, tok, text: out(text, end="")) if stream else None
    run_prompts(bundle, image, prompts, on_token=on_token, on_answer=on_answer, **kwargs)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other mistake (argparse prints usage + message)
        raise UserError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m pgexport_runtime", description="Run or inspect a pgexport bundle without torch.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="answer one image and prompt")
    run.add_argument("bundle", type=Path)
    run.add_argument("--image", required=True, type=Path)
    run.add_argument("--prompt", required=True, action="append",
                     help='"caption en", "answer en <q>", "ocr", "detect <obj>", ... (repeatable: one image, '
                          "several prompts, the image encoded once)")
    run.add_argument("--max-new-tokens", type=int, default=None)
    run.add_argument("--sample", action="store_true")
    run.add_argument("--temperature", type=float, default=1.0)
    run.add_argument("--top-k", type=int, default=0)
    run.add_argument("--top-p", type=float, default=1.0)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--stop", action="append", default=[])
    run.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    run.add_argument("--threads", type=int, default=0)
    run.add_argument("--max-image-pixels", type=int, default=limits.DEFAULT_MAX_IMAGE_PIXELS)
    run.add_argument("--json", action="store_true",
                     help="the answer as JSON (boxes in pixels, masks as RLE); one object per line and prompt")
    run.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    run.add_argument("--overlay", type=Path, default=None, help="also draw the answer on the image here")
    inspect = sub.add_parser("inspect", help="graphs, sizes, precisions, parity and accuracy of a bundle")
    inspect.add_argument("bundle", type=Path)
    inspect.add_argument("--json", action="store_true")
    inspect.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the bundle files")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.command == "inspect":
            from .manifest import load_manifest

            m = load_manifest(args.bundle, verify=not args.no_verify)
            lines = [json.dumps(m.raw, indent=2)] if args.json else describe.describe(m)
        else:
            sampling = Sampling(do_sample=args.sample, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, seed=args.seed)
            run_and_print(args.bundle, args.image, args.prompt, as_json=args.json, stream=args.stream,
                          out=lambda line, end="\n": print(line, end=end, flush=True),
                          err=lambda line: print(line, file=sys.stderr), max_new_tokens=args.max_new_tokens,
                          sampling=sampling, stop=tuple(args.stop), device=args.device, threads=args.threads,
                          max_image_pixels=args.max_image_pixels, overlay=args.overlay)
            lines = []
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    for line in lines:
        print(line)
    return 0
