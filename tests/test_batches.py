"""A converted module runs wherever the original does: proven at batches other than the example's.

One example cannot show which dims move with the batch — at batch 1, MultiheadAttention's (1, N·heads, d)
looks like a (heads, d) map a head could read — so capture runs the graph at one more row and marks them;
and a layout's way out that meets a ``view`` is made contiguous first.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxconv
from fxconv.capture import capture

BATCHES = (1, 2, 3)


class Interleaved(nn.Module):
    """The batch folded inside a dim: (N, 4, 8) -> (4N, 1, 8) -> (1, 4N, 8) -> (N, 32), as attention's
    heads are merged after a one-token query; at batch 1 it is a flatten of a (4, 8) map."""

    def __init__(self, width: int = 8, heads: int = 4):
        super().__init__()
        self.width, self.fc = width, nn.Linear(heads * width, 5)

    def forward(self, x):
        return self.fc(x.reshape(-1, 1, self.width).transpose(0, 1).reshape(-1, self.fc.in_features))


class ProbePool(nn.Module):
    """SigLIP's attention-pooling head: a learned probe attends over the tokens, an MLP after."""

    def __init__(self, width: int = 32, heads: int = 4):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.probe = nn.Parameter(torch.randn(1, 1, width))
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x):
        x = self.fc(x)
        h = self.attention(self.probe.repeat(x.shape[0], 1, 1), x, x)[0]
        return (h + self.mlp(self.norm(h)))[:, 0]


def assert_same_at_every_batch(model, converted, shape):
    for batch in BATCHES:
        x = torch.randn(batch, *shape[1:])
        torch.testing.assert_close(converted(x), model(x), msg=lambda m, batch=batch: f"batch {batch}: {m}")


@pytest.mark.parametrize("how", ["fx", "export"])
@pytest.mark.parametrize("example_batch", [1, 2])
@pytest.mark.parametrize("scope", ["heads", "all"])
def test_a_batch_folded_inside_a_dim_is_never_read_as_a_map(how, example_batch, scope):
    torch.manual_seed(0)
    model = Interleaved().eval()
    converted, report = fxconv.convert(model, torch.randn(example_batch, 4, 8), scope=scope, capture=how)
    if scope == "heads":  # no head: its input is no flatten of a map at every batch
        assert not report.converted and [s.code for s in report.skipped] == ["not-flattened"]
    else:
        assert [(c.name, c.layout) for c in report.converted] == [("fc", "(N, C) as (1, C, 1, N)")]
    assert_same_at_every_batch(model, converted, (1, 4, 8))


@pytest.mark.parametrize("how", ["fx", "export"])
@pytest.mark.parametrize("target", ["onnxruntime", "coreml"])
def test_an_attention_pooling_head_runs_and_exports_at_every_batch(how, target, tmp_path):
    torch.manual_seed(0)
    model, x = ProbePool().eval(), torch.randn(1, 7, 32)
    converted, report = fxconv.convert(model, x, scope="all", capture=how, target=target)
    assert {c.name for c in report.converted} >= {"fc", "mlp.0", "mlp.2"}
    assert all(s.code == "opaque" for s in report.skipped)  # MultiheadAttention's own under symbolic_trace
    assert_same_at_every_batch(model, converted, x.shape)
    check = fxconv.check_onnx(fxconv.export_onnx(converted, x, tmp_path / "m.onnx"), model, x, batch_sizes=BATCHES)
    assert check.passed, check


def test_capture_marks_the_dims_that_move_with_the_batch():
    gm = capture(Interleaved(), (torch.randn(1, 4, 8),), "fx").gm
    moved = {n.name: n.meta.get("batch_dims") for n in gm.graph.nodes}
    assert moved == {"x": {0: "N"}, "reshape": {0: "4N"}, "transpose": {1: "4N"}, "reshape_1": {0: "N"},
                     "fc": {0: "N"}, "output": {0: "N"}}


def test_a_graph_fixed_to_its_batch_marks_nothing_and_converts_as_before():
    model, x = Interleaved().eval(), torch.randn(1, 4, 8)
    program = torch.export.export(model, (x,))  # static: runs at batch 1 only
    gm = capture(program, (x,)).gm
    assert not any("batch_dims" in n.meta for n in gm.graph.nodes)
    converted, report = fxconv.convert(program, x, strict=True)
    assert [(c.name, c.method) for c in report.converted] == [("fc", "kernel")]  # right at the one batch it has
    torch.testing.assert_close(converted.module()(x), model(x))


class BranchOnBatch(nn.Module):
    """A branch on the batch size: torch.export specialises the batch it was given to a constant."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(x.flatten(1)) * (2 if x.shape[0] == 2 else 1)


@pytest.mark.parametrize(("batch", "why"), [
    (1, "torch.export specialised the batch to 2"),  # batch 1 is exported doubled: the graph holds batch 2 only
    (2, "torch.export specialised the batch to 2"),
    (3, "torch.export's graph holds only where x.size()[0] != 2"),  # dynamic, but it fails at batch 2
])  # fmt: skip
def test_a_batch_torch_export_specialises_or_excludes_is_captured_at_the_batch_given(batch, why):
    model, x = BranchOnBatch().eval(), torch.randn(batch, 2, 4)
    converted, report = fxconv.convert(model, x, capture="export")
    assert report.fixed_batch == batch and why in report.capture_note
    torch.testing.assert_close(converted(x), model(x))


class BoundedBatch(nn.Module):
    """diffusers' Upsample2D: ``if x.shape[0] >= 64: x = x.contiguous()`` — a graph that holds below 64 rows."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        if x.shape[0] >= 64:
            x = x * 2  # a branch of another meaning: the graph captured below 64 must never run here
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("batch", [1, 5, 63])
def test_a_batch_bounded_by_a_branch_stays_free_within_the_bound_and_is_checked_outside(batch, tmp_path):
    model, x = BoundedBatch().eval(), torch.randn(batch, 2, 4)
    converted, report = fxconv.convert(model, x)  # auto: symbolic_trace cannot branch, torch.export bounds it
    assert report.fixed_batch is None and "batch free for 1 <= batch <= 63" in report.capture_note
    assert report.verified.batches == (batch, batch - 1 if batch > 1 else 2)
    for rows in (1, 7, 63):
        y = torch.randn(rows, 2, 4)
        torch.testing.assert_close(converted(y), model(y))
    with pytest.raises(AssertionError, match="Guard failed"):  # torch's own check, never the wrong branch
        converted(torch.randn(64, 2, 4))
    path = fxconv.export_onnx(converted, x, tmp_path / "b.onnx")  # an ONNX dim has no range: the file says it
    onnx_model = fxconv.load_onnx(path)
    assert onnx_model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {p.key: p.value for p in onnx_model.metadata_props}["fxconv.batch_range"] == "1 <= batch <= 63"
    assert fxconv.check_onnx(path, model, x).passed


class SmallBatchBranch(nn.Module):
    """A branch below 3 rows: torch.export's graph of a batch of 4 holds where ``x.size()[0] >= 3``."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        if x.shape[0] < 3:
            x = x * 2
        return self.fc(x.flatten(1))


def test_a_batch_bounded_from_below_is_captured_at_the_batch_given(tmp_path):
    """Batch 1 would run the other branch: the graph is not left free above its bound, it is static."""
    model, x = SmallBatchBranch().eval(), torch.randn(4, 2, 4)
    converted, report = fxconv.convert(model, x)
    assert report.fixed_batch == 4 and "holds only where x.size()[0] >= 3" in report.capture_note
    path = fxconv.export_onnx(converted, x, tmp_path / "low.onnx")
    assert fxconv.check_onnx(path, model, x).passed


@pytest.mark.parametrize("batch", [1, 3])
def test_a_static_capture_is_asked_for_and_said(batch, tmp_path):
    model, x = Interleaved().eval(), torch.randn(batch, 4, 8)
    converted, report = fxconv.convert(model, x, scope="all", capture="static")
    assert (report.capture, report.fixed_batch) == ("torch.export", batch)
    assert f"fixed to batch {batch}: capture='static' asks for it" in str(report)
    torch.testing.assert_close(converted(x), model(x))
    path = fxconv.export_onnx(converted, x, tmp_path / "s.onnx")  # at its batch: the file's is static
    assert [d.dim_value for d in fxconv.load_onnx(path).graph.input[0].type.tensor_type.shape.dim] == [batch, 4, 8]
    assert fxconv.check_onnx(path, model, x).passed


class PooledNormHead(nn.Module):
    """LeViT's head, over a map or over tokens: pooled, BatchNorm1d, Linear."""

    def __init__(self, tokens: bool):
        super().__init__()
        self.tokens = tokens
        self.body = nn.Linear(8, 16) if tokens else nn.Conv2d(3, 16, 3)
        self.norm, self.fc = nn.BatchNorm1d(16), nn.Linear(16, 5)
        with torch.no_grad():
            self.norm.running_mean.uniform_(-1, 1), self.norm.running_var.uniform_(0.5, 2)

    def forward(self, x):
        return self.fc(self.norm(self.body(x).mean(1 if self.tokens else (2, 3))))


@pytest.mark.parametrize("tokens", [False, True], ids=["map", "tokens"])
def test_both_captures_convert_a_pooled_batchnorm_head_alike(tokens):
    model = PooledNormHead(tokens).eval()
    shape = (2, 5, 8) if tokens else (2, 3, 8, 8)
    found = {}
    for how in ("fx", "export"):
        converted, report = fxconv.convert(model, torch.randn(shape), capture=how)
        found[how] = [(c.name, c.method, c.layout) for c in report.converted]
        assert_same_at_every_batch(model, converted, shape)
    assert found["fx"] == found["export"] and found["fx"][0][0] == "fc"
