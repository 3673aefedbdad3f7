"""Where 8-bit weights change greedy answers: the float model's own margin at the token that changes.

    python benchmarks/near_ties.py [--model SRC] [--eval FRESH/heldout.jsonl] [--limit 100] [--tokens 32]

For each held-out item the float32 PyTorch model gives its greedy answer and, teacher-forced along it, the
log-probabilities at every position. Each variant then rounds one part of the model to 8-bit weight-only blocks
of 32 (the `int8` recipe's weights, dequantized in PyTorch: quant/auto.py's Former) and decodes greedily again.
Per variant: the items whose answer changes, and the float model's margin (log p of its top token minus log p
of the runner-up) at the first position where it changes. Small margins mean the float model was nearly tied
there, so that any perturbation of that size, not a flaw of the quantizer, flips the answer. The notes give
how many of all the float model's answer positions have margins that small. The table goes to
docs/measurements/NAME.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from pgexport.bench.harness import write_measurement

COLUMNS = ("8-bit part", "items", "answers changed", "changed %", "median margin at change", "max margin at change")
PARTS = {"vision encoder": lambda u: u.name == "vision_encoder",
         "decoder linears": lambda u: u.name.startswith("layers."),
         "token table": lambda u: u.name in ("embedding/lm_head table", "embedding", "lm_head"),
         "all": lambda u: True}


def margins(logprobs: np.ndarray) -> np.ndarray:
    top = np.sort(logprobs, axis=-1)[:, -2:]
    return top[:, 1] - top[:, 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="Model source (default: the demo model).")
    ap.add_argument("--eval", type=Path, default=None, help="Held-out JSONL (default: the demo set's eval split).")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=32, help="Greedy tokens per answer.")
    ap.add_argument("--name", default="near_ties")
    ap.add_argument("--out-dir", type=Path, default=None)
    args = ap.parse_args()

    from pgexport.export.decoder import DecoderWithPast
    from pgexport.quant import auto
    from pgexport.quant.recipes import RECIPES
    from pgexport.source import sources
    from pgexport.verify import image_prompts
    from pgexport.verify.reference import TorchReference

    source = sources.resolve(args.model)
    g = sources.load_geometry(source)
    model = sources.load_model(source, torch.float32)
    path, split = (args.eval, None) if args.eval else (image_prompts.DEMO_SET, "eval")
    items = [(row.load(), row.prompt) for row in image_prompts.read(path, split, limit=args.limit, what="eval")]
    # every unit `auto` chooses between, in its 8-bit form; fp32 projector as in every recipe
    units = auto.units(model, DecoderWithPast(model, g), RECIPES["auto"])
    former = auto.Former(units, None)
    rows = []
    with torch.no_grad():
        ref = TorchReference.for_model(model, source.directory, g)
        inputs = [ref.inputs([image], [prompt]) for image, prompt in items]
        greedy = [ref.greedy(x, args.tokens)[0] for x in inputs]
        logprobs = [ref.scored(x, tokens) for x, tokens in zip(inputs, greedy)]
        all_margins = np.concatenate([margins(lp) for lp in logprobs if len(lp)])
        for part, chosen in PARTS.items():
            kept = [(p, p.data) for u in units if chosen(u) for p in u.params]
            for u in units:
                if chosen(u):
                    for p in u.params:
                        p.data = former(u.name, p.data, None, 8)
            at_change = []
            for x, tokens, lp in zip(inputs, greedy, logprobs):
                got = ref.greedy(x, args.tokens)[0]
                if got != tokens:
                    j = next((k for k, (a, b) in enumerate(zip(got, tokens)) if a != b), min(len(got), len(tokens)))
                    if j < len(lp):  # past the float answer's end the float model gave no margin
                        at_change.append(float(margins(lp[j:j + 1])[0]))
            for p, data in kept:
                p.data = data
            changed = len(at_change)
            rows.append((part, len(items), changed, round(100 * changed / len(items), 1),
                         float(f"{np.median(at_change):.2g}") if at_change else None,
                         float(f"{max(at_change):.2g}") if at_change else None))
    share = {t: float(np.mean(all_margins < t)) for t in (0.01, 0.05, 0.1, 0.5)}
    notes = [f"{len(items)} held-out items, greedy answers of up to {args.tokens} tokens, float32 PyTorch against "
             "itself with one part's weights in 8-bit blocks of 32 (dequantized, as the bundle's kernels see them). "
             "Margin = log p(top token) - log p(runner-up) of the float model, in nats.",
             "",
             f"Of the float model's {all_margins.size} answer positions, "
             + ", ".join(f"{100 * v:.1f} % have a margin below {t:g}" for t, v in share.items()) + "."]
    path = write_measurement(args.name, "Where 8-bit weights change greedy answers", "benchmarks/near_ties.py",
                             COLUMNS, rows, notes, args.out_dir)
    print(path)


if __name__ == "__main__":
    main()
