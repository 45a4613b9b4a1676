"""Capture (symbolic_trace, torch.export, given graphs) and every spelling of a Linear call.

Each promise of the capture path is one test: torch.export graphs and ExportedPrograms convert, matrix
algebra is a Linear, nothing that does more than F.linear is converted by a graph that would lose it,
a squeeze() head stays exact at batch 1, and a model that cannot be captured gets an error that names
the module and the line.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn
from torch.export import Dim

import fxconv

from conftest import assert_same_outputs
from models import (
    MATRIX_SPELLINGS,
    Attention,
    BatchedWeight,
    Head,
    HookedHead,
    InstanceForward,
    LeftWeight,
    LowRankHead,
    MatrixHead,
    SqueezeAll,
)

LINEAR_NAMES = {"linear", "matmul", "mm", "addmm", "__matmul__"}


def weight_products(module) -> list[fx.Node]:
    """The Linear-like calls left in a converted graph (torch or ATen level: ``aten.linear.default``)."""
    gm = module.module() if isinstance(module, torch.export.ExportedProgram) else module
    modules = dict(gm.named_modules())
    return [
        n
        for n in gm.graph.nodes
        if (n.op == "call_module" and isinstance(modules[n.target], nn.Linear))
        or (n.op.startswith("call_") and str(getattr(n.target, "__name__", n.target)).split(".")[0] in LINEAR_NAMES)
    ]


def exported(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(model, (x,), dynamic_shapes=({0: Dim.AUTO},))


# -- torch.export capture ------------------------------------------------------------------------


@pytest.mark.parametrize("method", fxconv.CONV_METHODS)
def test_an_exported_program_converts_into_an_exported_program(method, tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    program = exported(model, x)
    result, report = fxconv.convert(program, x, method, strict=True)
    assert isinstance(result, torch.export.ExportedProgram)
    assert report.capture == "ExportedProgram" and [c.name for c in report.converted] == ["fc"]
    assert weight_products(result) == []
    for batch in (1, 2, 5):  # dynamic where the given program was
        xb = torch.randn(batch, 3, 64, 64)
        assert_same_outputs(result.module(), model, xb)
    path = fxconv.export_onnx(result, x, tmp_path / "r.onnx")
    check = fxconv.check_onnx(path, model, x)
    assert check.passed, check
    assert "Gemm" not in check.ops and "MatMul" not in check.ops
    # The given program is untouched: it still holds its Linear.
    assert any("linear" in str(n.target) for n in program.graph.nodes)


def test_the_graph_of_exported_program_module_converts(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None).eval()
    x = torch.randn(2, 3, 32, 32)
    graph = exported(model, x).module()
    module, report = fxconv.convert(graph, x)  # refuses .eval(): fxconv must not call it
    assert report.capture == "GraphModule"
    assert [c.name for c in report.converted] == ["classifier.0", "classifier.3", "classifier.6"]
    assert weight_products(module) == []
    assert_same_outputs(module, model, x)
    assert_same_outputs(module, model, x[:1])
    check = fxconv.check_onnx(fxconv.export_onnx(module, x, tmp_path / "v.onnx"), model, x)
    assert check.passed and "Gemm" not in check.ops


def test_an_untraceable_model_falls_back_to_torch_export():
    class DataDependentShape(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4 * 6 * 6, 2)

        def forward(self, x):
            if x.shape[1] != 3:  # control flow on a shape: symbolic_trace fails, torch.export follows it
                raise ValueError("3 channels expected")
            return self.fc(self.conv(x).flatten(1))

    model = DataDependentShape().eval()
    x = torch.randn(2, 3, 8, 8)
    module, report = fxconv.convert(model, x, strict=True)
    assert report.capture == "torch.export"
    assert "symbolic_trace failed" in report.capture_note and "x.shape[1] != 3" in report.capture_note
    assert "captured with torch.export" in str(report)
    assert_same_outputs(module, model, x)
    assert_same_outputs(module, model, x[:1])


def test_a_forward_set_on_the_instance_is_the_one_converted():
    model = InstanceForward().eval()
    x = torch.randn(3, 2, 5, 5)
    module, report = fxconv.convert(model, x, strict=True)
    assert report.capture == "torch.export" and "instance" in report.capture_note
    assert_same_outputs(module, model, x)
    with pytest.raises(fxconv.TraceError, match="capture='fx'.*instance"):
        fxconv.convert(model, x, capture="fx")


def test_an_unfaithful_symbolic_trace_is_not_used():
    """A forward hook on a module that symbolic_trace traces through is lost in its graph."""
    model = Head(hidden=(8,)).eval()
    model.register_forward_hook(lambda module, inputs, output: output * 3)  # on the root: traced through
    x = model.example()
    module, report = fxconv.convert(model, x)
    assert report.capture == "torch.export" and "other outputs" in report.capture_note
    assert len(report.converted) == 2
    assert_same_outputs(module, model, x)


def test_capture_can_be_chosen():
    model, x = Head().eval(), Head().example()
    assert fxconv.convert(model, x, capture="fx").report.capture == "symbolic_trace"
    assert fxconv.convert(model, x, capture="export").report.capture == "torch.export"
    with pytest.raises(fxconv.InvalidArgumentError, match="unknown capture 'jit'"):
        fxconv.convert(model, x, capture="jit")


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(1, 2, 1))
        self.inner = ValueBranch()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.inner(self.block(x)).flatten(1))


class ValueBranch(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor's value: neither tracer can follow it
            return -x
        return x


def test_when_no_capture_works_the_error_names_the_module_and_the_line():
    with pytest.raises(fxconv.TraceError) as info:
        fxconv.convert(Untraceable(), torch.randn(2, 1, 2, 2))
    message = str(info.value)
    assert "symbolic_trace failed in module 'inner'" in message
    assert "torch.export failed in module 'inner'" in message
    assert "test_capture.py" in message and "(`if x.sum() > 0:" in message
    assert "GraphModule" in message  # what to do


def test_a_model_that_cannot_be_copied_gets_an_fxconv_error_and_the_way_round():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation of this weight_norm
        model = HookedHead(nn.utils.weight_norm(nn.Linear(48, 5))).eval()
    x = torch.randn(3, 2, 4, 4)
    model(x)  # computes .weight as a non-leaf tensor, which deepcopy refuses
    with pytest.raises(fxconv.TraceError, match="cannot copy HookedHead.*inplace=True"):
        fxconv.convert(model, x)
    module, report = fxconv.convert(model, x, inplace=True)
    assert [s.code for s in report.skipped] == ["hooked"]
    assert_same_outputs(module, model, x)


# -- matrix algebra ------------------------------------------------------------------------------


@pytest.mark.parametrize("capture", ["fx", "export"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("method", fxconv.CONV_METHODS)
@pytest.mark.parametrize("spelling", MATRIX_SPELLINGS)
def test_every_matrix_spelling_is_a_linear(spelling, method, bias, capture):
    torch.manual_seed(0)
    model = MatrixHead(spelling, bias).eval()
    x = torch.randn(3, 2, 4, 4)
    module, report = fxconv.convert(model, x, method, capture=capture, strict=True)
    assert [c.name for c in report.converted] == ["w1", "w2_in_out"]
    assert [c.kernel for c in report.converted] == [(4, 4) if method == "kernel" else (1, 1), (1, 1)]
    assert weight_products(module) == []
    assert_same_outputs(module, model, x)
    assert_same_outputs(module, model, x[:1])


@pytest.mark.parametrize("method", fxconv.CONV_METHODS)
@pytest.mark.parametrize("spelling", MATRIX_SPELLINGS)
def test_matrix_spellings_export_to_convolutions(spelling, method, tmp_path):
    torch.manual_seed(0)
    model = MatrixHead(spelling).eval()
    x = torch.randn(3, 2, 4, 4)
    module, _ = fxconv.convert(model, x, method)
    check = fxconv.check_onnx(fxconv.export_onnx(module, x, tmp_path / "m.onnx"), model, x)
    assert check.passed, check
    assert check.ops["Conv"] == 3 and "Gemm" not in check.ops and "MatMul" not in check.ops


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_matmuls_without_a_weight_are_not_linears_and_constants_on_the_left_are_reported(capture):
    model, x = Attention().eval(), torch.randn(2, 5, 4)
    _, report = fxconv.convert(model, x, capture=capture)
    assert [(s.name, s.code) for s in report.skipped] == [("qk", "not-2d")]  # q @ k is no Linear
    model, x = LeftWeight().eval(), torch.randn(3, 6)
    module, report = fxconv.convert(model, x, capture=capture)
    assert [(s.name, s.code) for s in report.skipped] == [("w", "constant-left")]  # as convert_onnx says it
    assert report.skipped[0].matches("weight-on-left")  # the code's name before 0.2 still matches
    assert_same_outputs(module, model, x)
    with pytest.raises(fxconv.NotConvertibleError, match="constant-left"):
        fxconv.convert(model, x, capture=capture, strict=True)
    model, x = BatchedWeight().eval(), torch.randn(2, 3, 4)
    assert [s.code for s in fxconv.convert(model, x, capture=capture).report.skipped] == ["weight-rank"]


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_a_weight_computed_in_forward_is_a_weight_and_its_making_is_no_linear(capture):
    model, x = LowRankHead().eval(), torch.randn(3, 2, 4, 4)
    module, report = fxconv.convert(model, x, capture=capture, strict=True)  # u @ v is not reported
    assert len(report.converted) == 1
    # What is left is u @ v, which reads parameters only: the weight is still made in forward.
    assert [{a.op for a in n.all_input_nodes} for n in weight_products(module)] == [{"get_attr"}]
    assert_same_outputs(module, model, x)


# -- never silently wrong ------------------------------------------------------------------------


def _linear(kind: str) -> nn.Module:
    fc = nn.Linear(48, 5)
    if kind == "forward hook":
        fc.register_forward_hook(lambda module, inputs, output: output * 2)
    elif kind == "forward pre-hook":
        fc.register_forward_pre_hook(lambda module, inputs: (inputs[0] * 3,))
    elif kind == "spectral_norm":
        fc = nn.utils.spectral_norm(fc)
    elif kind == "QAT Linear":
        fc = torch.ao.nn.qat.Linear(48, 5, qconfig=torch.ao.quantization.get_default_qat_qconfig())
    elif kind == "parametrized weight_norm":
        fc = nn.utils.parametrizations.weight_norm(fc)
    return fc


@pytest.mark.parametrize(
    ("kind", "code"),
    [("forward hook", "hooked"), ("forward pre-hook", "hooked"), ("spectral_norm", "hooked"),
     ("QAT Linear", "custom-forward")],
)  # fmt: skip
def test_a_linear_that_does_more_than_f_linear_is_left_alone_by_symbolic_trace(kind, code):
    torch.manual_seed(0)
    model = HookedHead(_linear(kind)).eval()
    x = torch.randn(3, 2, 4, 4)
    module, report = fxconv.convert(model, x)
    assert report.capture == "symbolic_trace"
    assert [(s.name, s.code) for s in report.skipped] == [("fc", code)]
    assert "capture='export'" in report.skipped[0].reason
    assert_same_outputs(module, model, x)


@pytest.mark.parametrize(
    ("kind", "capture"),
    [("forward hook", "export"), ("forward pre-hook", "export"), ("spectral_norm", "export"),
     ("parametrized weight_norm", "export"), ("parametrized weight_norm", "auto")],
)  # fmt: skip
def test_hooks_and_parametrizations_convert_where_the_graph_shows_them(kind, capture):
    """torch.export inlines hooks; parametrizations compute .weight on access: both convert, exactly,
    also after loading another instance's weights, and train with the same gradients (float64: the
    gradients of a squared sum compare summation orders, not the rewrite)."""
    torch.manual_seed(0)
    model = HookedHead(_linear(kind)).double().eval()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    module, report = fxconv.convert(model, x, capture=capture, strict=True)
    assert [c.name for c in report.converted] == ["fc"]
    torch.manual_seed(1)
    other = HookedHead(_linear(kind)).double()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
    model.load_state_dict(other.state_dict())
    module.load_state_dict(other.state_dict())
    assert_same_outputs(module, model, x)
    if report.capture == "symbolic_trace":  # a torch.export graph keeps the mode it was captured in
        model.train()
        module.train()
    for m in (model, module):
        m.zero_grad()
        m(x).square().sum().backward()
    grads = dict(module.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, msg=name)


def test_a_qat_linear_converts_through_torch_export_with_its_fake_quantisation():
    torch.manual_seed(0)
    model = HookedHead(_linear("QAT Linear")).train()
    x = torch.randn(8, 2, 4, 4)
    model(x)  # observe once, so the fake quantisation has a scale
    model.eval()
    module, report = fxconv.convert(model, x, capture="export", strict=True)
    assert [c.name for c in report.converted] == ["fc"]
    assert_same_outputs(module, model, x)
    with torch.no_grad():
        plain = F.linear(torch.flatten(model.conv(x), 1), model.fc.weight, model.fc.bias)
    assert not torch.allclose(module(x), plain)  # the quantisation is still there


@pytest.mark.parametrize("capture", ["fx", "export"])
@pytest.mark.parametrize("layout", fxconv.LAYOUTS)
def test_a_squeeze_head_is_exact_at_every_batch_size(layout, capture):
    model = SqueezeAll().eval()
    module, report = fxconv.convert(model, torch.randn(3, 2, 4, 4), layout=layout, capture=capture, strict=True)
    assert [c.flattened_from for c in report.converted] == [(3, 1, 1)]
    for batch in (1, 2, 4):
        x = torch.randn(batch, 2, 4, 4)
        with torch.no_grad():
            got, want = module(x), model(x)
        assert got.shape == want.shape  # (2,) for a batch of one: squeeze() dropped the batch dim
        torch.testing.assert_close(got, want)


class VarArgs(nn.Module):
    """``forward(self, *args)``: seq2seq and adapter wrappers."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 5)

    def forward(self, *args):
        x, y = args
        return self.fc(torch.flatten(self.conv(x) + y, 1))


@pytest.mark.parametrize("how", ["auto", "export"])
def test_a_forward_of_varargs_converts_through_torch_export(how, tmp_path):
    model = VarArgs().eval()
    x, y = torch.randn(1, 3, 8, 8), torch.randn(1, 4, 6, 6)
    module, report = fxconv.convert(model, (x, y), capture=how, strict=True)
    assert report.capture == "torch.export" and [c.name for c in report.converted] == ["fc"]
    assert how == "export" or "takes the *args of VarArgs.forward as one input" in report.capture_note
    for batch in (1, 2, 3):
        inputs = (torch.randn(batch, 3, 8, 8), torch.randn(batch, 4, 6, 6))
        torch.testing.assert_close(module(*inputs), model(*inputs))
    check = fxconv.check_onnx(fxconv.export_onnx(module, (x, y), tmp_path / "v.onnx"), model, (x, y))
    assert check.passed, check
    with pytest.raises(fxconv.TraceError, match=r"takes the \*args of VarArgs.forward as one input"):
        fxconv.convert(model, (x, y), capture="fx")


class KeywordOnly(nn.Module):
    """``forward(self, x, *, mask, scale=1.0)``: a keyword-only tensor beside a plain default."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 5)

    def forward(self, x, *, mask, scale=1.0):
        return self.fc(torch.flatten(self.conv(x) * mask, 1)) * scale


class DictInput(KeywordOnly):
    """``forward(self, batch)``: a dict of tensors, one of them in a list (a data loader's batch)."""

    def forward(self, batch):
        return self.fc(torch.flatten(self.conv(batch["image"]) + batch["extra"][0], 1))


def keyword_example(batch):  # as model(**inputs) takes it: a dict of keyword inputs
    return {"x": torch.randn(batch, 3, 8, 8), "mask": torch.rand(batch, 4, 6, 6)}


def dict_example(batch):  # one positional input, a dict
    return ({"image": torch.randn(batch, 3, 8, 8), "extra": [torch.randn(batch, 4, 6, 6)]},)


def call(module, inputs):
    return module(**inputs) if isinstance(inputs, dict) else module(*inputs)


@pytest.mark.parametrize("how", ["fx", "export"])
@pytest.mark.parametrize(("model", "make"), [(KeywordOnly, keyword_example), (DictInput, dict_example)],
                         ids=["keyword-only", "dict"])  # fmt: skip
def test_keyword_and_dict_inputs_convert_under_both_captures_and_export(model, make, how, tmp_path):
    model, example = model().eval(), make(1)
    module, report = fxconv.convert(model, example, capture=how, strict=True)
    assert report.capture == {"fx": "symbolic_trace", "export": "torch.export"}[how] and report.fixed_batch is None
    assert [c.name for c in report.converted] == ["fc"]
    for batch in (1, 2, 3):
        inputs = make(batch)
        torch.testing.assert_close(call(module, inputs), call(model, inputs))
    path = fxconv.export_onnx(module, example, tmp_path / "k.onnx")
    assert [i.name for i in fxconv.load_onnx(path).graph.input] == ["input_0", "input_1"]  # every tensor an input
    check = fxconv.check_onnx(path, model, example)
    assert check.passed and check.batch_sizes == (1, 3) and "Gemm" not in check.ops, check


class VarKeywords(KeywordOnly):
    """``forward(self, x, **extra)``: keyword inputs collected in a dict (adapter and wrapper forwards)."""

    def forward(self, x, **extra):
        return self.fc(torch.flatten(self.conv(x) * extra["mask"], 1))


def test_keyword_inputs_a_var_keyword_forward_collects_convert_through_torch_export(tmp_path):
    model, example = VarKeywords().eval(), keyword_example(1)
    module, report = fxconv.convert(model, example, strict=True)
    assert report.capture == "torch.export" and report.fixed_batch is None
    for batch in (1, 3):
        inputs = keyword_example(batch)
        torch.testing.assert_close(module(**inputs), model(**inputs))
    assert fxconv.check_onnx(fxconv.export_onnx(module, example, tmp_path / "v.onnx"), model, example).passed


def test_keyword_inputs_the_forward_does_not_take_are_an_example_error():
    with pytest.raises(fxconv.ExampleInputError, match=r"does not take the example inputs: missing .*'mask'"):
        fxconv.convert(KeywordOnly().eval(), {"x": torch.randn(1, 3, 8, 8)})


class DecodeStep(nn.Module):
    """A decode step over a fixed-size KV cache: each call writes one token's key at ``pos`` (in place,
    as Hugging Face's StaticCache does with index_copy_) and attends over the cache — batch 1 only."""

    def __init__(self, width: int = 8, length: int = 4):
        super().__init__()
        self.key, self.out = nn.Linear(width, width), nn.Linear(width, width)
        self.register_buffer("cache", torch.zeros(1, length, width))
        self.register_buffer("pos", torch.zeros(1, dtype=torch.long))

    def forward(self, x):  # (1, 1, width)
        self.cache.index_copy_(1, self.pos, self.key(x))
        self.pos.add_(1)
        return self.out(self.cache.sum(1, keepdim=True) + x)


def test_a_graph_that_only_exists_at_one_batch_is_captured_static_and_keeps_updating_its_cache():
    torch.manual_seed(0)
    model, reference = DecodeStep().eval(), DecodeStep().eval()
    reference.load_state_dict(model.state_dict())
    module, report = fxconv.convert(model, torch.randn(1, 1, 8), scope="all", strict=True)
    assert report.capture == "torch.export" and report.fixed_batch == 1
    assert "fixed to batch 1: a dynamic batch could not be captured" in report.capture_note
    assert int(model.pos) == 0 and int(module.pos) == 0  # fxconv's own runs left both caches as they were
    for _ in range(3):  # three decode steps, each reading what the ones before wrote
        x = torch.randn(1, 1, 8)
        torch.testing.assert_close(module(x), reference(x))
    assert int(module.pos) == 3


def test_a_static_exported_program_converts_and_exports_at_its_batch(tmp_path):
    model, x = Head().eval(), torch.randn(2, 2, 5, 5)
    static = torch.export.export(model, (x,))
    module, report = fxconv.convert(static.module(), x, strict=True)
    assert report.fixed_batch == 2
    path = fxconv.export_onnx(module, x, tmp_path / "s.onnx")  # no batch given: the one it has
    assert fxconv.load_onnx(path).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert fxconv.check_onnx(path, model, x).passed
    program, report = fxconv.convert(static, x, strict=True)
    assert report.fixed_batch == 2 and fxconv.check_onnx(fxconv.export_onnx(program, x, tmp_path / "p.onnx"),
                                                         model, x).passed  # fmt: skip
