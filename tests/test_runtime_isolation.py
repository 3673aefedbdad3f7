"""The runtime imports and generates with torch and transformers unavailable."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers", "pgexport"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    from PIL import Image
    from pgexport_runtime import PaliGemma

    pg = PaliGemma(sys.argv[1])
    result = pg(Image.open(sys.argv[2]), "caption en", max_new_tokens=8)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "pgexport"))
    print(json.dumps({"tokens": result.tokens, "loaded": loaded}))
    """
)


def test_runtime_runs_without_torch_or_transformers(bundles, images, tmp_path):
    from pgexport_runtime import PaliGemma

    image_path = tmp_path / "image.png"
    images[0].save(image_path)
    bundle = bundles["tiny-pg1"]
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(bundle), str(image_path)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["loaded"] == []
    expected = PaliGemma(bundle)(images[0], "caption en", max_new_tokens=8).tokens
    assert got["tokens"] == expected and len(expected) == 8


UNBLOCKED = textwrap.dedent(
    """
    import json, sys
    from PIL import Image
    import pgexport_runtime
    from pgexport_runtime import PaliGemma

    pg = PaliGemma(sys.argv[1])
    pg.answer(Image.open(sys.argv[2]), "detect cat", max_new_tokens=8)
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "pgexport"))))
    """
)


def test_runtime_leaves_torch_unimported_where_it_is_installed(bundles, images, tmp_path):
    """The blocked run above would pass with a guarded `try: import torch`; with torch installed (as here), a
    full run must still never import it: not in the runtime, not in anything the runtime imports."""
    import importlib.util

    assert importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None
    image_path = tmp_path / "image.png"
    images[0].save(image_path)
    out = subprocess.run([sys.executable, "-c", UNBLOCKED, str(bundles["tiny-pg1"]), str(image_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


CLI = textwrap.dedent(
    """
    import importlib.abc, runpy, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers", "pgexport", "click"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    sys.argv = ["pgexport-run", *sys.argv[1:]]
    runpy.run_module("pgexport_runtime", run_name="__main__")
    """
)


def test_runtime_command_line_runs_and_inspects_without_torch(bundles, images, tmp_path):
    """`python -m pgexport_runtime` (`pgexport-run`): the same answer lines as `pgexport run`, with torch,
    transformers, click and the exporter unavailable; mistakes are one line with status 2."""
    image_path = tmp_path / "image.png"
    images[0].save(image_path)
    bundle = str(bundles["tiny-pg1"])

    def runtime_cli(*args):
        return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=300)

    args = ["run", bundle, "--image", str(image_path), "--prompt", "detect cat", "--max-new-tokens", "8"]
    got = runtime_cli(*args)
    assert got.returncode == 0, got.stderr
    want = subprocess.run([sys.executable, "-m", "pgexport.cli", *args], capture_output=True, text=True, timeout=300)
    assert want.returncode == 0 and got.stdout == want.stdout
    info = runtime_cli("inspect", bundle)
    assert info.returncode == 0 and info.stdout.splitlines()[0].startswith("bundle   ")
    bad = runtime_cli("run", bundle, "--image", str(image_path), "--prompt", "ocr", "--top-k", "-1")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == ["error: top_k must be an integer >= 0 "
                                                                         "(0 = off), not -1"]
    assert "Traceback" not in bad.stderr


def test_runtime_package_takes_onnxruntime_from_one_extra():
    """onnxruntime and onnxruntime-gpu both provide the `onnxruntime` module: the runtime package asks for
    exactly one of them, by extra, and never both at once."""
    import re
    import tomllib
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "runtimes/python/pyproject.toml"
    project = tomllib.loads(path.read_text())["project"]

    def names(reqs):
        return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0] for r in reqs}

    extras = project["optional-dependencies"]
    assert not names(project["dependencies"]) & {"onnxruntime", "onnxruntime-gpu"}
    assert names(extras["cpu"]) & {"onnxruntime", "onnxruntime-gpu"} == {"onnxruntime"}
    assert names(extras["gpu"]) & {"onnxruntime", "onnxruntime-gpu"} == {"onnxruntime-gpu"}
    assert {"numpy", "pillow", "tokenizers"} <= names(project["dependencies"])
    assert not names(project["dependencies"]) & {"torch", "transformers"}
