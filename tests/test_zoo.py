"""The torchvision classification zoo, through both captures: outputs equal the original's, every head converted."""

from __future__ import annotations

import pytest
import torch
import torchvision

import fxconv

from conftest import assert_same_outputs

# Too large for the suite's time on 2 cores (300M+ parameters: 8-16 s each just to initialise, GBs to
# copy); the same head shapes are covered by vit_b_16/vit_b_32 and the other regnet_y models.
TOO_LARGE = {"regnet_y_128gf", "vit_h_14", "vit_l_16", "vit_l_32"}
NAMES = [n for n in torchvision.models.list_models(module=torchvision.models) if n not in TOO_LARGE]

# How many head Linears each family has that read a flattened or globally pooled feature map.
EXPECTED = {
    "alexnet": 3, "vgg": 3, "mobilenet_v3": 2, "maxvit": 2,
    "squeezenet": 0,  # its classifier is already convolutional
    "vit": 0,  # the head reads the class token x[:, 0], not a feature map
}  # fmt: skip
INPUT_SIZE = {"vit": 224, "maxvit": 224, "inception": 96}  # smallest sizes these accept; others take 64


def _lookup(table: dict, name: str, default):
    return next((v for k, v in table.items() if name.startswith(k)), default)


# What scope="heads" leaves alone: a Linear inside a transformer block (per position), a class-token head,
# under symbolic_trace the Linears inside nn.MultiheadAttention and Swin's wrapped attention function
# (which it does not trace into), and under torch.export the in-projection of nn.MultiheadAttention, which
# it runs on (N·L, C) (folding the batch). scope="all" converts them all: tests/test_zoo_all.py.
ALLOWED_SKIPS = {
    "symbolic_trace": {"not-2d", "not-flattened", "opaque"},
    "torch.export": {"not-2d", "not-flattened", "folds-batch"},
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "method", "capture"),
    # Each model with one method per capture, alternating, so that both methods and both captures cover
    # every family in half the time.
    [
        (name, fxconv.CONV_METHODS[(i + j) % 2], capture)
        for i, name in enumerate(NAMES)
        for j, capture in enumerate(["fx", "export"])
    ],
)
def test_zoo_model_converts_and_matches(name, method, capture):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    size = _lookup(INPUT_SIZE, name, 64)
    x = torch.randn(2, 3, size, size)
    module, report = fxconv.convert(model, x, method, capture=capture)
    assert len(report.converted) == _lookup(EXPECTED, name, 1), str(report)
    assert {s.code for s in report.skipped} <= ALLOWED_SKIPS[report.capture], str(report)
    assert_same_outputs(module, model, x, scaled=True)
