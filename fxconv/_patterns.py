"""The spellings fxconv recognises, as data, and the predicates that read a graph node against them.

Four roles matter for the rewrite:

* a **Linear call**: ``nn.Linear`` modules (and subclasses), ``F.linear``;
* a **reshape** that may flatten a feature map (``torch.flatten``, ``x.flatten``, ``nn.Flatten``,
  ``view``, ``reshape``, ``squeeze``); whether it really is a batch-preserving flatten is decided
  from the shapes recorded by shape propagation, never from its arguments;
* a **global reduction** that ends 2-D (``x.mean([2, 3])``, ``torch.amax(x, (-2, -1))``, ...), which is a
  flatten of the same reduction with ``keepdim=True``;
* an op that **commutes with flattening**: element-wise ops (``relu(flatten(x)) == flatten(relu(x))``);
  per-feature ops (BatchNorm1d, PReLU with one weight per feature) and LayerNorm over the features, which
  commute only when every feature sits on the channel axis, i.e. when the spatial dims are all 1
  (LayerNorm then runs on the map with its channels moved last).
"""

from __future__ import annotations

import operator
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import Node


class Kind(Enum):
    """How an op between a flatten and a Linear may be moved in front of the flatten."""

    ELEMENTWISE = "element-wise"
    PER_FEATURE = "per-feature"  # needs every feature on the channel axis
    ACROSS_FEATURES = "across features"  # normalises over the last dim: run with channels last


_LINEAR_FUNCTIONS = {F.linear, torch._C._nn.linear}

_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze"}

_REDUCTION_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCTION_METHODS = {"mean", "sum", "amax", "amin"}

_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign,
    nn.Dropout, nn.AlphaDropout, nn.Identity,
)  # fmt: skip
_ELEMENTWISE_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu,
    F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.sigmoid, torch.sigmoid,
    F.tanh, torch.tanh, F.softplus, F.softsign, F.dropout, F.alpha_dropout, torch.clamp,
    torch.abs, torch.neg, operator.mul, operator.truediv, operator.add, operator.sub, operator.neg,
}  # fmt: skip
_ELEMENTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min",
    "clamp_max", "abs", "neg", "mul", "div", "add", "sub", "contiguous", "clone", "detach",
}  # fmt: skip


# Adaptive pooling, by how it pools; dense mode freezes it at the example's geometry.
_ADAPTIVE_POOL_MODULES = {
    nn.AdaptiveAvgPool1d: "avg", nn.AdaptiveAvgPool2d: "avg", nn.AdaptiveAvgPool3d: "avg",
    nn.AdaptiveMaxPool1d: "max", nn.AdaptiveMaxPool2d: "max", nn.AdaptiveMaxPool3d: "max",
}  # fmt: skip
_ADAPTIVE_POOL_FUNCTIONS = {
    F.adaptive_avg_pool1d: "avg", F.adaptive_avg_pool2d: "avg", F.adaptive_avg_pool3d: "avg",
    F.adaptive_max_pool1d: "max", F.adaptive_max_pool2d: "max", F.adaptive_max_pool3d: "max",
}  # fmt: skip
_REDUCTION_POOLS = {"mean": "avg", "sum": "sum", "amax": "max", "amin": "min"}


def pooling(node: Node, modules: dict[str, nn.Module]) -> str | None:
    """For an adaptive pool or a spatial reduction: "avg", "sum", "max" or "min"; else None."""
    if node.op == "call_module":
        module = modules[node.target]
        if getattr(module, "return_indices", False):
            return None
        return _ADAPTIVE_POOL_MODULES.get(type(module))
    if node.op == "call_function" and node.target in _ADAPTIVE_POOL_FUNCTIONS:
        return None if node.kwargs.get("return_indices") else _ADAPTIVE_POOL_FUNCTIONS[node.target]
    if reduction_args(node) is not None:
        name = node.target if isinstance(node.target, str) else node.target.__name__
        return _REDUCTION_POOLS[name]
    return None


def module_kind(module: nn.Module) -> Kind | None:
    """The kind of a module called between a flatten and a Linear, or None if it is not movable."""
    if isinstance(module, _ELEMENTWISE_MODULES):
        return Kind.ELEMENTWISE
    if isinstance(module, nn.PReLU):
        return Kind.ELEMENTWISE if module.num_parameters == 1 else Kind.PER_FEATURE
    if isinstance(module, nn.BatchNorm1d):
        return Kind.PER_FEATURE
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return Kind.ACROSS_FEATURES
    return None


def op_kind(node: Node, modules: dict[str, nn.Module]) -> Kind | None:
    """The kind of ``node`` as an op between a flatten and a Linear (None: not movable)."""
    if node.op == "call_module":
        return module_kind(modules[node.target])
    if node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS:
        return Kind.ELEMENTWISE
    if node.op == "call_method" and node.target in _ELEMENTWISE_METHODS:
        return Kind.ELEMENTWISE
    if node.op == "call_function" and node.target is F.layer_norm:
        shape = node.kwargs.get("normalized_shape", node.args[1] if len(node.args) > 1 else None)
        return Kind.ACROSS_FEATURES if isinstance(shape, (tuple, list)) and len(shape) == 1 else None
    return None


def linear_operands(node: Node, modules: dict[str, nn.Module]) -> tuple | None:
    """For a Linear call, ``(input, weight, bias)`` as nodes or qualified names; else None."""
    if node.op == "call_module" and isinstance(modules[node.target], nn.Linear):
        linear = modules[node.target]
        bias = f"{node.target}.bias" if linear.bias is not None else None
        return node.args[0], f"{node.target}.weight", bias
    if node.op == "call_function" and node.target in _LINEAR_FUNCTIONS:
        args = list(node.args) + [None] * (3 - len(node.args))
        input_ = node.kwargs.get("input", args[0])
        return input_, node.kwargs.get("weight", args[1]), node.kwargs.get("bias", args[2])
    return None


def is_reshape(node: Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` is a reshape that could be a flatten (its shapes decide)."""
    if node.op == "call_module":
        return isinstance(modules[node.target], nn.Flatten)
    if node.op == "call_function":
        return node.target in _RESHAPE_FUNCTIONS
    return node.op == "call_method" and node.target in _RESHAPE_METHODS


def reduction_args(node: Node) -> tuple[object, bool] | None:
    """For a mean/sum/amax/amin call, ``(dim, keepdim)`` as written; else None."""
    is_function = node.op == "call_function" and node.target in _REDUCTION_FUNCTIONS
    is_method = node.op == "call_method" and node.target in _REDUCTION_METHODS
    if not (is_function or is_method):
        return None
    args = list(node.args[1:]) + [None, False]
    return node.kwargs.get("dim", args[0]), bool(node.kwargs.get("keepdim", args[1]))


def first_input(node: Node) -> object:
    """The first argument of a call: the tensor a reshape, reduction or element-wise op reads."""
    return node.kwargs.get("input", node.args[0] if node.args else None)


def data_input(node: Node) -> Node | None:
    """The one node a single-input op reads (its first argument), or None if it reads others too."""
    first = first_input(node)
    others = [a for a in node.all_input_nodes if a is not first]
    return first if isinstance(first, Node) and not others else None


def is_inplace(node: Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` writes into its input."""
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return bool(node.kwargs.get("inplace", False)) or (name.endswith("_") and not name.startswith("__"))
