"""A model past protobuf's 2 GB through convert, export and check: time and peak memory of each step.

    python benchmarks/large_file.py                 # 2.16 GB of float32 weights in two Linears
    python benchmarks/large_file.py --width 256 --features 256   # seconds: a small stand-in, to prove it runs

Each step runs in its own process (``multiprocessing``, spawned: a fresh interpreter), so its peak resident
memory is its own: the model is built, converted (``inplace=True``: one copy of the weights), exported with
``export_onnx`` and checked with ``check_onnx``; ``convert_onnx`` then converts the written file. A row
gives the step's seconds and the process's peak resident memory, also as a multiple of the weights' bytes.
One run per step (minutes at full size); the figures are this machine's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import fxconv


def _model(width: int, features: int) -> tuple[nn.Module, torch.Tensor]:
    """Flatten, Linear(features, width), ReLU, Linear(width, features), and an example of batch 1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(features, width), nn.ReLU(), nn.Linear(width, features))
    return model.eval(), torch.randn(1, features // 64, 8, 8)


def _pytorch(size: tuple[int, int], folder: str) -> dict:
    model, x = _model(*size)
    started = time.perf_counter()
    converted, _ = fxconv.convert(model, x, scope="all", inplace=True)
    converted_s = time.perf_counter() - started
    path = fxconv.export_onnx(converted, x, Path(folder) / "m.onnx")
    exported_s = time.perf_counter() - started - converted_s
    check = fxconv.check_onnx(path, converted, x)
    assert check.passed, check
    checked_s = time.perf_counter() - started - converted_s - exported_s
    return {"convert_s": converted_s, "export_s": exported_s, "check_s": checked_s}


def _onnx(size: tuple[int, int], folder: str) -> dict:
    started = time.perf_counter()
    _, report = fxconv.convert_onnx(Path(folder) / "m.onnx", scope="all")
    assert report.verified.compared, report
    return {"convert_onnx_s": time.perf_counter() - started}


def _step(job, size: tuple[int, int], folder: str, results) -> None:
    figures = job(size, folder)
    results.put(figures | {"peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})


def run(width: int, features: int, out: Path | None) -> list[dict]:
    model, _ = _model(width, features)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    context = multiprocessing.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, job in (("convert, export_onnx, check_onnx", _pytorch), ("convert_onnx of the file", _onnx)):
            results = context.Queue()
            process = context.Process(target=_step, args=(job, (width, features), folder, results))
            process.start()
            figures = results.get()
            process.join()
            row = {"steps": name, "weights_gib": weights / 2**30, **figures}
            row["peak_x_weights"] = row["peak_gib"] * 2**30 / weights
            rows.append(row)
            timings = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in figures.items() if k.endswith("_s"))
            print(f"{name}: {timings}; peak {row['peak_gib']:.2f} GiB = {row['peak_x_weights']:.1f}x the "
                  f"weights ({row['weights_gib']:.2f} GiB)")  # fmt: skip
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench-large-file.json").write_text(json.dumps({"rows": rows}, indent=2))
    return rows


def markdown(rows: list[dict]) -> str:
    """The docs' table: each process's steps, their seconds, its peak memory and that over the weights."""
    lines = ["| steps | weights | seconds | peak memory | peak / weights |", "| --- | ---: | --- | ---: | ---: |"]
    for r in rows:
        seconds = ", ".join(f"{k[:-2].replace('_', ' ')} {v:.1f}" for k, v in r.items() if k.endswith("_s"))
        lines.append(f"| {r['steps']} | {r['weights_gib']:.2f} GiB | {seconds} | {r['peak_gib']:.2f} GiB | "
                     f"{r['peak_x_weights']:.1f}x |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=16500, help="the hidden Linears' width (16500: 2.16 GB)")
    parser.add_argument("--features", type=int, default=16384, help="the map's size C·H·W (a multiple of 64)")
    parser.add_argument("--out", type=Path, help="folder for bench-large-file.json")
    args = parser.parse_args()
    run(args.width, args.features, args.out)
