"""The JavaScript runtime (runtimes/web) against the Python runtime, on demo bundles built in this session.

The Python runtime writes the shared vectors (tests/web/vectors.py): pixel values of awkward images, prompt token
ids, and the `--json` answers of >= 30 held-out demo items across the five tasks, for an fp32 and an int4 bundle.
Then the Node tests (node --test) compare against them: fp32 identical, int4 token agreement above a measured
floor, preprocessing within 1e-6, tampered bundles refused; and headless Chromium (Debian's chromium, driven by
playwright-core) runs the runtime's page served by pgexport.serve, on WASM and on WebGPU (chromium's software
adapter, SwiftShader).

Needs node and npm (and chromium for the browser tests, with its WebGPU adapter for the WebGPU test). Outside CI a
missing tool skips with the reason; with the CI environment variable set it fails, so that CI cannot pass without
having run them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "runtimes" / "web"
MODEL_DIR = ROOT / "models" / "pg-demo"
CHROMIUM = os.environ.get("PGEXPORT_CHROMIUM", "/usr/bin/chromium")
NPM_ENV = {"ONNXRUNTIME_NODE_INSTALL": "skip", "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}  # never fetch binaries

pytestmark = pytest.mark.skipif(not (MODEL_DIR / "model.safetensors").is_file(),
                                reason="the demo model (models/pg-demo/model.safetensors) is not trained yet")


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI is set: the JavaScript runtime's tests must run here)")
    pytest.skip(what)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """runtimes/web/node_modules from the committed lockfile: `npm ci` when absent or installed from another lockfile."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            _missing(f"{tool} is not installed")
    lock = hashlib.sha256((WEB / "package-lock.json").read_bytes()).hexdigest()
    stamp = WEB / "node_modules" / ".pgexport-lock-sha256"
    if not stamp.is_file() or stamp.read_text() != lock:
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=WEB, capture_output=True, text=True,
                           env={**os.environ, **NPM_ENV}, timeout=600)
        assert r.returncode == 0, f"npm ci failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        stamp.write_text(lock)
    return WEB / "node_modules"


@pytest.fixture(scope="module")
def vectors(demo_bundles, tmp_path_factory) -> Path:
    sys.path.insert(0, str(Path(__file__).parent / "web"))
    try:
        from vectors import write_vectors
    finally:
        sys.path.pop(0)
    out = tmp_path_factory.mktemp("web-vectors")
    write_vectors(out, demo_bundles, n_items=30)
    return out


def test_node_runtime_matches_python(node_modules, vectors):
    tests = sorted(str(p.relative_to(WEB)) for p in (WEB / "test").glob("*.test.js"))
    start = time.monotonic()
    r = subprocess.run(["node", "--test", *tests], cwd=WEB, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PGEXPORT_WEB_VECTORS": str(vectors)})
    figures = [line.lstrip("# ") for line in r.stdout.splitlines()
               if any(k in line for k in ("FP32_TOKENS", "INT4_TOKEN_AGREEMENT", "PREPROCESS_MAX_DIFF"))]
    print(f"node --test ({time.monotonic() - start:.0f} s): " + "; ".join(figures))
    failed = [line for line in r.stdout.splitlines() if line.startswith("not ok") or "error:" in line]
    assert r.returncode == 0, "\n".join(failed[:20]) + "\n" + r.stdout[-4000:] + r.stderr[-2000:]
    assert len(figures) == 4, r.stdout[-4000:]


@pytest.fixture()
def serving(demo_bundles):
    """serving(key) -> the URL of a pgexport.serve server for that demo bundle (or a bundle directory), stopped
    after the test."""
    from pgexport.serve import make_server

    servers = []

    def start(key: str | Path = "fp32") -> str:
        srv = make_server(demo_bundles[key] if isinstance(key, str) else key, port=0, quiet=True)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_serve_sends_only_what_it_lists(node_modules, serving, demo_bundles):
    server = serving("fp32")

    def get(path: str):
        try:
            with urllib.request.urlopen(server + path) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), b""

    status, headers, body = get("/bundle/manifest.json")
    assert status == 200 and json.loads(body)["schema"] == "pgexport.bundle"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    files = json.loads(body)["files"]
    for name in files:
        assert get(f"/bundle/{name}")[0] == 200, name
    assert get("/ort/ort-wasm-simd-threaded.jsep.wasm")[1]["Content-Type"] == "application/wasm"
    (demo_bundles["fp32"] / "stray.txt").write_text("not listed")
    for path in ["/bundle/stray.txt", "/bundle/../pyproject.toml", "/bundle/%2e%2e/pyproject.toml", "/pyproject.toml",
                 "/src/../cli.js", "/ort/ort.wasm.min.mjs", "/ort/ort.webgpu.min.mjs", "/ort/ort.min.mjs.map", "/node_modules/sharp/package.json",
                 "/page/../../../pyproject.toml", "//etc/passwd"]:
        assert get(path)[0] == 404, path
    (demo_bundles["fp32"] / "stray.txt").unlink()


def test_serve_does_not_import_torch():
    code = "import sys, pgexport.serve; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


# The int4 bundle too: onnxruntime-web's builds differ in the contrib kernels they carry (its WebGPU-only build has
# no WASM kernel for GatherBlockQuantized, the int4 embedding), so an fp32 run alone proves little for int4. Its
# int4 tokens need not be identical to the Python runtime's (the WASM MatMulNBits kernel is not MLAS's; in Node the
# same WASM engine agreed on 99.4 % of tokens, runtimes/web/test/generate.test.js); measured in Chromium: 1.0 on these
# four items. The floor leaves room for near-ties that other recipes or versions flip; fp32 must be identical.
INT4_BROWSER_FLOOR = 0.7


@pytest.mark.parametrize("key,tasks", [("fp32", "caption,detect,segment"), ("int4", "caption,vqa,ocr,detect")])
def test_browser_demo_page(node_modules, vectors, serving, tmp_path, key, tasks):
    if not Path(CHROMIUM).is_file():
        _missing(f"chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    out = Path(os.environ.get("PGEXPORT_ARTIFACTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    shot = out / f"web-demo-{key}.png"
    start = time.monotonic()
    r = subprocess.run(["node", "test/browser.mjs", serving(key) + "/", str(vectors), str(shot), key, tasks], cwd=WEB,
                       capture_output=True, text=True, timeout=600)
    lines = r.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"failures": [r.stderr[-2000:]]}
    items = "; ".join(f"{i['id']} {i['prompt']!r}: tokens identical {i['tokens_identical']}"
                      for i in result.get("items", []))
    shots = [shot.with_name(f"{shot.stem}-{t}.png") for t in tasks.split(",") if t != "caption"]
    print(f"browser {key} ({time.monotonic() - start:.0f} s, {result.get('load', {}).get('backend')}): {items}; "
          f"screenshots {' '.join(map(str, shots))}")
    assert r.returncode == 0 and not result["failures"], result["failures"] or r.stderr[-2000:]
    if key == "fp32":
        assert [i["tokens_identical"] for i in result["items"]] == [True] * len(tasks.split(","))
    else:
        same, total = sum(i["agree"] for i in result["items"]), sum(i["of"] for i in result["items"])
        print(f"browser {key} token agreement with the Python runtime: {same / total:.3f} ({same}/{total})")
        assert same / total >= INT4_BROWSER_FLOOR, f"{key} token agreement {same}/{total} < {INT4_BROWSER_FLOOR}"
    assert all(p.stat().st_size > 10_000 for p in shots)


def _webgpu_page(url: str, cases: list[dict], tmp_path: Path) -> tuple[dict, dict]:
    """runtimes/web/test/webgpu.mjs on a served bundle: what the page did with ?device=webgpu, then with ?device=wasm
    (with cases) or ?device=auto (without)."""
    if not Path(CHROMIUM).is_file():
        _missing(f"chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    r = subprocess.run(["node", "test/webgpu.mjs", url, str(tmp_path / "cases.json")], cwd=WEB, capture_output=True,
                       text=True, timeout=600)
    lines = r.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"failures": [r.stderr[-2000:]]}
    assert r.returncode == 0 and not result["failures"], result["failures"] or r.stderr[-2000:]
    if result["webgpu"]["browserAdapter"] is None:
        _missing("chromium gives no WebGPU adapter (SwiftShader through Vulkan: flags in runtimes/web/test/webgpu.mjs)")
    return result["webgpu"], result["wasm" if cases else "auto"]


def _has_branches(decoder: Path) -> bool:
    import onnx

    return any(n.op_type == "If" for n in onnx.load(str(decoder), load_external_data=False).graph.node)


@pytest.mark.parametrize("name", ["tiny-pg1", "tiny-pg2", "fp32"])
def test_browser_webgpu_matches_wasm(node_modules, serving, bundles, demo_bundles, images, tmp_path, name):
    """The runtime on WebGPU in headless Chromium (a software adapter: SwiftShader): the greedy tokens of the WASM
    backend on the same page, images and prompts (fp32: tiny PaliGemma 1 and 2, one image per prompt; the demo
    model, one held-out item per task), with the KV cache kept on the GPU between decoder calls."""
    from conftest import PROMPTS
    from pgexport.verify import image_prompts

    if name == "fp32":
        cases = [{"image": str(row.image), "prompt": row.prompt, "max_new_tokens": row.max_new_tokens}
                 for row in image_prompts.read(image_prompts.DEMO_SET, "eval", limit=5)]  # one item per task
        url = serving("fp32")
    else:
        cases = []
        for i, (image, prompt) in enumerate(zip(images, PROMPTS)):
            image.save(tmp_path / f"image{i}.png")
            cases.append({"image": str(tmp_path / f"image{i}.png"), "prompt": prompt, "max_new_tokens": 12})
        url = serving(bundles[name])
    bundle = demo_bundles["fp32"] if name == "fp32" else bundles[name]
    # the decoder's attention takes one of two paths on whether the call masks anything (an If on one bool,
    # export/decoder.py): onnxruntime-web reads that bool back, through the same 16-byte rounding
    branch_bytes = 16 if _has_branches(bundle / "decoder.onnx") else 0
    start = time.monotonic()
    webgpu, wasm = _webgpu_page(url, cases, tmp_path)
    print(f"webgpu {name} ({time.monotonic() - start:.0f} s: WebGPU {webgpu['answerSeconds']:.0f} s, WASM "
          f"{wasm['answerSeconds']:.0f} s) on {webgpu['ortAdapter']}: {[i['tokens'] for i in webgpu['items']]}")
    assert webgpu["backend"] == "webgpu" and webgpu["ortAdapter"] is not None, webgpu
    assert wasm["backend"].startswith("wasm"), wasm
    assert [i["tokens"] for i in webgpu["items"]] == [i["tokens"] for i in wasm["items"]]
    steps = [(c["prompt"], n, step) for c, item in zip(cases, webgpu["items"]) for n, step in enumerate(item["steps"])]
    assert sum(n > 0 for _, n, _ in steps) >= len(cases), "too few decode steps to tell where the KV cache stays"
    for prompt, n, step in steps:
        # every present stays on the GPU; from the first decode step on, each past is the very GPU tensor the
        # previous call returned as its present; nothing but the logits and the attention path's bool is read
        # back (onnxruntime-web reads back through a buffer rounded up to 16 bytes)
        assert step["present"] == ["gpu-buffer"], (prompt, n, step)
        if n > 0:
            assert step["past"] == ["gpu-buffer"] and step["pastFromPrevious"], (prompt, n, step)
        assert step["readBytes"] <= -(-step["logitsBytes"] // 16) * 16 + branch_bytes, (prompt, n, step)
    assert all(i["disposed"] for i in webgpu["items"]), "a present tensor was left undisposed on the GPU"


@pytest.mark.parametrize("layout, says", [
    ("shared", "KV-cache layout 'shared' does not run on WebGPU (onnxruntime-web's GroupQueryAttention there has no "
               "causal=0): use device 'wasm' or a bundle built with --kv-cache concat"),
    ("static", "KV-cache layout 'static' is not supported by this runtime (concat, shared)")])
def test_browser_webgpu_refuses_a_layout_it_cannot_take(node_modules, serving, layout_bundles, tmp_path, layout, says):
    """?device=webgpu on a bundle whose KV-cache layout the WebGPU path cannot take: the page's one-line error.
    ?device=auto loads such a bundle on WASM where the runtime takes the layout there (shared), and gives the
    runtime's own refusal where it takes it nowhere (static)."""
    webgpu, auto = _webgpu_page(serving(layout_bundles[layout]), [], tmp_path)
    error = webgpu["error"]  # the page's status line: "Cannot load the bundle: " and the runtime's one-line error
    assert webgpu["backend"] is None and error.startswith("Cannot load the bundle: ") and error.endswith(says), webgpu
    assert "\n" not in error, error
    if layout == "shared":
        assert auto["backend"].startswith("wasm"), auto
    else:
        assert auto["backend"] is None and auto["error"].endswith(says), auto


def test_node_runtime_runs_an_ort_packaged_bundle(node_modules, demo_bundles, tmp_path):
    """`pgexport package` output (ORT format) in onnxruntime-node: the same JSON answers as the Python runtime
    gives on the .onnx bundle it came from (int4: MatMulNBits and GatherBlockQuantized in ORT format)."""
    from pgexport.verify import image_prompts
    from pgexport.package import package
    from pgexport_runtime import PaliGemma

    packaged = package(demo_bundles["int4"], tmp_path / "int4-ort", mobile_check=False)
    pg = PaliGemma(demo_bundles["int4"])
    for row in image_prompts.read(image_prompts.DEMO_SET, "eval", limit=5):  # one item per task
        want = pg.answer(row.image, row.prompt, max_new_tokens=row.max_new_tokens).to_json()
        r = subprocess.run(["node", str(WEB / "cli.js"), str(packaged), "--image", str(row.image), "--prompt",
                            row.prompt, "--max-new-tokens", str(row.max_new_tokens), "--json"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads(r.stdout) == want, row.id


@pytest.mark.parametrize("name", ["tiny-pg1", "tiny-pg2"])
def test_node_runtime_runs_a_shared_kv_cache_bundle(node_modules, bundles, images, name, tmp_path):
    """A bundle built with --kv-cache shared in onnxruntime-node (one preallocated buffer per tensor, written in
    place) and onnxruntime-web's WASM backend (handed off): the Python runtime's answers on it, which are the
    concat bundle's tokens."""
    from pgexport.build.bundle_steps import BuildOptions, build
    from pgexport_runtime import PaliGemma

    shared = build(BuildOptions(model=name, out=tmp_path / "shared", kv_cache="shared", parity_tokens=4))
    image = tmp_path / "image.png"
    images[1].save(image)
    pg, concat = PaliGemma(shared), PaliGemma(bundles[name])
    for prompt in ("caption en", "answer en what is the colour of the big circle on the left side?"):
        want = pg.answer(str(image), prompt, max_new_tokens=12).to_json()
        assert want["tokens"] == list(concat.answer(str(image), prompt, max_new_tokens=12).tokens)
        for backend in ("node", "wasm"):
            r = subprocess.run(["node", str(WEB / "cli.js"), str(shared), "--image", str(image), "--prompt", prompt,
                                "--max-new-tokens", "12", "--json", "--backend", backend],
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr[-2000:]
            assert json.loads(r.stdout) == want, (backend, prompt)


@pytest.mark.parametrize("layout, says", [
    ("shared", "returns past + new tokens as its present, but the manifest says KV-cache layout 'shared'"),
    ("static", "KV-cache layout 'static' is not supported by this runtime (concat, shared)")])
def test_node_runtime_refuses_a_layout_the_graph_does_not_have(node_modules, bundles, tmp_path, layout, says):
    """A manifest that says "shared" over a concat decoder, or "static" (fixed shapes: the Python runtime only):
    one line at load, on both backends."""
    bundle = tmp_path / "b"
    shutil.copytree(bundles["tiny-pg1"], bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["kv_cache"]["layout"] = layout
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    image = min((ROOT / "models" / "pg-demo-heldout" / "images").iterdir())
    for backend in ("node", "wasm"):
        r = subprocess.run(["node", str(WEB / "cli.js"), str(bundle), "--image", str(image), "--prompt", "caption en",
                            "--backend", backend], capture_output=True, text=True, timeout=300)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode != 0 and len(lines) == 1, r.stderr
        assert says in lines[0], lines[0]
