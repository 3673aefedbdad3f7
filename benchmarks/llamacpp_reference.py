"""llama.cpp as a peer: the same Gemma decoder, converted and quantized by llama.cpp's own tools.

Benchmark-only: needs a llama.cpp source tree (its convert_hf_to_gguf.py and gguf-py) and a build of it with
llama-quantize and llama-bench; `pip install sentencepiece` for the converter's vocabulary. Two steps:

1. `build`: the language model of a pgexport source as a Gemma checkpoint (genai_reference.export_gemma: the
   random-weight preset is drawn with the bundle's seed, so the weights are the bundle's), a SentencePiece
   tokenizer.model written from its tokenizer.json (llama.cpp's Gemma converter reads only that format), then
   `convert_hf_to_gguf.py --outtype bf16` and `llama-quantize` to each type asked for (default Q4_0 and Q4_K_M).
2. `time` (its own process, so that the peak RSS is llama-bench's alone): `llama-bench -p P -n N -pg P,N` on a
   GGUF. Prefill is the pp test (text only, causal); decode is N / (t(pg) - t(pp)), the new tokens at the
   prefix's depth, as the other engines decode. Prints one JSON line.

    python benchmarks/llamacpp_reference.py build --llama-src SRC --llama-bin BIN --work bench-work/llamacpp
    python benchmarks/llamacpp_reference.py time GGUF --llama-bin BIN --prompt-tokens 259 --new-tokens 32
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

_BYTE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def sentencepiece_model(tokenizer_json: Path, out: Path) -> None:
    """A SentencePiece BPE model with tokenizer.json's pieces, in id order (score -id: earlier merges win).
    Only its vocabulary is read by the converter; speed does not depend on the token strings."""
    from sentencepiece import SentencePieceProcessor
    from sentencepiece import sentencepiece_model_pb2 as sp

    spec = json.loads(tokenizer_json.read_text())
    vocab = {**spec["model"]["vocab"], **{t["content"]: t["id"] for t in spec.get("added_tokens", [])}}
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise SystemExit(f"error: {tokenizer_json}: token ids are not 0..{len(by_id) - 1}")
    special = {t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
    unk = spec["model"].get("unk_token") or "<unk>"
    proto = sp.ModelProto()
    proto.trainer_spec.model_type = sp.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(by_id)
    proto.trainer_spec.byte_fallback = any(_BYTE.fullmatch(t) for t, _ in by_id[:1000])
    for name in ("pad", "eos", "bos", "unk"):
        token = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": unk}[name]
        setattr(proto.trainer_spec, f"{name}_id", vocab.get(token, -1))
        setattr(proto.trainer_spec, f"{name}_piece", token)
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    types = sp.ModelProto.SentencePiece
    for token, i in by_id:
        kind = (types.UNKNOWN if token == unk else types.CONTROL if token in special
                else types.BYTE if _BYTE.fullmatch(token) else types.NORMAL)
        proto.pieces.add(piece=token, score=-float(i), type=kind)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(proto.SerializeToString())
    if SentencePieceProcessor(model_file=str(tmp)).vocab_size() != len(by_id):
        raise SystemExit("error: the SentencePiece model does not load with every piece")
    tmp.replace(out)


def build(source: str, llama_src: Path, llama_bin: Path, work: Path, types: list[str]) -> list[Path]:
    import genai_reference

    ckpt = genai_reference.export_gemma(source, work / f"{source}-gemma")
    if not (ckpt / "tokenizer.model").exists():
        sentencepiece_model(ckpt / "tokenizer.json", ckpt / "tokenizer.model")
    bf16 = work / f"{source}-BF16.gguf"
    if not bf16.exists():
        tmp = bf16.with_name(bf16.name + ".partial")
        env = {**os.environ, "PYTHONPATH": str(llama_src / "gguf-py")}
        subprocess.run([sys.executable, str(llama_src / "convert_hf_to_gguf.py"), str(ckpt), "--outtype", "bf16",
                        "--outfile", str(tmp)], check=True, env=env)
        tmp.replace(bf16)
    out = []
    for kind in types:
        path = work / f"{source}-{kind}.gguf"
        if not path.exists():
            tmp = path.with_name(path.name + ".partial")
            subprocess.run([str(llama_bin / "llama-quantize"), str(bf16), str(tmp), kind, "2"], check=True)
            tmp.replace(path)
        out.append(path)
    return out


def time_gguf(gguf: Path, llama_bin: Path, prompt_tokens: int, new_tokens: int, repeats: int, threads: int) -> dict:
    cmd = [str(llama_bin / "llama-bench"), "-m", str(gguf), "-p", str(prompt_tokens), "-n", "0",
           "-pg", f"{prompt_tokens},{new_tokens}", "-r", str(repeats), "-o", "json"]
    if threads:
        cmd += ["-t", str(threads)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    rows = json.loads(done.stdout)
    pp = next(r for r in rows if r["n_prompt"] == prompt_tokens and r["n_gen"] == 0)
    pg = next(r for r in rows if r["n_prompt"] == prompt_tokens and r["n_gen"] == new_tokens)
    pp_s = [ns / 1e9 for ns in pp["samples_ns"]]
    pg_s = [ns / 1e9 for ns in pg["samples_ns"]]
    prefill = statistics.median(pp_s)
    decode_s = statistics.median(pg_s) - prefill  # the N new tokens at depth P
    return {"engine": "llama.cpp", "gguf": gguf.name, "type": pp.get("model_type", ""), "size_bytes": gguf.stat().st_size,
            "prefill_ms": 1e3 * prefill, "decode_ms_per_token": 1e3 * decode_s / new_tokens,
            "decode_tokens_per_s": new_tokens / decode_s, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "repeats": repeats, "threads": pp.get("n_threads"), "build": pp.get("build_commit", ""),
            "cpu_info": pp.get("cpu_info", ""), "backends": pp.get("backends", ""),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 2**20}


def main() -> None:
    import peer_cli  # beside this file

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="export the Gemma checkpoint, convert it to GGUF and quantize it")
    b.add_argument("--model", default="paligemma-3b-224")
    b.add_argument("--llama-src", type=Path, required=True, help="llama.cpp source tree (convert_hf_to_gguf.py)")
    b.add_argument("--llama-bin", type=Path, required=True, help="folder with llama-quantize and llama-bench")
    b.add_argument("--work", type=Path, default=Path("bench-work/llamacpp"))
    b.add_argument("--types", nargs="+", default=["Q4_0", "Q4_K_M"])
    t = sub.add_parser("time", help="llama-bench one GGUF (own process)")
    t.add_argument("gguf", type=Path)
    t.add_argument("--llama-bin", type=Path, required=True)
    peer_cli.add_timing(t)
    args = parser.parse_args()
    if args.cmd == "build":
        for path in build(args.model, args.llama_src, args.llama_bin, args.work, args.types):
            print(path)
    else:
        if shutil.which(str(args.llama_bin / "llama-bench")) is None:
            sys.exit(f"error: no llama-bench in {args.llama_bin}")
        print(json.dumps(time_gguf(args.gguf, args.llama_bin, args.prompt_tokens, args.new_tokens, args.repeats,
                                   args.threads)))


if __name__ == "__main__":
    main()
