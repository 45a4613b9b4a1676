"""The targets' own compilers, measured: Vela's cycles (Arm Ethos-U) and Core ML's MIL programs (Apple's Neural
Engine), for the original, fxconv's default, fxconv's target profile and the two layouts other converters use.

    python benchmarks/bench.py --only targets                        # writes benchmarks/scratch/bench-targets.*
    python benchmarks/bench.py --only targets --full --out benchmarks/results   # docs/targets.md's figures
    python benchmarks/bench.py --only targets --tiny                 # seconds: proves the script runs

Deterministic figures, no timing: Vela gives the same cycles for the same model on every run (int8,
ExecuTorch's Arm flow, ``fxconv.artifacts.ethos_u.ethos_u``), and coremltools the same program
(``fxconv.artifacts.coreml.coreml_ops``, through torch.export). A variant that does not reach a compiler is a
row that says why, not a missing row.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

import torch
import torchvision
from torch import nn

import fxconv
from fxconv.artifacts.coreml import coreml_ops
from fxconv.artifacts.ethos_u import MEASURED, ethos_u
from fxconv.errors import first_line
from fxconv.report import versions

import peers

MIL_OPS = ("linear", "conv", "transpose", "reshape")


class CifarCnn(nn.Module):
    """Two conv stages, then a head on the flattened NCHW map (32x8x8)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))  # fmt: skip
        self.fc1, self.fc2 = nn.Linear(32 * 8 * 8, 64), nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.flatten(self.features(x), 1))))


class VggHead(nn.Module):
    """A VGG-style classifier: a conv stage pooled to 7x7, then three Linears (3136 -> 256 -> 256 -> 100)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(7))
        self.classifier = nn.Sequential(nn.Linear(64 * 49, 256), nn.ReLU(), nn.Dropout(), nn.Linear(256, 256),
                                        nn.ReLU(), nn.Dropout(), nn.Linear(256, 100))  # fmt: skip

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class TokenMlp(nn.Module):
    """A transformer's MLP block on (1, 49, 96) tokens: LayerNorm -> Linear -> GELU -> Linear + residual."""

    def __init__(self, c=96, hidden=384):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(c), nn.Linear(c, hidden), nn.Linear(hidden, c)

    def forward(self, x):
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm(x))))


def rotate_half(x):
    """Llama's: the head's two halves swapped, the first negated (the half read from the shape)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def repeat_kv(x, n_rep: int):
    """Hugging Face's: each of GQA's key/value heads repeated for the ``n_rep`` query heads that read it."""
    n, heads, length, dim = x.shape
    return x[:, :, None, :, :].expand(n, heads, n_rep, length, dim).reshape(n, heads * n_rep, length, dim)


class RotaryBlock(nn.Module):
    """A decoder layer's attention as Llama writes it: q, k, v split into heads, rotary embeddings on q and k
    — on each head's first ``rotary`` dims, the rest passed through, as GPT-NeoX and Phi do — grouped key and
    value heads repeated for the queries (GQA), causal sdpa (``is_causal=True``, as Hugging Face calls it
    without a mask), o_proj and the residual."""

    def __init__(self, width: int = 32, heads: int = 4, length: int = 8, rotary: int = 8, kv_heads: int = 4):
        super().__init__()
        self.heads, self.head_dim, self.rotary, self.kv_heads = heads, width // heads, rotary, kv_heads
        self.q, self.o = nn.Linear(width, width), nn.Linear(width, width)
        self.k, self.v = (nn.Linear(width, kv_heads * self.head_dim) for _ in range(2))
        angles = torch.outer(torch.arange(length).float(), 10000 ** -(torch.arange(0, rotary, 2).float() / rotary))
        angles = torch.cat((angles, angles), -1)
        self.register_buffer("cos", angles.cos()[None, None], persistent=False)  # (1, 1, L, rotary)
        self.register_buffer("sin", angles.sin()[None, None], persistent=False)

    def forward(self, x):
        n, length, width = x.shape
        q, k, v = (p(x).view(n, length, -1, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        q, k = self.rotate(q), self.rotate(k)
        if self.kv_heads < self.heads:
            k, v = repeat_kv(k, self.heads // self.kv_heads), repeat_kv(v, self.heads // self.kv_heads)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.o(y.transpose(1, 2).reshape(n, length, width))

    def rotate(self, t):
        if self.rotary == self.head_dim:
            return t * self.cos + rotate_half(t) * self.sin
        turned, rest = t[..., : self.rotary], t[..., self.rotary :]
        return torch.cat((turned * self.cos + rotate_half(turned) * self.sin, rest), dim=-1)


class Logits(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids).logits


def suite(tiny: bool) -> dict:
    """name -> (a factory of the eval model, its example input)."""
    models = {
        "CIFAR CNN": (CifarCnn, lambda: torch.randn(1, 3, 32, 32)),
        "token MLP block": (TokenMlp, lambda: torch.randn(1, 49, 96)),
    }
    if tiny:
        return {"token MLP block": models["token MLP block"]}
    import timm
    import transformers

    def bert():
        config = transformers.BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=512)  # fmt: skip
        return Logits(transformers.BertForSequenceClassification(config))

    def llama():
        config = transformers.LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, use_cache=False)  # fmt: skip
        return Logits(transformers.LlamaForCausalLM(config))

    return {
        **models,
        "VGG-style head": (VggHead, lambda: torch.randn(1, 3, 28, 28)),
        "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=100),
                               lambda: torch.randn(1, 3, 96, 96)),
        "ViT, 2 blocks": (lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                                                    num_classes=10), lambda: torch.randn(1, 3, 32, 32)),
        "BERT-tiny": (bert, lambda: torch.randint(0, 1000, (1, 16))),
        "Llama, 2 layers": (llama, lambda: torch.randint(0, 1000, (1, 16))),
        "Llama attention, written out": (lambda: RotaryBlock(width=64, heads=4, length=16, rotary=16, kv_heads=2),
                                         lambda: torch.randn(1, 16, 64)),
    }  # fmt: skip


def variants(model: nn.Module, x: torch.Tensor, target: str) -> dict:
    """The models a compiler gets: the original, fxconv's default and target profile, and the peers."""

    def converted(**options):
        module = fxconv.convert(model, x, **options).module
        return module.module() if isinstance(module, torch.export.ExportedProgram) else module

    return {
        "original": lambda: model,
        "fxconv default": lambda: converted(),
        f"fxconv target={target}": lambda: converted(target=target),
        "wrap each Linear": lambda: peers.wrap_each_linear(model),
        "tokens into batch": lambda: peers.fold_into_batch(model),
    }


def _measure(make, measure) -> dict:
    try:
        return measure(make())
    except Exception as e:  # a row that says why the compiler did not take it
        return {"error": f"{type(e).__name__}: {first_line(e)}"[:300], "trace": traceback.format_exc(limit=-3)}


def run(out: Path, tiny: bool) -> dict:
    rows = []
    devices = ("ethos-u55-128",) if tiny else tuple(MEASURED)
    for name, (factory, example) in suite(tiny).items():
        torch.manual_seed(0)
        model, x = factory().eval(), example()
        for label, make in variants(model, x, "ethos-u").items():
            for device in devices:
                found = _measure(make, lambda m, x=x, device=device: vars(ethos_u(m, x, device)))
                rows.append({"model": name, "compiler": device, "variant": label, **found})
                print(_line(rows[-1]), flush=True)
        for label, make in variants(model, x, "coreml").items():
            found = _measure(make, lambda m, x=x: {"ops": _mil_counts(coreml_ops(m, x))})
            rows.append({"model": name, "compiler": "coreml", "variant": label, **found})
            print(_line(rows[-1]), flush=True)
    document = {"rows": rows, "versions": versions(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "bench-targets.json").write_text(json.dumps(document, indent=2))
    print(table(rows))
    plot(rows, out / "bench-targets.png")
    print(f"wrote {out / 'bench-targets.json'} and bench-targets.png")
    return document


def _mil_counts(ops: dict[str, int]) -> dict[str, int]:
    return {op: n for op, n in ops.items() if op in MIL_OPS}


def _line(row: dict) -> str:
    start = f"{row['model']:<20} {row['compiler']:<14} {row['variant']:<24}"
    if "error" in row:
        return f"{start} {row['error'][:90]}"
    if row["compiler"] == "coreml":
        return f"{start} " + " ".join(f"{k} {v}" for k, v in row["ops"].items())
    return f"{start} {row['cycles']:>10,} cycles, {len(row['outside'])} ops outside"


def table(rows: list[dict]) -> str:
    """Markdown: Vela cycles (vs the original's) and Core ML op counts, one row per model and variant."""
    names = list(dict.fromkeys(r["model"] for r in rows))
    labels = list(dict.fromkeys(_label(r["variant"]) for r in rows))
    devices = [d for d in MEASURED if any(r["compiler"] == d for r in rows)]
    head = ["model", "variant", *(f"{d} cycles" for d in devices), "Core ML linear / conv / transpose / reshape"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---", "---", *["---:"] * (len(head) - 2)]) + " |"]
    for name in names:
        for label in labels:
            cells = [name, label]
            for device in devices:
                row = _find(rows, name, device, label)
                base = _find(rows, name, device, "original")
                if row is None or "error" in row:
                    cells.append("does not compile" if row else "")
                elif row["variant"] == "original" or base is None or "error" in base:
                    cells.append(f"{row['cycles']:,}")
                else:
                    cells.append(f"{row['cycles']:,} ({row['cycles'] / base['cycles'] - 1:+.1%})")
            row = _find(rows, name, "coreml", label)
            if row is None or "error" in row:
                cells.append(f"does not convert ({row['error'][:60]})" if row else "")
            else:
                cells.append(" / ".join(str(row["ops"].get(op, 0)) for op in MIL_OPS))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _label(variant: str) -> str:
    """A variant as the table names it: the target profile is one row for both compilers."""
    return "fxconv target profile" if variant.startswith("fxconv target=") else variant


def _find(rows, model, compiler, label):
    wanted = (model, compiler, label)
    return next((r for r in rows if (r["model"], r["compiler"], _label(r["variant"])) == wanted), None)


def plot(rows: list[dict], path: Path) -> None:
    """Bars: each variant's Vela cycles over the original's (per device), and its Core ML transposes."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = list(dict.fromkeys(r["model"] for r in rows))
    panels = [d for d in MEASURED if any(r["compiler"] == d for r in rows)] + ["coreml"]
    size = (6 * len(panels), 4.5)
    fig, axes = plt.subplots(1, len(panels), figsize=size, constrained_layout=True, squeeze=False)
    for ax, compiler in zip(axes[0], panels):
        labels = list(dict.fromkeys(r["variant"] for r in rows if r["compiler"] == compiler))
        width = 0.8 / max(len(labels), 1)
        for k, label in enumerate(labels):
            values = []
            for name in names:
                row, base = _find(rows, name, compiler, _label(label)), _find(rows, name, compiler, "original")
                if row is None or "error" in row or base is None or "error" in base:
                    values.append(0.0)
                elif compiler == "coreml":
                    values.append(row["ops"].get("transpose", 0))
                else:
                    values.append(row["cycles"] / base["cycles"])
            ax.bar([i + k * width for i in range(len(names))], values, width, label=label)
        if compiler != "coreml":
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_yscale("log")
        ax.set_title(f"{compiler}: " + ("MIL transposes" if compiler == "coreml" else "Vela cycles / original's"))
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=30, ha="right")
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
