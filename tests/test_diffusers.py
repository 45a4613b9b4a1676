"""diffusers' UNet2DConditionModel and AutoencoderKL, from small configs (random weights, no download).

Their upsampling branches on the batch (``if hidden_states.shape[0] >= 64``: made contiguous), so
torch.export's graph holds below 64 rows only: the batch stays free within that range (the module checks
it at every call, the ONNX file names it), never fixed to the example's.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxconv

diffusers = pytest.importorskip("diffusers")


def unet():
    model = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )  # fmt: skip
    return model, (torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 5, 32))


class Decoder(nn.Module):
    """AutoencoderKL's decode, latents to an image."""

    def __init__(self):
        super().__init__()
        self.vae = diffusers.AutoencoderKL(
            block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=16,
        )  # fmt: skip

    def forward(self, z):
        return self.vae.decode(z).sample


def decoder():
    return Decoder(), (torch.randn(1, 4, 8, 8),)


@pytest.mark.slow
@pytest.mark.parametrize("build", [unet, decoder])
def test_a_diffusers_model_converts_with_its_batch_free_below_its_branch(build, tmp_path):
    torch.manual_seed(0)
    model, example = build()
    model.eval()
    converted, report = fxconv.convert(model, example, scope="all")
    assert report.converted and not report.skipped
    assert report.fixed_batch is None and "batch free for 1 <= batch <= 63" in report.capture_note
    assert report.verified.batches == (1, 2)
    path = fxconv.export_onnx(converted, example, tmp_path / "m.onnx")
    check = fxconv.check_onnx(path, model, example)
    assert check.passed and check.batch_sizes == (1, 3), check
