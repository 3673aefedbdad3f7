"""Bounds on what a caller may ask for, checked before any work. One module, used by the API and the CLI;
the numbers are contract.json's, shared with the JavaScript runtime.

`PaliGemma.generate` (and so `answer`, `answers`, `__call__`), `Sampling`, `SessionConfig` and the image
loader call these; `pgexport run` calls the same functions before it loads anything, so a request is
refused with the same one-line message whichever way it comes in. Each check raises LimitError, a
UserError that is also a ValueError.

The limits:
- prompt + image tokens + max_new_tokens <= the model's positions (geometry.max_position_embeddings);
  a longer sequence has no trained position, and its KV cache grows with it (a 50k-character prompt
  once ran 192 s at 16 GB);
- threads: 0 (onnxruntime's default) to min(256, 4 x os.cpu_count()); more only adds contention, and
  onnxruntime starts every thread it is given (100000 hung);
- mmap threshold: 0 (glibc's own) or a page to glibc's largest, 32 MiB;
- image pixels: Pillow's own default, 89,478,485 (about 0.27 GB of RGB), raisable per call;
- sampling: finite temperature >= 1e-6 (smaller divides logits into infinities: use greedy), top-p in
  (0, 1], 0 <= top-k <= vocabulary, seed in 0 .. 2**64 - 1;
- a prompt is a non-blank UTF-8 string of at most 1,000,000 characters (a cap on the tokenizer's work
  before the exact positions check), a stop string is non-empty.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence

from pgexport_runtime import heap
from pgexport_runtime.contract import CONTRACT
from pgexport_runtime.errors import LimitError, UserError

_L = CONTRACT["limits"]
MAX_THREADS = _L["max_threads"]
THREADS_PER_CPU = _L["threads_per_cpu"]
DEFAULT_MAX_IMAGE_PIXELS = _L["default_max_image_pixels"]  # Pillow's Image.MAX_IMAGE_PIXELS default
PIXELS_HINT = "raise the limit with --max-image-pixels (CLI) or max_image_pixels= (API) if the image is trusted"
MIN_TEMPERATURE = _L["min_temperature"]
MAX_SEED = 2 ** _L["seed_bits"] - 1
MAX_PROMPT_CHARS = _L["max_prompt_chars"]
MIN_MMAP_THRESHOLD = 4096  # a page: smaller blocks would each take a page of their own


def max_threads() -> int:
    return min(MAX_THREADS, THREADS_PER_CPU * (os.cpu_count() or 1))


def check_threads(n, name: str = "threads") -> int:
    if not _integer(n) or not 0 <= n <= max_threads():
        raise LimitError(f"{name} {n!r} is out of range: use 0 (onnxruntime's default) to {max_threads()} "
                         f"({THREADS_PER_CPU} x the {os.cpu_count()} CPUs, at most {MAX_THREADS})")
    return n


def check_mmap_threshold(size) -> int:
    if not _integer(size) or not (size == 0 or MIN_MMAP_THRESHOLD <= size <= heap.MAX_MMAP_THRESHOLD):
        raise LimitError(f"mmap_threshold {size!r} is out of range: use 0 (glibc's own) or {MIN_MMAP_THRESHOLD} "
                         f"to {heap.MAX_MMAP_THRESHOLD} bytes")
    return size


def check_max_image_pixels(limit) -> int:
    if not _integer(limit) or limit < 1:
        raise LimitError(f"max_image_pixels must be a positive integer, not {limit!r}")
    return limit


def check_image_size(width: int, height: int, limit: int, what: str = "image") -> None:
    if width < 1 or height < 1:
        raise UserError(f"{what} is empty ({width}x{height} pixels)")
    if width * height > limit:
        raise LimitError(f"{what} has {width}x{height} = {width * height:,} pixels, more than the limit of "
                         f"{limit:,}; {PIXELS_HINT}")


def check_sampling(do_sample, temperature, top_k, top_p, seed) -> None:
    """Sampling's own fields (top-k against the vocabulary is check_top_k, once the model is known)."""
    if not isinstance(do_sample, bool):
        raise LimitError(f"do_sample must be True or False, not {do_sample!r}")
    if not _real(temperature) or not MIN_TEMPERATURE <= temperature < math.inf:
        raise LimitError(f"temperature must be a finite number >= {MIN_TEMPERATURE:g}, not {temperature!r} "
                         "(for the most likely token, decode greedily)")
    if not _real(top_p) or not 0 < top_p <= 1:
        raise LimitError(f"top_p must be in (0, 1] (1 = off), not {top_p!r}")
    if not _integer(top_k) or top_k < 0:
        raise LimitError(f"top_k must be an integer >= 0 (0 = off), not {top_k!r}")
    if seed is not None and (not _integer(seed) or not 0 <= seed <= MAX_SEED):
        raise LimitError(f"seed must be an integer in 0..2**64-1, not {seed!r}")


def check_top_k(top_k: int, vocab_size: int) -> None:
    if top_k > vocab_size:
        raise LimitError(f"top_k {top_k} is larger than the model's vocabulary of {vocab_size} tokens")


def check_request(prompts: Sequence[str], max_new_tokens, stop_strings: Sequence[str]) -> None:
    """Everything about a request that needs no model (max_new_tokens None = the bundle's default)."""
    for p in prompts:
        check_prompt(p)
    if max_new_tokens is not None and (not _integer(max_new_tokens) or max_new_tokens < 1):
        # 0 is refused rather than read as "the default" (it once silently meant 64) or as "no tokens"
        # (which would still run the vision encoder and prefill for an empty answer)
        raise LimitError(f"max_new_tokens must be an integer >= 1 (None = the bundle's default), "
                         f"not {max_new_tokens!r}")
    if isinstance(stop_strings, (str, bytes)):
        raise LimitError("stop strings must be a list of strings, not one string")
    for i, s in enumerate(stop_strings, 1):
        if not isinstance(s, str) or not s:
            raise LimitError(f"stop string {i} is empty: it would stop before the first token")
        check_utf8(s, f"stop string {i}")


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str):
        raise UserError(f"a prompt must be a string, not {type(prompt).__name__}")
    if not prompt.strip():
        raise UserError("empty prompt: give a task prefix such as 'caption en', 'ocr' or 'detect cat'")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise LimitError(f"the prompt has {len(prompt):,} characters, more than the {MAX_PROMPT_CHARS:,} "
                         "this runtime reads")
    check_utf8(prompt, "the prompt")
    return prompt


def check_positions(prefix_tokens: int, max_new_tokens: int, geometry) -> None:
    """The longest prefix (image tokens + <bos> + prompt + newline) and the new tokens fit the positions."""
    limit = geometry.max_position_embeddings
    if prefix_tokens + max_new_tokens > limit:
        text = prefix_tokens - geometry.num_image_tokens
        raise LimitError(f"the prompt takes {prefix_tokens} positions ({geometry.num_image_tokens} image + {text} "
                         f"text tokens) and max_new_tokens is {max_new_tokens}: {prefix_tokens + max_new_tokens} "
                         f"> the model's limit of {limit} positions; shorten the prompt or lower max_new_tokens")


def _integer(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)  # numpy ints too; True is not 1 here


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and not math.isnan(x)


def check_utf8(s: str, what: str) -> str:
    """Text that is not UTF-8 is refused, wherever it comes from (an option, a JSON escape, a file's line)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: how Python passes on command-line bytes that are not UTF-8
        raise LimitError(f"{what} is not valid UTF-8 text") from None
    return s
