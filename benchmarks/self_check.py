"""What the self-check costs: ``convert`` with and without ``verify`` (``fxconv.verify``), side by side.

    python benchmarks/bench.py --only verify            # a CNN, a ViT and a ~130M-parameter decoder
    python benchmarks/bench.py --only verify --tiny     # seconds: small stand-ins, to prove it runs

Each model is converted ``ROUNDS`` times each way, the two interleaved (the order alternating), from one
model object (``convert`` copies it first: every round starts from the same weights). A row gives the
median seconds of each, the spread (min–max) over rounds, and their ratio of medians: the price of the
proof. The models are random-initialised (their outputs' values do not change the work).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
import torchvision

import fxconv

ROUNDS = 3


def _models(tiny: bool) -> dict[str, tuple]:
    """name -> (model factory, example factory, convert options)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def llama(width, layers, intermediate, vocab):
        config = LlamaConfig(hidden_size=width, num_hidden_layers=layers, intermediate_size=intermediate,
                             num_attention_heads=max(width // 64, 2), num_key_value_heads=max(width // 64, 2),
                             vocab_size=vocab, use_cache=False)  # fmt: skip
        return LlamaForCausalLM(config).eval()

    if tiny:
        return {
            "resnet18 64x64": (lambda: torchvision.models.resnet18().eval(), lambda: torch.randn(1, 3, 64, 64), {}),
            "vit 2 layers": (lambda: torchvision.models.VisionTransformer(32, 8, 2, 2, 64, 128).eval(),
                             lambda: torch.randn(1, 3, 32, 32), {"scope": "all"}),
            "llama 2 layers": (lambda: llama(64, 2, 128, 256), lambda: torch.randint(0, 256, (1, 16)),
                               {"scope": "all"}),
        }
    return {
        "resnet50 224x224": (lambda: torchvision.models.resnet50().eval(), lambda: torch.randn(1, 3, 224, 224), {}),
        "vit_b_16 224x224": (lambda: torchvision.models.vit_b_16().eval(), lambda: torch.randn(1, 3, 224, 224),
                             {"scope": "all"}),
        "llama 130M, 64 tokens": (lambda: llama(768, 12, 2048, 32000), lambda: torch.randint(0, 32000, (1, 64)),
                                  {"scope": "all"}),
    }


def _convert_seconds(model, example, options: dict, verify: bool) -> float:
    start = time.perf_counter()
    fxconv.convert(model, example, verify=verify, **options)
    return time.perf_counter() - start


def run(out: Path, tiny: bool) -> list[dict]:
    """Time every model both ways; print the table, write ``bench-verify.json`` in ``out``."""
    rows = []
    for name, (make, example, options) in _models(tiny).items():
        torch.manual_seed(0)
        model, x = make(), example()
        params = sum(p.numel() for p in model.parameters())
        times = {True: [], False: []}
        for r in range(ROUNDS):
            for verify in (True, False) if r % 2 == 0 else (False, True):
                times[verify].append(_convert_seconds(model, x, options, verify))
        with_check, without = statistics.median(times[True]), statistics.median(times[False])
        rows.append({"model": name, "parameters": params, "rounds": ROUNDS,
                     "verify_s": with_check, "verify_min_s": min(times[True]), "verify_max_s": max(times[True]),
                     "no_verify_s": without, "no_verify_min_s": min(times[False]),
                     "no_verify_max_s": max(times[False]), "ratio": with_check / without})  # fmt: skip
        print(f"{name:<24} {params / 1e6:7.1f}M params  convert {with_check:6.2f} s with the check "
              f"({min(times[True]):.2f}-{max(times[True]):.2f}), {without:6.2f} s without "
              f"({min(times[False]):.2f}-{max(times[False]):.2f}): {with_check / without:.2f}x", flush=True)
    (out / "bench-verify.json").write_text(json.dumps({"rows": rows, "date": time.strftime("%Y-%m-%d %H:%M:%S")},
                                                      indent=2))  # fmt: skip
    return rows


def markdown(rows: list[dict]) -> str:
    """The docs' table: each model's convert time both ways, medians with the rounds' min–max, and the ratio."""
    lines = ["| model | parameters | convert, verified | `verify=False` | ratio |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        both = [f"{r[k]:.2f} s ({r[k.replace('_s', '_min_s')]:.2f}–{r[k.replace('_s', '_max_s')]:.2f})"
                for k in ("verify_s", "no_verify_s")]  # fmt: skip
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.1f} M | {both[0]} | {both[1]} | {r['ratio']:.1f}x |")
    return "\n".join(lines)
