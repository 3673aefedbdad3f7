"""contract.json: one file for the exporter and both runtimes (names, KV-cache layouts, bounds), read the same way."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pgexport_runtime import io_names, limits, manifest
from pgexport_runtime.contract import CONTRACT
from pgexport_runtime.kv_layout import LAYOUTS

WEB = Path(__file__).resolve().parents[1] / "runtimes" / "web"


def node(script: str) -> object:
    r = subprocess.run(["node", "--input-type=module", "-e", script], cwd=WEB, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_the_javascript_contract_is_written_from_the_json():
    r = subprocess.run(["node", "scripts/contract.mjs", "--check"], cwd=WEB, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert node("import c from './src/contract.js'; console.log(JSON.stringify(c))") == json.loads(
        (Path(io_names.__file__).with_name("contract.json")).read_text())


@pytest.mark.parametrize("preset", ["tiny-pg1", "tiny-pg2"])
def test_both_runtimes_expect_the_same_graph_io(preset):
    """io_names.expected, which both loaders check every graph against, computed by each runtime from the contract."""
    from pgexport.source import sources

    g = sources.load_geometry(sources.resolve(preset))
    hw = (g.image_size, g.image_size + 8)  # height and width apart, so that a swap shows
    script = (f"import * as io from './src/io_names.js'; const g = {json.dumps(g.to_dict())}; "
              f"console.log(JSON.stringify(Object.fromEntries(['vision_encoder', 'projector', 'mask_decoder', "
              f"'decoder'].map((n) => [n, io.expected(n, g, {list(hw)})]))))")
    js = node(script)
    for graph, names in js.items():
        python = io_names.expected(graph, g, hw)
        assert {k: {str(a): s for a, s in v.items()} for k, v in python.items()} == names
    assert js["vision_encoder"][io_names.PIXEL_VALUES] == {"1": 3, "2": hw[0], "3": hw[1]}
    assert len(js["decoder"]) == 7 + 4 * g.text_layers


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_kv_layouts_bind_alike_in_both_runtimes(name):
    layout = LAYOUTS[name]
    js = node("import { LAYOUTS, KV_LAYOUTS } from './src/kv_layout.js'; "
              f"const l = LAYOUTS['{name}']; console.log(JSON.stringify({{in: l.inPlace, fixed: l.fixedShape, "
              "buffers: l.buffers, bound: l.boundLengths(5, 3, 20), js: KV_LAYOUTS.includes(l.name)}))")
    assert js == {"in": layout.in_place, "fixed": layout.fixed_shape, "buffers": layout.buffers,
                  "bound": list(layout.bound_lengths(5, 3, 20)), "js": layout.javascript}
    assert layout.bound_lengths(5, 3, 20) == ((20, 20) if layout.in_place else (5, 8))


def test_layouts_say_what_they_are():
    assert [n for n, l in LAYOUTS.items() if l.in_place] == ["shared", "static"]
    assert [n for n, l in LAYOUTS.items() if l.fixed_shape] == ["static"]
    static = LAYOUTS["static"]
    assert static.room(64, prefix=40, max_len=80) == 41 and static.room(8, 40, 80) == 8
    assert static.room(64, prefix=80, max_len=80) == 1  # a full cache still answers its one chosen token
    assert LAYOUTS["concat"].room(64, 40, 0) == 64
    assert "12 tokens" in static.describe(12, (4, 8)) and "4 or 8" in static.describe(12, (4, 8))


def test_the_python_constants_are_the_contracts():
    assert manifest.MAX_FILES == CONTRACT["manifest"]["max_files"] and manifest.KV_LAYOUTS == tuple(LAYOUTS)
    assert limits.MAX_SEED == 2**64 - 1 and limits.MAX_PROMPT_CHARS == CONTRACT["limits"]["max_prompt_chars"]
    assert io_names.past_key(3) == "past_key_values.3.key" and io_names.present_value(0) == "present.0.value"
    with pytest.raises(TypeError):  # read-only: nothing changes the contract at run time
        CONTRACT["limits"]["max_threads"] = 1
