"""The docs hold together: a README short enough to read, links that lead somewhere, tables of figures only in
docs/measurements/ and only as their benchmark scripts write them, and a tree that speaks of the product only."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

from pgexport.bench.harness import read_measurement, table

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ROOT / "docs" / "measurements"
LINK = re.compile(r"\]\(([^)\s]+)\)")
# a cell that reads as a measured figure: a number with a unit of time, size, rate or share
FIGURE = re.compile(r"^[~≈]?\s*\d[\d,.]*\s*(ms|s|min|h|GB|MB|KB|GiB|MiB|%|x|×|tok/s|tokens/s)$")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of a page: rows of cells, the separator row left out."""
    found, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def test_readme_is_a_guide_of_at_most_300_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_every_relative_link_leads_to_a_file():
    broken = []
    for page in pages():
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_tables_of_figures_live_only_in_measurement_files():
    offending = []
    for page in pages():
        if page.parent == MEASUREMENTS:
            continue
        for rows in tables(page.read_text()):
            figures = [c for row in rows[1:] for c in row if FIGURE.match(c)]
            if figures:
                offending.append(f"{page.relative_to(ROOT)}: {figures[:3]}")
    assert offending == []


def script_columns(script: Path) -> list[str] | None:
    """The COLUMNS a benchmark script declares (read from its source, not imported)."""
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COLUMNS" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return None


def test_each_measurement_file_matches_the_script_that_wrote_it():
    files = sorted(MEASUREMENTS.glob("*.md"))
    assert files, "docs/measurements/ holds no measurement"
    for path in files:
        m = read_measurement(path)
        assert m["script"] and (ROOT / m["script"]).is_file(), path.name
        assert m.get("cpu") and m.get("command", "").startswith("`python " + m["script"]), path.name
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", m.get("date", "")), path.name
        assert m["columns"] == script_columns(ROOT / m["script"]), path.name


def test_the_checks_can_fail():
    """What the checks above catch, shown on made-up pages."""
    assert tables("| a | b |\n|---|---:|\n| x | 2.4 GB |\n") == [[["a", "b"], ["x", "2.4 GB"]]]
    assert FIGURE.match("2.4 GB") and FIGURE.match("38 ms") and FIGURE.match("63 %") and not FIGURE.match("int4")
    assert table(["a", "b"], [("x", 1.5)]) == ["| a | b |", "|---|---:|", "| x | 1.5 |"]


def test_the_tree_speaks_of_the_product_only():
    """No tracker numbers or builder's paths in what is committed (the patterns are built so as not to match
    this file)."""
    words = ["iss" + "ue", "it" + "em", "sess" + "ion"]
    number = re.compile(r"\b(" + "|".join(words) + r")[ -]?#?\d+\b", re.IGNORECASE)
    paths = re.compile(r"(?<![\w.~])(/wo" + "rk/|/ro" + "ot/|/ho" + r"me/[a-z])")  # absolute paths only
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    hits = []
    for name in files:
        if name.endswith(("package-lock.json", ".png", ".safetensors", ".onnx")) or "/node_modules/" in name:
            continue
        try:
            text = (ROOT / name).read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if number.search(line) or paths.search(line):
                hits.append(f"{name}:{n}: {line.strip()[:80]}")
    assert hits == []
