"""The layouts other converters give a Linear at every position, rebuilt here for the benchmark's comparison.

Each replaces every ``nn.Linear`` module of a (copied) model by a wrapper that runs it as a 1x1
convolution, paying its layout change around each Linear:

* ``wrap_each_linear`` — ExecuTorch's Qualcomm pass (``convert_linear_to_conv2d.py``): (N, *P, C) is
  viewed as (N, L, C), permuted to (N, C, 1, L), convolved and permuted back; (N, C) goes as (1, C, 1, N).
* ``fold_into_batch`` — ExecuTorch's Arm pass (``decompose_linear_pass.py``): every leading dim folded
  into the batch, (-1, C, 1, 1), convolved, reshaped back.

fxconv's ``scope="all"`` differs from both in that the layout carries from one op to the next, so a
block pays one change in and one out, not one per Linear.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class _LinearAsConv(nn.Module):
    """A Linear run as a 1x1 convolution, ``per_position`` as (N, C, 1, L) or else folded into the batch."""

    def __init__(self, linear: nn.Linear, per_position: bool):
        super().__init__()
        self.linear, self.per_position = linear, per_position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.linear.weight[:, :, None, None], self.linear.bias
        if not self.per_position:
            return F.conv2d(x.reshape(-1, x.shape[-1], 1, 1), weight, bias).reshape(*x.shape[:-1], -1)
        tokens = x.reshape(x.shape[0], -1, x.shape[-1]) if x.dim() > 2 else x.unsqueeze(0)
        y = F.conv2d(tokens.transpose(1, 2).unsqueeze(2), weight, bias)
        return y.squeeze(2).transpose(1, 2).reshape(*x.shape[:-1], -1)


def _replace_linears(model: nn.Module, per_position: bool) -> nn.Module:
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, _LinearAsConv(module, per_position))
    return model


def wrap_each_linear(model: nn.Module) -> nn.Module:
    """Every Linear as (N, C, 1, L) 1x1 convolution, permuted in and out around each one."""
    return _replace_linears(model, per_position=True)


def fold_into_batch(model: nn.Module) -> nn.Module:
    """Every Linear as a 1x1 convolution on (-1, C, 1, 1): the positions folded into the batch."""
    return _replace_linears(model, per_position=False)
