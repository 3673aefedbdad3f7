"""Training recipe of the demo model (PyTorch, CPU, seeded, resumable).

    python -m tools.demo_model.train --ckpt ../pgdemo-ckpt/run --model-dir models/pg-demo --budget-min 95 --steps 100000

- data: generated on the fly, examples seen..seen+batch-1 of the training seed (the eval seed differs)
- loss: HF's PaliGemma prefix-LM loss. Inputs are built exactly like PaliGemmaProcessor(suffix=...):
  "<image>"*N + "<bos>" + prefix + "\\n" (token type 0, label -100) then suffix + "<eos>" (type 1, labelled);
  tests/test_demo_model.py checks the equivalence with the processor.
- checkpoints: {model, optimizer, scheduler, step, RNG} to --ckpt every --save-min minutes (atomic),
  plus the current weights exported to --model-dir (safetensors) each time; --resume continues from it.
- --bf16 runs forward/backward under bf16 autocast (fp32 master weights).
- --device cuda trains on a GPU; --workers N generates batches in N processes (in order, so the run is the same
  examples as with 0 workers); --replay R adds R steps per fresh batch on batches drawn from the last 64, for
  when generation and not the model is the bottleneck; --init-from DIR starts from a model directory's weights.
- --aux-weight (default 1): the dense per-patch loss of `patch_targets.py` on the vision tower's output, added to the
  language loss. Without it the tower stayed blind to positions within the budget (see the model card).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from . import build, generator
from .patch_targets import PatchHead, collate_targets
from .vqvae import load_vqvae

TRAIN_SEED = 1
EVAL_SEED = 2  # held-out; evaluate.py uses it


class Batcher:
    def __init__(self, model_dir: Path, vq_dir: Path, seed: int = TRAIN_SEED,
                 task_weights: list[float] | None = None):
        self.task_weights = task_weights  # None: the generator's own mixture (generator.TASK_WEIGHTS)
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.vq = load_vqvae(vq_dir)
        self.seed = seed
        self.n_img = build.NUM_IMAGE_TOKENS
        self.prompt_head = "<image>" * self.n_img + "<bos>"

    def encode_masks(self, crops: np.ndarray) -> np.ndarray:
        return self.vq.encode_np(crops)

    def example(self, index: int, task: str | None = None):
        if task is None and self.task_weights is not None:  # a training mixture of our own, still seeded by index
            rng = np.random.default_rng([int(self.seed), int(index), 0x7A5C])
            task = generator.TASKS[rng.choice(len(generator.TASKS), p=self.task_weights)]
        return generator.make_example(self.seed, index, task=task, encode_masks=self.encode_masks)

    def collate(self, examples, aux: bool = False) -> dict:
        rows = []
        for ex in examples:
            a = self.tok.encode(self.prompt_head + ex.prefix + "\n", add_special_tokens=False).ids
            b = self.tok.encode(ex.suffix + "<eos>", add_special_tokens=False).ids
            rows.append((a, b))
        L = max(len(a) + len(b) for a, b in rows)
        n = len(rows)
        ids = torch.zeros(n, L, dtype=torch.long)
        att = torch.zeros(n, L, dtype=torch.long)
        tt = torch.zeros(n, L, dtype=torch.long)
        labels = torch.full((n, L), -100, dtype=torch.long)
        for i, (a, b) in enumerate(rows):  # right padding (training only)
            la, lb = len(a), len(b)
            ids[i, : la + lb] = torch.tensor(a + b)
            att[i, : la + lb] = 1
            tt[i, la : la + lb] = 1
            labels[i, la : la + lb] = torch.tensor(b)
        pix = np.stack([np.asarray(ex.scene.image, dtype=np.float32) for ex in examples])
        pix = torch.from_numpy(pix / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()
        out = {"input_ids": ids, "attention_mask": att, "token_type_ids": tt, "labels": labels, "pixel_values": pix}
        if aux:
            out["aux"] = collate_targets([ex.scene for ex in examples], build.IMAGE_SIZE // build.PATCH_SIZE)
        return out

    def batch(self, start: int, size: int, aux: bool = False) -> dict:
        """Examples start .. start+size-1 of the training seed."""
        return self.collate([self.example(start + j) for j in range(size)], aux=aux)


class BatchStream(torch.utils.data.IterableDataset):
    """Training batches start, start+size, ... of the training seed; with DataLoader workers, worker w makes
    batches w, w+N, ... and the DataLoader yields them in order (the same stream as without workers)."""

    def __init__(self, data: Batcher, start: int, size: int, aux: bool):
        self.data, self.start, self.size, self.aux = data, start, size, aux

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        k, step = (0, 1) if info is None else (info.id, info.num_workers)
        while True:
            yield self.data.batch(self.start + k * self.size, self.size, aux=self.aux)
            k += step


def _to(batch: dict, device: str) -> dict:
    return {k: (_to(v, device) if isinstance(v, dict) else v.to(device, non_blocking=True)) for k, v in batch.items()}


class VisionTap:
    """Keeps the vision tower's last output of each forward pass (for the auxiliary patch loss)."""

    def __init__(self, model):
        self.out = None
        model.model.vision_tower.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.out = output.last_hidden_state


def parse_task_weights(spec: str | None) -> list[float] | None:
    """"caption=0.2,ocr=0.3,..." -> weights in generator.TASKS order (missing tasks 0), normalised."""
    if not spec:
        return None
    w = dict.fromkeys(generator.TASKS, 0.0)
    for part in spec.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in w:
            raise SystemExit(f"--task-weights: unknown task {name.strip()!r} (one of {', '.join(generator.TASKS)})")
        w[name.strip()] = float(value)
    total = sum(w.values())
    if total <= 0:
        raise SystemExit("--task-weights: the weights must sum to more than 0")
    return [w[t] / total for t in generator.TASKS]


def progress(step: int, total: int, train_time: float, budget_min: float) -> float:
    """Schedule progress in [0, 1]: by steps, or by training wall time when a time budget is set
    (whichever is further), so a run on a busy machine still anneals before its budget ends."""
    p = step / total
    if budget_min > 0:
        p = max(p, train_time / (budget_min * 60))
    return min(1.0, p)


def lr_at(step: int, prog: float, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * prog)))


def _numpy_rng_state() -> dict:
    # tensors and plain values only, so the checkpoint loads with torch.load(weights_only=True): no pickled objects
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _set_numpy_rng_state(d: dict) -> None:
    np.random.set_state((d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["gauss"]))


def save_checkpoint(path: Path, model, opt, step: int, train_time: float, seen: int, pos2d_added: bool,
                    head=None) -> None:
    state = {
        "aux_head": head.state_dict() if head is not None else None,
        "pos2d_added": pos2d_added,
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "step": step,
        "seen": seen,
        "train_time": train_time,
        "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate()},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def export(model, model_dir: Path, shard_mb: int = 0) -> None:
    build.save_model_dir(model, model_dir, shard_mb)


@torch.no_grad()
def probe(model, batch: dict, bf16: bool, device: str = "cpu") -> dict[str, float]:
    """Teacher-forced suffix token accuracy on a fixed held-out batch (cheap progress signal)."""
    model.eval()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        out = model(**batch)
    model.train()
    logits = out.logits[:, :-1]
    lab = batch["labels"][:, 1:]
    m = lab != -100
    acc = ((logits.argmax(-1) == lab) & m).sum().item() / m.sum().item()
    return {"loss": out.loss.item(), "tok_acc": acc}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True, help="directory for training checkpoints (keep it outside the repository)")
    ap.add_argument("--model-dir", default="models/pg-demo", help="tokenizer/processor/vqvae + exported weights")
    ap.add_argument("--vq-dir", default=None, help="VQ-VAE dir (default: --model-dir)")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--wd", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-min", type=float, default=8.0)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--budget-min", type=float, default=0,
                    help="training time budget in minutes: the cosine schedule follows max(step/steps, time/budget) "
                    "and training stops when either reaches 1 (0 = steps only)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--no-pos2d", action="store_true", help="plain HF init of the vision position embeddings")
    ap.add_argument("--add-pos2d-on-resume", action="store_true",
                    help="once, after resuming a run started with --no-pos2d: add the 2D position features")
    ap.add_argument("--pos2d-scale", type=float, default=4.0,
                    help="scale of the features added by --add-pos2d-on-resume (match the patch-embedding variation)")
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--workers", type=int, default=0, help="processes generating batches (0: in the training loop)")
    ap.add_argument("--replay", type=int, default=0,
                    help="extra steps per fresh batch, on batches drawn from the last 64 (data-bound runs)")
    ap.add_argument("--init-from", default=None,
                    help="start from this model directory's weights (a fresh optimizer; not with --resume)")
    ap.add_argument("--export-dir", default=None, help="where the weights are exported (default: --model-dir)")
    ap.add_argument("--shard-mb", type=int, default=0,
                    help="export the weights in safetensors shards of at most this many MB (0: one file)")
    ap.add_argument("--aux-weight", type=float, default=1.0,
                    help="weight of the dense per-patch loss on the vision tower (tools/demo_model/patch_targets.py); 0 = off")
    ap.add_argument("--task-weights", default=None,
                    help="training task mixture, e.g. caption=0.15,vqa=0.15,ocr=0.3,detect=0.2,segment=0.2 "
                    "(default: the generator's; the held-out sets never change)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    model_dir = Path(args.model_dir)
    ckpt_dir = Path(args.ckpt)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_dir / "last.pt"

    data = Batcher(model_dir, Path(args.vq_dir or model_dir), task_weights=parse_task_weights(args.task_weights))
    if args.init_from:  # transformers reads the weights (any of the layouts it writes)
        from transformers import PaliGemmaForConditionalGeneration

        model = PaliGemmaForConditionalGeneration.from_pretrained(args.init_from, dtype=torch.float32)
        print(f"initialised from {args.init_from}", flush=True)
    else:
        model = build.init_model(build.make_config(), seed=args.seed, pos2d=not args.no_pos2d)
    dev = args.device
    model.to(dev)
    model.train()
    use_aux = args.aux_weight > 0
    head = PatchHead(model.config.vision_config.hidden_size).to(dev) if use_aux else None
    tap = VisionTap(model) if use_aux else None
    named = list(model.named_parameters()) + (list(head.named_parameters(prefix="aux")) if use_aux else [])
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-8,
    )
    step, train_time, seen = 0, 0.0, 0
    pos2d_added = not args.no_pos2d
    if args.resume and ckpt.exists():
        st = torch.load(ckpt, weights_only=True)
        model.load_state_dict(st["model"])
        if use_aux and st.get("aux_head") is not None:
            head.load_state_dict(st["aux_head"])
        opt.load_state_dict(st["opt"])
        step, train_time = st["step"], st["train_time"]
        seen = st.get("seen", step * 32)
        pos2d_added = st.get("pos2d_added", False)
        if args.add_pos2d_on_resume and not pos2d_added:
            build.add_2d_positions(model, scale=args.pos2d_scale)
            pos2d_added = True
            print("added 2D sinusoidal position features to the vision position embeddings", flush=True)
        torch.set_rng_state(st["rng"]["torch"])
        _set_numpy_rng_state(st["rng"]["numpy"])
        random.setstate(st["rng"]["python"])
        print(f"resumed at step {step}, {seen} examples seen ({train_time / 60:.1f} min trained)", flush=True)
    print(f"params {build.count_params(model):,}  batch {args.batch}  steps {args.steps}  bf16 {args.bf16}", flush=True)

    probe_data = Batcher.__new__(Batcher)
    probe_data.__dict__.update(data.__dict__)
    probe_data.seed = EVAL_SEED
    probe_batch = _to(probe_data.collate([probe_data.example(100_000 + i) for i in range(48)]), dev)
    stream = iter(torch.utils.data.DataLoader(BatchStream(data, seen, args.batch, use_aux), batch_size=None,
                                              num_workers=args.workers, prefetch_factor=4 if args.workers else None,
                                              pin_memory=dev != "cpu"))
    replay: list[dict] = []
    replay_rng = random.Random(args.seed)

    t_save = time.time()
    run_t0, run_step0 = time.time(), step
    loss_ema = None
    while progress(step, args.steps, train_time, args.budget_min) < 1.0:
        t0 = time.time()
        if args.replay and replay and (step % (args.replay + 1)):
            batch = dict(replay_rng.choice(replay))
        else:
            batch = _to(next(stream), dev)
            seen += args.batch
            replay = (replay + [dict(batch)])[-64:]
        aux_t = batch.pop("aux", None)
        prog = progress(step, args.steps, train_time, args.budget_min)
        lr = lr_at(step, prog, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=args.bf16):
            out = model(**batch)
        loss = lm_loss = out.loss
        if use_aux:
            aux_loss, aux_parts = head.loss(tap.out, aux_t)
            loss = lm_loss + args.aux_weight * aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        step += 1
        train_time += time.time() - t0
        loss_ema = lm_loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * lm_loss.item()
        if step % args.log_every == 0:
            rate = (step - run_step0) / (time.time() - run_t0)
            aux_txt = (" aux " + " ".join(f"{k} {v:.3f}" for k, v in aux_parts.items())) if use_aux else ""
            print(f"step {step} progress {prog:.3f} loss {lm_loss.item():.4f} (ema {loss_ema:.4f}) lr {lr:.2e} "
                  f"{rate:.2f} it/s {rate * args.batch:.1f} ex/s trained {train_time / 60:.1f} min{aux_txt}",
                  flush=True)
        done = progress(step, args.steps, train_time, args.budget_min) >= 1.0
        if time.time() - t_save >= args.save_min * 60 or done:
            save_checkpoint(ckpt, model, opt, step, train_time, seen, pos2d_added, head)
            if not args.no_export:
                export(model, Path(args.export_dir or model_dir), args.shard_mb)
            pr = probe(model, probe_batch, args.bf16, dev)
            print(f"[ckpt] step {step} saved; held-out probe loss {pr['loss']:.4f} tok-acc {pr['tok_acc']:.4f} "
                  f"({train_time / 60:.1f} min trained)", flush=True)
            t_save = time.time()
    print(f"done: step {step}, {train_time / 60:.1f} min trained", flush=True)


if __name__ == "__main__":
    main()
