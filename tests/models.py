"""Hand-made models for the tests: one flatten spelling each, heads of several shapes, and skip cases."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}

# Ways users turn (N, C, *S) into (N, C·prod(S)). Each takes the model (for its modules) and the map.
FLATTENS = {
    "torch.flatten": lambda m, x: torch.flatten(x, 1),
    "Tensor.flatten": lambda m, x: x.flatten(1),
    "nn.Flatten": lambda m, x: m.flatten(x),
    "view(size(0), -1)": lambda m, x: x.view(x.size(0), -1),
    "view(-1, K)": lambda m, x: x.view(-1, m.features),
    "reshape(shape[0], -1)": lambda m, x: x.reshape(x.shape[0], -1),
    "torch.reshape": lambda m, x: torch.reshape(x, (x.shape[0], -1)),
}
# Global pooling that ends 2-D, for a 2-D map (N, C, H, W) -> (N, C).
POOLS = {
    "x.mean([2, 3])": lambda m, x: x.mean([2, 3]),
    "torch.mean(dim=(-2, -1))": lambda m, x: torch.mean(x, dim=(-2, -1)),
    "x.amax((2, 3))": lambda m, x: x.amax((2, 3)),
    "x.sum(dim=[3, 2])": lambda m, x: x.sum(dim=[3, 2]),
    "adaptive_avg_pool2d + flatten": lambda m, x: torch.flatten(F.adaptive_avg_pool2d(x, 1), 1),
    "AdaptiveAvgPool2d + view": lambda m, x: m.pool(x).view(x.size(0), -1),
    "adaptive_max_pool2d + squeeze": lambda m, x: F.adaptive_max_pool2d(x, 1).squeeze(-1).squeeze(-1),
    "x.mean((2, 3)).flatten(1)": lambda m, x: x.mean((2, 3)).flatten(1),
    "x.mean(3).mean(2).view(N, -1)": lambda m, x: x.mean(3).mean(2).view(x.size(0), -1),
}
# Ops users put between the flatten and the Linear, or between the Linears of a head.
BETWEEN = {
    "none": lambda m, x: x,
    "dropout": lambda m, x: m.dropout(x),
    "relu_": lambda m, x: F.relu(x, inplace=True),
    "gelu * 2": lambda m, x: F.gelu(x) * 2.0,
    "hardswish, dropout": lambda m, x: F.dropout(m.hardswish(x), 0.2, m.training),
}


class Head(nn.Module):
    """A convolution, a flatten (or pool) spelled ``flatten``, then Linear layers with ``between`` ops."""

    def __init__(
        self,
        flatten: str = "torch.flatten",
        rank: int = 2,
        bias: bool = True,
        channels: int = 4,
        size: int = 5,
        hidden: tuple[int, ...] = (16,),
        out: int = 3,
        between: str = "none",
        functional: bool = False,
        batchnorm: bool = False,
    ):
        super().__init__()
        self.spelling, self.between, self.functional = flatten, between, functional
        self.conv = _CONVS[rank](2, channels, 3, padding=1)
        pooled = flatten in POOLS
        self.features = channels if pooled else channels * size**rank
        self.flatten = nn.Flatten()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.3)
        self.hardswish = nn.Hardswish()
        widths = (self.features, *hidden, out)
        self.linears = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(w) if batchnorm else nn.Identity() for w in hidden)
        self.input_shape = (2, *(size,) * rank)

    def forward(self, x):
        x = self.conv(x)
        x = {**FLATTENS, **POOLS}[self.spelling](self, x)
        for i, linear in enumerate(self.linears):
            x = BETWEEN[self.between](self, x)
            x = F.linear(x, linear.weight, linear.bias) if self.functional else linear(x)
            if i < len(self.norms):
                x = torch.relu(self.norms[i](x))
        return x

    def example(self, batch: int = 3, dtype=torch.float32) -> torch.Tensor:
        return torch.randn(batch, *self.input_shape, dtype=dtype)


class SharedLinear(nn.Module):
    """One Linear called from two places: on a flattened map, and on a plain vector input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(48, 5)

    def forward(self, x, v):
        return self.fc(torch.flatten(self.conv(x), 1)) + self.fc(v)


class TwoHeads(nn.Module):
    """Two Linears reading one flatten, which is also returned as an output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.a, self.b = nn.Linear(48, 5), nn.Linear(48, 2)

    def forward(self, x):
        f = F.relu(torch.flatten(self.conv(x), 1))
        return self.a(f), self.b(f), f.sum(1)


class TokenHead(nn.Module):
    """A transformer-style model: a Linear per token, then a head on the class token."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):  # x: (N, T, 8)
        return self.head(self.mlp(x)[:, 0])


class BatchFolding(nn.Module):
    """A Linear over each channel's pixels: the reshape folds channels into the batch dimension."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 2)

    def forward(self, x):  # x: (N, 3, 4, 4)
        return self.fc(x.view(-1, 16)).view(x.size(0), -1)


class NormAfterFlatten(nn.Module):
    """LayerNorm over all C·H·W features before the Linear (fine for 1x1, not for the kernel map)."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(2 * 3 * 3)
        self.fc = nn.Linear(18, 4)

    def forward(self, x):  # x: (N, 2, 3, 3)
        return self.fc(self.norm(x.flatten(1)))


class InplaceOnShared(nn.Module):
    """An in-place ReLU on a flatten whose feature map is also read elsewhere."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(18, 4)

    def forward(self, x):  # x: (N, 2, 3, 3)
        y = x.permute(0, 1, 3, 2)  # non-contiguous: the flatten copies, the ReLU must not touch y
        return self.fc(F.relu(y.flatten(1), inplace=True)), y.sum((1, 2, 3))


class MLP(nn.Module):
    """Linears on a plain vector: nothing to convert."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class SqueezeAll(nn.Module):
    """``squeeze()`` of a pooled map: (N, C) for N > 1, but (C,) for a batch of one."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.conv(x), 1).squeeze())


# Linears written as matrix algebra: (x, weight (out, in), bias (out,) or None) -> (N, out). The weight
# is a parameter, a buffer or a transposed parameter, as users write it.
MATRIX_SPELLINGS = {
    "x @ W.t() + b": lambda x, w, b: x @ w.t() + b if b is not None else x @ w.t(),
    "b + x @ W.T": lambda x, w, b: b + x @ w.T if b is not None else x @ w.T,
    "torch.matmul(x, W.transpose(0, 1))": lambda x, w, b: _plus(torch.matmul(x, w.transpose(0, 1)), b),
    "torch.mm(x, W.permute(1, 0))": lambda x, w, b: _plus(torch.mm(x, w.permute(1, 0)), b),
    "x.matmul(W.t())": lambda x, w, b: _plus(x.matmul(w.t()), b),
    "torch.addmm(b, x, W.t())": lambda x, w, b: torch.addmm(b, x, w.t()) if b is not None else x.mm(w.t()),
    "torch.addmm(b, x, W.t(), beta=0.5, alpha=2)": lambda x, w, b: (
        torch.addmm(b, x, w.t(), beta=0.5, alpha=2.0) if b is not None else 2.0 * x.mm(w.t())
    ),
}


def _plus(y, b):
    return y if b is None else y + b


class MatrixHead(nn.Module):
    """conv -> flatten -> two Linears written as matrix algebra: ``spelling`` with the first weight a
    parameter (out, in), the second a buffer stored (in, out) and read as ``x @ W``."""

    def __init__(self, spelling: str, bias: bool = True):
        super().__init__()
        self.spelling = spelling
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.w1 = nn.Parameter(torch.randn(8, 48) / 7)
        self.b1 = nn.Parameter(torch.randn(8)) if bias else None
        self.register_buffer("w2_in_out", torch.randn(8, 4) / 3)  # stored (in, out): x @ W, no transpose
        self.b2 = nn.Parameter(torch.randn(1, 4)) if bias else None  # a (1, out) bias, broadcast

    def forward(self, x):
        x = torch.flatten(self.conv(x), 1)
        x = F.relu(MATRIX_SPELLINGS[self.spelling](x, self.w1, self.b1))
        return _plus(x @ self.w2_in_out, self.b2)


class HookedHead(nn.Module):
    """conv -> flatten -> ``fc``, where ``fc`` is whatever Linear the test gives (hooked, QAT, normed...)."""

    def __init__(self, fc: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = fc

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


class Attention(nn.Module):
    """q @ k^T of two activations and a Linear applied per token: no weight in the first, not-2d the second."""

    def __init__(self):
        super().__init__()
        self.qk = nn.Linear(4, 8)

    def forward(self, x):  # (N, T, 4)
        q, k = self.qk(x).chunk(2, -1)
        return (q @ k.transpose(-2, -1)).softmax(-1)


class LeftWeight(nn.Module):
    """A constant multiplying from the left: mixes rows, not features."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 3))

    def forward(self, x):  # (3, K)
        return self.w @ x


class InstanceForward(nn.Module):
    """``forward`` set on the instance (pretrainedmodels does this): symbolic_trace would trace the class's."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3, 4)
        self.forward = self.logits

    def forward(self, x):  # the class's forward, which the instance does not use
        return self.fc(self.conv(x).amax((2, 3)))

    def logits(self, x):
        return self.fc(self.conv(x).mean((2, 3))) * 2


class LowRankHead(nn.Module):
    """The weight is made in forward from two factors (constants alone: no Linear), then read by a
    keyword-argument matmul (a Linear)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.u, self.v = nn.Parameter(torch.randn(5, 2)), nn.Parameter(torch.randn(2, 48))

    def forward(self, x):
        return torch.matmul(input=torch.flatten(self.conv(x), 1), other=(self.u @ self.v).t())


class BatchedWeight(nn.Module):
    """``bmm`` with a constant stack of matrices: a weight, but not one (in, out) matrix."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, 4, 5))

    def forward(self, x):  # (2, T, 4)
        return torch.bmm(x, self.w)
