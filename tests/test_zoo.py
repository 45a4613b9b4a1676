"""The torchvision classification zoo, through both captures: every head converted, and convert's own check
(fxconv.verify) compares each with the original at two batches."""

from __future__ import annotations

import pytest
import torch
import torchvision

import fxconv

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


# The smallest member of each family (torchvision's builder module) goes through both captures; the
# others, whose heads repeat their family's, through one, the captures and methods taking turns — every
# model once, every family both ways, in 60 % of the time of every model both ways.
BOTH_WAYS = {
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "googlenet", "inception_v3", "maxvit_t",
    "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_y_400mf", "resnet18", "shufflenet_v2_x0_5",
    "squeezenet1_0", "swin_t", "vgg11", "vit_b_16",
}  # fmt: skip
CASES = [
    (name, fxconv.CONV_METHODS[(i + j + i // 2) % 2], capture)
    for i, name in enumerate(NAMES)
    for j, capture in enumerate(["fx", "export"])
    if name in BOTH_WAYS or j == i % 2
]


def _family(name: str) -> str:
    return torchvision.models.get_model_builder(name).__module__


def test_every_family_goes_both_ways_and_every_model_once():
    assert {_family(n) for n in BOTH_WAYS} == {_family(n) for n in NAMES}  # a new family gets a member here
    assert {name for name, _, _ in CASES} == set(NAMES)
    assert {(method, capture) for _, method, capture in CASES} == {(m, c) for m in fxconv.CONV_METHODS
                                                                   for c in ("fx", "export")}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "method", "capture"), CASES)
def test_zoo_model_converts_and_matches(name, method, capture):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    size = _lookup(INPUT_SIZE, name, 64)
    x = torch.randn(2, 3, size, size)
    module, report = fxconv.convert(model, x, method, capture=capture)
    assert len(report.converted) == _lookup(EXPECTED, name, 1), str(report)
    assert {s.code for s in report.skipped} <= ALLOWED_SKIPS[report.capture], str(report)
    assert report.verified.batches == (2, 1)  # convert compared them (fxconv.verify): outputs equal at both
