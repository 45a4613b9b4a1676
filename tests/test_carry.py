"""The carry rules (``fxconv.carry``): each op family is carried alike at the torch level (symbolic_trace),
the ATen level (torch.export) and in ONNX files (``convert_onnx``), or its rule says why not.

Each family sits between two Linears on tokens: carried, the converted graph changes layout once in and
once out (2 permutes more than the original, in every path); not carried, it pays a way out and a way
back in around the op (4).
"""

from __future__ import annotations

import math

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxconv
from fxconv.capture import capture
from fxconv.carry import ATTENTION, CARRIED, LEVELS
from fxconv.check import load_onnx, op_census
from fxconv.fx.read import _resolve, _rule_index

from conftest import assert_same_outputs
from test_scope import layout_changes

C = 8
TOKENS = (2, 5, C)


class Sandwich(nn.Module):
    """Linear -> op -> Linear."""

    def __init__(self, op, between=None):
        super().__init__()
        self.op, self.fc1, self.fc2 = op, nn.Linear(C, C), nn.Linear(C, C)
        self.gamma, self.w = nn.Parameter(torch.rand(C)), nn.Parameter(torch.rand(C))
        self.between = between or nn.Identity()

    def forward(self, x):
        return self.fc2(self.op(self, self.fc1(x)))


# (rule, the op, input shape, layout changes the converted graph adds)
FAMILIES = {
    "erf GELU": ("element-wise", lambda m, y: 0.5 * y * (1 + torch.erf(y / math.sqrt(2))), TOKENS, 2),
    "scale, exp, residual": ("element-wise", lambda m, y: y + m.gamma * torch.exp(-y.abs()), TOKENS, 2),
    "cast": ("element-wise", lambda m, y: y.to(torch.float32) * 2, TOKENS, 2),
    "LayerNorm": ("layer-norm", lambda m, y: F.layer_norm(y, (C,), m.gamma, m.w), TOKENS, 2),
    "RMSNorm": ("rms-norm", lambda m, y: F.rms_norm(y, (C,), m.w, 1e-6), TOKENS, 2),
    "RMSNorm by hand (Llama's)": (
        "over-dims", lambda m, y: m.w * (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)), TOKENS, 2,
    ),
    "softmax over the channels": ("over-dims", lambda m, y: y.softmax(-1), TOKENS, 2),
    "mean over the tokens, kept": ("over-dims", lambda m, y: y - y.mean(1, keepdim=True), TOKENS, 2),
    "slice of the tokens": ("slice", lambda m, y: y[:, 1:], TOKENS, 2),
    "size read": ("sizes", lambda m, y: y * (y.shape[-1] ** -0.5), TOKENS, 2),
    "channels-last map to tokens": ("regroup", lambda m, y: y.reshape(y.shape[0], -1, C), (2, 3, 4, C), 2),
    "BatchNorm1d of vectors": ("per-feature", lambda m, y: m.between(y), (4, C), 2),
    # Negative cases: the layout does not carry them.
    "LayerNorm over two dims": ("layer-norm", lambda m, y: F.layer_norm(y, (5, C)), TOKENS, 4),
    "index dropping the tokens": ("slice", lambda m, y: y[:, 0], TOKENS, 4),
}
ELSEWHERE = {  # rules whose tests need more than two Linears
    "permute": "test_scope.py: ConvNeXt blocks, whose permutes cancel",
    "quantize-dequantize": "test_onnx_input.py: QDQ files (ONNX only)",
    "attention": "below, and test_targets.py (Core ML's MIL programs)",
    "select": "below", "cat": "below",
    "expand": "test_targets.py and test_transformers.py: GQA's repeated key heads (repeat_kv), for Core ML",
}
RULES = (*CARRIED, *(rule for rule in ATTENTION if rule.name not in {r.name for r in CARRIED}))


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_is_carried_alike_at_every_level(family, tmp_path):
    _, op, shape, added = FAMILIES[family]
    torch.manual_seed(0)
    model = Sandwich(op, nn.BatchNorm1d(C) if "BatchNorm" in family else None).eval()
    x = torch.randn(*shape)
    for how in ("fx", "export"):
        module, report = fxconv.convert(model, x, scope="all", capture=how, strict=True)
        assert len(report.converted) == 2
        assert layout_changes(module) - layout_changes(capture(model, (x,), how).gm) == added, how
        assert_same_outputs(module, model, x)
        assert_same_outputs(module, model, torch.randn(3, *shape[1:]))
    original = fxconv.export_onnx(model, x, tmp_path / "original.onnx")
    converted, report = fxconv.convert_onnx(original, scope="all", strict=True)
    onnx.save(converted, tmp_path / "converted.onnx")
    transposes = [op_census(m).get("Transpose", 0) for m in (load_onnx(original), converted)]
    assert transposes[1] - transposes[0] == added
    check = fxconv.check_onnx(tmp_path / "converted.onnx", original)
    assert check.passed, str(check)


def test_the_families_cover_every_rule():
    assert {rule for rule, *_ in FAMILIES.values()} | set(ELSEWHERE) == {rule.name for rule in RULES}


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_every_rule_names_its_ops_at_each_level_or_says_why_not(rule):
    for level in LEVELS:
        names = getattr(rule, level)
        assert bool(names) != (level in rule.not_at), f"{rule.name} at the {level} level: names, or a reason"
    assert all(hasattr(torch.ops.aten, name) for name in rule.aten)
    assert all(onnx.defs.has(name) for name in rule.onnx)
    index = _rule_index(CARRIED if rule in CARRIED else ATTENTION)
    for name in rule.torch:  # every torch-level spelling exists on this torch, and reaches the rule
        found = _resolve(name, "torch")
        assert found is not None and rule in index[found], name
        assert not name.startswith(".") or hasattr(torch.Tensor, name[1:]), f"no Tensor method {name}"


def test_a_norm_written_as_rsqrt_stays_rsqrt_in_the_pytorch_graph():
    """NPUs run rsqrt as one op (Ethos-U's RSQRT); sqrt then a division runs on the CPU there."""
    model = Sandwich(lambda m, y: F.layer_norm(y, (C,))).eval()
    module, _ = fxconv.convert(model, torch.randn(*TOKENS), scope="all", capture="fx", strict=True)
    called = {getattr(n.target, "__name__", n.target) for n in module.graph.nodes}
    assert "rsqrt" in called and not {"sqrt", "reciprocal", "truediv"} & called


# -- attention in the layout (Core ML's target): split heads, select, cat, split-einsum attention --------


class Attention(nn.Module):
    """A class token, attention over the tokens, a class-token head: q/k/v packed (timm) or apart (Hugging
    Face, with grouped key/value heads and a boolean mask)."""

    def __init__(self, packed: bool, heads=4, kv_heads=4):
        super().__init__()
        self.packed, self.heads, self.kv_heads, self.dim = packed, heads, kv_heads, C // heads
        self.cls = nn.Parameter(torch.randn(1, 1, C))
        self.qkv = nn.Linear(C, 3 * C)
        self.q, self.kv = nn.Linear(C, C), nn.Linear(C, 2 * kv_heads * self.dim)
        self.proj, self.head = nn.Linear(C, C), nn.Linear(C, 3)

    def forward(self, x, mask=None):
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        n, length, _ = x.shape
        if self.packed == "split":  # GPT-2's: the packed channels split, then each split into heads
            pieces = self.qkv(x).split(C, dim=2)  # indexed: symbolic_trace cannot unpack it
            q, k, v = (pieces[i].view(n, length, self.heads, self.dim).transpose(1, 2) for i in range(3))
            o = F.scaled_dot_product_attention(q, k, v)
        elif self.packed == "chunk":  # GPT-NeoX's: heads first, each head's q, k and v chunked from its dims
            pieces = self.qkv(x).view(n, length, self.heads, 3 * self.dim).transpose(1, 2).chunk(3, dim=-1)
            o = F.scaled_dot_product_attention(pieces[0], pieces[1], pieces[2])
        elif self.packed:
            q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, self.dim).permute(2, 0, 3, 1, 4).unbind(0)
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            q = self.q(x).view(n, length, self.heads, self.dim).transpose(1, 2)
            k, v = self.kv(x).view(n, length, 2, self.kv_heads, self.dim).unbind(2)
            o = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                               enable_gqa=self.kv_heads != self.heads)  # fmt: skip
        x = x + self.proj(o.transpose(1, 2).reshape(n, length, C))
        return self.head(x[:, 0])


@pytest.mark.parametrize("capture", ["fx", "export"])
@pytest.mark.parametrize(("packed", "kv_heads"), [(True, 4), ("split", 4), ("chunk", 4), (False, 4), (False, 2)],
                         ids=["packed", "split", "chunk", "apart", "gqa"])  # fmt: skip
def test_attention_runs_split_per_head_in_the_layout_for_core_ml(packed, kv_heads, capture):
    torch.manual_seed(0)
    model = Attention(packed, kv_heads=kv_heads).eval()
    x = torch.randn(2, 5, C)
    mask = torch.rand(2, 1, 6, 6) > 0.3
    mask[..., 0] = True  # every query sees a key
    module, report = fxconv.convert(model, (x, mask), target="coreml", capture=capture, strict=True)
    gm = module.module() if isinstance(module, torch.export.ExportedProgram) else module
    einsums = [n for n in gm.graph.nodes if getattr(n.target, "__name__", "") == "einsum"]
    assert len(einsums) == 2 * 4  # two per head: the scores and the weighted values
    assert not any("scaled_dot_product_attention" in str(n.target) for n in gm.graph.nodes)
    # In: the tokens (and the class token's constant); out: nothing — the head reads token 0 of the form.
    assert layout_changes(module) <= 3
    assert_same_outputs(module, model, x, mask)
    assert_same_outputs(module, model, torch.randn(3, 5, C), torch.rand(3, 1, 6, 6) > -1)


def test_without_the_core_ml_target_attention_keeps_the_models_own_permutes():
    """Measured slower in onnxruntime (one permute moving the innermost dim runs in its slow generic kernel):
    the default target leaves attention as the model wrote it."""
    model, x = Attention(packed=True).eval(), torch.randn(2, 5, C)
    module, _ = fxconv.convert(model, x, scope="all", capture="fx", strict=True)
    assert any("scaled_dot_product_attention" in getattr(n.target, "__name__", "") for n in module.graph.nodes)
    assert_same_outputs(module, model, x)
