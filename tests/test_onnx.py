"""ONNX export and the onnxruntime check: clean files (Conv, no Gemm), equal outputs, clear errors."""

from __future__ import annotations

import onnx
import pytest
import torch
import torchvision
from torch import fx, nn

import fxconv

from conftest import onnx_session
from models import FLATTENS, POOLS, Head, NormAfterFlatten, TwoHeads

# One model per torchvision family with a convertible head.
FAMILIES = [
    "resnet18", "vgg11", "alexnet", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
    "densenet121", "regnet_x_400mf", "shufflenet_v2_x0_5", "mnasnet0_5", "googlenet",
]  # fmt: skip


def assert_onnx_matches(path, model, x, *, rtol=1e-4):
    """ORT outputs equal the model's, at the example's batch and at batch 1.

    rtol 1e-4 of each output's scale: ORT sums the heads' products (up to 25k of them in fp32) in
    another order than PyTorch; see fxconv.check for the derivation.
    """
    session = onnx_session(path)
    for batch in (x, x[:1]):
        with torch.no_grad():
            want = model(batch)
        want = list(want) if isinstance(want, tuple) else [want]
        got = session(batch)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            scale = w.abs().max().clamp_min(1.0)
            torch.testing.assert_close(g / scale, w / scale, rtol=rtol, atol=rtol)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "method"),
    # One method per family, alternating: both methods cover the families in half the time (the static
    # files of tests/test_deploy.py take both methods on four of them).
    [(name, fxconv.CONV_METHODS[i % 2]) for i, name in enumerate(FAMILIES)],
)
def test_torchvision_round_trip(name, method, tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    module, report = fxconv.convert(model, x, method, strict=True)
    path = fxconv.export_onnx(module, x, tmp_path / f"{name}.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.onnx"]  # one file, no .data, no temp

    check = fxconv.check_onnx(path, model, x)
    assert check.passed, str(check)
    assert 1 in check.batch_sizes and any(b not in (1, 2) for b in check.batch_sizes)
    assert check.ops.get("Gemm", 0) == 0 and check.ops.get("MatMul", 0) == 0, check.ops
    assert check.ops["Conv"] == conv_calls(module)
    assert_onnx_matches(path, model, x)


def conv_calls(gm: fx.GraphModule) -> int:
    """How many convolutions the converted graph runs: the model's own and the converted heads'."""
    modules = dict(gm.named_modules())
    return sum(
        (n.op == "call_module" and isinstance(modules[n.target], nn.modules.conv._ConvNd))
        or (n.op == "call_function" and n.target in (torch.conv1d, torch.conv2d, torch.conv3d))
        for n in gm.graph.nodes
    )


EDGE_CASES = {
    **{f"flatten {s}": lambda s=s: Head(s) for s in FLATTENS},
    **{f"pool {s}": lambda s=s: Head(s) for s in POOLS},
    "conv1d head": lambda: Head(rank=1),
    "conv3d head": lambda: Head(rank=3, size=3),
    "batchnorm head, no bias": lambda: Head(hidden=(8, 6), batchnorm=True, bias=False),
    "F.linear": lambda: Head(functional=True, between="gelu * 2"),
    "two heads and the flatten out": TwoHeads,
}


@pytest.mark.parametrize("method", fxconv.CONV_METHODS)
@pytest.mark.parametrize("case", EDGE_CASES)
def test_edge_case_round_trip(case, method, tmp_path):
    torch.manual_seed(0)
    model = EDGE_CASES[case]().eval()
    x = model.example() if isinstance(model, Head) else torch.randn(3, 2, 4, 4)
    module, report = fxconv.convert(model, x, method, strict=True)
    path = fxconv.export_onnx(module, x, tmp_path / "m.onnx")
    check = fxconv.check_onnx(path, model, x)
    assert check.passed, str(check)
    assert "Gemm" not in check.ops and "MatMul" not in check.ops, check.ops
    assert check.ops["Conv"] == conv_calls(module) == 1 + len(report.converted)
    assert_onnx_matches(path, model, x)


def test_layer_norm_head_round_trip_with_1x1(tmp_path):
    model, x = NormAfterFlatten().eval(), torch.randn(2, 2, 3, 3)
    module, _ = fxconv.convert(model, x, "1x1", strict=True)
    check = fxconv.check_onnx(fxconv.export_onnx(module, x, tmp_path / "m.onnx"), model, x)
    assert check.passed and check.ops["Conv"] == 1 and "Gemm" not in check.ops


def test_conv_weights_are_initializers_of_conv_shape(tmp_path):
    """No Reshape of a weight is left for the runtime: each Conv reads an initializer directly."""
    model = Head(channels=64, size=7, hidden=(512,)).eval()  # a 3136x512 weight, above the exporter's fold limit
    module, _ = fxconv.convert(model, model.example())
    path = fxconv.export_onnx(module, model.example(), tmp_path / "m.onnx")
    onnx_model = fxconv.load_onnx(path)
    initializers = {i.name: tuple(i.dims) for i in onnx_model.graph.initializer}
    convs = [n for n in onnx_model.graph.node if n.op_type == "Conv"]
    assert [initializers[n.input[1]] for n in convs] == [(64, 2, 3, 3), (512, 64, 7, 7), (3, 512, 1, 1)]


def test_the_original_model_exports_too_and_keeps_its_gemms(tmp_path):
    model = Head().eval()
    path = fxconv.export_onnx(model, model.example(), tmp_path / "orig.onnx")
    check = fxconv.check_onnx(path, model, model.example())
    assert check.passed and check.ops["Gemm"] == 2


def test_a_training_model_is_exported_for_inference_and_left_training(tmp_path):
    model = Head(batchnorm=True).train()
    path = fxconv.export_onnx(model, model.example(), tmp_path / "m.onnx")
    assert model.training and all(m.training for m in model.modules())
    assert fxconv.check_onnx(path, model, model.example()).passed


def test_a_differing_model_fails_the_check(tmp_path):
    model, other = Head().eval(), Head().eval()
    path = fxconv.export_onnx(model, model.example(), tmp_path / "m.onnx")
    check = fxconv.check_onnx(path, other, model.example())
    assert not check.passed and check.max_abs_diff > 1e-3
    assert "FAILED" in str(check)


# -- bad input -----------------------------------------------------------------------------------


@pytest.fixture
def exported(tmp_path):
    model = Head().eval()
    return fxconv.export_onnx(model, model.example(), tmp_path / "m.onnx"), model


def test_a_missing_file_is_an_onnx_error(tmp_path):
    with pytest.raises(fxconv.OnnxError, match="no ONNX file"):
        fxconv.check_onnx(tmp_path / "absent.onnx", Head(), torch.randn(2, 2, 5, 5))


def test_a_corrupt_file_is_an_onnx_error(tmp_path, exported):
    path, model = exported
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(fxconv.OnnxError, match="not a valid ONNX model"):
        fxconv.check_onnx(path, model, torch.randn(2, 2, 5, 5))


@pytest.mark.parametrize(
    ("reference", "x", "match"),
    [
        (Head(rank=1), torch.randn(2, 2, 5), "expects input"),
        (Head(size=6), torch.randn(2, 2, 6, 6), "expects input"),
        (Head(), (torch.randn(2, 2, 5, 5),) * 2, "takes 1 inputs"),
        (TwoHeads(), torch.randn(2, 2, 5, 5), "outputs"),
    ],
    ids=["rank", "size", "input-count", "output-count"],
)
def test_a_file_that_does_not_belong_to_the_reference_is_an_onnx_error(exported, reference, x, match):
    path, _ = exported
    if isinstance(reference, TwoHeads):
        reference.a = reference.b = nn.Identity()  # same input shape, three outputs
    with pytest.raises(fxconv.OnnxError, match=match):
        fxconv.check_onnx(path, reference.eval(), x)


def test_a_missing_directory_is_an_onnx_error(tmp_path):
    with pytest.raises(fxconv.OnnxError, match="does not exist"):
        fxconv.export_onnx(Head(), torch.randn(2, 2, 5, 5), tmp_path / "no" / "m.onnx")


class Unexportable(nn.Module):
    def forward(self, x):
        return torch.linalg.eigh(x @ x.transpose(-1, -2))[0]  # no ONNX translation for eigh


def test_a_failed_export_leaves_the_existing_file_untouched(exported):
    path, _ = exported
    before = path.read_bytes()
    with pytest.raises(fxconv.OnnxError, match="export failed"):
        fxconv.export_onnx(Unexportable(), torch.randn(2, 2, 5, 5), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx"]


@pytest.mark.slow
def test_a_model_over_2gb_is_converted_exported_and_checked_end_to_end(tmp_path):
    """2.16 GB of float32 weights in two Linears (each under 2 GB, as every layer of a 1B decoder is): the file
    keeps them in m.onnx.data, and load_onnx and check_onnx read it by path, never as one proto over 2 GB
    (which protobuf cannot serialise: "Failed to serialize proto")."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16384, 16500), nn.ReLU(), nn.Linear(16500, 16384)).eval()
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        want = model(x)
    converted, report = fxconv.convert(model, x, scope="all", inplace=True)  # inplace: one copy of 2 GB
    assert len(report.converted) == 2 and report.verified.batches == (1, 2)
    path = fxconv.export_onnx(converted, x, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "m.onnx.data").stat().st_size > 2**31 > path.stat().st_size
    ops = fxconv.op_census(fxconv.load_onnx(path, weights=False))
    assert ops["Conv"] == 2 and not {"Gemm", "MatMul"} & set(ops), ops
    check = fxconv.check_onnx(path, converted, x)
    assert check.passed and check.batch_sizes == (1, 3), check
    torch.testing.assert_close(converted(x), want)  # the reference the check ran is the model's function


def test_a_file_with_its_weights_beside_it_checks_as_its_one_file_twin(tmp_path, monkeypatch):
    """The paths a large model takes (weights in a .data file, the check's lean session, shape inference on
    the graph without its weights, save_proto through onnx_ir), proven on a small model: the same numbers."""
    model = Head().eval()
    one = fxconv.export_onnx(model, model.example(), tmp_path / "one.onnx")
    monkeypatch.setattr("fxconv.check.PROTOBUF_LIMIT", 0)
    proto = fxconv.load_onnx(one)
    size = proto.ByteSize()
    fxconv.check.save_proto(proto, tmp_path / "beside.onnx")
    assert proto.ByteSize() == size  # the weights were written out of the proto, not moved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beside.onnx", "beside.onnx.data", "one.onnx"]
    lean = fxconv.load_onnx(tmp_path / "beside.onnx", weights=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in lean.graph.initializer)
    assert fxconv.load_onnx(tmp_path / "beside.onnx").ByteSize() >= size  # weights=True: the bytes are read in
    check = fxconv.check_onnx(tmp_path / "beside.onnx", one)
    assert check.passed and check.max_abs_diff < 1e-6
    assert fxconv.check_onnx(tmp_path / "beside.onnx", model, model.example()).passed
    weight = max(proto.graph.initializer, key=lambda t: t.ByteSize())
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) + 1, weight.name))
    fxconv.check.save_proto(proto, tmp_path / "wrong.onnx")
    assert not fxconv.check_onnx(tmp_path / "wrong.onnx", one).passed  # the lean path compares for real


def test_models_over_2gb_keep_their_weights_beside_the_file(tmp_path, monkeypatch):
    """Above protobuf's 2 GB the weights go to <file>.data; a limit of 0 takes that path on a small model."""
    monkeypatch.setattr("fxconv.check.PROTOBUF_LIMIT", 0)
    model = Head().eval()
    path = fxconv.export_onnx(model, model.example(), tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert fxconv.check_onnx(path, model, model.example()).passed
