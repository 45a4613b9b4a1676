"""Example: a classifier that learned, run densely over a large scene with fxconv's dense mode.

    python benchmarks/heatmap.py --out heatmap.png

1. Train (well under a minute on 2 CPU cores) a LeNet-sized classifier on 32x32 patches generated here:
   is there a plus sign in the middle of the patch? Negatives hold other shapes (squares, rings, bars)
   or a plus off centre, on a noisy background.
2. Convert it with ``fxconv.convert(..., dense=True)``: one pass over a 128x192 scene with several
   objects gives the probability of "a plus in the middle" for every 32x32 window, stride 4.
3. Evaluate the same windows one crop at a time with the original model: the two grids are equal
   (valid convolutions, so each window is exactly the model on its crop), and the dense pass is faster.
4. Draw the scene and the grid as it is — one nearest-neighbour cell per window, placed at the window's
   centre, so the stride shows — with a colour bar in probability.

Everything is seeded and runs on a fixed number of threads: two runs give the same picture.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import fxconv

PATCH, STRIDE = 32, 4  # the classifier's input size, and its total stride (two 2x2 max pools)
SHAPES = ("plus", "square", "ring", "bar")


class LeNet(nn.Module):
    """Valid convolutions and aligned pooling: a dense location is exactly the model on its crop."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(nn.Linear(32 * 5 * 5, 64), nn.ReLU(), nn.Linear(64, 2))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def draw(canvas: torch.Tensor, shape: str, cy: int, cx: int, size: int = 11) -> None:
    """Draw a bright ``shape`` of side ``size`` centred at (cy, cx) into a (H, W) canvas."""
    r = size // 2
    y, x = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    masks = {
        "plus": (y.abs() <= 1) | (x.abs() <= 1),
        "square": (y.abs() == r) | (x.abs() == r),
        "ring": ((y**2 + x**2).float().sqrt() - (r - 1)).abs() < 1.0,
        "bar": y.abs() <= 1,
    }
    region = canvas[cy - r : cy + r + 1, cx - r : cx + r + 1]
    region[masks[shape]] = 1.0


def background(h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    return 0.15 * torch.rand(h, w, generator=generator)


def patches(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` labelled (1, 32, 32) patches: label 1 = a plus within 2 px of the centre."""
    images, labels = torch.empty(n, PATCH, PATCH), torch.zeros(n, dtype=torch.long)
    for k in range(n):
        images[k] = background(PATCH, PATCH, generator)
        kind = int(torch.randint(4, (1,), generator=generator))
        # ±2 px: half the stride, so no plus falls between windows
        jitter = torch.randint(-2, 3, (2,), generator=generator)
        if kind == 0:  # positive
            draw(images[k], "plus", 16 + int(jitter[0]), 16 + int(jitter[1]))
            labels[k] = 1
        elif kind == 1:  # another shape in the middle
            draw(
                images[k],
                SHAPES[1 + int(torch.randint(3, (1,), generator=generator))],
                16 + int(jitter[0]),
                16 + int(jitter[1]),
            )
        elif kind == 2:  # a plus off centre
            cy, cx = (int(v) for v in torch.randint(6, 27, (2,), generator=generator))
            if max(abs(cy - 16), abs(cx - 16)) <= 4:  # off centre: more than the jitter of a positive
                cy = 6
            draw(images[k], "plus", cy, cx)
        # kind 3: background only
    return images[:, None], labels


def train(steps: int, generator: torch.Generator) -> LeNet:
    """Train on freshly generated batches; returns the model in eval mode."""
    model = LeNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        x, y = patches(64, generator)
        loss = F.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    x, y = patches(512, generator)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(f"trained {steps} steps of 64 patches: accuracy {accuracy:.1%} on 512 new patches")
    return model.eval()


def scene(generator: torch.Generator) -> torch.Tensor:
    """A (1, 1, 128, 192) scene: three plus signs and four distractors."""
    canvas = background(128, 192, generator)
    for shape, cy, cx in [("plus", 30, 40), ("plus", 90, 150), ("plus", 100, 52), ("ring", 32, 110),
                          ("square", 70, 96), ("bar", 26, 168), ("square", 104, 16)]:  # fmt: skip
        draw(canvas, shape, cy, cx)
    return canvas[None, None]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps (default 600)")
    parser.add_argument("--out", type=Path, default=Path("heatmap.png"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(2)  # sums in the same order on every run: the same picture
    generator = torch.Generator().manual_seed(0)

    start = time.perf_counter()
    model = train(args.steps, generator)
    print(f"training took {time.perf_counter() - start:.1f} s")
    dense, report = fxconv.convert(model, torch.randn(1, 1, PATCH, PATCH), dense=True)
    print(report)

    image = scene(generator)
    with torch.inference_mode():
        start = time.perf_counter()
        dense_grid = dense(image).softmax(1)[0, 1]  # (h, w): P(a plus in the middle) per window
        dense_s = time.perf_counter() - start
        h, w = dense_grid.shape
        start = time.perf_counter()
        crop_grid = torch.stack([
            torch.stack([model(image[:, :, STRIDE * i : STRIDE * i + PATCH, STRIDE * j : STRIDE * j + PATCH])
                         .softmax(1)[0, 1]
                         for j in range(w)])
            for i in range(h)
        ])  # fmt: skip
        crops_s = time.perf_counter() - start
    difference = float((dense_grid - crop_grid).abs().max())
    torch.testing.assert_close(dense_grid, crop_grid)
    print(f"{h}x{w} windows: the dense grid equals the crop-by-crop grid (max |difference| {difference:.1e})")
    print(f"one dense pass {1e3 * dense_s:.1f} ms, {h * w} crops one by one {1e3 * crops_s:.0f} ms: "
          f"{crops_s / dense_s:.0f}x faster")

    plot(image[0, 0], dense_grid, args.out)
    print(f"wrote {args.out}")
    return 0


def plot(image: torch.Tensor, grid: torch.Tensor, path: Path) -> None:
    """The scene beside the grid of window probabilities, each cell at its window's centre."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = grid.shape
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    left.imshow(image, cmap="gray", vmin=0, vmax=1)
    left.set_title(f"scene {image.shape[0]}x{image.shape[1]}: find a plus")
    # Cell (i, j) is the window whose top-left pixel is (4i, 4j); it is drawn over the 4x4 pixels
    # around that window's centre, so the grid sits on the scene and every cell is one window.
    half = PATCH / 2 - STRIDE / 2
    extent = (half - 0.5, half + STRIDE * w - 0.5, half + STRIDE * h - 0.5, half - 0.5)
    right.imshow(image, cmap="gray", vmin=0, vmax=1, alpha=0.35)
    cells = right.imshow(grid, cmap="viridis", vmin=0, vmax=1, interpolation="nearest", extent=extent, alpha=0.9)
    right.set_xlim(-0.5, image.shape[1] - 0.5)
    right.set_ylim(image.shape[0] - 0.5, -0.5)
    right.set_title(f"dense pass: {h}x{w} windows of {PATCH}x{PATCH}, stride {STRIDE}")
    fig.colorbar(cells, ax=right, label="P(plus in the window's middle)")
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
