"""The bench report's JSON Schema (schema.json beside this file) and its validation.

`jsonschema` is used when it is installed; otherwise a small checker covers the keywords schema.json
uses (type, const, enum, required, properties, additionalProperties, items, minItems, minimum, maximum,
$ref to #/$defs). Both raise ValueError naming the first offending path.
"""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_FILE = Path(__file__).with_name("schema.json")
SCHEMA = "pgexport.bench"
SCHEMA_VERSION = 1

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def load_schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


def validate(report: dict) -> None:
    schema = load_schema()
    try:
        import jsonschema
    except ImportError:
        _check(report, schema, schema, "$")
        return
    try:
        jsonschema.validate(report, schema)
    except jsonschema.ValidationError as exc:
        path = "$" + "".join(f"[{p!r}]" for p in exc.absolute_path)
        raise ValueError(f"bench report does not match its schema at {path}: {exc.message}") from None


def _is(value, type_name: str) -> bool:
    if type_name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[type_name])


def _check(value, node: dict, root: dict, path: str) -> None:
    def fail(why: str):
        raise ValueError(f"bench report does not match its schema at {path}: {why}")

    if "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    if "const" in node and value != node["const"]:
        fail(f"expected {node['const']!r}, got {value!r}")
    if "enum" in node and value not in node["enum"]:
        fail(f"{value!r} is not one of {node['enum']}")
    if "type" in node:
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        if not any(_is(value, t) for t in types):
            fail(f"expected {'/'.join(types)}, got {type(value).__name__}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in node and value < node["minimum"]:
            fail(f"{value} < minimum {node['minimum']}")
        if "maximum" in node and value > node["maximum"]:
            fail(f"{value} > maximum {node['maximum']}")
    if isinstance(value, dict):
        for key in node.get("required", []):
            if key not in value:
                fail(f"missing required field {key!r}")
        props = node.get("properties", {})
        extra = node.get("additionalProperties", True)
        for key, sub in value.items():
            if key in props:
                _check(sub, props[key], root, f"{path}.{key}")
            elif extra is False:
                fail(f"unexpected field {key!r}")
            elif isinstance(extra, dict):
                _check(sub, extra, root, f"{path}.{key}")
    if isinstance(value, list):
        if len(value) < node.get("minItems", 0):
            fail(f"fewer than {node['minItems']} items")
        if "items" in node:
            for i, sub in enumerate(value):
                _check(sub, node["items"], root, f"{path}[{i}]")
