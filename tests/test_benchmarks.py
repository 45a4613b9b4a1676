"""The benchmark and the heat-map example run end to end (tiny sizes; no speed is asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_the_benchmark_runs_in_tiny_mode(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench.py"), "--tiny", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ratio" in result.stdout and "tiny head" in result.stdout
    document = json.loads((tmp_path / "bench.json").read_text())
    rows = document["rows"]
    assert {(r["runtime"], r["variant"]) for r in rows} == {
        (runtime, variant) for runtime in ("onnxruntime", "pytorch") for variant in ("kernel", "1x1", "kernel batched")
    }
    for row in rows:
        assert row["ratio"] > 0 and row["original_ms"] > 0 and row["converted_ms"] > 0
        assert row["max_abs_diff"] < 1e-4 and row["convert_s"] > 0 and row["export_s"] > 0
    assert document["versions"]["onnxruntime"] and document["threads"] == 2


def test_the_heatmap_example_writes_a_png(tmp_path):
    out = tmp_path / "heat.png"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "heatmap.py"), "--size", "256", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "(2, 2) grid of windows" in result.stdout and "frozen" in result.stdout
    with Image.open(out) as image:
        assert image.size == (2 * 256 + 3 * 4, 256 + 2 * 4)  # image and overlay side by side
