"""The cases both runtimes must refuse alike (tests/runtime_cases.json), read for the Python runtime.

runtime_cases.json is the one list: tests/catalogue.py adds its cases to the catalogue (run through `pgexport run`),
and runtimes/web/test/cases.test.js runs the same cases through the JavaScript runtime's CLI. This module turns a
case's declarative args and setup steps into the catalogue's format strings and setup function.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

CASES_FILE = Path(__file__).with_name("runtime_cases.json")


def load() -> list[dict]:
    return json.loads(CASES_FILE.read_text(encoding="utf-8"))["cases"]


def args(items: list) -> tuple[str, ...]:
    """A case's arguments as the catalogue's format strings (bytes that are not UTF-8 as os.fsdecode gives them:
    subprocess passes them on as the same bytes)."""
    out: list[str] = []
    for a in items:
        if isinstance(a, str):
            out.append(a)
        elif "hex" in a:
            out.append(os.fsdecode(bytes.fromhex(a["hex"])).replace("{", "{{").replace("}", "}}"))
        elif "repeat" in a:
            out.append((a["text"] + a["repeat"] * a["times"]).replace("{", "{{").replace("}", "}}"))
        else:
            out.extend(args(a["args"]) * a["times"])
    return tuple(out)


def setup(steps: list[dict]) -> Callable | None:
    """The case's setup steps as one function of the catalogue's Workspace."""
    if not steps:
        return None

    def run(ws) -> None:
        for step in steps:
            if "set" in step:
                m = ws.manifest()
                *parents, key = step["set"]
                target = m
                for k in parents:
                    target = target[k]
                target[key] = step["to"]
                ws.write_manifest(m)
            elif "write" in step:
                (ws.root / step["write"]).write_text(step["text"], encoding="utf-8")
            elif step.get("tokenizer") == "wordlevel":
                name = ws.manifest()["tokenizer"]["file"]
                path = ws.bundle / name
                path.write_text(json.dumps(as_wordlevel(json.loads(path.read_text(encoding="utf-8")), step["unk_token"])),
                                encoding="utf-8")
                ws.rehash(name)
            else:
                raise ValueError(f"unknown setup step {step}")
    return run


def as_wordlevel(tokenizer: dict, unk_token: str) -> dict:
    """A tokenizer.json (BPE or WordPiece: a vocabulary object) made a WordLevel model over the same vocabulary and
    added tokens: whitespace-split words, no normalizer, no decoder, `unk_token` for the words outside it."""
    return {**tokenizer, "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"}, "decoder": None,
            "model": {"type": "WordLevel", "vocab": tokenizer["model"]["vocab"], "unk_token": unk_token}}
