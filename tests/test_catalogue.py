"""Every case of the bad-input catalogue (tests/catalogue.py) through the real CLI, in a subprocess."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from catalogue import CASES, check, make_workspace, run_case


def test_the_catalogue_is_well_formed():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    assert len(CASES) >= 35


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case, bundles, request, tmp_path):
    image = Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8))
    bundle = None
    if case.bundle:  # the shared and static bundles are built only when a case asks for them
        bundle = bundles["tiny-pg1"] if case.layout == "concat" else request.getfixturevalue("layout_bundles")[case.layout]
    checkpoint = request.getfixturevalue("tiny_checkpoint") if case.checkpoint else None
    ws = make_workspace(tmp_path / "ws", bundle, image, checkpoint)
    check(case, run_case(case, ws))
