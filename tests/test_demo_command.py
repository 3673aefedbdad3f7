"""`pgexport demo`: one held-out sample per task, each answered by the bundle and by transformers, with the
ground truth, whether the tokens are the same, overlays for detect and segment, and a closing count."""

from __future__ import annotations

import re
import shutil

from PIL import Image

from pgexport.verify import image_prompts
from tests.test_cli_errors import run_cli


def test_demo_compares_the_bundle_with_transformers_on_five_tasks(demo_bundles, tmp_path, capsys):
    out = tmp_path / "demo"
    shutil.copytree(demo_bundles["fp32"], out)  # a bundle of the default model: reused, not rebuilt
    manifest_mtime = (out / "manifest.json").stat().st_mtime_ns
    code, stdout, err = run_cli(["demo", "--out", out], capsys)
    assert code == 0, err
    assert (out / "manifest.json").stat().st_mtime_ns == manifest_mtime

    rows = image_prompts.read(image_prompts.DEMO_SET, "demo", what="demo")
    assert [r.task for r in rows] == ["caption", "vqa", "ocr", "detect", "segment"]
    assert len({r.image.read_bytes() for r in rows}) == 5  # five distinct images
    sections = stdout.split("\n[")[1:]
    assert len(sections) == 5
    for row, text in zip(rows, sections):
        assert text.startswith(f"{row.task}] ")
        fields = dict(re.findall(r"^  ([a-z ]+):\s+(.*)$", text, re.M))
        assert fields["prompt"] == row.prompt
        assert fields["ground truth"] == row.answer
        # the fp32 bundle is the same model: its tokens are transformers' tokens, so the texts agree too
        assert fields["tokens"] == "the same", text
        assert fields["bundle"] == fields["transformers"]
        if row.task in ("detect", "segment"):
            overlay = Image.open(fields["overlay"])
            assert overlay.size == Image.open(row.image).size
        else:
            assert "overlay" not in fields
    assert stdout.rstrip().splitlines()[-1] == "bundle = transformers on 5/5"
