"""Property-based: for random map shapes, widths, bias and head depth, both methods keep the outputs."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fxconv

from conftest import assert_same_outputs


def _head(channels: int, spatial: tuple[int, ...], widths: list[int], bias: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    in_features = channels * int(torch.tensor(spatial).prod())
    for i, width in enumerate(widths):
        layers += [nn.Linear(in_features, width, bias=bias)] + ([nn.ReLU()] if i < len(widths) - 1 else [])
        in_features = width
    return nn.Sequential(*layers)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 4),
    c=st.integers(1, 6),
    spatial=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
    widths=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    bias=st.booleans(),
    method=st.sampled_from(fxconv.CONV_METHODS),
    layout=st.sampled_from(fxconv.LAYOUTS),
    seed=st.integers(0, 2**16),
)
def test_any_flattened_head_converts_and_matches(n, c, spatial, widths, bias, method, layout, seed):
    torch.manual_seed(seed)
    model = _head(c, spatial, widths, bias).eval()
    x = torch.randn(n, c, *spatial)
    module, report = fxconv.convert(model, x, method, layout=layout, strict=True)
    assert len(report.converted) == len(widths)
    expected_kernel = spatial if method == "kernel" else (1,) * len(spatial)
    assert report.converted[0].kernel == expected_kernel
    assert report.converted[0].flattened_from == (c, *spatial)
    assert_same_outputs(module, model, x)
    # The batch is not baked in: another batch size gives the same answer as the original.
    assert_same_outputs(module, model, torch.randn(n + 2, c, *spatial))


@settings(max_examples=40, deadline=None)
@given(
    c=st.integers(1, 5),
    spatial=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
    widths=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    spelling=st.lists(st.sampled_from(["gemm", "gemm-transB", "matmul", "matmul-add"]), min_size=3, max_size=3),
    channels_last=st.booleans(),
    alpha_beta=st.sampled_from([(1.0, 1.0), (0.5, 2.0)]),
    method=st.sampled_from(fxconv.CONV_METHODS),
    layout=st.sampled_from(fxconv.LAYOUTS),
    seed=st.integers(0, 2**16),
)
def test_any_onnx_head_converts_and_matches(
    c, spatial, widths, spelling, channels_last, alpha_beta, method, layout, seed
):
    """A hand-written ONNX head over an (N, C, *S) map — flattened directly or through a channels-last
    Transpose — of Linears spelt as Gemm (either weight layout, alpha/beta) or MatMul (+ Add): the
    converted file equals the original in onnxruntime at two batch sizes."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, initializers, value = [], [], "x"
    if channels_last:
        nodes.append(helper.make_node("Transpose", [value], ["nhwc"], perm=[0, *range(2, 2 + len(spatial)), 1]))
        value = "nhwc"
    nodes.append(helper.make_node("Flatten", [value], ["flat"], axis=1))
    value, features = "flat", c * int(np.prod(spatial))
    for i, (width, kind) in enumerate(zip(widths, spelling)):
        w, b, out = f"w{i}", f"b{i}", f"linear{i}"
        weight = rng.standard_normal((features, width)).astype(np.float32)
        initializers += [numpy_helper.from_array(weight.T.copy() if kind == "gemm-transB" else weight, w),
                         numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), b)]  # fmt: skip
        if kind.startswith("gemm"):
            alpha, beta = alpha_beta
            nodes.append(
                helper.make_node(
                    "Gemm", [value, w, b], [out], transB=int(kind == "gemm-transB"), alpha=alpha, beta=beta
                )
            )
        elif kind == "matmul":
            nodes.append(helper.make_node("MatMul", [value, w], [out]))
        else:
            nodes += [
                helper.make_node("MatMul", [value, w], [f"product{i}"]),
                helper.make_node("Add", [f"product{i}", b], [out]),
            ]
        value, features = out, width
        if i < len(widths) - 1:
            nodes.append(helper.make_node("Relu", [value], [f"relu{i}"]))
            value = f"relu{i}"
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, *spatial])
    graph = helper.make_graph(nodes, "head", [x_info],
                              [helper.make_tensor_value_info(value, TensorProto.FLOAT, ["N", widths[-1]])],
                              initializers)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    converted, report = fxconv.convert_onnx(model, method, layout=layout, strict=True)
    assert len(report.converted) == len(widths)
    assert report.converted[0].kernel == (spatial if method == "kernel" else (1,) * len(spatial))  # the map's rank
    for n in (1, 3):
        x = rng.standard_normal((n, c, *spatial)).astype(np.float32)
        want, got = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                     .run(None, {"x": x})[0] for m in (model, converted))  # fmt: skip
        torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want))
