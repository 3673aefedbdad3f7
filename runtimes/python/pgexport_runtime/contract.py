"""contract.json, read once: what the exporter, this runtime and the JavaScript runtime agree on.

The JavaScript runtime gets the same file as runtimes/web/src/contract.js (written by
runtimes/web/scripts/contract.mjs; a test fails when the two differ), so a name or a bound is spelled once.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType


def _frozen(x):
    if isinstance(x, dict):
        return MappingProxyType({k: _frozen(v) for k, v in x.items()})
    if isinstance(x, list):
        return tuple(_frozen(v) for v in x)
    return x


PATH = Path(__file__).with_name("contract.json")
CONTRACT = _frozen(json.loads(PATH.read_text(encoding="utf-8")))
