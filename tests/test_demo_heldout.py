"""The demo model's held-out set as files (models/pg-demo-heldout): what tools/demo_model/write_heldout.py writes, read
back by the one reader (pgexport/verify/image_prompts.py) that the gate, GPTQ calibration, bench and `pgexport demo` use."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pgexport.verify import image_prompts
from pgexport_runtime.errors import UserError
from tools.demo_model import write_heldout as writer


def test_shipped_files_are_what_the_generator_writes(tmp_path):
    writer.write(tmp_path / "set")
    fresh = image_prompts.read(tmp_path / "set" / "heldout.jsonl")
    shipped = image_prompts.read(image_prompts.DEMO_SET)
    assert [(r.id, r.prompt, r.answer, r.task, r.split, r.boxes) for r in fresh] == \
           [(r.id, r.prompt, r.answer, r.task, r.split, r.boxes) for r in shipped]
    for a, b in zip(fresh, shipped):
        assert np.array_equal(np.asarray(a.load()), np.asarray(b.load())), a.id
        assert all(np.array_equal(x, y) for x, y in zip(a.load_masks(), b.load_masks())), a.id


def test_splits_cover_every_task_and_ground_truth_matches_the_answers():
    from pgexport_runtime.answers import parse_objects

    rows = image_prompts.read(image_prompts.DEMO_SET)
    by_split = {s: [r for r in rows if r.split == s] for s in ("eval", "gate", "calibration", "demo")}
    from tools.demo_model.write_heldout import SPLITS

    assert {k: len(v) for k, v in by_split.items() if k != "demo"} == SPLITS | {"eval": 5 * SPLITS["eval"]}
    from pgexport.build.plan import BuildOptions

    assert len(by_split["gate"]) == BuildOptions().gate_samples  # the build's default gate, all held out
    for split in ("eval", "gate", "calibration"):
        assert {r.task for r in by_split[split][:5]} == {"caption", "vqa", "ocr", "detect", "segment"}
    assert len({r.image.name for r in rows}) == len(rows)
    for r in rows:
        if r.task in ("detect", "segment"):
            parsed = parse_objects(r.answer, *r.load().size).objects
            assert [o.label for o in parsed] == [label for label, _ in r.boxes]
            for o, (_, box) in zip(parsed, r.boxes):  # the answer's <loc> bins are the boxes, within half a bin
                assert np.abs(np.array(o.box) - np.array(box)).max() <= 0.5 * 128 / 1023 + 1e-9
        if r.task == "segment":
            masks = r.load_masks()
            assert len(masks) == len(r.boxes) and all(m.any() for m in masks)


def test_malformed_rows_are_one_line_errors(tmp_path):
    bad = tmp_path / "set.jsonl"
    bad.write_text(json.dumps({"image": "a.png", "prompt": "caption en"}) + "\n" + json.dumps({"image": 3}) + "\n")
    with pytest.raises(UserError, match=r"set.jsonl:2: expected a JSON object"):
        image_prompts.read(bad)
    bad.write_text(json.dumps({"image": "a.png", "prompt": "ocr", "max_new_tokens": 0}) + "\n")
    with pytest.raises(UserError, match=r":1: expected"):
        image_prompts.read(bad)
    with pytest.raises(UserError, match="no eval rows in split 'nope'"):
        image_prompts.read(image_prompts.DEMO_SET, split="nope", what="eval")
