"""State in a torch.fx graph: the buffers (and parameters) a forward writes in place.

A decode step writes its KV cache (``cache.index_copy_(1, pos, k)``, ``cache[:, pos] = k``), a streaming
model its recurrent state (``state.copy_(new)``), a norm its running statistics (``mean.mul_(0.9)``)::

    get_attr cache ─ index_copy_(1, pos, k)        (its result unused: the write is the point)
    get_attr cache ─ transpose(1, 2) ─ matmul       (reads what the write left: never a constant)

Such a write is a side effect: no node reads its result, so ``Graph.eliminate_dead_code`` — which calls a
Tensor method pure — would drop it, and a value computed from the buffer alone looks like a weight.
``writes(node)`` finds what a node writes in place, at both graph levels: ATen overloads by their
schema (an argument marked ``Tensor(a!)``), torch-level calls by their spelling (``x.add_``,
``torch.relu_``, ``x[i] = v``, ``out=``, ``inplace=True``). ``written_state(gm)`` follows each write back
through views to the parameter or buffer it lands in: that tensor is state, the rule the rewrite keeps is
that a write is never dead (``is_side_effect``) and state is never a constant (``fxconv.fx.read``).
"""

from __future__ import annotations

import operator

import torch
from torch import fx
from torch.fx import Node

from .nodes import first_input, op_name

_SETITEM = (operator.setitem, "__setitem__")
# Ops whose result shares its input's memory: a write into the result is a write into the input.
_VIEWS = frozenset({"view", "view_as", "reshape", "transpose", "t", "permute", "select", "slice", "narrow", "squeeze",
                    "unsqueeze", "expand", "expand_as", "flatten", "unflatten", "as_strided", "alias", "detach",
                    "getitem", "__getitem__", "diagonal", "unbind", "split", "chunk", "movedim", "swapaxes",
                    "_unsafe_view", "contiguous"})  # fmt: skip


def writes(node: Node) -> Node | None:
    """The tensor ``node`` writes in place (its first written argument), or None."""
    if node.op not in ("call_function", "call_method", "call_module"):
        return None
    target = node.target
    if isinstance(target, torch._ops.OpOverload):  # ATen: the schema says which argument is written
        for i, argument in enumerate(target._schema.arguments):
            if argument.alias_info is not None and argument.alias_info.is_write:
                value = node.kwargs.get(argument.name, node.args[i] if i < len(node.args) else None)
                if isinstance(value, Node):
                    return value
        return None
    written = node.kwargs.get("out")
    if isinstance(written, Node):
        return written
    name = op_name(node)
    in_place = target in _SETITEM or (name.endswith("_") and not name.startswith("__")) or (
        name.startswith("__i") and name.endswith("__") and name not in ("__index__", "__init__", "__iter__"))
    if node.op == "call_module":
        in_place = bool(getattr(node.graph.owning_module.get_submodule(target), "inplace", False))
    elif node.kwargs.get("inplace") is True:
        in_place = True
    value = first_input(node)
    return value if in_place and isinstance(value, Node) else None


def is_side_effect(node: Node) -> bool:
    """Whether ``node`` must stay in the graph whatever reads its result: fx's own impure nodes, and
    every in-place write (a write is read through the tensor it wrote, never through its result)."""
    return node.is_impure() or writes(node) is not None


def root(value: Node) -> Node:
    """The tensor ``value`` is a view of (itself where it is no view)."""
    while value.op in ("call_function", "call_method") and op_name(value) in _VIEWS and isinstance(
            first_input(value), Node):
        value = first_input(value)
    return value


def written_state(gm: fx.GraphModule) -> dict[str, list[Node]]:
    """The parameters and buffers a forward writes in place: qualified name -> the nodes that write it."""
    state: dict[str, list[Node]] = {}
    for node in gm.graph.nodes:
        value = writes(node)
        if value is None:
            continue
        base = root(value)
        if base.op == "get_attr":
            state.setdefault(base.target, []).append(node)
    return state
