"""ONNX files as input (``fxconv.convert_onnx``): hand-built graphs of every pattern, files exported here by
both exporters, and the same files quantised to QDQ int8 — each converted file run against its original
in onnxruntime at batch 1 and another batch."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import fxconv
from fxconv.check import weight_products

METHODS = ("kernel", "1x1")
RNG = np.random.default_rng(0)


def _run(model: onnx.ModelProto, *arrays: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: a for i, a in zip(session.get_inputs(), arrays)})


def assert_same(original: onnx.ModelProto, converted: onnx.ModelProto, item_shape, batches=(1, 3)) -> None:
    """The converted file computes what the original does, in onnxruntime, at each batch size."""
    onnx.checker.check_model(converted, full_check=True)
    for n in batches:
        x = RNG.standard_normal((n, *item_shape)).astype(np.float32)
        for got, want in zip(_run(converted, x), _run(original, x), strict=True):
            torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want))


def _graph(nodes, inputs, outputs, initializers, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in initializers.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _input(shape, name="x"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *shape])


def _output(*dims, name="y"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *dims])


def _w(*shape):
    return (RNG.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


# -- hand-built graphs ---------------------------------------------------------------------------------


def matmul_add_head(opset=17) -> onnx.ModelProto:
    """Flatten → Gemm(transB=1) → Relu → MatMul + Add: the head written both ways."""
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "fc2.weight"], ["m"]),
        helper.make_node("Add", ["m", "fc2.bias"], ["y"]),
    ]
    weights = {"fc1.weight": _w(16, 60), "fc1.bias": _w(16), "fc2.weight": _w(16, 5), "fc2.bias": _w(5)}
    return _graph(nodes, [_input((4, 3, 5))], [_output(5)], weights, opset)


def nhwc_head() -> onnx.ModelProto:
    """TensorFlow's flatten: NCHW map → Transpose to NHWC → Reshape(-1, K) → MatMul + Add."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["nhwc", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "dense.kernel"], ["m"]),
        helper.make_node("Add", ["m", "dense.bias"], ["y"]),
    ]
    weights = {"shape": np.array([-1, 60], np.int64), "dense.kernel": _w(60, 7), "dense.bias": _w(7)}
    return _graph(nodes, [_input((4, 3, 5))], [_output(7)], weights)


def shared_weight_head() -> onnx.ModelProto:
    """One square weight read by two Gemms of a head, with alpha/beta and transB=0 on the first."""
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w0", "b0"], ["h0"], alpha=0.5, beta=2.0),
        helper.make_node("Gemm", ["h0", "shared", "b1"], ["h1"], transB=1),
        helper.make_node("Sigmoid", ["h1"], ["s"]),
        helper.make_node("Gemm", ["s", "shared"], ["y"], transB=1),
    ]
    weights = {"w0": _w(24, 8), "b0": _w(1, 8), "shared": _w(8, 8), "b1": _w(8)}
    return _graph(nodes, [_input((6, 2, 2))], [_output(8)], weights)


def trans_a_head() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("Transpose", ["flat"], ["t"], perm=[1, 0]),
        helper.make_node("Gemm", ["t", "w"], ["y"], transA=1, transB=1),
    ]
    return _graph(nodes, [_input((2, 2, 2))], [_output(3)], {"w": _w(3, 8)})


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("make", [matmul_add_head, nhwc_head, shared_weight_head], ids=lambda f: f.__name__)
def test_hand_built_heads_convert(make, method):
    original = make()
    before = original.SerializeToString()
    converted, report = fxconv.convert_onnx(original, method, strict=True)
    assert original.SerializeToString() == before, "the input model was modified"
    assert_same(original, converted, [d.dim_value for d in original.graph.input[0].type.tensor_type.shape.dim[1:]])
    assert weight_products(converted) == 0 and "Gemm" not in _ops(converted) and "MatMul" not in _ops(converted)
    assert len(report.converted) == sum(op in ("Gemm", "MatMul") for op in _ops(original))
    assert [o.name for o in converted.graph.output] == ["y"] and converted.opset_import == original.opset_import
    assert converted.ir_version == original.ir_version
    assert converted.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # the batch stays free


def test_weight_names_are_kept_and_a_shared_weight_stays_one():
    converted, _ = fxconv.convert_onnx(shared_weight_head())
    initializers = {i.name: numpy_helper.to_array(i) for i in converted.graph.initializer}
    assert initializers["shared"].shape == (8, 8, 1, 1)
    assert initializers["w0"].shape == (8, 6, 2, 2)  # (out, C, H, W): a kernel covering the 6x2x2 map
    convs = [n for n in converted.graph.node if n.op_type == "Conv"]
    assert [c.input[1] for c in convs] == ["w0", "shared", "shared"]
    assert not any(name.startswith("shared.") for name in initializers)


@pytest.mark.parametrize("method", METHODS)
def test_nhwc_transpose_is_folded_into_the_weight(method):
    """The weight's columns are permuted to the NCHW map, and the model's NHWC Transpose goes: the kernel
    method folds the map itself, the 1x1 method flattens it."""
    converted, report = fxconv.convert_onnx(nhwc_head(), method)
    assert report.converted[0].flattened_from == (4, 3, 5)  # the NCHW map, not the NHWC view of it
    assert not any(helper.get_attribute_value(n.attribute[0]) == [0, 2, 3, 1] for n in converted.graph.node
                   if n.op_type == "Transpose")  # fmt: skip
    expected = ["Transpose", "Reshape", "Conv"] if method == "kernel" else ["Flatten", "Transpose", "Unsqueeze", "Conv"]
    assert [n.op_type for n in converted.graph.node[: len(expected)]] == expected
    assert converted.graph.node[0].input[0] == "x"


@pytest.mark.parametrize("method", METHODS)
def test_trans_a_is_refused_with_a_reason_and_the_file_kept(method):
    original = trans_a_head()
    converted, report = fxconv.convert_onnx(original, method)
    assert [(s.name, s.code) for s in report.skipped] == [("w", "transA")] and not report.converted
    assert _ops(converted) == _ops(original)
    assert_same(original, converted, (2, 2, 2))
    with pytest.raises(fxconv.NotConvertibleError, match="transA"):
        fxconv.convert_onnx(original, method, strict=True)


def test_every_gemm_or_matmul_with_a_constant_is_converted_or_reported():
    """A vector input, a constant on the left, a batched weight, a 1-D weight; attention's activation
    product is no Linear and is not reported."""
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["a"], transB=1),  # (N, K): no flattened map
        helper.make_node("Unsqueeze", ["a", "axes"], ["a3"]),  # (N, 1, 6)
        helper.make_node("MatMul", ["left", "a3"], ["b"]),  # (1, 1) @ (N, 1, 6): constant on the left
        helper.make_node("MatMul", ["b", "stack"], ["c"]),  # a (1, 6, 6) weight
        helper.make_node("MatMul", ["c", "vec"], ["d"]),  # a (6,) weight
        helper.make_node("Transpose", ["b"], ["bt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["bt", "b"], ["e"]),  # activation @ activation
        helper.make_node("Transpose", ["late"], ["late_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["c", "late_t"], ["f"], name="mm"),  # a weight computed from a constant
    ]
    weights = {"w": _w(6, 6), "axes": np.array([1], np.int64), "left": _w(1, 1), "stack": _w(1, 6, 6), "vec": _w(6),
               "late": _w(3, 6)}
    outputs = [_output(1, name="d"), _output(6, 6, name="e"), _output(1, 3, name="f")]
    model = _graph(nodes, [_input((6,))], outputs, weights)
    converted, report = fxconv.convert_onnx(model)
    assert [(s.name, s.code) for s in report.skipped] == [
        ("w", "not-flattened"), ("left", "constant-left"), ("stack", "weight-rank"), ("vec", "weight-rank"),
        ("mm", "computed-weight"),
    ]
    converted, report = fxconv.convert_onnx(model, scope="all")
    assert [c.name for c in report.converted] == ["w"] and len(report.skipped) == 4
    assert_same(model, converted, (6,))


def test_reductions_conv1d_maps_constants_and_old_opsets():
    """A global ReduceMean head (axes as an attribute at opset 11), a flatten of a Reshape that keeps the
    batch (looked past, as in the PyTorch pass: the map is ``x``), and a weight in a Constant node."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("Constant", [], ["w_const"], value=numpy_helper.from_array(_w(3, 4), "w_const")),
        helper.make_node("Gemm", ["pooled", "w_const", "b"], ["y"], transB=1),
        helper.make_node("Reshape", ["x", "shape"], ["rows"]),  # (N, 4, 15), flattened as x would be
        helper.make_node("Flatten", ["rows"], ["flat"], axis=1),
        helper.make_node("Mul", ["flat", "half"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "w2"], ["z"]),
    ]
    weights = {"b": _w(3), "shape": np.array([0, 4, 15], np.int64), "half": np.array(0.5, np.float32), "w2": _w(60, 2)}
    model = _graph(nodes, [_input((4, 3, 5))], [_output(3, name="y"), _output(2, name="z")], weights, opset=11)
    for method in METHODS:
        converted, report = fxconv.convert_onnx(model, method, strict=True)
        assert_same(model, converted, (4, 3, 5))
        kernels = [c.kernel for c in report.converted]
        assert kernels == ([(1, 1), (3, 5)] if method == "kernel" else [(1, 1), (1, 1)])
        assert weight_products(converted) == 0 and "Gemm" not in _ops(converted)


@pytest.mark.parametrize("opset", [17, 18])  # ReduceMean's axes: an attribute, an input
def test_scope_all_runs_a_token_mlp_block_in_one_layout(opset):
    """(N, L, C) → LayerNorm → MatMul+Add → Relu → MatMul+Add → · layer scale → + residual: one Transpose
    in, one out; the LayerNorm runs over the channels of the (N, C, 1, L) form."""
    nodes = [
        helper.make_node("LayerNormalization", ["x", "norm.weight", "norm.bias"], ["n"], axis=-1, epsilon=1e-6),
        helper.make_node("MatMul", ["n", "fc1.weight"], ["m1"]),
        helper.make_node("Add", ["m1", "fc1.bias"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "fc2.weight"], ["m2"]),
        helper.make_node("Add", ["fc2.bias", "m2"], ["o"]),
        helper.make_node("Mul", ["o", "gamma"], ["scaled"]),  # a per-channel layer scale
        helper.make_node("Add", ["x", "scaled"], ["y"]),
    ]
    weights = {"norm.weight": _w(8), "norm.bias": _w(8), "fc1.weight": _w(8, 32), "fc1.bias": _w(32),
               "fc2.weight": _w(32, 8), "fc2.bias": _w(8), "gamma": _w(8)}
    model = _graph(nodes, [_input((10, 8))], [_output(10, 8)], weights, opset)
    heads_only, report = fxconv.convert_onnx(model)
    assert {s.code for s in report.skipped} == {"not-2d"} and _ops(heads_only) == _ops(model)
    converted, report = fxconv.convert_onnx(model, scope="all", strict=True)
    assert_same(model, converted, (10, 8))
    assert _ops(converted).count("Transpose") == 2 and _ops(converted).count("Conv") == 2
    assert "LayerNormalization" not in _ops(converted)  # written out over dim 1 of the form
    assert {c.layout for c in report.converted} == {"(N, L, C) as (N, C, 1, L)"}


@pytest.mark.parametrize("name", ["vit", "convnext", "swin"])
def test_scope_all_on_exported_transformer_and_convnext_blocks(tmp_path, name):
    """timm's ViT and ConvNeXt (Linear MLPs) through the dynamo exporter, Swin through the TorchScript
    exporter (whose window reshapes ONNX shape inference cannot follow: onnxruntime's symbolic inference
    does): every Linear (MatMul + Add over tokens or channels-last maps) converted; ConvNeXt's own
    permutes cancel with the layout."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    if name == "vit":
        model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2)
    elif name == "convnext":
        model = timm.create_model("convnext_atto", conv_mlp=False, depths=(1, 1, 1, 1))
    else:
        model = timm.create_model("swin_tiny_patch4_window7_224", img_size=32, patch_size=2, window_size=4,
                                  embed_dim=16, depths=(1, 1), num_heads=(1, 2))  # fmt: skip
    original = _export(model.eval(), tmp_path / "model.onnx", dynamo=name != "swin")
    linears = weight_products(original)
    _, report = fxconv.convert_onnx(original)
    assert {s.code for s in report.skipped} <= {"not-2d", "not-flattened"} and len(report.skipped) >= linears - 1
    converted, report = fxconv.convert_onnx(original, scope="all", strict=True)
    assert_same(original, converted, (3, 32, 32))
    assert weight_products(converted) == 0 and len(report.converted) == linears
    transposes = (_ops(original).count("Transpose"), _ops(converted).count("Transpose"))
    if name == "convnext":
        assert transposes[1] <= 2 < transposes[0]  # only the folded head's batch moves stay
    else:  # ViT: at most one layout change per Linear; Swin's rank-6 window moves: fewer than wrapping each
        assert transposes[1] <= transposes[0] + (1 if name == "vit" else 2) * len(report.converted)
    if name == "vit":
        assert report.converted[0].name == "blocks.0.attn.qkv"  # the module, from the exporter's metadata


# -- exported torchvision classifiers, float and QDQ ----------------------------------------------


class VggHead(nn.Module):
    """A VGG-shaped classifier at toy width: conv features (16, 4, 4), then three Linears."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.classifier = nn.Sequential(nn.Linear(16 * 16, 64), nn.ReLU(), nn.Dropout(), nn.Linear(64, 64), nn.ReLU(),
                                        nn.Linear(64, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def _export(model: nn.Module, path, dynamo: bool, size=32) -> onnx.ModelProto:
    x = torch.randn(2, 3, size, size)
    if dynamo:
        torch.onnx.export(model.eval(), (x,), path, dynamo=True, dynamic_shapes=({0: torch.export.Dim("N")},),
                          external_data=False)
    else:
        torch.onnx.export(model.eval(), (x,), path, dynamo=False, opset_version=13, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return onnx.load(path)


def _quantize(path, out, item_shape=(3, 32, 32), name="input", qdq=True) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Images(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: RNG.standard_normal((1, *item_shape)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quant_pre_process(str(path), str(out))
    quantize_static(str(out), str(out), Images(), quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)  # fmt: skip
    return onnx.load(out)


def test_qoperator_files_and_subgraphs_are_reported(tmp_path):
    onnx.save(matmul_add_head(), tmp_path / "head.onnx")
    qoperator = _quantize(tmp_path / "head.onnx", tmp_path / "qop.onnx", (4, 3, 5), "x", qdq=False)
    _, report = fxconv.convert_onnx(qoperator)
    assert {s.code for s in report.skipped} == {"qoperator"} and not report.converted
    branch = helper.make_graph([helper.make_node("Gemm", ["x2", "w"], ["b"], transB=1)], "then", [],
                               [helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3])])  # fmt: skip
    nodes = [
        helper.make_node("Flatten", ["x"], ["x2"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch),
    ]
    inputs = [_input((2, 2)), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])]
    _, report = fxconv.convert_onnx(_graph(nodes, inputs, [_output(3)], {"w": _w(3, 4)}))
    assert [(s.name, s.code) for s in report.skipped] == [("w", "subgraph")] * 2


def _models():
    import torchvision

    return {"vgg_head": VggHead, "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
            "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10)}


@pytest.mark.parametrize(
    ("name", "dynamo"),
    # mobilenet_v3_small by the TorchScript exporter at opset 13: its Hardswish is x · HardSigmoid(x).
    [("vgg_head", False), ("vgg_head", True), ("resnet18", False), ("resnet18", True), ("mobilenet_v3_small", False)],
)
def test_exported_classifiers(tmp_path, name, dynamo):
    torch.manual_seed(0)
    original = _export(_models()[name](), tmp_path / "model.onnx", dynamo)
    linears = sum(op in ("Gemm", "MatMul") for op in _ops(original))
    for method in METHODS:
        converted, report = fxconv.convert_onnx(tmp_path / "model.onnx", method, strict=True)
        assert_same(original, converted, (3, 32, 32))
        assert len(report.converted) == linears and weight_products(converted) == 0
        assert [o.name for o in converted.graph.output] == [o.name for o in original.graph.output]
    if name == "vgg_head":
        assert report.converted[0].flattened_from == (16, 4, 4)


def test_a_static_batch_one_file_gets_a_head_of_convolutions_only(tmp_path):
    """At a static batch of 1 the folded layout's batch moves are moves of size-1 axes: no Transpose is
    left in the head, and the first Conv strides by 1 (what NPU compilers expect)."""
    torch.manual_seed(0)
    torch.onnx.export(VggHead().eval(), (torch.randn(1, 3, 32, 32),), tmp_path / "b1.onnx", dynamo=False,
                      opset_version=13)  # fmt: skip
    original = onnx.load(tmp_path / "b1.onnx")
    for method in METHODS:
        converted, report = fxconv.convert_onnx(original, method, strict=True)
        assert_same(original, converted, (3, 32, 32), batches=(1,))
        assert "Transpose" not in _ops(converted) and weight_products(converted) == 0
        first = next(n for n in converted.graph.node if n.name == report.converted[0].node)
        assert helper.get_attribute_value(next(a for a in first.attribute if a.name == "strides")) == [1, 1]


@pytest.mark.parametrize("name", ["vgg_head", "resnet18"])
def test_qdq_files_keep_their_weights_int8(tmp_path, name):
    torch.manual_seed(0)
    _export(_models()[name](), tmp_path / "model.onnx", dynamo=False)
    original = _quantize(tmp_path / "model.onnx", tmp_path / "qdq.onnx")
    for method in METHODS:
        converted, report = fxconv.convert_onnx(original, method, strict=True)
        assert_same(original, converted, (3, 32, 32))
        assert "Gemm" not in _ops(converted) and report.converted
        initializers = {i.name: i for i in converted.graph.initializer}
        producers = {o: n for n in converted.graph.node for o in n.output}
        for conv in (n for n in converted.graph.node if n.op_type == "Conv"):
            dequantize = producers[conv.input[1]]  # every Conv, the new ones too, reads DQ(int8)
            assert dequantize.op_type == "DequantizeLinear"
            assert initializers[dequantize.input[0]].data_type == TensorProto.INT8
            assert producers[conv.input[0]].op_type == "DequantizeLinear"  # activation Q/DQ kept before it
        for c in report.converted:  # per-channel scales on the Conv's output axis, and Q right after the Conv
            conv = next(n for n in converted.graph.node if n.name == c.node)
            assert helper.get_attribute_value(producers[conv.input[1]].attribute[0]) == 0
            assert [n.op_type for n in converted.graph.node if conv.output[0] in n.input] == ["QuantizeLinear"]
        # onnxruntime, a QDQ consumer, fuses each DQ → Conv → Q into one int8 QLinearConv, as it fused the Gemm.
        fused, fused_original = _fused_ops(converted, tmp_path), _fused_ops(original, tmp_path)
        assert fused["QLinearConv"] == fused_original["QLinearConv"] + len(report.converted)
        assert "QGemm" not in fused and fused_original["QGemm"] == len(report.converted)


def _fused_ops(model: onnx.ModelProto, folder) -> dict[str, int]:
    """The op census of the graph onnxruntime runs after its optimisations (QDQ fusion included)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return fxconv.op_census(onnx.load(folder / "optimized.onnx"))


def test_check_onnx_takes_an_onnx_reference_and_derives_the_inputs(tmp_path):
    original = matmul_add_head()
    converted, _ = fxconv.convert_onnx(original)
    onnx.save(converted, tmp_path / "converted.onnx")
    onnx.save(original, tmp_path / "original.onnx")
    runtimes = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    for reference in (tmp_path / "original.onnx", original):
        for runtime in runtimes:
            check = fxconv.check_onnx(tmp_path / "converted.onnx", reference, runtime=runtime)
            assert check.passed and check.batch_sizes == (1, 3) and check.runtime == runtime
    wrong = onnx.ModelProto()
    wrong.CopyFrom(original)
    bias = next(i for i in wrong.graph.initializer if i.name == "fc2.bias")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 1, "fc2.bias"))
    assert not fxconv.check_onnx(tmp_path / "converted.onnx", wrong).passed  # the check can fail
    free = onnx.ModelProto()
    free.CopyFrom(original)
    free.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "C"
    with pytest.raises(fxconv.InvalidArgumentError, match="pass example_inputs"):
        fxconv.check_onnx(tmp_path / "converted.onnx", free)
    assert fxconv.check_onnx(tmp_path / "converted.onnx", free, torch.randn(2, 4, 3, 5)).passed
    with pytest.raises(fxconv.InvalidArgumentError, match="needs example_inputs"):
        fxconv.check_onnx(tmp_path / "converted.onnx", nn.Linear(2, 2))


def test_bad_arguments_are_fxconv_errors(tmp_path):
    with pytest.raises(fxconv.InvalidArgumentError, match="unknown method '3x3': choose one of kernel, 1x1"):
        fxconv.convert_onnx(matmul_add_head(), "3x3")
    with pytest.raises(fxconv.InvalidArgumentError, match="unknown target 'tpu': choose one of onnxruntime"):
        fxconv.convert_onnx(matmul_add_head(), target="tpu")
    with pytest.raises(fxconv.InvalidArgumentError, match="not Linear"):
        fxconv.convert_onnx(nn.Linear(2, 2))
    with pytest.raises(fxconv.OnnxError, match="no ONNX file"):
        fxconv.convert_onnx(tmp_path / "absent.onnx")


def test_a_pooled_head_converts_whatever_the_image_size():
    """Free height and width: a global ReduceMean's (N, C) needs only C, so the head still converts."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["pooled"], axes=[2, 3], keepdims=0),
             helper.make_node("Gemm", ["pooled", "w", "b"], ["y"], transB=1)]  # fmt: skip
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "H", "W"])]
    model = _graph(nodes, inputs, [_output(3)], {"w": _w(3, 4), "b": _w(3)}, opset=13)
    converted, report = fxconv.convert_onnx(model, strict=True)
    assert report.converted[0].flattened_from == (4, 1, 1) and weight_products(converted) == 0
    for size in ((5, 7), (9, 2)):
        assert_same(model, converted, (4, *size))


@pytest.mark.parametrize("layout", ["folded", "batched"])
@pytest.mark.parametrize("method", METHODS)
def test_a_head_value_read_elsewhere_is_left_again_as_it_was(method, layout):
    """The Relu between an NHWC flatten and the Linear is also a graph output: it runs in the conv layout
    for the Linear, and its readers get it back in the file's own (NHWC-flattened) order."""
    nodes = [helper.make_node("Transpose", ["x"], ["nhwc"], perm=[0, 2, 3, 1]),
             helper.make_node("Flatten", ["nhwc"], ["flat"], axis=1), helper.make_node("Relu", ["flat"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["y"])]  # fmt: skip
    model = _graph(nodes, [_input((4, 3, 5))], [_output(7), _output(60, name="r")], {"w": _w(60, 7)})
    converted, report = fxconv.convert_onnx(model, method, layout=layout, strict=True)
    assert_same(model, converted, (4, 3, 5))
    assert [o.name for o in converted.graph.output] == ["y", "r"] and weight_products(converted) == 0


def test_the_ethos_u_target_reads_a_flattened_map_channels_last_in_an_onnx_file_too():
    original = matmul_add_head()
    converted, report = fxconv.convert_onnx(original, target="ethos-u", strict=True)
    assert [(c.name, c.method) for c in report.converted] == [("fc1.weight", "channels-last")]
    assert [k.name for k in report.kept] == ["fc2.weight"]
    assert _ops(converted)[:3] == ["Transpose", "Flatten", "Gemm"]  # NCHW -> NHWC, which an NHWC compiler holds
    assert {i.name for i in converted.graph.initializer} <= {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert_same(original, converted, (4, 3, 5))


def test_every_product_that_reads_a_weight_is_counted_quantised_forms_too():
    """``weight_products``: a Gemm on a QDQ file's dequantised int8 weight, QOperator's QGemm, a MatMul of a
    transposed weight; not a MatMul of two activations."""
    w8 = numpy_helper.from_array(RNG.integers(-8, 8, (4, 6)).astype(np.int8), "w8")
    scale, zero = numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z")
    w = numpy_helper.from_array(RNG.standard_normal((4, 6)).astype(np.float32), "w")
    nodes = [
        helper.make_node("DequantizeLinear", ["w8", "s", "z"], ["w8f"]),
        helper.make_node("Gemm", ["x", "w8f"], ["qdq"], transB=1),
        helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wt"], ["mm"]),
        helper.make_node("MatMul", ["qdq", "mm2"], ["act"]),
        helper.make_node("QGemm", ["x8", "s", "z", "w8", "s", "z"], ["q"], domain="com.microsoft", transB=1),
    ]
    inputs, outputs = ([helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names]
                       for names in (("x", "x8", "mm2"), ("act", "mm", "q")))
    graph = helper.make_graph(nodes, "g", inputs, outputs, [w8, scale, zero, w])
    assert weight_products(helper.make_model(graph)) == 3  # the QDQ Gemm, the MatMul and the QGemm


def test_convert_onnx_verifies_its_file_and_a_wrong_rewrite_is_caught(tmp_path, monkeypatch):
    from fxconv.onnx.emit import OnnxBuilder

    torch.manual_seed(0)
    _export(_models()["vgg_head"](), tmp_path / "model.onnx", True)
    converted, report = fxconv.convert_onnx(tmp_path / "model.onnx")
    assert report.verified.compared and report.verified.batches == (1, 3) and report.verified.max_abs_diff < 1e-4
    assert str(report).splitlines()[-1].startswith("  verified: batches 1 and 3, max abs diff")
    _, unverified = fxconv.convert_onnx(tmp_path / "model.onnx", verify=False)
    assert unverified.verified is None and "NOT VERIFIED" in str(unverified)
    conv = OnnxBuilder.conv
    monkeypatch.setattr(OnnxBuilder, "conv", lambda self, *a: self.binary("mul", conv(self, *a), 1.01))
    with pytest.raises(fxconv.VerificationError, match="the converted file differs from the original in onnxruntime"):
        fxconv.convert_onnx(tmp_path / "model.onnx")
