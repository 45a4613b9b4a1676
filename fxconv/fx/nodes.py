"""Small readers of torch.fx nodes, the same at the torch and the ATen level."""

from __future__ import annotations

import torch
from torch.fx import Node


def key(node: Node) -> object:
    """What a node calls: a function, a Tensor method's name, or an ATen overload packet."""
    if node.op == "call_method":
        return node.target
    if node.op == "call_function":
        target = node.target
        return target.overloadpacket if isinstance(target, torch._ops.OpOverload) else target
    return None


def op_name(node: Node) -> str:
    """The bare name of what a node calls: ``relu_`` for ``F.relu_``, ``"relu_"`` and ``aten.relu_.default``."""
    target = key(node)
    if isinstance(target, str):
        return target
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target.__name__.split(".")[-1]
    return getattr(target, "__name__", "")


def arg(node: Node, index: int, name: str, default=None):
    """Argument ``index`` (positional) or ``name`` (keyword) of a call."""
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[index] if len(node.args) > index else default


def first_input(node: Node) -> object:
    """The first argument of a call: the tensor a reshape, reduction or element-wise op reads."""
    return node.kwargs.get("input", node.args[0] if node.args else None)


def shape_of(node: object) -> tuple[int, ...] | None:
    """The recorded shape of a node's tensor, if any."""
    meta = node.meta.get("tensor_meta") if isinstance(node, Node) else None
    return tuple(meta.shape) if hasattr(meta, "shape") else None


def module_path(node: Node) -> str:
    """The qualified name of the module a node ran in, as torch.export records it ("" if unknown)."""
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0] if stack else ""
