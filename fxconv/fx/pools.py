"""What pools in a torch.fx graph, at both levels: adaptive pools, fixed pools, global reductions, spatial norms.

Dense mode (``fxconv.fx.dense``) freezes the pool in front of each head and refuses global pools inside
the backbone; these readers tell them apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import Node

from .nodes import arg, key

aten = torch.ops.aten
_ADAPTIVE = {
    F.adaptive_avg_pool1d: "avg", F.adaptive_avg_pool2d: "avg", F.adaptive_avg_pool3d: "avg",
    F.adaptive_max_pool1d: "max", F.adaptive_max_pool2d: "max", F.adaptive_max_pool3d: "max",
    aten.adaptive_avg_pool1d: "avg", aten.adaptive_avg_pool2d: "avg", aten._adaptive_avg_pool2d: "avg",
    aten.adaptive_avg_pool3d: "avg", aten._adaptive_avg_pool3d: "avg",
}  # fmt: skip
_FIXED = {
    F.avg_pool1d: "avg", F.avg_pool2d: "avg", F.avg_pool3d: "avg", F.max_pool1d: "max", F.max_pool2d: "max",
    F.max_pool3d: "max", aten.avg_pool1d: "avg", aten.avg_pool2d: "avg", aten.avg_pool3d: "avg",
    aten.max_pool1d: "max", aten.max_pool2d: "max", aten.max_pool3d: "max",
}  # fmt: skip
_ADAPTIVE_MODULES = {
    nn.AdaptiveAvgPool1d: "avg", nn.AdaptiveAvgPool2d: "avg", nn.AdaptiveAvgPool3d: "avg",
    nn.AdaptiveMaxPool1d: "max", nn.AdaptiveMaxPool2d: "max", nn.AdaptiveMaxPool3d: "max",
}  # fmt: skip
_FIXED_MODULES = {
    nn.AvgPool1d: "avg", nn.AvgPool2d: "avg", nn.AvgPool3d: "avg", nn.MaxPool1d: "max", nn.MaxPool2d: "max",
    nn.MaxPool3d: "max",
}  # fmt: skip
_SPATIAL_NORMS = {F.group_norm, F.instance_norm, aten.group_norm, aten.instance_norm}
_CONVS = {F.conv1d, F.conv2d, F.conv3d, aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution}


def pooling(view, node: Node) -> str | None:
    """For an adaptive pool or a reduction over dims: "avg", "sum", "max" or "min"; else None."""
    if node.op == "call_module":
        module = view.modules[node.target]
        return None if getattr(module, "return_indices", False) else _ADAPTIVE_MODULES.get(type(module))
    kind = _ADAPTIVE.get(key(node)) if _hashable(key(node)) else None
    if kind is not None:
        return None if node.kwargs.get("return_indices") else kind
    record = view.read(node)
    return _reduction(record)


def fixed_pool(view, node: Node) -> tuple[str, object, object] | None:
    """For a pool of fixed kernel: ``(kind, padding, extras)``, extras what a plain pool lacks; else None."""
    if node.op == "call_module":
        module = view.modules[node.target]
        kind = _FIXED_MODULES.get(type(module))
        if kind is None:
            return None
        extras = getattr(module, "divisor_override", None) or getattr(module, "return_indices", False)
        extras = extras or getattr(module, "dilation", 1) not in (1, (1,), (1, 1), (1, 1, 1))
        return kind, module.padding, extras
    kind = _FIXED.get(key(node)) if _hashable(key(node)) else None
    if kind is None:
        return None
    dilation = arg(node, 4, "dilation", 1) if kind == "max" else 1
    extras = (kind == "avg" and arg(node, 6, "divisor_override")) or node.kwargs.get("return_indices")
    dilates = dilation != 1 if isinstance(dilation, int) else set(dilation) != {1}
    extras = extras or dilates
    return kind, arg(node, 3, "padding", 0), extras


def pool_arg(view, pool: Node, name: str, index: int):
    return getattr(view.modules[pool.target], name) if pool.op == "call_module" else arg(pool, index, name)


def pools_over_space(view, node: Node) -> bool:
    """Whether ``node`` mixes positions of a feature map globally: an adaptive pool, a reduction over a
    spatial dim, or a GroupNorm/InstanceNorm (statistics over the whole map)."""
    if node.op == "call_module":
        module = view.modules[node.target]
        if isinstance(module, nn.modules.instancenorm._InstanceNorm):
            return not module.track_running_stats or module.training
        return isinstance(module, (nn.GroupNorm, *_ADAPTIVE_MODULES))
    target = key(node)
    if _hashable(target) and (target in _ADAPTIVE or target in _SPATIAL_NORMS):
        return True
    if node.op not in ("call_function", "call_method"):
        return False
    record = view.read(node)
    if _reduction(record) is None:
        return False
    size = record.data.shape
    if size is None or len(size) < 3:
        return False
    return any(d % len(size) >= 2 and size[d % len(size)] > 1 for d in record.params["dims"])


def is_conv(view, node: Node) -> bool:
    if node.op == "call_module":
        return isinstance(view.modules[node.target], nn.modules.conv._ConvNd)
    return _hashable(key(node)) and key(node) in _CONVS


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _reduction(record) -> str | None:
    """For a reduction over dims (``x.mean((2, 3))``, ``amax``, ...): "avg", "sum", "max" or "min"; else None."""
    if record is None or record.rule.name != "over-dims" or record.params["kind"] not in ("mean", "sum", "max", "min"):
        return None
    return {"mean": "avg"}.get(record.params["kind"], record.params["kind"])
