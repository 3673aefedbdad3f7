"""Shared fixtures: tiny PaliGemma 1 and 2 presets, their transformers models, and bundles built from them."""

from __future__ import annotations

import numpy as np
import pytest


def pytest_configure(config):
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


class Tiny:
    """A preset's source, geometry, float32 transformers model and processor."""

    def __init__(self, name: str):
        from transformers import AutoProcessor

        from pgexport.source import sources

        self.name = name
        self.source = sources.resolve(name)
        self.geometry = sources.load_geometry(self.source)
        self.model = sources.load_model(self.source)
        self.processor = AutoProcessor.from_pretrained(self.source.directory)

    def hf_inputs(self, images, prompts, suffixes=None):
        kw = {"suffix": suffixes} if suffixes else {}
        return self.processor(images=list(images), text=["<image>" + p for p in prompts], return_tensors="pt",
                              padding="longest", **kw)

    def hf_generate(self, images, prompts, n: int) -> list[list[int]]:
        import torch

        inputs = self.hf_inputs(images, prompts)
        with torch.no_grad():
            out = self.model.generate(**{k: v for k, v in inputs.items() if k != "labels"}, max_new_tokens=n,
                                      do_sample=False)
        rows = [r[inputs["input_ids"].shape[1]:].tolist() for r in out]
        eos = self.geometry.eos_token_id
        return [r[: r.index(eos) + 1] if eos in r else r for r in rows]


@pytest.fixture(scope="session", params=["tiny-pg1", "tiny-pg2"])
def tiny(request) -> Tiny:
    return _tiny(request.param)


_CACHE: dict = {}


def _tiny(name: str) -> Tiny:
    if name not in _CACHE:
        _CACHE[name] = Tiny(name)
    return _CACHE[name]


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict:
    """tiny-pg1 and tiny-pg2 bundles, built once with the real `pgexport build` path (parity included)."""
    from pgexport.build.bundle_steps import BuildOptions, build

    root = tmp_path_factory.mktemp("bundles")
    return {name: build(BuildOptions(model=name, out=root / name), PROGRESS.setdefault(name, []).append)
            for name in ("tiny-pg1", "tiny-pg2")}


PROGRESS: dict[str, list[str]] = {}


@pytest.fixture
def tiny_bundle_copy(bundles, tmp_path):
    """A private copy of the tiny-pg1 bundle, free to break."""
    import shutil

    dst = tmp_path / "bundle"
    shutil.copytree(bundles["tiny-pg1"], dst)
    return dst


@pytest.fixture(scope="session")
def layout_bundles(tmp_path_factory) -> dict:
    """tiny-pg1 built with --kv-cache shared and static (default lengths: prefill 32 and 80, a cache of 144),
    parity skipped: for tests that tamper with a layout's manifest or graphs."""
    from pgexport.build.bundle_steps import BuildOptions, build

    root = tmp_path_factory.mktemp("layouts")
    return {layout: build(BuildOptions(model="tiny-pg1", out=root / layout, kv_cache=layout, skip_parity=True))
            for layout in ("shared", "static")}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """tiny-pg1 as transformers' save_pretrained writes it (tests/checkpoints.py), float32 weights."""
    from checkpoints import save_checkpoint

    return save_checkpoint("tiny-pg1", tmp_path_factory.mktemp("checkpoint") / "tiny-pg1")


@pytest.fixture(scope="session")
def demo_bundles(tmp_path_factory) -> dict:
    """fp32 and int4 bundles of the demo model, built once (parity and the gate are other tests' business)."""
    from pathlib import Path

    from pgexport.build.bundle_steps import BuildOptions, build

    model = Path(__file__).resolve().parents[1] / "models" / "pg-demo"
    root = tmp_path_factory.mktemp("demo-bundles")
    return {q: build(BuildOptions(model=str(model), out=root / q, quant=q, skip_parity=True, gate_samples=0))
            for q in ("fp32", "int4")}  # the steps each `bundles` build reported, in order (tests/test_plan.py)


@pytest.fixture(scope="session")
def images():
    """Three different deterministic RGB images of odd sizes."""
    from pgexport.verify.parity import parity_image

    rng = np.random.default_rng(7)
    from PIL import Image

    noise = Image.fromarray((rng.random((45, 61, 3)) * 255).astype(np.uint8))
    return [parity_image(40, seed=1), noise, parity_image(57, seed=2).rotate(90, expand=True)]


PROMPTS = ["caption en", "answer en what is the colour of the big circle on the left side?", "detect cat ; dog"]
