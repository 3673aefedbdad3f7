"""Greedy answer tokens of bundles on image + prompt items, with the Python runtime alone (no torch, no pgexport):
what runs the same on any Python that can import pgexport_runtime, an emulated ARM64 one included (tools/arm64.py).

    python tools/greedy_tokens.py JOB.json OUT.json

JOB: {"bundles": [path, ...], "items": [{"image": path, "prompt": str, "max_new_tokens": int}, ...], and optionally
"session": SessionConfig's fields}.
OUT: {"machine": platform.machine(), "tokens": {bundle: [[token, ...] per item]}}, written when every bundle has run.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path


def main(job_file: str, out_file: str) -> None:
    from pgexport_runtime import PaliGemma, SessionConfig

    job = json.loads(Path(job_file).read_text())
    tokens = {}
    for bundle in job["bundles"]:
        pg = PaliGemma(bundle, session=SessionConfig(**job.get("session", {})))
        tokens[bundle] = [pg.generate([item["image"]], [item["prompt"]], max_new_tokens=item["max_new_tokens"])[0].tokens
                          for item in job["items"]]
        del pg
    out = Path(out_file)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"machine": platform.machine(), "tokens": tokens}))
    tmp.replace(out)


if __name__ == "__main__":
    main(*sys.argv[1:])
