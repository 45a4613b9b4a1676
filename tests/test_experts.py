"""Products that read a weight but are no Linear — an einsum with a constant operand, a grouped matmul of
stacked expert weights, a matmul of weights gathered per token — are reported with a code at both graph
levels, never passed over; what is converted around them stays equal to the original."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

import fxconv

from conftest import assert_same_outputs


class EinsumProjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 8))
        self.out = nn.Linear(6, 3)

    def forward(self, x):  # (N, L, 8)
        return self.out(torch.einsum("bld,od->blo", x, self.w))


class GatheredExperts(nn.Module):
    """transformers' ``batched_mm`` experts: each token's expert weight gathered from one (E, in, out)
    parameter, then one batched product."""

    def __init__(self, experts=4, width=8, hidden=6):
        super().__init__()
        self.router = nn.Linear(width, experts)
        self.w = nn.Parameter(torch.randn(experts, width, hidden))

    def forward(self, x):  # (N, L, width)
        chosen = self.router(x).argmax(-1)  # (N, L): one expert per token
        return (x.unsqueeze(-2) @ self.w[chosen]).squeeze(-2)


class GroupedExperts(nn.Module):
    """Tokens sorted by expert, one grouped matmul over the stacked weights (``torch._grouped_mm``)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, 8, 16))
        self.register_buffer("ends", torch.tensor([3, 6], dtype=torch.int32))  # rows 0-2: expert 0, 3-5: expert 1
        self.proj = nn.Linear(16, 4)

    def forward(self, x):  # (6, 8)
        return self.proj(torch._grouped_mm(x, self.w, offs=self.ends))


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_an_einsum_and_gathered_expert_weights_are_reported_and_the_rest_converts(capture, tmp_path):
    for model, x, code in [
        (EinsumProjection(), torch.randn(2, 5, 8), "einsum"),
        (GatheredExperts(), torch.randn(2, 5, 8), "gathered-weight"),
    ]:
        model = model.eval()
        module, report = fxconv.convert(model, x, scope="all", capture=capture)
        assert [(s.name, s.code) for s in report.skipped] == [("w", code)], report
        assert "(6, 8)" in report.skipped[0].reason or "(4, 8, 6)" in report.skipped[0].reason
        assert len(report.converted) == 1  # the Linear beside it
        for batch in (1, 3):
            assert_same_outputs(module, model, torch.randn(batch, 5, 8))
        with pytest.raises(fxconv.NotConvertibleError, match=code):
            fxconv.convert(model, x, scope="all", capture=capture, strict=True)
    check = fxconv.check_onnx(fxconv.export_onnx(module, x, tmp_path / "g.onnx"), model, x)
    assert check.passed, check


def test_a_grouped_matmul_of_stacked_weights_is_reported():
    model, x = GroupedExperts().eval(), torch.randn(6, 8)  # torch.export has no float32 grouped_mm on the CPU
    module, report = fxconv.convert(model, x, scope="all", capture="fx")
    assert [(s.name, s.code) for s in report.skipped] == [("w", "grouped-weight")]
    assert "_grouped_mm" in report.skipped[0].reason and [c.name for c in report.converted] == ["proj"]
    assert_same_outputs(module, model, x)


@pytest.mark.slow
@pytest.mark.parametrize("experts", ["grouped_mm", "batched_mm"])
def test_hugging_face_experts_are_in_the_report(experts):
    transformers = pytest.importorskip("transformers")
    config = transformers.MixtralConfig(
        num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
        num_local_experts=4, num_experts_per_tok=2, vocab_size=100, use_cache=False,
    )  # fmt: skip
    model = transformers.AutoModel.from_config(config, experts_implementation=experts).eval()
    ids = torch.randint(0, 100, (1, 8))
    module, report = fxconv.convert(model, ids, scope="all")
    code = "grouped-weight" if experts == "grouped_mm" else "gathered-weight"
    assert [(s.name, s.code) for s in report.skipped] == [
        ("layers.0.mlp.experts.gate_up_proj", code), ("layers.0.mlp.experts.down_proj", code)
    ]  # fmt: skip
    assert len(report.converted) == 5  # q, k, v, o and the router
    torch.testing.assert_close(module(ids).last_hidden_state, model(ids).last_hidden_state)


def test_onnx_einsum_and_gathered_weights_are_reported(tmp_path):
    rng = np.random.default_rng(0)
    weights = {
        "router": rng.standard_normal((8, 4), dtype=np.float32),
        "experts": rng.standard_normal((4, 8, 6), dtype=np.float32),
        "proj": rng.standard_normal((6, 8), dtype=np.float32),
        "one": np.array([1], np.int64),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "router"], ["scores"]),  # (N, 4): a Linear, converted
        helper.make_node("ArgMax", ["scores"], ["chosen"], axis=1, keepdims=0),
        helper.make_node("Gather", ["experts", "chosen"], ["w"], axis=0),  # (N, 8, 6): each row its expert
        helper.make_node("Unsqueeze", ["x", "one"], ["rows"]),
        helper.make_node("MatMul", ["rows", "w"], ["y"]),  # (N, 1, 6)
        helper.make_node("Einsum", ["x", "proj"], ["z"], equation="nd,od->no"),
    ]
    graph = helper.make_graph(
        nodes, "experts", [helper.make_tensor_value_info("x", 1, ["N", 8])],
        [helper.make_tensor_value_info("y", 1, ["N", 1, 6]), helper.make_tensor_value_info("z", 1, ["N", 6])],
        [numpy_helper.from_array(a, name) for name, a in weights.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    converted, report = fxconv.convert_onnx(model, scope="all")
    assert [(s.name, s.code) for s in report.skipped] == [("experts", "gathered-weight"), ("proj", "einsum")]
    assert [c.name for c in report.converted] == ["router"]
    x = rng.standard_normal((3, 8), dtype=np.float32)
    onnx.save(converted, tmp_path / "converted.onnx")
    check = fxconv.check_onnx(tmp_path / "converted.onnx", model, x)  # the original ModelProto is the reference
    assert check.passed, check
