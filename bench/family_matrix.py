"""The README's "Supported models" table: tests/test_families.py run, its cells printed.

    python bench/family_matrix.py            # runs the matrix tests (about two minutes)
    python bench/family_matrix.py cells.json # prints the table of an earlier run

Each cell is the largest difference that test measured: the offline merges against the
float64 formulas (absolute), the live merger against the offline files (0 is byte for
byte), the spectrum model's logits against separately merged models (relative to the
row's largest logit); "—" where the test did not run for that family.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = (
    ("offline linear", "offline linear"),
    ("offline slerp", "offline slerp"),
    ("offline ties", "offline ties"),
    ("offline topk_replace", "offline topk_replace"),
    ("live set()", "live `set()`"),
    ("live set() tied", "live `set()` tied"),
    ("spectrum model", "spectrum model"),
    ("spectrum model tied", "spectrum model tied"),
    ("sweep", "sweep"),
)


def run_matrix() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "cells.json"
        env = {**os.environ, "SPECTRUM_FAMILY_MATRIX": str(out), "PYTHONPATH": str(ROOT)}
        test = [sys.executable, "-m", "pytest", "-q", "tests/test_families.py"]
        subprocess.run(test, cwd=ROOT, env=env, check=True)
        return json.loads(out.read_text())


def cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return "0 (bytes equal)" if value == 0 else f"{value:.1e}"


def table(cells: dict) -> str:
    lines = [
        "| family | " + " | ".join(title for _, title in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for family in sorted(cells):
        row = [cell(cells[family].get(key)) for key, _ in COLUMNS]
        lines.append(f"| {family} | " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    cells = json.loads(Path(sys.argv[1]).read_text()) if len(sys.argv) > 1 else run_matrix()
    print(table(cells))
