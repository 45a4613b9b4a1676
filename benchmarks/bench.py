"""What the rewrite costs or gains: original vs converted models in onnxruntime, OpenVINO and PyTorch eager.

    python benchmarks/bench.py            # quick: heads at batch 1, 8, 32; models at 1, 8
    python benchmarks/bench.py --full --out benchmarks/results   # the published figures: models at 32 too,
                                                                 # heads at 128, more rounds
    python benchmarks/bench.py --tiny     # seconds: small stand-in models, to prove the script runs
    python benchmarks/bench.py --only scope   # scope="all" on vit_small and convnext_tiny vs peer layouts
    python benchmarks/bench.py --only onnx    # ONNX files in: convert_onnx on a VGG16 head file, float and QDQ
    python benchmarks/bench.py --only verify  # convert with and without its self-check (benchmarks/self_check.py)

OpenVINO (CPU, f32 precision, the ``openvino`` extra) is measured beside onnxruntime when installed.
For each model, batch size and runtime, the original and each converted variant run interleaved (the
order rotates every round) after a warm-up; a row's ratio is the median over rounds of
``time(converted) / time(original)`` measured in the same round, so drifts of a noisy machine cancel.
It also reports each variant's max abs difference from the original, how long ``convert`` and
``export_onnx`` take, the peak memory of converting vgg16 (copy vs ``inplace=True``), and the dense
mode's speed-up over evaluating crops. ``scope="all"`` (every Linear a convolution) is timed on timm's
vit_small_patch16_224 and torchvision's convnext_tiny beside the two layouts other converters use
(``peers.py``: a permute around each Linear, or the positions folded into the batch). ``convert_onnx`` is
timed on ONNX files as users hold them: a VGG16 head exported by the TorchScript exporter (Flatten →
Gemm, opset 13), and it and resnet18 quantised to QDQ int8 by ``quantize_static`` (per channel); those
rows compare the converted file with the original file. Every ratio comes with its spread over the rounds (min–max); a
row whose rounds disagree by more than 1.5x is flagged as measured on a noisy machine.

Results: a table on the terminal, ``bench.json`` (every figure, the machine and library versions) and
``bench.png`` (one panel per family, on a linear axis around 1 with the goal line and the spread; needs
matplotlib, the ``bench`` extra), in ``benchmarks/scratch`` unless ``--out`` says otherwise. Only
``--full`` may write to ``benchmarks/results``, where the docs' figures live
(``python docs/generate.py`` makes their tables).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
import torch
import torchvision
from torch import nn

import fxconv
from fxconv.check import open_session
from fxconv.report import versions

import peers

HERE = Path(__file__).resolve().parent
PUBLISHED = HERE / "results"
NOISY = 1.5  # a ratio whose slowest round is this much above its fastest: the machine was busy


def _converted(**options):
    return lambda model, example: fxconv.convert(model, example, **options).module


# Each variant makes a module from (original, example).
VARIANTS = {"kernel": _converted(method="kernel"), "1x1": _converted(method="1x1")}  # the default, folded layout
BATCHED = {"kernel batched": _converted(method="kernel", layout="batched")}  # the textbook layout, for contrast
EVERY_LINEAR = {
    "scope all": _converted(scope="all"),
    "wrap each Linear": lambda model, example: peers.wrap_each_linear(model),
    "tokens into batch": lambda model, example: peers.fold_into_batch(model),
}
FILE_RUNTIMES = tuple(r for r in fxconv.RUNTIMES if importlib.util.find_spec(r) is not None)


def _head(channels: int, size: int, widths: tuple[int, ...]) -> nn.Module:
    """A classifier head alone: flatten, then Linear/ReLU/Dropout like torchvision's."""
    layers: list[nn.Module] = [nn.Flatten()]
    features = channels * size * size
    for i, width in enumerate(widths):
        layers.append(nn.Linear(features, width))
        if i < len(widths) - 1:
            layers += [nn.ReLU(), nn.Dropout()]
        features = width
    return nn.Sequential(*layers)


def onnx_files(tiny: bool, parts: set[str]) -> dict[str, tuple[callable, tuple[int, ...], bool]]:
    """name -> (factory of the model the file is exported from, shape of one input item, quantised)."""
    if tiny:
        return {"tiny head file": (lambda: _head(8, 3, (32, 10)), (8, 3, 3), False),
                "tiny head qdq file": (lambda: _head(8, 3, (32, 10)), (8, 3, 3), True)}  # fmt: skip
    if "onnx" not in parts:
        return {}
    head = lambda: _head(512, 7, (4096, 4096, 1000))  # noqa: E731
    return {
        "vgg16 head file": (head, (512, 7, 7), False),
        "vgg16 head qdq file": (head, (512, 7, 7), True),
        "resnet18 qdq file": (lambda: torchvision.models.resnet18(weights=None), (3, 224, 224), True),
    }


def models(tiny: bool, parts: set[str]) -> dict[str, tuple[callable, tuple[int, ...], dict]]:
    """name -> (factory, shape of one input item, variants)."""
    chosen = {}
    if tiny:
        chosen["tiny head"] = (lambda: _head(8, 3, (32, 10)), (8, 3, 3), VARIANTS | BATCHED)
        chosen["tiny tokens"] = (
            lambda: nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)),
            (4, 8),
            EVERY_LINEAR,
        )
        return chosen
    tv = torchvision.models
    if "models" in parts:
        chosen |= {
            "vgg16 head": (lambda: _head(512, 7, (4096, 4096, 1000)), (512, 7, 7), VARIANTS | BATCHED),
            "alexnet head": (lambda: _head(256, 6, (4096, 4096, 1000)), (256, 6, 6), VARIANTS | BATCHED),
            "resnet50 head": (lambda: _head(2048, 1, (1000,)), (2048, 1, 1), VARIANTS | BATCHED),
            "alexnet": (lambda: tv.alexnet(weights=None), (3, 224, 224), VARIANTS),
            "vgg16": (lambda: tv.vgg16(weights=None), (3, 224, 224), VARIANTS),
            "resnet50": (lambda: tv.resnet50(weights=None), (3, 224, 224), VARIANTS),
            "mobilenet_v3_large": (lambda: tv.mobilenet_v3_large(weights=None), (3, 224, 224), VARIANTS),
            "efficientnet_b0": (lambda: tv.efficientnet_b0(weights=None), (3, 224, 224), VARIANTS),
        }
    if "scope" in parts:
        import timm  # the test extra's; only this part needs it

        chosen |= {
            "vit_small": (
                lambda: timm.create_model("vit_small_patch16_224", pretrained=False),
                (3, 224, 224),
                EVERY_LINEAR,
            ),
            "convnext_tiny": (lambda: tv.convnext_tiny(weights=None), (3, 224, 224), EVERY_LINEAR),
        }
    return chosen


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def step(self, what: str) -> None:
        self.done += 1
        filled = int(30 * self.done / self.total)
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {elapsed:5.0f}s {what:<40}")
        sys.stderr.flush()
        if self.done == self.total:
            sys.stderr.write("\n")


def interleaved(runners: dict[str, callable], rounds: int) -> dict[str, list[float]]:
    """Time each runner once per round, rotating the order; one warm-up call each first."""
    for run in runners.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - start)
    return times


def ratios(times: dict[str, list[float]], name: str) -> dict[str, float]:
    """The median of the per-round ratios time(name) / time(original), and their min and max."""
    per_round = [t / o for t, o in zip(times[name], times["original"])]
    return {"ratio": statistics.median(per_round), "ratio_min": min(per_round), "ratio_max": max(per_round)}


def bench_model(name, factory, item_shape, variants, batches, rounds, threads, folder: Path, progress) -> list[dict]:
    """All rows for one model: every variant, batch size and runtime."""
    torch.manual_seed(0)
    original = factory().eval()
    example = torch.randn(2, *item_shape)
    modules, setup = {"original": original}, {}
    for variant, make in variants.items():
        start = time.perf_counter()
        modules[variant] = make(original, example)
        setup[variant] = {"convert_s": time.perf_counter() - start}
    sessions = {runtime: {} for runtime in FILE_RUNTIMES}
    for variant, module in modules.items():
        start = time.perf_counter()
        path = fxconv.export_onnx(
            module, example, folder / f"{name.replace(' ', '_')}_{variant.replace(' ', '_')}.onnx"
        )
        setup.setdefault(variant, {})["export_s"] = time.perf_counter() - start
        for runtime in FILE_RUNTIMES:
            sessions[runtime][variant] = open_session(path, runtime, threads=threads)
    rows = []
    torch.set_num_threads(threads)
    for batch in batches:
        x = torch.randn(batch, *item_shape)
        feed = [x.numpy()]
        with torch.inference_mode():
            want = original(x)
            diffs = {("pytorch", v): float((m(x) - want).abs().max()) for v, m in modules.items()}
            diffs |= {(r, v): float(abs(torch.from_numpy(s.run(feed)[0]) - want).max())
                      for r in FILE_RUNTIMES for v, s in sessions[r].items()}  # fmt: skip
            every = {
                r: {v: (lambda s=s, feed=feed: s.run(feed)) for v, s in sessions[r].items()} for r in FILE_RUNTIMES
            }
            every["pytorch"] = {v: (lambda m=m, x=x: m(x)) for v, m in modules.items()}
            for runtime, runners in every.items():
                rows += timed_rows(name, runtime, batch, runners, rounds, diffs, setup)
                progress.step(f"{name} batch {batch} {runtime}")
    return rows


def timed_rows(name, runtime, batch, runners, rounds, diffs, setup) -> list[dict]:
    """Time the original and each variant interleaved; one row per variant."""
    times = interleaved(runners, rounds)
    return [
        {
            "model": name, "runtime": runtime, "batch": batch, "variant": variant,
            "original_ms": 1e3 * statistics.median(times["original"]),
            "converted_ms": 1e3 * statistics.median(times[variant]),
            **ratios(times, variant),
            "max_abs_diff": diffs[runtime, variant],
            **setup[variant],
        }
        for variant in runners
        if variant != "original"
    ]  # fmt: skip


def bench_onnx_file(
    name, factory, item_shape, quantized, batches, rounds, threads, folder: Path, progress
) -> list[dict]:
    """An ONNX file as users hold it (the TorchScript exporter's Flatten → Gemm, opset 13; quantised to
    QDQ int8 per channel if asked) against ``convert_onnx``'s rewrite of it, in each runtime."""
    torch.manual_seed(0)
    slug = name.replace(" ", "_")
    original = folder / f"{slug}.onnx"
    example = torch.randn(2, *item_shape)
    torch.onnx.export(factory().eval(), (example,), original, dynamo=False, opset_version=13, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})  # fmt: skip
    if quantized:
        original = quantize_qdq(original, folder / f"{slug}_qdq.onnx", item_shape)
    files, setup = {"original": original}, {}
    for method in ("kernel", "1x1"):
        start = time.perf_counter()
        converted, _ = fxconv.convert_onnx(original, method, strict=True)
        middle = time.perf_counter()
        files[f"onnx {method}"] = folder / f"{slug}_{method}.onnx"
        onnx.save(converted, files[f"onnx {method}"])
        setup[f"onnx {method}"] = {"convert_s": middle - start, "export_s": time.perf_counter() - middle}
    rows = []
    for runtime in FILE_RUNTIMES:
        sessions = {variant: open_session(path, runtime, threads=threads) for variant, path in files.items()}
        for batch in batches:
            feed = [torch.randn(batch, *item_shape).numpy()]
            want = sessions["original"].run(feed)[0]
            diffs = {(runtime, v): float(abs(s.run(feed)[0] - want).max()) for v, s in sessions.items()}
            runners = {v: (lambda s=s, feed=feed: s.run(feed)) for v, s in sessions.items()}
            rows += timed_rows(name, runtime, batch, runners, rounds, diffs, setup)
            progress.step(f"{name} batch {batch} {runtime}")
    return rows


def quantize_qdq(path: Path, out: Path, item_shape, samples: int = 8) -> Path:
    """``onnxruntime.quantization.quantize_static``: QDQ, int8 weights per channel, uint8 activations."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Calibration(CalibrationDataReader):
        def __init__(self):
            generator = torch.Generator().manual_seed(0)
            self.batches = iter(
                [{"input": torch.randn(1, *item_shape, generator=generator).numpy()} for _ in range(samples)]
            )

        def get_next(self):
            return next(self.batches, None)

    quant_pre_process(str(path), str(out))
    quantize_static(str(out), str(out), Calibration(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)  # fmt: skip
    return out


def bench_dense(name, rounds, threads) -> dict:
    """One dense pass over a 448x448 image vs the 64 crops at stride 32 batched, in PyTorch eager."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = torchvision.models.get_model(name, weights=None).eval()
    dense = fxconv.convert(model, torch.randn(1, 3, 224, 224), dense=True).module
    image = torch.randn(1, 3, 448, 448)
    crops = torch.cat([image[:, :, 32 * i : 32 * i + 224, 32 * j : 32 * j + 224] for i in range(8) for j in range(8)])
    # The values differ from the crops' near the crop borders, where a crop sees zero padding and the
    # dense pass the neighbouring pixels; tests/test_dense.py proves each location equals the head on
    # its window of the backbone's map.
    with torch.inference_mode():
        grid = dense(image)
        times = interleaved({"original": lambda: model(crops), "dense": lambda: dense(image)}, rounds)
    crops_ms, dense_ms = (1e3 * statistics.median(times[k]) for k in ("original", "dense"))
    spread = ratios(times, "dense")  # dense / crops: its inverse is the speed-up
    return {"model": name, "crops_ms": crops_ms, "dense_ms": dense_ms, "speedup": 1 / spread["ratio"],
            "speedup_min": 1 / spread["ratio_max"], "speedup_max": 1 / spread["ratio_min"],
            "grid": list(grid.shape)}  # fmt: skip


# Linux: writing 5 to clear_refs resets the peak resident size (VmHWM), so the peak that building the
# model reached (random initialisation allocates temporaries) does not hide the conversion's own.
MEMORY_PROBE = """
import gc, sys, torch, torchvision, fxconv
def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) / 1024
model = torchvision.models.vgg16(weights=None).eval()
gc.collect()
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS:")
fxconv.convert(model, torch.randn(1, 3, 224, 224), inplace=sys.argv[1] == "inplace")
print(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, status("VmHWM:") - before)
"""


def bench_memory() -> list[dict]:
    """Peak memory that converting vgg16 adds, with a copy and in place (a fresh process each)."""
    rows = []
    for mode in ("copy", "inplace"):
        out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, mode], capture_output=True, text=True, check=True)
        weights_mib, added_mib = map(float, out.stdout.split())
        rows.append({"mode": mode, "weights_mib": weights_mib, "peak_added_mib": added_mib})
    return rows


def noisy(row: dict) -> bool:
    """Whether a row's rounds disagree wildly (a busy machine): its ratio is not to be trusted."""
    return row["ratio_max"] > NOISY * row["ratio_min"]


def table(rows: list[dict]) -> str:
    lines = [
        f"{'model':<20}{'runtime':<13}{'batch':>6}  {'variant':<16}{'original ms':>12}{'converted ms':>13}"
        f"{'ratio':>7}  {'spread':<12}{'max abs diff':>12}"
    ]
    for r in rows:
        flag = "  NOISY" if noisy(r) else ""
        lines.append(
            f"{r['model']:<20}{r['runtime']:<13}{r['batch']:>6}  {r['variant']:<16}{r['original_ms']:>12.2f}"
            f"{r['converted_ms']:>13.2f}{r['ratio']:>7.2f}  {r['ratio_min']:.2f}-{r['ratio_max']:<7.2f}"
            f"{r['max_abs_diff']:>12.1e}{flag}"
        )
    if any(noisy(r) for r in rows):
        lines.append(f"NOISY: the rounds of that row differ by more than {NOISY}x; the machine was busy, measure again")
    return "\n".join(lines)


def ratio_table(
    rows: list[dict], original: str, columns: list[tuple[str, str, str]], *, diff: tuple[str, str] | None = None,
    first: str = "model", bold: tuple[int, ...] = (), flag: bool = True,
) -> str:
    """Markdown: one row per (model, batch), the original's latency in ``original``'s runtime, then each column
    ``(header, runtime, variant)``'s median ratio with its rounds' min–max (NOISY where ``flag`` and the rounds
    disagree; in bold for the columns ``bold`` names), and ``diff`` = (runtime, variant)'s max abs diff."""
    short = {"onnxruntime": "ORT", "openvino": "OpenVINO"}
    found = {(r["model"], r["batch"], r["runtime"], r["variant"]): r for r in rows}
    head = [first, "batch", f"original, {short[original]} ms", *(c[0] for c in columns)]
    head += [f"max abs diff ({short[diff[0]]})"] if diff else []
    lines = ["| " + " | ".join(head) + " |", "| --- | " + " | ".join(["---:"] * (len(head) - 1)) + " |"]
    for model, batch in dict.fromkeys((r["model"], r["batch"]) for r in rows):
        base = next(r for r in rows if (r["model"], r["batch"], r["runtime"]) == (model, batch, original))
        cells = [model.removesuffix(" file"), str(batch), f"{base['original_ms']:.1f}"]
        for i, (_, runtime, variant) in enumerate(columns):
            r = found.get((model, batch, runtime, variant))
            median = "" if r is None else f"**{r['ratio']:.2f}**" if i in bold else f"{r['ratio']:.2f}"
            cells.append("" if r is None else f"{median} [{r['ratio_min']:.2f}–{r['ratio_max']:.2f}]"
                         + (" NOISY" if flag and noisy(r) else ""))  # fmt: skip
        cells += [f"{found[(model, batch, *diff)]['max_abs_diff']:.1e}"] if diff else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], dense: list[dict], path: Path, threads: int) -> bool:
    """One panel per family: heads (folded), whole models, heads in the batched layout, dense mode."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    def folded_heads(r):
        return r["model"].endswith("head") and r["variant"] in VARIANTS

    def whole_models(r):
        return not r["model"].endswith("head") and r["variant"] in VARIANTS

    def every_linear(r):
        return r["variant"] in EVERY_LINEAR

    def onnx_files_in(r):
        return r["variant"].startswith("onnx ")

    panels = [
        ("onnxruntime: classifier heads, default folded layout", "onnxruntime", folded_heads),
        ("onnxruntime: whole models, default folded layout", "onnxruntime", whole_models),
        ("onnxruntime: heads, batched layout (the textbook form)", "onnxruntime", lambda r: "batched" in r["variant"]),
        ("OpenVINO (f32): classifier heads, default folded layout", "openvino", folded_heads),
        ("OpenVINO (f32): heads, batched layout", "openvino", lambda r: "batched" in r["variant"]),
        ("onnxruntime: every Linear (scope='all') vs peer layouts", "onnxruntime", every_linear),
        ("OpenVINO (f32): every Linear vs peer layouts", "openvino", every_linear),
        ("onnxruntime: ONNX files in (convert_onnx), float and QDQ int8", "onnxruntime", onnx_files_in),
        ("OpenVINO (f32): ONNX files in, float and QDQ int8", "openvino", onnx_files_in),
    ]
    # Only the panels this run has rows for (``--only`` runs a part), three to a row.
    panels = [(title, [r for r in rows if r["runtime"] == runtime and keep(r)]) for title, runtime, keep in panels]
    panels = [(title, chosen) for title, chosen in panels if chosen]
    count = len(panels) + bool(dense)
    fig, axes = plt.subplots(
        (count + 2) // 3, 3, figsize=(18, 4 * ((count + 2) // 3)), constrained_layout=True, squeeze=False
    )
    for ax, (title, chosen) in zip(axes.flat, panels):
        batched = "batched" in title
        _ratio_panel(ax, chosen, title, window=not batched and "Linear" not in title, goal=not batched)
    if dense:
        _dense_panel(axes.flat[len(panels)], dense)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    fig.suptitle(f"fxconv: converted / original latency on the CPU ({threads} threads); "
                 "median of interleaved rounds, bars = min-max")  # fmt: skip
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return True


WINDOW = (0.4, 1.6)  # the folded panels' fixed axis: 1.10 vs 1.0 stays readable whatever one noisy row does


def _ratio_panel(ax, rows: list[dict], title: str, window: bool, goal: bool) -> None:
    """Ratios by batch size on a linear axis around 1, one colour per model, one marker per method.

    ``window``: a fixed 0.4-1.6 axis; a median outside it is written at the edge, with its value.
    ``goal``: draw the 1.10x goal line."""
    ax.set_title(title, fontsize=10)
    if not rows:
        ax.set_visible(False)
        return
    batches = sorted({r["batch"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    colours = {m: f"C{i}" for i, m in enumerate(models)}  # tab10: colours told apart
    markers = dict(zip(variants, ("o", "s", "^", "D")))
    series = [(m, v) for m in models for v in variants]
    for k, (model, variant) in enumerate(series):
        points = sorted((r["batch"], r) for r in rows if (r["model"], r["variant"]) == (model, variant))
        if not points:
            continue
        shift = (k - (len(series) - 1) / 2) * 0.06  # side by side, so the bars do not hide each other
        x = [batches.index(b) + shift for b, _ in points]
        y = [r["ratio"] for _, r in points]
        spread = [[r["ratio"] - r["ratio_min"] for _, r in points], [r["ratio_max"] - r["ratio"] for _, r in points]]
        ax.errorbar(x, y, yerr=spread, color=colours[model], marker=markers[variant], capsize=3,
                    linestyle="-" if variant == variants[0] else "--", label=f"{model}, {variant}")  # fmt: skip
    if window:
        ax.set_ylim(*WINDOW)
        for k, (model, variant) in enumerate(series):
            for r in rows:
                if (r["model"], r["variant"]) == (model, variant) and not WINDOW[0] <= r["ratio"] <= WINDOW[1]:
                    x = batches.index(r["batch"]) + (k - (len(series) - 1) / 2) * 0.06
                    edge = WINDOW[1] if r["ratio"] > WINDOW[1] else WINDOW[0]
                    ax.annotate(f"{r['ratio']:.2f}", (x, edge), color=colours[model], fontsize=7, ha="center",
                                va="top" if edge == WINDOW[1] else "bottom")  # fmt: skip
    else:
        ax.set_ylim(0, max(1.5, max(r["ratio_max"] for r in rows) * 1.05))
    if goal:
        ax.axhline(1.10, color="red", linestyle=":", label="goal: at most 1.10x")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    ax.set(xlabel="batch size", ylabel="converted / original")
    ax.legend(fontsize=7, ncol=2, loc="best", framealpha=0.8)


def _dense_panel(ax, dense: list[dict]) -> None:
    """Dense mode's speed-up over the same classifier on its crops, with the rounds' spread."""
    ax.set_title("dense mode: one 448x448 pass vs 64 crops of 224 (PyTorch eager)", fontsize=10)
    if not dense:
        ax.set_visible(False)
        return
    x = range(len(dense))
    y = [d["speedup"] for d in dense]
    spread = [[d["speedup"] - d["speedup_min"] for d in dense], [d["speedup_max"] - d["speedup"] for d in dense]]
    ax.bar(x, y, yerr=spread, capsize=4, color=[f"C{i}" for i in x])
    for i, d in enumerate(dense):
        ax.text(i, d["speedup"] / 2, f"{d['speedup']:.1f}x", ha="center", color="white", fontweight="bold")
    ax.set_xticks(list(x), [d["model"] for d in dense])
    ax.set(ylabel="speed-up (crops time / dense time)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="whole models at batch 32, heads at 128, more rounds")
    parser.add_argument("--tiny", action="store_true", help="small stand-in models: proves the script runs")
    parser.add_argument(
        "--only", choices=("models", "scope", "onnx", "dense", "memory", "targets", "verify"),
        help="run one part (writes bench-PART.json; targets: the NPU compilers, benchmarks/targets.py; verify: "
        "convert with and without its self-check, benchmarks/self_check.py)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--replot", type=Path, metavar="BENCH.json", help="redraw the plot of a finished run beside it")
    parser.add_argument("--out", type=Path, default=HERE / "scratch",
                        help="where to write (default benchmarks/scratch; only --full may write benchmarks/results)")
    args = parser.parse_args(argv)
    if args.replot:
        document = json.loads(args.replot.read_text())
        plot(document["rows"], document["dense"], args.replot.with_suffix(".png"), document["threads"])
        print(f"wrote {args.replot.with_suffix('.png')}")
        return 0
    if args.out.resolve() == PUBLISHED and not args.full:
        parser.error("only --full replaces the published figures in benchmarks/results")
    if args.only == "targets":  # deterministic compiler figures, no timing: benchmarks/targets.py
        import targets

        args.out.mkdir(parents=True, exist_ok=True)
        targets.run(args.out, args.tiny)
        return 0
    if args.only == "verify":  # convert's own time, with and without the self-check: benchmarks/self_check.py
        import self_check

        args.out.mkdir(parents=True, exist_ok=True)
        self_check.run(args.out, args.tiny)
        return 0
    batches = (1,) if args.tiny else (1, 8, 32)
    rounds = 3 if args.tiny else 9 if args.full else 5
    args.out.mkdir(parents=True, exist_ok=True)
    parts = (
        {args.only}
        if args.only
        else {"models", "scope", "onnx", "dense", "memory"} - ({"dense", "memory"} if args.tiny else set())
    )
    zoo, files = models(args.tiny, parts), onnx_files(args.tiny, parts)
    dense_models = ("resnet18", "vgg16") if "dense" in parts else ()
    # Whole models at batch 32 with --full only, and batch 128 for the heads alone: a whole vgg16 takes
    # seconds a run at batch 32 on 2 cores, most of a minute at 128.
    plan = {}
    for name, (_, _, variants) in zoo.items():
        if name.endswith("head"):
            plan[name] = batches + ((128,) if args.full else ())
        elif variants is EVERY_LINEAR:
            plan[name] = batches[:2]  # batch 1 and 8: what the NPU users run
        else:
            plan[name] = batches if args.full else batches[:2]
    for name, (_, _, quantized) in files.items():  # QDQ files at batch 1 and 8: what the NPU users run
        plan[name] = batches[:2] if quantized else batches
    steps = sum((1 + len(FILE_RUNTIMES)) * len(plan[n]) for n in zoo)
    steps += sum(len(FILE_RUNTIMES) * len(plan[n]) for n in files)
    progress = Progress(steps + len(dense_models))
    rows, dense = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name, (factory, shape, variants) in zoo.items():
            rows += bench_model(
                name, factory, shape, variants, plan[name], rounds, args.threads, Path(folder), progress
            )
        for name, (factory, shape, quantized) in files.items():
            rows += bench_onnx_file(
                name, factory, shape, quantized, plan[name], rounds, args.threads, Path(folder), progress
            )
    for name in dense_models:
        dense.append(bench_dense(name, 3, args.threads))
        progress.step(f"dense {name}")
    memory = bench_memory() if "memory" in parts else []

    print(table(rows))
    for d in dense:
        print(f"dense {d['model']}: 448x448 in one pass {d['dense_ms']:.0f} ms vs 64 crops {d['crops_ms']:.0f} ms: "
              f"{d['speedup']:.1f}x faster (rounds {d['speedup_min']:.1f}-{d['speedup_max']:.1f}x; grid {d['grid']})")
    for m in memory:
        print(
            f"convert vgg16 ({m['mode']}): peak memory +{m['peak_added_mib']:.0f} MiB "
            f"for {m['weights_mib']:.0f} MiB of weights"
        )
    machine = {**versions(), "processor": platform.processor(), "cpus": os.cpu_count()}
    document = {"rows": rows, "dense": dense, "memory": memory, "threads": args.threads, "rounds": rounds,
                "versions": machine, "date": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    stem = f"bench-{args.only}" if args.only else "bench"
    (args.out / f"{stem}.json").write_text(json.dumps(document, indent=2))
    plotted = bool(rows or dense) and plot(rows, dense, args.out / f"{stem}.png", args.threads)
    print(f"wrote {args.out / stem}.json" + (f" and {stem}.png" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
