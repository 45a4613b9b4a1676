"""Dense mode: the converted classifier slides over larger inputs, one prediction per window."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import fxconv
from conftest import assert_same_outputs, onnx_session
from models import Head, TokenHead, TwoHeads


class LeNet(nn.Module):
    """Valid convolutions and aligned pooling: a dense location is exactly the model on a crop."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_lenet_every_location_is_the_model_on_its_crop(capture):
    torch.manual_seed(0)
    model = LeNet().eval()
    module, report = fxconv.convert(model, torch.randn(2, 1, 32, 32), dense=True, capture=capture)
    assert report.frozen == [] and len(report.converted) == 3
    big = torch.randn(2, 1, 52, 44)
    with torch.no_grad():
        grid = module(big)
        assert grid.shape == (2, 10, 6, 4)  # (52 - 32) / 4 + 1, (44 - 32) / 4 + 1: the total stride is 4
        for i in range(grid.shape[2]):
            for j in range(grid.shape[3]):
                crop = big[:, :, 4 * i : 4 * i + 32, 4 * j : 4 * j + 32]
                torch.testing.assert_close(grid[:, :, i, j], model(crop))


def _resnet_parts(model):
    backbone = nn.Sequential(*list(model.children())[:-2])
    return backbone, lambda window: model.fc(torch.flatten(model.avgpool(window), 1))


def _vgg_parts(model):
    return model.features, lambda window: model.classifier(torch.flatten(model.avgpool(window), 1))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "parts"), [("resnet18", _resnet_parts), ("vgg11", _vgg_parts)])
def test_torchvision_every_location_is_the_head_on_its_window(name, parts):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    example = torch.randn(1, 3, 224, 224)
    module, report = fxconv.convert(model, example, dense=True)
    assert len(report.frozen) == 1
    with torch.no_grad():
        torch.testing.assert_close(module(example).flatten(1), model(example))  # (N, K, 1, 1) at the example
        big = torch.randn(1, 3, 288, 320)
        grid = module(big)
        backbone, head = parts(model)
        features = backbone(big)  # (1, C, 9, 10): windows of 7x7 at 3x4 offsets
        assert grid.shape == (1, 1000, 3, 4)
        for i in range(3):
            for j in range(4):
                window = features[:, :, i : i + 7, j : j + 7]
                want = head(window)
                scale = want.abs().max()  # random weights: see conftest.assert_same_outputs
                torch.testing.assert_close(grid[:, :, i, j] / scale, want / scale)


POOLS = {
    "AdaptiveAvgPool2d(1)": (lambda m, x: m.pool(x), "avg pool, kernel (4, 4), stride (1, 1)"),
    "adaptive_avg_pool2d(x, 1)": (lambda m, x: F.adaptive_avg_pool2d(x, 1), "avg pool, kernel (4, 4), stride (1, 1)"),
    "adaptive_max_pool2d(x, 1)": (lambda m, x: F.adaptive_max_pool2d(x, 1), "max pool, kernel (4, 4), stride (1, 1)"),
    "adaptive_avg_pool2d(x, 4)": (lambda m, x: F.adaptive_avg_pool2d(x, 4), "identity"),
    "adaptive_avg_pool2d(x, 2)": (lambda m, x: F.adaptive_avg_pool2d(x, 2), "avg pool, kernel (2, 2), stride (2, 2)"),
    "x.mean([2, 3])": (lambda m, x: x.mean([2, 3]), "avg pool, kernel (4, 4), stride (1, 1)"),
    "x.sum((2, 3))": (lambda m, x: x.sum((2, 3)), "sum pool, kernel (4, 4), stride (1, 1)"),
    "x.amax((-1, -2))": (lambda m, x: x.amax((-1, -2)), "max pool, kernel (4, 4), stride (1, 1)"),
    "torch.amin(x, (2, 3))": (lambda m, x: torch.amin(x, (2, 3)), "min pool, kernel (4, 4), stride (1, 1)"),
}


class Pooled(nn.Module):
    """A conv, a pooling spelled ``pool``, then a two-layer head."""

    def __init__(self, pool: str):
        super().__init__()
        self.spelling = pool
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        pooled = 3 * {"adaptive_avg_pool2d(x, 4)": 16, "adaptive_avg_pool2d(x, 2)": 4}.get(pool, 1)
        self.head = nn.Sequential(nn.Linear(pooled, 8), nn.ReLU(), nn.Linear(8, 5))

    def forward(self, x):
        return self.head(torch.flatten(POOLS[self.spelling][0](self, self.conv(x)), 1))


@pytest.mark.parametrize("pool", POOLS)
def test_pooling_in_front_of_the_head_is_frozen(pool):
    torch.manual_seed(0)
    model = Pooled(pool).eval()
    module, report = fxconv.convert(model, torch.randn(2, 2, 4, 4), dense=True)
    assert [f.now for f in report.frozen] == [POOLS[pool][1]]
    assert "frozen" in str(report)
    big = torch.randn(2, 2, 8, 10)
    grid = module(big)
    step = 2 if pool.endswith("x, 2)") else 1  # a 2x2 pool steps by 2 in the map
    assert grid.shape[:2] == (2, 5)
    with torch.no_grad():
        features = model.conv(big)
        for i in range(grid.shape[2]):
            for j in range(grid.shape[3]):
                window = features[:, :, step * i : step * i + 4, step * j : step * j + 4]
                want = model.head(torch.flatten(POOLS[pool][0](model, window), 1))
                torch.testing.assert_close(grid[:, :, i, j], want)


@pytest.mark.parametrize(
    ("model", "x", "error", "match"),
    [
        (Pooled("adaptive_avg_pool2d(x, 4)"), torch.randn(2, 2, 6, 6), fxconv.NotConvertibleError, "cannot freeze"),
        (TokenHead(), torch.randn(2, 5, 8), fxconv.NotConvertibleError, "every head Linear"),
        (nn.Sequential(nn.Conv2d(2, 2, 1)), torch.randn(2, 2, 4, 4), fxconv.NotConvertibleError, "no Linear"),
        (TwoHeads(), torch.randn(2, 2, 4, 4), fxconv.NotConvertibleError, "read by 'sum_1'"),
    ],
    ids=["pool-6-to-4", "linear-left-alone", "no-head", "flattened-output-reused"],
)
def test_what_cannot_be_made_dense_is_named(model, x, error, match):
    with pytest.raises(error, match=match):
        fxconv.convert(model.eval(), x, dense=True)


def test_dense_needs_the_kernel_method():
    with pytest.raises(fxconv.InvalidArgumentError, match="method='kernel'"):
        fxconv.convert(Head(), torch.randn(2, 2, 5, 5), "1x1", dense=True)


def test_the_flatten_moves_past_elementwise_ops_to_the_output():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(27, 4), nn.Sigmoid()).eval()
    module, _ = fxconv.convert(model, torch.randn(2, 2, 5, 5), dense=True)
    assert module(torch.randn(2, 2, 5, 5)).shape == (2, 4, 1, 1)
    assert_same_outputs(lambda x: module(x).flatten(1), model, torch.randn(2, 2, 5, 5))


@pytest.mark.slow
def test_dense_onnx_has_dynamic_height_and_width(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    example = torch.randn(1, 3, 224, 224)
    module, _ = fxconv.convert(model, example, dense=True)
    path = fxconv.export_onnx(module, example, tmp_path / "dense.onnx", dynamic_spatial=True)
    ops = fxconv.op_census(fxconv.load_onnx(path))
    assert "Gemm" not in ops and "GlobalAveragePool" not in ops and ops["AveragePool"] == 1
    run = onnx_session(path)
    for size in ((224, 224), (256, 320)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            want = module(x)
        got = run(x)[0]
        scale = want.abs().max()
        torch.testing.assert_close(got / scale, want / scale, rtol=1e-4, atol=1e-4)
