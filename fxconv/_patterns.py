"""The spellings fxconv recognises, as data — one table per graph level — and the predicates that read them.

A graph reaches the rewrite at one of two levels: **torch level** (``torch.fx.symbolic_trace``: modules,
``torch.*`` functions, ``Tensor`` methods) or **ATen level** (``torch.export``: ``torch.ops.aten.*``
calls, parameters as ``get_attr``). The rewrite never asks which: it asks for *roles*, and each level
maps its spellings to roles in the two tables below (``TORCH_LEVEL``, ``ATEN_LEVEL``). Adding a spelling
is one table entry and one test.

The roles:

* **linear** — a Linear call: ``F.linear``-like ``(input, weight (out, in), bias)``; ``matmul``-like
  ``(input, weight (in, out))`` whose weight operand is a constant (a parameter, buffer or anything
  computed from them alone), with an optional bias ``+ b`` after it; ``addmm``-like ``(bias, input,
  weight (in, out))``. ``nn.Linear`` modules (and subclasses) are Linear calls too.
* **transpose** — what turns a weight (out, in) into (in, out): ``.t()``, ``.T``, ``transpose(0, 1)``,
  ``permute(1, 0)``, ``aten.t``, ``aten.numpy_T`` ...
* **reshape** — a reshape that may flatten a feature map (``flatten``, ``view``, ``reshape``, ``squeeze``);
  whether it really is a batch-preserving flatten is decided from the recorded shapes, never from its
  arguments.
* **reduction** — ``mean/sum/amax/amin`` over dims: a global reduction that ends 2-D is a flatten of the
  same reduction with ``keepdim=True``.
* **adaptive pool**, **fixed pool** — pool a map to a fixed size, or with a fixed kernel (dense mode
  freezes the pool in front of a head); **spatial norm** — GroupNorm/InstanceNorm, statistics over the
  whole map (dense mode refuses them inside the backbone).
* **element-wise**, **layer norm** — ops that commute with flattening (``relu(flatten(x)) ==
  flatten(relu(x))``); per-feature ops (BatchNorm1d, PReLU with one weight per feature) and LayerNorm over
  the features commute only when every feature sits on the channel axis (all spatial dims 1).
* **conv** — a convolution: where dense mode's search for a head's pooling stops.
* **add** — the bias add after a matmul.
"""

from __future__ import annotations

import builtins
import operator
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import Node

aten = torch.ops.aten


class Kind(Enum):
    """How an op between a flatten and a Linear may be moved in front of the flatten."""

    ELEMENTWISE = "element-wise"
    PER_FEATURE = "per-feature"  # needs every feature on the channel axis
    ACROSS_FEATURES = "across features"  # normalises over the last dim: run with channels last


# Each table maps a role to the spellings of one level. A spelling is a function (torch level), a
# Tensor method's name (torch level, ``call_method``) or an ATen overload packet (``aten.mean`` covers
# ``aten.mean.dim`` and ``aten.mean.default``). Where a role carries a value, it says how the op works.
TORCH_LEVEL: dict[str, dict] = {
    # value: how the operands are laid out, see ``linear_call``
    "linear": {
        F.linear: "linear", torch._C._nn.linear: "linear",
        operator.matmul: "matmul", torch.matmul: "matmul", torch.mm: "matmul", torch.bmm: "matmul",
        "matmul": "matmul", "mm": "matmul", "bmm": "matmul", "__matmul__": "matmul",
        torch.addmm: "addmm", "addmm": "addmm",
    },
    "transpose": {"t": None, torch.t: None, "transpose": None, torch.transpose: None, "permute": None,
                  torch.permute: None, "swapaxes": None, "swapdims": None, builtins.getattr: None},
    "reshape": {torch.flatten: None, torch.reshape: None, torch.squeeze: None, "flatten": None,
                "view": None, "reshape": None, "squeeze": None},
    # value: how the reduction pools
    "reduction": {torch.mean: "avg", torch.sum: "sum", torch.amax: "max", torch.amin: "min",
                  "mean": "avg", "sum": "sum", "amax": "max", "amin": "min"},
    "adaptive_pool": {F.adaptive_avg_pool1d: "avg", F.adaptive_avg_pool2d: "avg", F.adaptive_avg_pool3d: "avg",
                      F.adaptive_max_pool1d: "max", F.adaptive_max_pool2d: "max", F.adaptive_max_pool3d: "max"},
    "elementwise": dict.fromkeys([
        F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu,
        F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.sigmoid, torch.sigmoid,
        F.tanh, torch.tanh, F.softplus, F.softsign, F.dropout, F.alpha_dropout, torch.clamp,
        torch.abs, torch.neg, operator.mul, operator.truediv, operator.add, operator.sub, operator.neg,
        "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min",
        "clamp_max", "abs", "neg", "mul", "div", "add", "sub", "contiguous", "clone", "detach",
    ]),
    "fixed_pool": {F.avg_pool1d: "avg", F.avg_pool2d: "avg", F.avg_pool3d: "avg",
                   F.max_pool1d: "max", F.max_pool2d: "max", F.max_pool3d: "max"},
    "spatial_norm": dict.fromkeys([F.group_norm, F.instance_norm]),
    "layer_norm": {F.layer_norm: None},
    "conv": dict.fromkeys([F.conv1d, F.conv2d, F.conv3d]),
    "add": dict.fromkeys([operator.add, torch.add, "add"]),
}  # fmt: skip

ATEN_LEVEL: dict[str, dict] = {
    "linear": {aten.linear: "linear", aten.matmul: "matmul", aten.mm: "matmul", aten.bmm: "matmul",
               aten.addmm: "addmm"},
    "transpose": dict.fromkeys([aten.t, aten.numpy_T, aten.transpose, aten.permute, aten.swapaxes,
                                aten.swapdims, aten.mT]),
    "reshape": dict.fromkeys([aten.flatten, aten.view, aten.reshape, aten._unsafe_view, aten.squeeze]),
    "reduction": {aten.mean: "avg", aten.sum: "sum", aten.amax: "max", aten.amin: "min"},
    "adaptive_pool": {aten.adaptive_avg_pool1d: "avg", aten.adaptive_avg_pool2d: "avg",
                      aten._adaptive_avg_pool2d: "avg", aten.adaptive_avg_pool3d: "avg",
                      aten._adaptive_avg_pool3d: "avg"},
    "elementwise": dict.fromkeys([
        aten.relu, aten.relu_, aten.relu6, aten.leaky_relu, aten.leaky_relu_, aten.elu, aten.elu_,
        aten.selu, aten.celu, aten.gelu, aten.silu, aten.silu_, aten.mish, aten.hardswish,
        aten.hardswish_, aten.hardsigmoid, aten.hardsigmoid_, aten.hardtanh, aten.hardtanh_,
        aten.sigmoid, aten.sigmoid_, aten.tanh, aten.tanh_, aten.softplus, aten.dropout, aten.dropout_,
        aten.alpha_dropout, aten.alpha_dropout_, aten.feature_dropout, aten.feature_dropout_, aten.clamp, aten.clamp_min, aten.clamp_max, aten.abs, aten.neg, aten.mul,
        aten.div, aten.add, aten.sub, aten.clone, aten.contiguous, aten.detach, aten.alias,
    ]),
    "fixed_pool": {aten.avg_pool1d: "avg", aten.avg_pool2d: "avg", aten.avg_pool3d: "avg",
                   aten.max_pool1d: "max", aten.max_pool2d: "max", aten.max_pool3d: "max"},
    "spatial_norm": dict.fromkeys([aten.group_norm, aten.instance_norm]),
    "layer_norm": {aten.layer_norm: None},
    "conv": dict.fromkeys([aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution]),
    "add": dict.fromkeys([aten.add]),
}  # fmt: skip

_ROLES = {role: {**TORCH_LEVEL[role], **ATEN_LEVEL[role]} for role in TORCH_LEVEL}

# Modules, by role. ``nn.Linear`` (and subclasses) are the linear role's modules.
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign,
    nn.Dropout, nn.AlphaDropout, nn.Identity,
)  # fmt: skip
_FIXED_POOL_MODULES = {
    nn.AvgPool1d: "avg", nn.AvgPool2d: "avg", nn.AvgPool3d: "avg",
    nn.MaxPool1d: "max", nn.MaxPool2d: "max", nn.MaxPool3d: "max",
}  # fmt: skip
_ADAPTIVE_POOL_MODULES = {
    nn.AdaptiveAvgPool1d: "avg", nn.AdaptiveAvgPool2d: "avg", nn.AdaptiveAvgPool3d: "avg",
    nn.AdaptiveMaxPool1d: "max", nn.AdaptiveMaxPool2d: "max", nn.AdaptiveMaxPool3d: "max",
}  # fmt: skip


def _key(node: Node) -> object:
    """What the tables are keyed by: a function, a method name, or an ATen overload packet."""
    if node.op == "call_method":
        return node.target
    if node.op == "call_function":
        target = node.target
        return target.overloadpacket if isinstance(target, torch._ops.OpOverload) else target
    return None


def role(node: Node, name: str) -> object:
    """The value ``node`` has in role ``name`` (``None`` for a role without values); ``False`` if none."""
    try:
        return _ROLES[name].get(_key(node), False)
    except TypeError:  # an unhashable target
        return False


def has_role(node: Node, name: str) -> bool:
    """Whether ``node`` plays role ``name``."""
    return role(node, name) is not False


def op_name(node: Node) -> str:
    """The bare name of what a node calls: ``relu_`` for ``F.relu_``, ``"relu_"`` and ``aten.relu_.default``."""
    key = _key(node)
    if isinstance(key, str):
        return key
    if isinstance(key, torch._ops.OpOverloadPacket):
        return key.__name__.split(".")[-1]
    return getattr(key, "__name__", "")


def module_path(node: Node) -> str:
    """The qualified name of the module a node ran in, as torch.export records it ("" if unknown)."""
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0] if stack else ""


def arg(node: Node, index: int, name: str, default=None):
    """Argument ``index`` (positional) or ``name`` (keyword) of a call."""
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[index] if len(node.args) > index else default


def pooling(node: Node, modules: dict[str, nn.Module]) -> str | None:
    """For an adaptive pool or a spatial reduction: "avg", "sum", "max" or "min"; else None."""
    if node.op == "call_module":
        module = modules[node.target]
        if getattr(module, "return_indices", False):
            return None
        return _ADAPTIVE_POOL_MODULES.get(type(module))
    if has_role(node, "adaptive_pool"):
        return None if node.kwargs.get("return_indices") else role(node, "adaptive_pool")
    if reduction_args(node) is not None:
        return role(node, "reduction")
    return None


def fixed_pool(node: Node, modules: dict[str, nn.Module]) -> tuple[str, object, object] | None:
    """For a pool of fixed kernel: ``(kind, padding, extras)``, extras what a plain pool lacks; else None.

    ``extras`` names a dilation, divisor override or returned indices, which fxconv does not re-create.
    """
    if node.op == "call_module":
        module = modules[node.target]
        kind = _FIXED_POOL_MODULES.get(type(module))
        if kind is None:
            return None
        extras = getattr(module, "divisor_override", None) or getattr(module, "return_indices", False)
        extras = extras or getattr(module, "dilation", 1) not in (1, (1,), (1, 1), (1, 1, 1))
        return kind, module.padding, extras
    kind = role(node, "fixed_pool")
    if kind is False:
        return None
    dilation = arg(node, 4, "dilation", 1) if kind == "max" else 1
    extras = (kind == "avg" and arg(node, 6, "divisor_override")) or node.kwargs.get("return_indices")
    extras = extras or (isinstance(dilation, int) and dilation != 1) or (not isinstance(dilation, int) and set(dilation) != {1})
    return kind, arg(node, 3, "padding", 0), extras


def pools_over_space(node: Node, modules: dict[str, nn.Module], shape) -> bool:
    """Whether ``node`` mixes positions of a feature map globally: an adaptive pool, a reduction over a
    spatial dim, or a GroupNorm/InstanceNorm (statistics over the whole map). ``shape`` reads recorded shapes."""
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, nn.modules.instancenorm._InstanceNorm):
            return not module.track_running_stats or module.training
        return isinstance(module, (nn.GroupNorm, *_ADAPTIVE_POOL_MODULES))
    if has_role(node, "adaptive_pool") or has_role(node, "spatial_norm"):
        return True
    reduction = reduction_args(node)
    size = shape(first_input(node)) if reduction is not None else None
    if size is None or len(size) < 3:
        return False
    dims = reduction[0]
    dims = range(len(size)) if dims is None else dims if isinstance(dims, (tuple, list)) else [dims]
    return any(d % len(size) >= 2 and size[d % len(size)] > 1 for d in dims if isinstance(d, int))


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


# Functions that libraries mark with torch.fx.wrap (symbolic_trace calls them whole) and that are the
# identity outside training: (module, name) -> the position of their ``training`` argument.
_IDENTITY_IN_EVAL = {("torchvision.ops.stochastic_depth", "stochastic_depth"): 3}


def op_kind(node: Node, modules: dict[str, nn.Module]) -> Kind | None:
    """The kind of ``node`` as an op between a flatten and a Linear (None: not movable)."""
    if node.op == "call_module":
        return module_kind(modules[node.target])
    if has_role(node, "elementwise"):
        return Kind.ELEMENTWISE
    training = _IDENTITY_IN_EVAL.get((getattr(node.target, "__module__", None), getattr(node.target, "__name__", None)))
    if node.op == "call_function" and training is not None and arg(node, training, "training", True) is False:
        return Kind.ELEMENTWISE
    if has_role(node, "layer_norm"):
        shape = arg(node, 1, "normalized_shape")
        return Kind.ACROSS_FEATURES if isinstance(shape, (tuple, list)) and len(shape) == 1 else None
    return None


def is_linear_module(node: Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` calls an ``nn.Linear`` (or a subclass)."""
    return node.op == "call_module" and isinstance(modules[node.target], nn.Linear)


def is_reshape(node: Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` is a reshape that could be a flatten (its shapes decide)."""
    if node.op == "call_module":
        return isinstance(modules[node.target], nn.Flatten)
    return has_role(node, "reshape")


def squeezes_every_dim(node: Node) -> bool:
    """A ``squeeze()`` with no dim: it also drops the batch dim when the batch is 1."""
    return op_name(node) == "squeeze" and arg(node, 1, "dim") is None


def permutation(node: Node, rank: int) -> tuple[int, ...] | None:
    """The dims order a transpose-like node gives a tensor of ``rank`` dims (``x.permute(0, 2, 1)`` → (0, 2, 1)).

    ``.t()``, ``.T``, ``transpose(a, b)``, ``swapaxes``, ``permute(...)``, ``.mT`` and their ATen forms; None
    for anything else.
    """
    if not has_role(node, "transpose"):
        return None
    name, order = op_name(node), list(range(rank))
    if name == "getattr":  # ``w.T`` / ``w.mT`` as symbolic_trace records it
        name = {"T": "numpy_T", "mT": "mT"}.get(arg(node, 1, "name"))
    if name in ("t", "numpy_T"):
        return tuple(reversed(order))
    if name == "mT" and rank >= 2:
        order[-2:] = order[-1], order[-2]
        return tuple(order)
    if name == "permute":
        dims = arg(node, 1, "dims")
        dims = node.args[1:] if isinstance(dims, int) else dims  # x.permute(1, 0)
        if isinstance(dims, (tuple, list)) and len(dims) == rank and all(isinstance(d, int) for d in dims):
            return tuple(d % rank for d in dims)
        return None
    a, b = arg(node, 1, "dim0"), arg(node, 2, "dim1")
    if name in ("transpose", "swapaxes", "swapdims") and isinstance(a, int) and isinstance(b, int) and rank:
        order[a % rank], order[b % rank] = order[b % rank], order[a % rank]
        return tuple(order)
    return None


def swaps_2d(node: Node) -> bool:
    """Whether ``node`` transposes a matrix: ``w.t()``, ``w.T``, ``w.transpose(0, 1)``, ``w.permute(1, 0)``."""
    return permutation(node, 2) == (1, 0)


def layer_norm_parts(node: Node, modules: dict[str, nn.Module]) -> tuple[object, object, float]:
    """``(weight, bias, eps)`` of a LayerNorm call: nodes, parameter names (of a module) or None."""
    if node.op == "call_module":
        module = modules[node.target]
        weight = f"{node.target}.weight" if module.weight is not None else None
        bias = f"{node.target}.bias" if getattr(module, "bias", None) is not None else None
        return weight, bias, module.eps
    return arg(node, 2, "weight"), arg(node, 3, "bias"), arg(node, 4, "eps", 1e-5)


def is_conv(node: Node, modules: dict[str, nn.Module]) -> bool:
    """A convolution (module or call)."""
    if node.op == "call_module":
        return isinstance(modules[node.target], nn.modules.conv._ConvNd)
    return has_role(node, "conv")


def reduction_args(node: Node) -> tuple[object, bool] | None:
    """For a mean/sum/amax/amin call, ``(dim, keepdim)`` as written; else None."""
    if not has_role(node, "reduction"):
        return None
    return arg(node, 1, "dim"), bool(arg(node, 2, "keepdim", False))


def first_input(node: Node) -> object:
    """The first argument of a call: the tensor a reshape, reduction or element-wise op reads."""
    return node.kwargs.get("input", node.args[0] if node.args else None)


def data_input(node: Node, allowed=lambda other: False) -> Node | None:
    """The one node a single-input op reads (its first argument); None if it reads others not ``allowed``."""
    first = first_input(node)
    others = [a for a in node.all_input_nodes if a is not first and not allowed(a)]
    return first if isinstance(first, Node) and not others else None


def is_inplace(node: Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` writes into its input."""
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    name = op_name(node)
    return bool(node.kwargs.get("inplace", False)) or (name.endswith("_") and not name.startswith("__"))
