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
    method=st.sampled_from(fxconv.METHODS),
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
