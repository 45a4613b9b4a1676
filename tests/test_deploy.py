"""The file a deployment toolchain takes: static batch, clean head, stable names, chosen opset, two runtimes."""

from __future__ import annotations

import onnx
import pytest
import torch
import torchvision
from torch import nn

import fxconv

from models import Head, TwoHeads

# Classifiers whose heads differ: a three-Linear MLP behind an adaptive pool (alexnet), a global pool
# and one Linear (resnet18), a Hardswish MLP (mobilenet_v3_small), Dropout + Linear (efficientnet_b0).
# (vgg11 and densenet121 have the heads of alexnet and resnet18, at 4-10x the export time.)
STATIC = ["alexnet", "resnet18", "mobilenet_v3_small", "efficientnet_b0"]
HEAD_OPS = {"Conv", "Relu", "HardSwish", "Reshape", "Flatten", "Identity"}  # what a converted head may run


def graph_facts(path) -> dict:
    model = onnx.load(str(path))
    graph = model.graph
    initializers = {i.name: tuple(i.dims) for i in graph.initializer}
    return {
        "model": model,
        "initializers": initializers,
        "inputs": [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in graph.input],
        "outputs": [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in graph.output],
        "ops": fxconv.op_census(model),
        # nodes whose every input is a constant: work a compiler would have to fold
        "constant_only": [n.op_type for n in graph.node if n.input and all(i in initializers for i in n.input if i)]
        + [n.op_type for n in graph.node if n.op_type == "Constant"],
    }


@pytest.mark.slow
@pytest.mark.parametrize("method", fxconv.CONV_METHODS)
@pytest.mark.parametrize("name", STATIC)
def test_a_static_batch_one_file_has_a_conv_only_head(name, method, tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    module, report = fxconv.convert(model, x, method, strict=True)
    original = fxconv.export_onnx(model, x, tmp_path / "original.onnx", batch=1)
    converted = fxconv.export_onnx(module, x, tmp_path / "converted.onnx", batch=1)
    a, b = graph_facts(original), graph_facts(converted)

    assert b["inputs"] == a["inputs"] == [("input", [1, 3, 64, 64])]  # static, and named alike
    assert b["outputs"] == a["outputs"] == [("output", [1, 1000])]
    assert b["ops"].get("Transpose", 0) <= a["ops"].get("Transpose", 0)
    assert b["constant_only"] == [], b["constant_only"]
    assert b["ops"].get("Gemm", 0) == b["ops"].get("MatMul", 0) == 0

    graph = b["model"].graph
    convs = {n.input[1]: n for n in graph.node if n.op_type == "Conv"}
    for c in report.converted:  # each Linear's Conv reads an initializer named after the Linear's weight
        weight = f"{c.name}.weight"
        assert weight in convs, (weight, sorted(convs))
        out, features = a["initializers"][weight]  # (out, in) in the original's Gemm
        assert b["initializers"][weight] == ((out, *c.flattened_from) if method == "kernel" else (out, features, 1, 1))
    first = convs[f"{report.converted[0].name}.weight"]
    strides = next(list(attr.ints) for attr in first.attribute if attr.name == "strides")
    assert set(strides) == {1}
    head = graph.node[list(graph.node).index(first):]
    assert {n.op_type for n in head} <= HEAD_OPS, {n.op_type for n in head}

    check = fxconv.check_onnx(converted, model, x)
    assert check.passed and check.batch_sizes == (1,), str(check)


@pytest.mark.parametrize("method", fxconv.CONV_METHODS)
@pytest.mark.parametrize("layout", fxconv.LAYOUTS)
def test_a_static_batch_file_takes_that_batch_only(layout, method, tmp_path):
    model = Head(hidden=(8,)).eval()
    module, _ = fxconv.convert(model, model.example(), method, layout=layout)
    path = fxconv.export_onnx(module, model.example(), tmp_path / "m.onnx", batch=5)
    facts = graph_facts(path)
    assert facts["inputs"][0][1][0] == 5 and facts["outputs"][0][1][0] == 5
    assert facts["constant_only"] == []
    check = fxconv.check_onnx(path, model, model.example())
    assert check.passed and check.batch_sizes == (5,)


def test_the_default_batch_stays_dynamic_and_keeps_the_folded_layout(tmp_path):
    """At a free batch the folded layout's batch moves are real and stay: ORT runs one GEMM per batch."""
    model = Head(hidden=(8,)).eval()
    module, _ = fxconv.convert(model, model.example())
    facts = graph_facts(fxconv.export_onnx(module, model.example(), tmp_path / "m.onnx"))
    assert facts["inputs"][0][1][0] == "batch" and facts["ops"]["Transpose"] == 2
    assert facts["constant_only"] == []


@pytest.mark.parametrize("opset", [13, 14, 17, 20])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])  # ReduceMean; HardSwish (opset 14)
def test_opsets_13_to_20_write_and_check(name, opset, tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(2, 3, 32, 32)
    module, _ = fxconv.convert(model, x)
    path = fxconv.export_onnx(module, x, tmp_path / "m.onnx", opset=opset)
    written = fxconv.load_onnx(path)  # full_check: every node is valid at this opset
    assert {o.domain: o.version for o in written.opset_import}[""] == opset
    check = fxconv.check_onnx(path, model, x)
    assert check.passed, str(check)
    if opset < 14:
        assert "HardSwish" not in check.ops


def test_an_opset_that_cannot_express_the_model_names_the_op_and_the_opsets_that_can(tmp_path):
    # A LayerNorm over the map's rows, before the head: it stays a LayerNormalization (a LayerNorm inside a
    # head is written out over the channels, and exports at any opset).
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm(2), nn.Flatten(), nn.Linear(16, 2)).eval()
    x = torch.randn(2, 3, 4, 4)
    module, _ = fxconv.convert(model, x, "1x1", strict=True)
    with pytest.raises(fxconv.OnnxError, match=r"LayerNormalization .*since opset 17.*opsets 17 and later"):
        fxconv.export_onnx(module, x, tmp_path / "m.onnx", opset=13)
    assert list(tmp_path.iterdir()) == []
    assert fxconv.check_onnx(fxconv.export_onnx(module, x, tmp_path / "m.onnx", opset=17), model, x).passed


class ShapeArithmetic(nn.Module):
    """Sizes read at run time (free height and width): the exporter writes Shape(start, end) of opset 15."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        n, c, h, w = y.shape
        return y.reshape(n, c, h * w).transpose(1, 2).reshape(n, h, w, c).sum(-1)


def test_shape_slices_are_lowered_and_computed_reshapes_name_their_opset(tmp_path):
    model, x = ShapeArithmetic().eval(), torch.randn(2, 3, 8, 8)
    path = fxconv.export_onnx(model, x, tmp_path / "m.onnx", opset=14, dynamic_spatial=True)
    check = fxconv.check_onnx(path, model, x)
    assert check.passed and check.ops["Slice"] == check.ops["Shape"] == 3
    # Reshape before 14 reads a 0 in a computed shape as "copy this dim": not provably the same
    with pytest.raises(fxconv.OnnxError, match=r"opset 13 cannot express this model: it uses Reshape .*14 and later"):
        fxconv.export_onnx(model, x, tmp_path / "n.onnx", opset=13, dynamic_spatial=True)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"opset": 12}, "opset 12 is not one fxconv writes: choose 13 to"),
    ({"opset": 99}, "opset 99"),
    ({"batch": 0}, "batch must be a positive int"),
    ({"batch": 2.0}, "batch must be a positive int"),
    ({"input_names": ["a", "b"]}, "takes 1 input tensors; input_names gives"),
    ({"output_names": ["same", "same", "x"]}, "3 outputs; output_names gives"),
])  # fmt: skip
def test_bad_export_arguments_are_refused(kwargs, match, tmp_path):
    model = TwoHeads().eval()
    with pytest.raises(fxconv.InvalidArgumentError, match=match):
        fxconv.export_onnx(model, torch.randn(2, 2, 4, 4), tmp_path / "m.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_inputs_and_outputs_get_the_names_asked_for(tmp_path):
    model = TwoHeads().eval()
    x = torch.randn(2, 2, 4, 4)
    module, _ = fxconv.convert(model, x)
    default = graph_facts(fxconv.export_onnx(module, x, tmp_path / "a.onnx"))
    assert [n for n, _ in default["inputs"]] == ["input"]
    assert [n for n, _ in default["outputs"]] == ["output_0", "output_1", "output_2"]
    named = fxconv.export_onnx(module, x, tmp_path / "b.onnx", input_names=["image"], output_names=["a", "b", "c"])
    facts = graph_facts(named)
    assert [n for n, _ in facts["inputs"]] == ["image"] and [n for n, _ in facts["outputs"]] == ["a", "b", "c"]
    assert fxconv.check_onnx(named, model, x).passed


class TwiceOnMaps(nn.Module):
    """One Linear applied to two flattened maps."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(48, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1)) - self.fc(torch.flatten(self.conv(x * x), 1))


@pytest.mark.parametrize("method", fxconv.CONV_METHODS)
def test_a_linear_called_twice_keeps_one_weight_in_the_file(method, tmp_path):
    model = TwiceOnMaps().eval()
    x = torch.randn(2, 2, 4, 4)
    module, report = fxconv.convert(model, x, method)
    assert len(report.converted) == 2
    path = fxconv.export_onnx(module, x, tmp_path / "m.onnx", batch=1)
    facts = graph_facts(path)
    weights = [n.input[1] for n in facts["model"].graph.node if n.op_type == "Conv"]
    assert weights == ["conv.weight", "fc.weight", "conv.weight", "fc.weight"]
    assert sorted(name for name in facts["initializers"] if name.startswith("fc.")) == ["fc.bias", "fc.weight"]
    assert fxconv.check_onnx(path, model, x).passed


# -- runtimes and dtypes -------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [None, 1])
@pytest.mark.parametrize("layout", fxconv.LAYOUTS)
def test_openvino_checks_the_file_too(layout, batch, tmp_path):
    pytest.importorskip("openvino")
    model = torchvision.models.alexnet(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    module, _ = fxconv.convert(model, x, layout=layout)
    path = fxconv.export_onnx(module, x, tmp_path / "m.onnx", batch=batch)
    check = fxconv.check_onnx(path, model, x, runtime="openvino")
    assert check.passed and check.runtime == "openvino", str(check)
    assert str(check).startswith("openvino check PASSED")
    wrong = torchvision.models.alexnet(weights=None).eval()
    assert not fxconv.check_onnx(path, wrong, x, runtime="openvino").passed


def test_an_unknown_runtime_is_refused(tmp_path):
    model = Head().eval()
    path = fxconv.export_onnx(model, model.example(), tmp_path / "m.onnx")
    with pytest.raises(fxconv.InvalidArgumentError, match="runtime must be one of onnxruntime, openvino"):
        fxconv.check_onnx(path, model, model.example(), runtime="tensorrt")


@pytest.mark.parametrize("runtime", fxconv.check.RUNTIMES)
def test_a_float16_model_passes_when_right_and_fails_when_wrong(runtime, tmp_path):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().half()
    x = torch.randn(2, 3, 64, 64).half()
    module, _ = fxconv.convert(model, x)
    path = fxconv.export_onnx(module, x, tmp_path / "m.onnx")
    check = fxconv.check_onnx(path, model, x, runtime=runtime)
    assert check.passed and (check.rtol, check.atol) == fxconv.check.tolerance(torch.float16), str(check)
    wrong = torchvision.models.resnet18(weights=None).eval().half()
    wrong.load_state_dict(model.state_dict())
    with torch.no_grad():  # the weight as a layout mistake would read it: columns in another order
        wrong.fc.weight.copy_(wrong.fc.weight.roll(1, dims=1))
    assert not fxconv.check_onnx(path, wrong, x, runtime=runtime).passed


def test_a_float64_model_is_a_clear_error_in_onnxruntime(tmp_path):
    model = Head().eval().double()
    x = model.example().double()
    module, _ = fxconv.convert(model, x)
    path = fxconv.export_onnx(module, x, tmp_path / "m.onnx")
    with pytest.raises(fxconv.OnnxError, match=r"no float64 \(double\) Conv kernel.*model\.float\(\)"):
        fxconv.check_onnx(path, model, x)
