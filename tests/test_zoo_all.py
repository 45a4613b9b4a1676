"""scope="all" on transformer, ConvNeXt and MLP families (torchvision and timm, built from configs): every
Linear becomes a convolution, the outputs equal the original's in PyTorch and in onnxruntime."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torchvision
from timm.layers import Mlp
from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock
from torchvision.models.convnext import CNBlockConfig

import fxconv
from fxconv.capture import capture
from fxconv.check import load_onnx, op_census, weight_products

from test_scope import layout_changes

tv = torchvision.models


def _timm(name: str, **kwargs):
    return lambda: timm.create_model(name, pretrained=False, **kwargs)


# name: (factory, input size, Linears). Sizes and depths are cut to what keeps each family's blocks (the
# suite's time on 2 cores): torchvision's classes (vit_b_16's, swin_t's, ... code) at a few blocks of small
# width — the full models took 34-54 s each here and exercise no other code.
FAMILIES = {
    "torchvision vit": (
        lambda: tv.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64),
        32, 9,
    ),
    "torchvision swin": (
        lambda: tv.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                   window_size=[4, 4]),
        32, 10,
    ),
    "torchvision convnext": (lambda: tv.ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)]), 32, 5),
    "torchvision maxvit": (
        lambda: tv.MaxVit(input_size=(32, 32), stem_channels=16, partition_size=2, block_channels=[16, 32],
                          block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0),
        32, 18,
    ),
    "timm vit": (_timm("vit_tiny_patch16_224", img_size=32, depth=2), 32, 9),
    "timm deit distilled": (_timm("deit_tiny_distilled_patch16_224", img_size=32, depth=2), 32, 10),
    "timm swin": (_timm("swin_tiny_patch4_window7_224", depths=(1, 1, 1, 1)), 224, 20),
    "timm convnext": (_timm("convnext_atto", conv_mlp=False), 32, 25),
    "timm mlp-mixer": (lambda: MlpMixer(img_size=32, patch_size=8, num_blocks=2, embed_dim=32), 32, 9),
    "timm resmlp": (
        lambda: MlpMixer(img_size=32, patch_size=8, num_blocks=2, embed_dim=32, mlp_ratio=4, block_layer=ResBlock,
                         norm_layer=Affine, mlp_layer=Mlp),
        32, 7,
    ),
    "timm levit": (_timm("levit_128s", img_size=112), 112, 48),
    "timm mobilevit": (_timm("mobilevit_xxs"), 64, 37),
    "timm efficientformer": (_timm("efficientformer_l1"), 224, 6),
    "timm coat": (_timm("coat_lite_tiny"), 224, 33),
}  # fmt: skip
CONVNEXT = {"torchvision convnext", "timm convnext"}


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_every_linear_of_a_family_becomes_a_convolution(name, tmp_path):
    make, size, linears = FAMILIES[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make().eval()
    with torch.no_grad():  # zero-initialised heads (torchvision's ViT) would make every output 0 = 0
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.02)
    x = torch.randn(2, 3, size, size)
    module, report = fxconv.convert(model, x, scope="all", strict=True)
    assert len(report.converted) == linears, str(report)
    with torch.no_grad():
        assert model(x).abs().amax() > 0  # a comparison of zeros would prove nothing
    assert report.verified.batches == (2, 1)  # convert compared them (fxconv.verify): outputs equal at both

    # Layout changes: ConvNeXt's permutes cancel; elsewhere fewer than wrapping each Linear would add.
    original = capture(model, (x,), "fx" if report.capture == "symbolic_trace" else "export").gm
    added = layout_changes(module) - layout_changes(original)
    assert added <= (0 if name in CONVNEXT else 2 * linears), f"{added} layout changes added"

    # A static batch of 1, as NPU compilers take it: a ConvNeXt file then has no Transpose at all.
    path = fxconv.export_onnx(module, x, tmp_path / "all.onnx", batch=1 if name in CONVNEXT else None)
    ops = op_census(load_onnx(path))
    assert "Gemm" not in ops and weight_products(load_onnx(path)) == 0, ops
    if name in CONVNEXT:
        assert "Transpose" not in ops, ops
    result = fxconv.check_onnx(path, model, x, batch_sizes=[1] if name in CONVNEXT else None)
    assert result.passed, str(result)
