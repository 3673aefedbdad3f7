"""Dynamic int8 for a vision encoder: error against float32 and speed, per weight type, on this CPU, and what
the same quantized weights would give on a CPU whose integer products do not saturate.

    python benchmarks/vision_int8.py BUNDLE_FP32|VISION.onnx [--n 40] [--repeats 5] [--threads 2] [--size 224]

BUNDLE_FP32 is a float32 bundle (its vision_encoder.onnx is the input), or a float32 vision graph alone (seeded
noise images of --size). Variants, all made with onnxruntime's
`quantize_dynamic` (per channel, the MatMuls with constant weights, as the recipes do):
- u8s8: uint8 activations, int8 weights (the recipes' choice);
- u8s8 reduce_range: 7-bit weights, onnxruntime's advice for x86 without VNNI;
- u8u8: uint8 weights.
"exact" rows replace each MatMulInteger by the float product of the same integers (no int16 pair sums), which
is what VNNI and ARM's dot-product kernels compute; the difference to the plain row is this CPU's saturation.
Images: the demo held-out set for the demo model, seeded noise otherwise. Error metrics over all images:
max |err| / max |ref| and 1 - cosine of the flattened features. Time: median seconds per image (batch 1).
The table goes to docs/measurements/NAME.md.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from pgexport.bench.harness import cpu, median_seconds, write_measurement
from pgexport.verify import image_prompts
from pgexport_runtime.manifest import load_manifest
from pgexport_runtime.preprocess import preprocess

COLUMNS = ("weights", "products", "max rel. error", "1 - cosine", "s/image")
VARIANTS = {"u8s8": (QuantType.QInt8, False), "u8s8 reduce_range": (QuantType.QInt8, True),
            "u8u8": (QuantType.QUInt8, False)}


def quantize(src: Path, dst: Path, weight_type, reduce_range: bool) -> None:
    quantize_dynamic(src, dst, per_channel=True, weight_type=weight_type, reduce_range=reduce_range,
                     op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True},
                     use_external_data_format=True)


def exact(src: Path, dst: Path) -> None:
    """Each MatMulInteger(a, B, a_zp, b_zp) -> MatMul(float(a) - float(a_zp), float(B - b_zp)), same output name
    (its consumer casts int32 to float; a float input casts to itself)."""
    model = onnx.load(str(src))
    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    for n in model.graph.node:
        if n.op_type != "MatMulInteger":
            nodes.append(n)
            continue
        a, b = n.input[0], n.input[1]
        a_zp = n.input[2] if len(n.input) > 2 and n.input[2] else None
        b_zp = n.input[3] if len(n.input) > 3 and n.input[3] else None
        w = numpy_helper.to_array(inits[b]).astype(np.float32)
        if b_zp:
            zp = numpy_helper.to_array(inits[b_zp]).astype(np.float32)
            w = w - zp.reshape(1, -1) if zp.ndim == 1 else w - zp
        wf = f"{b}__float"
        model.graph.initializer.append(numpy_helper.from_array(w, wf))
        af = f"{n.name}__a"
        nodes.append(helper.make_node("Cast", [a], [af], to=onnx.TensorProto.FLOAT))
        if a_zp:
            nodes.append(helper.make_node("Cast", [a_zp], [f"{n.name}__zp"], to=onnx.TensorProto.FLOAT))
            nodes.append(helper.make_node("Sub", [af, f"{n.name}__zp"], [f"{n.name}__a0"]))
            af = f"{n.name}__a0"
        nodes.append(helper.make_node("MatMul", [af, wf], [n.output[0]]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    del model.graph.value_info[:]
    onnx.save(model, str(dst), save_as_external_data=True, location=dst.name + ".data")


def images(bundle: Path, n: int, size: int) -> np.ndarray:
    if bundle.suffix == ".onnx":  # a graph alone: SigLIP's normalisation of seeded noise
        return np.random.default_rng(0).uniform(-1, 1, (n, 3, size, size)).astype(np.float32)
    m = load_manifest(bundle)
    if (m.raw.get("source") or {}).get("name") == "pg-demo":
        pil = [r.load() for r in image_prompts.read(image_prompts.DEMO_SET, "eval", limit=n)]
    else:
        from PIL import Image

        rng = np.random.default_rng(0)
        h, w = m.preprocessing.size
        pil = [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for _ in range(n)]
    return preprocess(pil, m.preprocessing)


def run(path: Path, pixels: np.ndarray, threads: int, repeats: int) -> tuple[np.ndarray, float]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    out = np.concatenate([s.run(None, {name: pixels[i : i + 1]})[0] for i in range(len(pixels))])
    images = itertools.cycle(pixels[i : i + 1] for i in range(len(pixels)))
    return out, median_seconds(lambda: s.run(None, {name: next(images)}), repeats, warmup=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=224, help="image size when given a graph alone")
    ap.add_argument("--name", default="vision_int8", help="docs/measurements/NAME.md is written")
    ap.add_argument("--out-dir", type=Path, default=None, help="write NAME.md here instead of docs/measurements")
    args = ap.parse_args()
    src = args.bundle if args.bundle.suffix == ".onnx" else args.bundle / "vision_encoder.onnx"
    pixels = images(args.bundle, args.n, args.size)
    ref, t_ref = run(src, pixels, args.threads, args.repeats)
    rows = [("float32", "this CPU", None, None, round(t_ref, 3))]
    with tempfile.TemporaryDirectory() as tmp:
        for label, (wtype, rr) in VARIANTS.items():
            q = Path(tmp) / f"{label.replace(' ', '_')}.onnx"
            quantize(src, q, wtype, rr)
            e = Path(tmp) / f"{label.replace(' ', '_')}_exact.onnx"
            exact(q, e)
            for kind, path in (("this CPU", q), ("exact (VNNI, ARM)", e)):
                out, t = run(path, pixels, args.threads, args.repeats)
                err = np.abs(out - ref).max() / np.abs(ref).max()
                a, b = out.ravel().astype(np.float64), ref.ravel().astype(np.float64)
                cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
                rows.append((label, kind, round(float(err), 4), float(f"{1 - cos:.2e}"),
                             round(t, 3) if kind == "this CPU" else None))
                print(rows[-1], flush=True)
    path = write_measurement(args.name, f"Dynamic int8 vision encoders against float32 ({args.bundle.name})",
                             "benchmarks/vision_int8.py", COLUMNS, rows,
                             [f"{len(pixels)} images, {args.threads} threads; this CPU "
                              f"{'has' if 'vnni' in cpu() else 'has no'} VNNI. s/image: median of {args.repeats} "
                              "runs at batch 1."], args.out_dir)
    print(path.read_text(), end="")


if __name__ == "__main__":
    main()
