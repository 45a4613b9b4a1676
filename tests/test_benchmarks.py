"""The benchmark and the heat-map example run end to end (tiny sizes; no speed is asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=600
    )


def test_the_benchmark_runs_in_tiny_mode(tmp_path):
    result = run("bench.py", "--tiny", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "ratio" in result.stdout and "spread" in result.stdout and "tiny head" in result.stdout
    document = json.loads((tmp_path / "bench.json").read_text())
    rows = document["rows"]
    variants = {"tiny head": ("kernel", "1x1", "kernel batched"),
                "tiny tokens": ("scope all", "wrap each Linear", "tokens into batch")}  # fmt: skip
    files = {"tiny head file": ("onnx kernel", "onnx 1x1"), "tiny head qdq file": ("onnx kernel", "onnx 1x1")}
    assert {(r["model"], r["runtime"], r["variant"]) for r in rows} == {
        (model, runtime, variant)
        for runtime in ("onnxruntime", "openvino", "pytorch")
        for model, names in variants.items()
        for variant in names
    } | {  # ONNX files in: timed in the runtimes only
        (model, runtime, variant)
        for runtime in ("onnxruntime", "openvino")
        for model, names in files.items()
        for variant in names
    }
    for row in rows:
        assert 0 < row["ratio_min"] <= row["ratio"] <= row["ratio_max"]
        assert row["original_ms"] > 0 and row["converted_ms"] > 0
        assert row["max_abs_diff"] < 1e-4 and row["convert_s"] > 0 and row["export_s"] > 0
    assert document["versions"]["onnxruntime"] and document["threads"] == 2
    with Image.open(tmp_path / "bench.png") as image:
        assert image.size[0] > 1000  # a grid of panels


def test_only_full_replaces_the_published_figures():
    published = BENCHMARKS / "results"
    before = {p.name: p.stat().st_mtime for p in published.iterdir()}
    result = run("bench.py", "--tiny", "--out", str(published))
    assert result.returncode == 2 and "only --full replaces the published figures" in result.stderr
    assert {p.name: p.stat().st_mtime for p in published.iterdir()} == before


def test_the_heatmap_example_learns_matches_the_crops_and_draws_the_same_picture_twice(tmp_path):
    outputs = []
    for name in ("a.png", "b.png"):
        result = run("heatmap.py", "--steps", "40", "--out", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
        assert "the dense grid equals the crop-by-crop grid" in result.stdout
        assert "25x41 windows" in result.stdout and "faster" in result.stdout
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]  # seeded: the same picture
    with Image.open(tmp_path / "a.png") as image:
        assert image.size == (1000, 360)


def test_the_self_check_s_cost_is_measured_both_ways(tmp_path):
    result = run("bench.py", "--only", "verify", "--tiny", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "bench-verify.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["resnet18 64x64", "vit 2 layers", "llama 2 layers"]
    for row in rows:
        assert row["verify_min_s"] <= row["verify_s"] <= row["verify_max_s"]
        assert row["no_verify_min_s"] <= row["no_verify_s"] <= row["no_verify_max_s"]
        assert row["ratio"] == row["verify_s"] / row["no_verify_s"] and row["rounds"] == 3


def test_a_large_file_s_steps_are_timed_and_their_peak_memory_measured(tmp_path):
    result = run("large_file.py", "--width", "256", "--features", "256", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "bench-large-file.json").read_text())["rows"]
    assert [r["steps"] for r in rows] == ["convert, export_onnx, check_onnx", "convert_onnx of the file"]
    assert rows[0]["weights_gib"] * 2**30 == (256 * 256 + 256) * 2 * 4  # two Linears' float32 weights and biases
    for row in rows:
        assert row["peak_x_weights"] == row["peak_gib"] / row["weights_gib"] and row["peak_gib"] > 0
        assert all(row[k] > 0 for k in row if k.endswith("_s"))
