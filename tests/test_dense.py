"""Dense mode: the converted classifier slides over larger inputs, one prediction per window."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

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
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10)
        )

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
        # Named by the source line, not a graph node.
        (
            TwoHeads(),
            torch.randn(2, 2, 4, 4),
            fxconv.NotConvertibleError,
            r"read by .*models.py:\d+: `return self.a\(f\)",
        ),
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


# -- exact per window, or refused (the endings and blocks of real models) --------------------------------

# The pool in front of a CIFAR-style head, applied to a (N, 8, 4, 4) map; each must make the dense model
# exact: location (i, j) == the original head on the 4x4 window of the backbone's map at (i, j).
ENDINGS = {
    "F.avg_pool2d(x, 4)": lambda m, x: F.avg_pool2d(x, 4).view(x.size(0), -1),  # CIFAR ResNets
    "nn.AvgPool2d(4)": lambda m, x: m.avgpool(x).flatten(1),  # Inception-v4 / Inception-ResNet-v2: AvgPool2d(8)
    "F.max_pool2d(x, kernel=stride=4)": lambda m, x: torch.flatten(F.max_pool2d(x, 4, 4), 1),
    "x.flatten(2).mean(-1)": lambda m, x: x.flatten(2).mean(-1),  # SwiftFormer
    "x.view(N, C, -1).mean(-1)": lambda m, x: x.view(x.size(0), x.size(1), -1).mean(-1),
    "x.flatten(2).amax(2)": lambda m, x: x.flatten(2).amax(2),
}


class Ending(nn.Module):
    """Three stride-2 convolutions (a 4x4 map at 32 px), an ending from ENDINGS, a Linear."""

    def __init__(self, ending: str, partial: bool = False):
        super().__init__()
        self.ending = ending
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1)
        )
        self.avgpool = nn.AvgPool2d(3 if partial else 4)  # 3: covers only part of the 4x4 map
        self.fc = nn.Linear(8, 10)

    def head(self, window):
        return self.fc(ENDINGS[self.ending](self, window))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.mark.parametrize("capture", ["fx", "export"])
@pytest.mark.parametrize("ending", ENDINGS)
def test_every_window_is_the_head_on_its_crop_of_the_map(ending, capture):
    torch.manual_seed(0)
    model = Ending(ending).eval()
    module, report = fxconv.convert(model, torch.randn(2, 3, 32, 32), dense=True, capture=capture)
    assert len(report.frozen) == 1 and "stride (1, 1)" in report.frozen[0].now, str(report)
    assert report.approximate == []
    with torch.no_grad():
        for size in ((32, 32), (48, 48), (64, 64), (40, 56)):
            x = torch.randn(2, 3, *size)
            grid, features = module(x), model.features(x)
            h, w = features.shape[2] - 3, features.shape[3] - 3  # every 4x4 window of the map
            assert grid.shape == (2, 10, h, w), (size, grid.shape)
            for i in range(h):
                for j in range(w):
                    window = features[:, :, i : i + 4, j : j + 4].contiguous()
                    torch.testing.assert_close(grid[:, :, i, j], model.head(window))


def test_a_fixed_pool_that_covers_part_of_the_map_is_refused_by_name():
    with pytest.raises(fxconv.NotConvertibleError, match=r"cannot freeze module 'avgpool'.*covers only part"):
        fxconv.convert(Ending("nn.AvgPool2d(4)", partial=True).eval(), torch.randn(2, 3, 32, 32), dense=True)


class GlobalPool(nn.Module):
    def forward(self, x):
        return x.mean((2, 3), keepdim=True)


class HiddenPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.pool, self.fc = nn.Conv2d(3, 4, 3), GlobalPool(), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))


def test_a_pool_hidden_in_a_module_kept_whole_is_found_and_named():
    class KeepPool(fx.Tracer):
        def is_leaf_module(self, m, name):
            return isinstance(m, GlobalPool) or super().is_leaf_module(m, name)

    model = HiddenPool().eval()
    gm = fx.GraphModule(model, KeepPool().trace(model))
    with pytest.raises(fxconv.NotConvertibleError, match="map in front of fc does not grow.*module 'pool'"):
        fxconv.convert(gm, torch.randn(2, 3, 10, 10), dense=True)


class SqueezeExcite(nn.Module):
    """The textbook squeeze-and-excitation block, built from Linears."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(channels, channels // 2), nn.Linear(channels // 2, channels)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        return x * s.view(x.size(0), -1, 1, 1)


class SENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), SqueezeExcite(8))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.block(self.stem(x))), 1))


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_squeeze_and_excitation_of_linears_is_refused_by_module_and_line(capture):
    model, x = SENet().eval(), torch.randn(2, 3, 16, 16)
    with pytest.raises(fxconv.NotConvertibleError) as info:
        fxconv.convert(model, x, dense=True, capture=capture)
    message = str(info.value)
    assert "module 'block.1'" in message and "x.mean((2, 3))" in message and "approximate=True" in message
    module, report = fxconv.convert(model, x, dense=True, capture=capture, approximate=True)
    assert len(report.approximate) == 1 and "APPROXIMATE" in str(report)
    with torch.no_grad():
        torch.testing.assert_close(module(x).flatten(1), model(x))  # exact at the example's size
        assert module(torch.randn(2, 3, 32, 32)).shape == (2, 5, 9, 9)


@pytest.mark.slow
def test_squeeze_and_excitation_of_convolutions_is_refused_then_approximate_on_request():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    x = torch.randn(1, 3, 96, 96)
    with pytest.raises(fxconv.NotConvertibleError, match=r"module 'features.1.block.1.avgpool'.*8 more such pools"):
        fxconv.convert(model, x, dense=True)
    module, report = fxconv.convert(model, x, dense=True, approximate=True)
    assert len(report.approximate) == 9 and all("block" in name for name in report.approximate)
    assert "APPROXIMATE" in str(report)
    with torch.no_grad():
        torch.testing.assert_close(module(x).flatten(1), model(x))
        assert module(torch.randn(1, 3, 160, 128)).shape == (1, 1000, 3, 2)
