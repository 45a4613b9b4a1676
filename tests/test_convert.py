"""The pass: every spelling converts, outputs stay equal, what is left alone is reported, nothing else moves."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import fxconv

from conftest import assert_same_outputs
from models import (
    BETWEEN,
    FLATTENS,
    MLP,
    POOLS,
    BatchFolding,
    Head,
    InplaceOnShared,
    NormAfterFlatten,
    SharedLinear,
    SqueezeAll,
    TokenHead,
    TwoHeads,
)

CONVS = {torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}


def linear_calls(gm: fx.GraphModule) -> list[fx.Node]:
    modules = dict(gm.named_modules())
    return [
        n
        for n in gm.graph.nodes
        if (n.op == "call_module" and isinstance(modules[n.target], nn.Linear))
        or (n.op == "call_function" and n.target is F.linear)
    ]


def conv_calls(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in CONVS]


def test_readme_example_gives_the_known_answer():
    """A 1x1x2x2 image, a 4->2 Linear and a ReLU: [[14.9, 19.0]] in all three forms."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.ReLU())
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.1, 1.2, 1.3, 1.4], [1.5, 1.6, 1.7, 1.8]]))
        model[1].bias.copy_(torch.tensor([1.9, 2.0]))
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    expected = torch.tensor([[14.9, 19.0]])
    torch.testing.assert_close(model(x), expected)
    for method in fxconv.CONV_METHODS:
        module, report = fxconv.convert(model, x, method)
        torch.testing.assert_close(module(x), expected)
        assert [c.kernel for c in report.converted] == [(2, 2) if method == "kernel" else (1, 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", fxconv.LAYOUTS)
@pytest.mark.parametrize("method", fxconv.CONV_METHODS)
@pytest.mark.parametrize("spelling", [*FLATTENS, "F.linear"])
def test_every_flatten_spelling_converts(spelling, method, layout, bias, rank, dtype):
    functional = spelling == "F.linear"
    model = Head("torch.flatten" if functional else spelling, rank, bias, functional=functional)
    model = model.to(dtype).eval()
    x = model.example(dtype=dtype)
    module, report = fxconv.convert(model, x, method, layout=layout)

    assert linear_calls(module) == []
    convs = conv_calls(module)
    assert [CONVS[c.target] for c in convs] == [rank, rank]
    spatial = (5,) * rank if method == "kernel" else (1,) * rank
    assert [c.kernel for c in report.converted] == [spatial, (1,) * rank]
    assert report.converted[0].flattened_from == (4, *(5,) * rank)
    assert report.skipped == []
    assert_same_outputs(module, model, x)
    assert module(x).dtype == dtype


@pytest.mark.parametrize("layout", fxconv.LAYOUTS)
@pytest.mark.parametrize("method", fxconv.CONV_METHODS)
@pytest.mark.parametrize("spelling", POOLS)
def test_global_pooling_that_ends_2d_converts(spelling, method, layout):
    model = Head(spelling, hidden=(8, 8)).eval()
    x = model.example()
    module, report = fxconv.convert(model, x, method, layout=layout)
    assert linear_calls(module) == []
    # 1x1 convolutions (conv1d for x.mean(3).mean(2), whose last reduction reads an (N, C, H) map)
    assert len(report.converted) == 3 and all(set(c.kernel) == {1} for c in report.converted)
    assert_same_outputs(module, model, x)


RESHAPES = {torch.flatten, "flatten", "reshape", "view", "t", "movedim"}


@pytest.mark.parametrize("layout", fxconv.LAYOUTS)
@pytest.mark.parametrize("method", fxconv.CONV_METHODS)
@pytest.mark.parametrize("between", BETWEEN)
@pytest.mark.parametrize("batchnorm", [False, True])
def test_ops_between_and_after_linears_stay_in_the_convolutional_head(between, batchnorm, method, layout):
    model = Head(between=between, hidden=(12, 10), batchnorm=batchnorm).eval()
    x = model.example()
    module, report = fxconv.convert(model, x, method, layout=layout)
    convs = conv_calls(module)
    assert linear_calls(module) == [] and len(convs) == 3
    # The head is flattened once, at its end: the convolutions feed each other through 4-D ops only.
    nodes = list(module.graph.nodes)
    inside = nodes[nodes.index(convs[0]) + 1 : nodes.index(convs[-1])]
    assert [n.target for n in inside if n.target in RESHAPES] == []
    assert len(convs[-1].users) == 1
    assert_same_outputs(module, model, x)


@pytest.mark.parametrize(
    ("layout", "shapes"),
    [("folded", [(1, 8, 1, 3), (1, 3, 1, 3)]), ("batched", [(3, 8, 1, 1), (3, 3, 1, 1)])],
)
@pytest.mark.parametrize("method", fxconv.CONV_METHODS)
def test_the_layout_says_where_the_batch_goes(method, layout, shapes):
    model = Head(hidden=(8,)).eval()
    module, report = fxconv.convert(model, model.example(batch=3), method, layout=layout)
    assert report.layout == layout and f"layout={layout!r}" in str(report)
    heads, seen = conv_calls(module), []

    class Probe(fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            if n in heads:
                seen.append(tuple(result.shape))
            return result

    Probe(module).run(model.example(batch=3))
    # Folded, each head convolution sees one image holding the 3 batch items side by side: one GEMM.
    assert seen == shapes


def test_the_default_layout_is_folded_and_dense_is_batched():
    model = Head().eval()
    assert fxconv.convert(model, model.example()).report.layout == "folded"
    assert fxconv.convert(model, model.example(), dense=True).report.layout == "batched"
    with pytest.raises(fxconv.InvalidArgumentError, match="layout='batched'"):
        fxconv.convert(model, model.example(), dense=True, layout="folded")
    with pytest.raises(fxconv.InvalidArgumentError, match="layout 'sideways'"):
        fxconv.convert(model, model.example(), layout="sideways")


def test_batchnorm_in_the_head_trains_like_the_original():
    model = Head(hidden=(12,), batchnorm=True).train()
    x = model.example(batch=6)
    module, _ = fxconv.convert(model, x)
    torch.manual_seed(1)
    got = module(x)
    torch.manual_seed(1)
    want = model(x)
    torch.testing.assert_close(got, want)
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(module.get_buffer(name), buffer)


def test_a_flatten_read_by_two_heads_and_returned_converts_both():
    model = TwoHeads().eval()
    x = torch.randn(3, 2, 4, 4)
    module, report = fxconv.convert(model, x)
    assert sorted(c.name for c in report.converted) == ["a", "b"]
    with torch.no_grad():
        for got, want in zip(module(x), model(x)):
            torch.testing.assert_close(got, want)


def test_a_shared_linear_keeps_one_set_of_weights():
    model = SharedLinear().eval()
    inputs = (torch.randn(3, 2, 4, 4), torch.randn(3, 48))
    module, report = fxconv.convert(model, inputs)
    assert [c.name for c in report.converted] == ["fc"]
    # The second call site of the same module is told apart from the first.
    assert [(s.name, s.code) for s in report.skipped] == [("fc (call 2)", "not-flattened")]
    assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in model.parameters())
    assert module.state_dict().keys() == model.state_dict().keys()
    assert_same_outputs(module, model, *inputs)


@pytest.mark.parametrize(
    ("model", "x", "code"),
    [
        (TokenHead(), torch.randn(2, 5, 8), "not-2d"),
        (MLP(), torch.randn(2, 6), "not-flattened"),
        (BatchFolding(), torch.randn(2, 3, 4, 4), "folds-batch"),
        (NormAfterFlatten(), torch.randn(2, 2, 3, 3), "needs-1x1"),
        (InplaceOnShared(), torch.randn(2, 2, 3, 3), "inplace"),
        (SqueezeAll(), torch.randn(1, 2, 4, 4), "no-batch"),  # squeeze() of a batch of 1 drops it
    ],
    ids=["token-head", "mlp", "folds-batch", "norm-after-flatten", "inplace-on-shared", "squeeze-batch-1"],
)
def test_linears_left_alone_are_reported_and_outputs_kept(model, x, code):
    model = model.eval()
    module, report = fxconv.convert(model, x)
    assert report.converted == [] or code == "not-2d"
    assert code in {s.code for s in report.skipped}
    assert all(s.reason for s in report.skipped)
    assert code in str(report)
    with torch.no_grad():
        got, want = module(x), model(x)
    torch.testing.assert_close(got, want)
    with pytest.raises(fxconv.NotConvertibleError, match=code):
        fxconv.convert(model, x, strict=True)


def test_squeeze_of_a_pooled_batch_converts():
    model, x = SqueezeAll().eval(), torch.randn(3, 2, 4, 4)
    module, report = fxconv.convert(model, x, strict=True)
    assert [c.flattened_from for c in report.converted] == [(3, 1, 1)]
    assert_same_outputs(module, model, x)


def test_norm_after_flatten_converts_with_1x1():
    model = NormAfterFlatten().eval()
    x = torch.randn(2, 2, 3, 3)
    module, report = fxconv.convert(model, x, "1x1", strict=True)
    assert [c.name for c in report.converted] == ["fc"]
    assert_same_outputs(module, model, x)


# -- what the user gets back ---------------------------------------------------------------------


def test_the_input_model_is_not_mutated():
    model = Head(hidden=(8,), batchnorm=True).train()
    before = copy.deepcopy(model.state_dict())
    kinds = [type(m) for m in model.modules()]
    x = model.example()
    rng = torch.get_rng_state()
    fxconv.convert(model, x)
    assert [type(m) for m in model.modules()] == kinds
    assert model.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_traced_graph_module_is_not_mutated():
    gm = fx.symbolic_trace(Head().eval())
    code = gm.code
    fxconv.convert(gm, torch.randn(3, 2, 5, 5))
    assert gm.code == code and linear_calls(gm)


def test_inplace_shares_the_parameters_without_copying():
    model = Head().eval()
    module, _ = fxconv.convert(model, model.example(), inplace=True)
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert {p.data_ptr() for p in module.parameters()} == ptrs
    gm = fx.symbolic_trace(Head().eval())
    assert fxconv.convert(gm, model.example(), inplace=True).module is gm
    assert linear_calls(gm) == []


@pytest.mark.parametrize("training", [True, False])
def test_dtype_device_and_mode_are_kept(training):
    model = Head().double().train(training)
    module, _ = fxconv.convert(model, model.example(dtype=torch.float64))
    assert module.training is training
    assert all(m.training is training for m in module.modules())
    assert {(p.dtype, p.device) for p in module.parameters()} == {(torch.float64, torch.device("cpu"))}


def test_no_weight_is_duplicated():
    model = Head(hidden=(16, 8)).eval()
    module, _ = fxconv.convert(model, model.example())
    assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in model.parameters())
    assert module.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("layout", fxconv.LAYOUTS)
@pytest.mark.parametrize("method", fxconv.CONV_METHODS)
def test_the_result_trains_like_the_original(method, layout):
    model = Head(hidden=(8,), batchnorm=True).double().train()
    x = model.example(batch=4, dtype=torch.float64)
    module, _ = fxconv.convert(model, x, method, layout=layout)
    for m in (model, module):
        torch.manual_seed(0)
        m(x).square().sum().backward()
    got = dict(module.named_parameters())
    for name, p in model.named_parameters():
        assert got[name].grad is not None, name
        torch.testing.assert_close(got[name].grad, p.grad)


@pytest.mark.parametrize("layout", fxconv.LAYOUTS)
@pytest.mark.parametrize("method", fxconv.CONV_METHODS)
def test_converting_twice_changes_nothing(method, layout):
    model = Head(hidden=(8,)).eval()
    once, _ = fxconv.convert(model, model.example(), method, layout=layout)
    twice, report = fxconv.convert(once, model.example(), method, layout=layout)
    assert twice.code == once.code
    assert report.converted == [] and report.skipped == []


# -- errors --------------------------------------------------------------------------------------


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor value: symbolic_trace cannot follow it
            x = -x
        return self.fc(x.flatten(1))


def test_an_untraceable_model_says_why_and_what_to_do():
    with pytest.raises(fxconv.TraceError, match="DataDependent.*GraphModule"):
        fxconv.convert(DataDependent(), torch.randn(2, 1, 2, 2))


def test_a_model_traced_with_a_custom_tracer_is_accepted():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = DataDependent()
            self.fc = nn.Linear(2, 3)

        def forward(self, x):
            return self.fc(self.inner(x))

    class KeepInner(fx.Tracer):
        def is_leaf_module(self, m, name):
            return isinstance(m, DataDependent) or super().is_leaf_module(m, name)

    model = Wrapper().eval()
    gm = fx.GraphModule(model, KeepInner().trace(model))
    x = torch.randn(2, 1, 2, 2)
    module, report = fxconv.convert(gm, x)
    # The Linear inside the module the tracer kept whole is reported, not passed over in silence.
    assert [(s.name, s.code) for s in report.skipped] == [("inner.fc", "opaque"), ("fc", "not-flattened")]
    assert "module 'inner' (DataDependent)" in report.skipped[0].reason
    assert_same_outputs(module, model, x)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (
            (Head(), torch.randn(2, 3, 5, 5)),
            fxconv.ExampleInputError,
            r"expects 2 input channels in a 4-D \(N, C, H, W\) input",
        ),
        ((Head(), (torch.randn(2, 2, 5, 5),) * 2), fxconv.ExampleInputError, r"forward\(x\) does not take the example"),
        ((Head(), torch.randn(2, 2, 5, 5), "3x3"), fxconv.InvalidArgumentError, "unknown method '3x3'"),
        ((Head(), [[1.0]]), fxconv.InvalidArgumentError, "a tuple of inputs or a dict of keyword"),
        ((lambda x: x, torch.randn(2)), fxconv.InvalidArgumentError, "torch.nn.Module"),
    ],
    ids=["wrong-channels", "too-many-inputs", "unknown-method", "not-tensors", "not-a-module"],
)
def test_bad_input_raises_an_fxconv_error(args, error, match):
    with pytest.raises(error, match=match):
        fxconv.convert(*args)
