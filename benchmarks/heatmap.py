"""Example: turn a torchvision classifier into a heat-map model with fxconv's dense mode.

    python benchmarks/heatmap.py --model resnet18 --size 448 --out heatmap.png

The classifier is converted at its training size (224x224) with ``dense=True``; run on a larger image
it returns one score per class for every 224x224 window (stride 32 for ResNet), in one pass. The PNG
shows the image with the chosen class's probability over it (red = high). Without downloadable weights
the model is randomly initialised (``--state-dict`` loads real ones), and the image is synthetic: a
bright disc on a textured background, so the map has some structure to respond to.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torchvision.utils import save_image

import fxconv


def synthetic_image(size: int) -> torch.Tensor:
    """A (1, 3, size, size) image: a bright disc off centre on a smooth textured background."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    background = 0.3 + 0.1 * torch.sin(12 * x) * torch.cos(9 * y)
    disc = ((x - 0.65) ** 2 + (y - 0.35) ** 2 < 0.03).float()
    image = torch.stack([background + 0.6 * disc, background + 0.3 * disc, background])
    return image.clamp(0, 1)[None]


def heat_map(model_name: str, size: int, state_dict: Path | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(image, per-window probabilities of the top class (h, w), that class)."""
    model = torchvision.models.get_model(model_name, weights=None).eval()
    if state_dict:
        model.load_state_dict(torch.load(state_dict, map_location="cpu", weights_only=True))
    dense, report = fxconv.convert(model, torch.randn(1, 3, 224, 224), dense=True)
    print(report)
    image = synthetic_image(size)
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.inference_mode():
        scores = dense((image - mean) / std)  # (1, 1000, h, w): one prediction per window
    probabilities = scores.softmax(dim=1)[0]
    chosen = int(probabilities.sum(dim=(1, 2)).argmax())
    print(f"{model_name} on {size}x{size}: a {tuple(probabilities.shape[1:])} grid of windows; class {chosen}")
    return image, probabilities[chosen], chosen


def overlay(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The image with ``grid`` (h, w), scaled to [0, 1] and upsampled, blended in as red."""
    span = grid.max() - grid.min()
    normalised = (grid - grid.min()) / span if span > 0 else torch.zeros_like(grid)
    heat = F.interpolate(normalised[None, None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0]
    red = torch.cat([heat, torch.zeros_like(heat), torch.zeros_like(heat)])
    return (0.55 * image[0] + 0.45 * red).clamp(0, 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="a torchvision classifier (default resnet18)")
    parser.add_argument("--size", type=int, default=448, help="image size, at least 224 (default 448)")
    parser.add_argument("--state-dict", type=Path, help="trained weights for the model")
    parser.add_argument("--out", type=Path, default=Path("heatmap.png"))
    args = parser.parse_args(argv)
    image, grid, _ = heat_map(args.model, args.size, args.state_dict)
    save_image(torch.stack([image[0], overlay(image, grid)]), args.out, nrow=2, padding=4)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
