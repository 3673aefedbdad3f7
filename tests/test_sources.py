"""Source loading is strict and every bad checkpoint or adapter is one line: the hub cache, broken files,
adapters that do not fit their base."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoints import save_checkpoint, save_lora_adapter
from test_cli_errors import run_cli

REPO = Path(__file__).resolve().parents[1]
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_checkpoint("tiny-pg1", tmp_path_factory.mktemp("src") / "pg1", padding_side="right")


@pytest.fixture(scope="module")
def lora(ckpt, tmp_path_factory) -> Path:
    return save_lora_adapter(ckpt, tmp_path_factory.mktemp("lora") / "pg1-lora", ["q_proj", "v_proj"], 3)


def _hub_cache(root: Path, repo_id: str, ckpt: Path) -> Path:
    """The layout huggingface_hub leaves after a download: blobs, a snapshot of symlinks, refs/main."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / REVISION
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    for i, f in enumerate(sorted(ckpt.iterdir())):
        blob = repo / "blobs" / f"blob{i:04d}"
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    return root


def _cli(args, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-m", "pgexport.cli", *map(str, args)], capture_output=True, text=True,
                          env=full, cwd=cwd, timeout=600)


def test_hub_id_builds_offline_from_the_local_cache(ckpt, tmp_path):
    cache = _hub_cache(tmp_path / "hub", "acme/paligemma-tiny", ckpt)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    done = _cli(["build", "--model", "acme/paligemma-tiny", "--out", tmp_path / "b", "--parity-tokens", "4"], env,
                tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    source = json.loads((tmp_path / "b" / "manifest.json").read_text())["source"]
    assert source == {"kind": "hub", "name": "acme/paligemma-tiny", "spec": "acme/paligemma-tiny",
                      "revision": REVISION}

    miss = _cli(["build", "--model", "acme/not-cached", "--out", tmp_path / "c"], env, tmp_path)
    assert miss.returncode == 2 and "Traceback" not in miss.stderr
    lines = miss.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not fetch 'acme/not-cached'" in lines[0] and "--model /path/to/" in lines[0]
    assert not (tmp_path / "c").exists()


def _broken(ckpt: Path, root: Path, name: str, change) -> Path:
    bad = root / name
    shutil.copytree(ckpt, bad)
    change(bad)
    return bad


def _truncate(d: Path):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


def _shard_index(d: Path, shard: str):
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {"a.weight": shard}}))


def _set_config(d: Path, **fields):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(fields)
    (d / "config.json").write_text(json.dumps(cfg))


BAD_CHECKPOINTS = [
    ("truncated safetensors", _truncate, "truncated"),
    ("garbage safetensors", lambda d: (d / "model.safetensors").write_bytes(os.urandom(4096)), "safetensors"),
    ("empty safetensors", lambda d: (d / "model.safetensors").write_bytes(b""), "not a safetensors file"),
    ("pickle only", lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"), "pickle files are never loaded"),
    ("config not JSON", lambda d: (d / "config.json").write_text("{not json"), "unreadable config.json"),
    ("config is a list", lambda d: (d / "config.json").write_text("[1, 2]"), "must be a JSON object"),
    ("not PaliGemma", lambda d: _set_config(d, model_type="llava"), "model_type 'llava'"),
    ("invalid text config", lambda d: _set_config(d, text_config={"model_type": "gemma", "hidden_size": "wide"}),
     "error: "),
    ("shard missing", lambda d: _shard_index(d, "model-00001-of-00002.safetensors"), "is missing"),
    ("shard outside", lambda d: _shard_index(d, "../model.safetensors"), "not a .safetensors file name"),
    ("no processor settings", lambda d: (d / "processor_config.json").unlink(), "image-processor settings"),
]


@pytest.mark.parametrize("name, change, words", BAD_CHECKPOINTS, ids=[c[0] for c in BAD_CHECKPOINTS])
def test_bad_checkpoint_is_one_line(ckpt, tmp_path, capsys, name, change, words):
    bad = _broken(ckpt, tmp_path, "bad", change)
    code, _, err = run_cli(["build", "--model", bad, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and words in last, err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".pgexport-tmp-*"))


def _adapter_copy(lora: Path, root: Path, change) -> Path:
    bad = root / "adapter"
    shutil.copytree(lora, bad)
    change(bad)
    return bad


def _set_adapter_config(d: Path, **fields):
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg.update(fields)
    (d / "adapter_config.json").write_text(json.dumps(cfg))


def _pg2_adapter(root: Path) -> Path:
    base = save_checkpoint("tiny-pg2", root / "pg2-base")
    return save_lora_adapter(base, root / "pg2-lora", ["q_proj", "v_proj"], 4)


BAD_ADAPTERS = [
    ("targets not in the base", lambda d, r: _set_adapter_config(d, target_modules=["nonexistent_proj"]),
     "does not fit this base model"),
    ("another geometry", lambda d, r: (shutil.rmtree(d), shutil.copytree(_pg2_adapter(r), d)),
     "does not fit this base model: size mismatch for"),
    ("pickle weights", lambda d, r: (d / "adapter_model.safetensors").rename(d / "adapter_model.bin"),
     "pickle files are never loaded"),
    ("truncated weights", lambda d, r: _truncate_file(d / "adapter_model.safetensors"), "truncated"),
    ("config not JSON", lambda d, r: (d / "adapter_config.json").write_text("nope"), "unreadable adapter_config"),
    ("no peft type", lambda d, r: _set_adapter_config(d, peft_type=None), "peft_type"),
]


def _truncate_file(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


@pytest.mark.parametrize("name, change, words", BAD_ADAPTERS, ids=[c[0] for c in BAD_ADAPTERS])
def test_bad_adapter_is_one_line(ckpt, lora, tmp_path, capsys, name, change, words):
    bad = _adapter_copy(lora, tmp_path, lambda d: change(d, tmp_path))
    code, _, err = run_cli(["build", "--model", ckpt, "--adapter", bad, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and words in last, err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".pgexport-tmp-*"))


def test_adapter_as_model_needs_a_base_that_resolves(lora, tmp_path, capsys):
    bad = _adapter_copy(lora, tmp_path, lambda d: _set_adapter_config(d, base_model_name_or_path=None))
    code, _, err = run_cli(["build", "--model", bad, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "names no base model" in err.strip().splitlines()[-1]


def test_processor_pads_left_whatever_the_checkpoint_says(ckpt):
    from pgexport.source import sources

    assert json.loads((ckpt / "tokenizer_config.json").read_text())["padding_side"] == "right"
    processor = sources.load_processor(ckpt)
    batch = processor(images=[_image()] * 2, text=["<image>caption en", "<image>answer en what is this long one?"],
                      padding="longest", return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1


def _image():
    from PIL import Image

    return Image.new("RGB", (20, 30), (200, 10, 10))
