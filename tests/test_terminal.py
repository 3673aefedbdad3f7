"""Text from outside the program reaches a terminal shown, never obeyed: pgexport_runtime.terminal.printable, and
the command lines that print manifest strings (`inspect`), model text (`run`) and errors through it. JSON output
is left exact. The catalogue (tests/catalogue.py) has the one-line errors of `pgexport`; here are the runtime's
own command line and the outputs that are not errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pgexport_runtime.manifest import sha256_file
from pgexport_runtime.terminal import printable

RUNTIME = (sys.executable, "-m", "pgexport_runtime")
EXPORTER = (sys.executable, "-m", "pgexport.cli")
# what a terminal obeys: C0 but newline (print's own), DEL, C1, bidi controls, line and paragraph separators
OBEYED = {*map(chr, range(0x20)), *map(chr, range(0x7F, 0xA0)), "\u061c", "\u200e", "\u200f", "\u2028", "\u2029",
          *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))} - {"\n"}


@pytest.mark.parametrize("raw, shown", [
    ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),  # clear the screen, cursor home
    ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),  # set the window title
    ("ok\nparity ok: greedy = transformers", "ok\\nparity ok: greedy = transformers"),  # a forged line
    ("50%\rdone", "50%\\rdone"),  # a carriage return overwrites the line
    ("a\tb\x00c\x7fd", "a\\tb\\x00c\\x7fd"),
    ("\x9b2J\x85\x90", "\\x9b2J\\x85\\x90"),  # C1: a one-byte CSI, NEL, DCS
    ("photo\u202egnp.exe", "photo\\u202egnp.exe"),  # right-to-left override: shows as photoexe.png
    ("\u2066x\u2069\u200f\u061c", "\\u2066x\\u2069\\u200f\\u061c"),  # isolates and marks
    ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),  # line and paragraph separators
    ("bad\udcffname.png", "bad\\udcffname.png"),  # an undecodable byte of a file name
])
def test_printable_shows_what_a_terminal_would_obey(raw, shown):
    assert printable(raw) == shown
    assert not OBEYED & set(shown) and len(shown.splitlines()) == 1


def test_printable_leaves_other_text_as_it_is():
    text = "café, naïve, 漢字, Ελληνικά, עברית, 👩\u200d💻 and a literal backslash: C:\\x1b"
    assert printable(text) == text
    assert printable(3) == "3"


# ------------------------------------------------------------------------------------ the command lines

@pytest.fixture
def bundle(tiny_bundle_copy) -> Path:
    return tiny_bundle_copy


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(path)
    return path


def cli(*args, command=RUNTIME) -> subprocess.CompletedProcess:
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, errors="replace", timeout=300)


def edit_manifest(bundle: Path, fn) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    fn(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return manifest


FORGED = "tiny-pg1\n\x1b[2J\x1b]0;owned\x07parity ok: greedy = transformers (all 8 tokens)"


@pytest.mark.parametrize("name, fn", [
    ("spec forges a line", lambda m: m["source"].update(spec=FORGED)),
    ("tool versions", lambda m: m["tools"].update({"onnx\x1b[1A\x1b[2K": "1.17\u202e0.0.1", "torch": "2.5\r\x9b2J"})),
    ("adapter", lambda m: m["source"].update(adapter={"name": "lora\u2028\u2066x", "peft_type": "LORA\x1bc", "rank": 8})),
])
@pytest.mark.parametrize("command", [RUNTIME, EXPORTER], ids=["pgexport-run", "pgexport"])
def test_inspect_shows_manifest_strings_escaped_and_json_exact(bundle, name, fn, command):
    plain = cli("inspect", bundle, command=command)
    assert plain.returncode == 0, plain.stderr
    manifest = edit_manifest(bundle, fn)
    r = cli("inspect", bundle, command=command)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert not OBEYED & set(r.stdout), repr(r.stdout)
    lines = r.stdout.splitlines()
    assert len(lines) == len(plain.stdout.splitlines())  # nothing forged a line of its own
    assert not any(line.startswith("parity ok") for line in lines)
    assert "\\x1b" in r.stdout or "\\u2028" in r.stdout
    as_json = cli("inspect", bundle, "--json", command=command)
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == manifest  # every string as it is stored


def swap_to_escape(bundle: Path, token: int) -> None:
    """The tokenizer's vocabulary with `token` and the byte token <0x1B> swapped: the id the model answers with
    decodes to ESC (the byte-fallback decoder turns <0x1B> into that byte). The manifest's sha256 follows."""
    path = bundle / "tokenizer.json"
    tok = json.loads(path.read_text())
    vocab = tok["model"]["vocab"]
    name = next(k for k, v in vocab.items() if v == token)
    vocab[name], vocab["<0x1B>"] = vocab["<0x1B>"], token
    path.write_text(json.dumps(tok))
    edit_manifest(bundle, lambda m: m["files"].update({"tokenizer.json": sha256_file(path)}))


@pytest.mark.parametrize("extra", [(), ("--stream",), ("--prompt", "ocr")], ids=["answer", "streamed", "two-prompts"])
def test_model_text_that_decodes_to_escape_is_shown_escaped(bundle, image, extra):
    run = ("run", bundle, "--image", image, "--prompt", "caption en", "--max-new-tokens", "3")
    first = json.loads(cli(*run, "--json").stdout)
    tok = json.loads((bundle / "tokenizer.json").read_text())
    added = {t["id"] for t in tok["added_tokens"]}
    token = next(t for t in first["tokens"] if t not in added)  # a plain vocabulary entry the model answers with
    swap_to_escape(bundle, token)
    answer = json.loads(cli(*run, "--json").stdout)
    assert answer["tokens"] == first["tokens"] and "\x1b" in answer["text"]  # the model now prints ESC
    r = cli(*run, *extra)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout + r.stderr and "\\x1b" in r.stdout


def test_json_answers_keep_the_text_exact(bundle, image):
    run = ("run", bundle, "--image", image, "--prompt", "caption en", "--max-new-tokens", "3", "--json")
    first = json.loads(cli(*run).stdout)
    tok = json.loads((bundle / "tokenizer.json").read_text())
    token = next(t for t in first["tokens"] if t not in {a["id"] for a in tok["added_tokens"]})
    swap_to_escape(bundle, token)
    r = cli(*run)
    assert "\x1b" not in r.stdout and "\\u001b" in r.stdout  # JSON's own escape, which decodes to ESC
    assert json.loads(r.stdout)["text"].count("\x1b") == 1


def test_a_prompt_is_shown_escaped_above_its_answer(bundle, image):
    r = cli("run", bundle, "--image", image, "--prompt", "caption en", "--prompt", "ocr\x1b[2J\nforged",
            "--max-new-tokens", "2")
    assert r.returncode == 0, r.stderr
    assert "[ocr\\x1b[2J\\nforged]" in r.stdout.splitlines() and "\x1b" not in r.stdout


@pytest.mark.parametrize("args, needle", [
    (("run", "{bundle}", "--image", "no\nsuch.png", "--prompt", "ocr"), "image not found: no\\nsuch.png"),
    (("run", "{bundle}", "--image", "\x1b]0;owned\x07\u202egnp.exe", "--prompt", "ocr"),
     "image not found: \\x1b]0;owned\\x07\\u202egnp.exe"),
    (("inspect", "no\r\nbundle"), "no\\r\\nbundle: no such bundle directory"),
    (("run", "{bundle}", "--image", "{image}", "--prompt", "ocr", "--\x1b[2J"), "unrecognized arguments: --\\x1b[2J"),
])
def test_runtime_errors_stay_one_line_with_escapes_shown(bundle, image, args, needle):
    r = cli(*(a.format(bundle=bundle, image=image) for a in args))
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not OBEYED & set(r.stderr)


def test_runtime_error_from_a_manifest_key_with_a_newline_is_one_line(bundle):
    edit_manifest(bundle, lambda m: m["parity"]["checks"].update({"x\nparity ok: greedy = transformers": 1}))
    r = cli("inspect", bundle)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "parity.checks.x\\nparity ok: greedy = transformers must be an object" in lines[0]
