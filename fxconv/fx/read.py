"""Reading a GraphModule for the engine: its ops, shapes, constants, Linear calls and carried ops.

A graph reaches fxconv at one of two levels — **torch** (``symbolic_trace``: modules, ``torch.*``
functions, Tensor methods) or **ATen** (``torch.export``: ``aten.*`` overloads, parameters as
``get_attr``) — and the engine never asks which: the rules (``fxconv.carry``) name their spellings at
both levels, resolved here once, and Linear calls are read through ``Spelling`` records.
Linear calls are read in ``linears``.
"""

from __future__ import annotations

import builtins
import functools
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx import Node

from ..carry import CARRIED, Input, Op, Rule
from ..engine import Linear
from ..report import Skipped
from .linears import read_linear
from .nodes import arg, first_input, key, op_name, shape_of
from .state import writes, written_state

_PREFIXES = {"F": F, "torch": torch, "nn": nn, "operator": operator, "builtins": builtins}

def _resolve(name: str, level: str) -> object | None:
    """The key a rule's name stands for at a level (None where this torch lacks it)."""
    if level == "aten":
        return getattr(torch.ops.aten, name, None)
    if name.startswith("."):
        return name[1:]
    prefix, _, attr = name.partition(".")
    if prefix in _PREFIXES and "." not in attr:
        return getattr(_PREFIXES[prefix], attr, None)
    return name  # a library's function, matched by its qualified name (torchvision's stochastic_depth)


@functools.cache
def _rule_index(rules: tuple[Rule, ...] = CARRIED) -> dict[object, list[Rule]]:
    """What each resolved name is read by: the rules in their order."""
    index: dict[object, list[Rule]] = {}
    for rule in rules:
        for level in ("torch", "aten"):
            for name in getattr(rule, level):
                found = _resolve(name, level)
                if found is not None and rule not in index.setdefault(found, []):
                    index[found].append(rule)
    return index


_INDEX = _rule_index()  # CARRIED's


def _constants(gm: fx.GraphModule) -> set[Node]:
    """The nodes computed from parameters, buffers and constants alone: what a weight operand may be. State
    (a buffer the forward writes in place, ``fxconv.fx.state``) is none: what is read from it is read at run
    time, after the writes before it."""
    state = written_state(gm)
    found: set[Node] = set()
    for node in gm.graph.nodes:
        inputs = node.all_input_nodes
        if (node.op == "get_attr" and node.target not in state) or (
                node.op.startswith("call_") and inputs and all(i in found for i in inputs)):
            found.add(node)
    return found


class FxView:
    """The engine's view of a GraphModule whose nodes carry the shapes of an example run."""

    static_sizes = False  # sizes are read at run time (``x.size(d)``)

    def __init__(self, gm: fx.GraphModule, rules: tuple[Rule, ...] = CARRIED):
        self.gm, self.graph = gm, gm.graph
        self.index = _rule_index(rules)
        self.modules = dict(gm.named_modules())
        self.constants = _constants(gm)
        self._ops = [n for n in gm.graph.nodes if n.op.startswith("call_")]
        self.erased: set[Node] = set()
        self.seen: dict[str, int] = {}  # calls of each name met so far: repeated calls are numbered

    # -- the graph -------------------------------------------------------------------------------

    def ops(self) -> list[Node]:
        return self._ops

    def alive(self, op: Node) -> bool:
        return op not in self.erased

    def output(self, op: Node) -> Node:
        return op

    def inputs(self, op: Node) -> list[Node]:
        return op.all_input_nodes

    def shape(self, value) -> tuple | None:
        if isinstance(value, str):  # a module's parameter (a parametrized one is computed on access)
            return tuple(functools.reduce(getattr, value.split("."), self.gm).shape)
        shape = shape_of(value)
        moved = value.meta.get("batch_dims", ()) if shape is not None else ()
        # A dim that changes with the batch is free (None), as an ONNX file's dynamic dims are: what reads
        # it as a fixed size (a head's map, a kernel) sees that it is none.
        return tuple(None if d in moved else size for d, size in enumerate(shape)) if moved else shape

    def producer(self, value) -> Node | None:
        return value if isinstance(value, Node) and value.op.startswith("call_") else None

    def users(self, value: Node) -> list[Node]:
        return list(value.users)

    def is_constant(self, value) -> bool:
        return isinstance(value, str) or value in self.constants

    def single(self, value) -> bool:
        shape = self.shape(value)
        return self.is_constant(value) and shape is not None and all(s == 1 for s in shape)

    def writes_input(self, op: Node) -> bool:
        return writes(op) is not None

    def expanded(self, value) -> tuple[Node, tuple] | None:
        """``(x, sizes)`` for a value made by ``x.expand(*sizes)`` of a tensor of the same rank; else None."""
        if not isinstance(value, Node) or op_name(value) not in ("expand", "broadcast_to"):
            return None
        sizes = value.args[1] if len(value.args) == 2 and isinstance(value.args[1], (tuple, list)) else value.args[1:]
        source = first_input(value)
        return (source, tuple(sizes)) if len(shape_of(source) or ()) == len(sizes) else None

    def describe(self, op: Node | None) -> str:
        """A short description of what a node computes, for messages."""
        if op is None:
            return "a graph input"
        if op.op == "call_module":
            return f"{op.target!r} ({type(self.modules[op.target]).__name__})"
        name = op.target if isinstance(op.target, str) else getattr(op.target, "__name__", op.target)
        return f"{op.name!r} ({name})"

    # -- carried ops -----------------------------------------------------------------------------

    def read(self, op: Node) -> Op | None:
        """``op`` as the first rule that reads it sees it, or None."""
        if op.op == "call_module":
            module = self.modules[op.target]
            index = self.index
            rules = next((index[t] for t in type(module).__mro__ if t in index and _forward_of(module, t)), [])
        else:
            target = key(op)
            try:
                rules = self.index.get(target) or self.index.get(_qualified(target), [])
            except TypeError:  # an unhashable target
                return None
        context = _ReadContext(self, op)
        for rule in rules:
            params = rule.read_fx(op, context)
            if params is not None:
                inputs = params.pop("inputs", None) or [n for n in op.all_input_nodes if self._is_tensor(n)]
                return Op(rule, op, tuple(self._input(v) for v in inputs), self.shape(op), params)
        return None

    def _is_tensor(self, node: Node) -> bool:
        return shape_of(node) is not None

    def _input(self, value) -> Input:
        return Input(value, self.shape(value), self.is_constant(value), self.single(value))

    # -- Linear calls ----------------------------------------------------------------------------

    def linear(self, op: Node) -> Linear | Skipped | None:
        """``op`` read as a Linear call, a Skipped if it is one that cannot convert, or None (``linears``)."""
        return read_linear(self, op)


class _ReadContext:
    """What a rule's ``read_fx`` may ask about the call it reads."""

    def __init__(self, view: FxView, node: Node):
        self.view, self.node = view, node
        self.module = view.modules[node.target] if node.op == "call_module" else None
        self.op_name = op_name(node) if self.module is None else type(self.module).__name__
        self.args = node.args
        self.first_input = first_input(node)

    def arg(self, index: int, name: str, default=None):
        return arg(self.node, index, name, default)

    def kwarg(self, name: str, default=None):
        return self.node.kwargs.get(name, default)

    def names(self, qualified: str) -> bool:
        return _qualified(self.node.target) == qualified

    def casts(self) -> bool:
        """Whether the call converts a dtype on its way (a ``dtype=`` argument, ``_softmax``'s half_to_float)."""
        if self.op_name in ("_softmax", "_log_softmax") and self.arg(2, "half_to_float", False):
            return True
        return any(isinstance(a, torch.dtype) for a in (*self.node.args[2:], *self.node.kwargs.values()))

    def parameter(self, name: str) -> str | None:
        """The qualified name of the module's parameter ``name``, if it has one."""
        return f"{self.node.target}.{name}" if getattr(self.module, name, None) is not None else None

    def shape(self, value):
        return self.view.shape(value)

    def is_shape_read(self, node) -> bool:
        """``x.shape`` (symbolic_trace records it as ``getattr(x, "shape")``)."""
        return isinstance(node, Node) and op_name(node) == "getattr" and node.args[1:] == ("shape",)

    def input_of(self, node: Node) -> Node:
        return first_input(node)

    def is_call(self, node, name: str) -> bool:
        """Whether ``node`` calls ``name`` (a Tensor method, a torch function or an ATen op of that name)."""
        return isinstance(node, Node) and op_name(node) == name

    def arg_of(self, node: Node, index: int, name: str, default=None):
        return arg(node, index, name, default)

    def is_bool(self, value) -> bool:
        meta = value.meta.get("tensor_meta") if isinstance(value, Node) else None
        return meta is not None and meta.dtype == torch.bool


def _forward_of(module: nn.Module, base: type) -> bool:
    """Whether ``module`` computes what ``base`` does (its class does not override ``forward``)."""
    return type(module).forward is base.forward


def _qualified(target) -> str:
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', '')}"
