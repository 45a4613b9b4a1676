"""Reading a GraphModule for the engine: its ops, shapes, constants, Linear calls and carried ops.

A graph reaches fxconv at one of two levels — **torch** (``symbolic_trace``: modules, ``torch.*``
functions, Tensor methods) or **ATen** (``torch.export``: ``aten.*`` overloads, parameters as
``get_attr``) — and the engine never asks which: the rules (``fxconv.carry``) name their spellings at
both levels, resolved here once, and Linear calls are read through ``Spelling`` records.

A Linear call is ``nn.Linear`` (and subclasses: a custom ``forward`` or hooks are reported, never
dropped), ``F.linear``, or matrix algebra with a constant weight operand — a parameter, buffer, or
anything computed from them alone: ``x @ W.t() + b``, ``torch.addmm(b, x, W.t(), beta=β, alpha=α)``,
``torch.matmul(x, P)`` with ``P`` stored (in, out), and their ATen forms. The weight's transposes are
undone to read it (out, in); a bias added after a matmul is its bias. An activation × activation
matmul (attention's ``q @ k.T``) is no Linear.
"""

from __future__ import annotations

import builtins
import dataclasses
import math
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx import Node

from ..carry import CARRIED, Input, Op, Rule
from ..codes import skip
from ..engine import ADDMM, LINEAR, MATMUL, Linear
from ..report import Skipped
from .nodes import arg, first_input, key, module_path, op_name, shape_of

_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_PREFIXES = {"F": F, "torch": torch, "nn": nn, "operator": operator, "builtins": builtins}

# Linear spellings by what a node calls; nn.Linear modules are read apart.
_SPELLINGS = {
    F.linear: LINEAR, torch._C._nn.linear: LINEAR, torch.ops.aten.linear: LINEAR,
    operator.matmul: MATMUL, torch.matmul: MATMUL, torch.mm: MATMUL, torch.bmm: MATMUL, "matmul": MATMUL,
    "mm": MATMUL, "bmm": MATMUL, "__matmul__": MATMUL, torch.ops.aten.matmul: MATMUL, torch.ops.aten.mm: MATMUL,
    torch.ops.aten.bmm: MATMUL, torch.addmm: ADDMM, "addmm": ADDMM, torch.ops.aten.addmm: ADDMM,
}  # fmt: skip


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


def _rule_index() -> dict[object, list[Rule]]:
    index: dict[object, list[Rule]] = {}
    for rule in CARRIED:
        for level in ("torch", "aten"):
            for name in getattr(rule, level):
                found = _resolve(name, level)
                if found is not None and rule not in index.setdefault(found, []):
                    index[found].append(rule)
    return index


_INDEX = _rule_index()


def _constants(graph: fx.Graph) -> set[Node]:
    """The nodes computed from parameters, buffers and constants alone: what a weight operand may be."""
    found: set[Node] = set()
    for node in graph.nodes:
        inputs = node.all_input_nodes
        if node.op == "get_attr" or (node.op.startswith("call_") and inputs and all(i in found for i in inputs)):
            found.add(node)
    return found


class FxView:
    """The engine's view of a GraphModule whose nodes carry the shapes of an example run."""

    static_sizes = False  # sizes are read at run time (``x.size(d)``)

    def __init__(self, gm: fx.GraphModule):
        self.gm, self.graph = gm, gm.graph
        self.modules = dict(gm.named_modules())
        self.constants = _constants(gm.graph)
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
        if isinstance(value, str):
            return tuple(self.gm.get_parameter(value).shape)
        return shape_of(value)

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
        if op.op == "call_module":
            return bool(getattr(self.modules[op.target], "inplace", False))
        name = op_name(op)
        return bool(op.kwargs.get("inplace", False)) or (name.endswith("_") and not name.startswith("__"))

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
            rules = next((_INDEX[t] for t in type(module).__mro__ if t in _INDEX and _forward_of(module, t)), [])
        else:
            target = key(op)
            try:
                rules = _INDEX.get(target) or _INDEX.get(_qualified(target), [])
            except TypeError:  # an unhashable target
                return None
        context = _ReadContext(self, op)
        for rule in rules:
            params = rule.read_fx(op, context)
            if params is not None:
                inputs = params.pop("inputs", None) or [n for n in op.all_input_nodes if self._is_tensor(n)]
                return Op(rule, op, tuple(self._input(v) for v in inputs), shape_of(op), params)
        return None

    def _is_tensor(self, node: Node) -> bool:
        return shape_of(node) is not None

    def _input(self, value) -> Input:
        return Input(value, self.shape(value), self.is_constant(value), self.single(value))

    # -- Linear calls ----------------------------------------------------------------------------

    def linear(self, op: Node) -> Linear | Skipped | None:
        """``op`` read as a Linear call, a Skipped if it is one that cannot convert, or None."""
        if op.op == "call_module":
            module = self.modules[op.target]
            if not isinstance(module, nn.Linear):
                return None
            bias = f"{op.target}.bias" if module.bias is not None else None
            call = Linear(op, op, first_input(op), f"{op.target}.weight", False, bias)
            call = dataclasses.replace(call, name=self._name(call))
            refusal = _module_refusal(module)
            return call if refusal is None else skip(call.name, *refusal)
        try:
            spelling = _SPELLINGS.get(key(op))
        except TypeError:
            return None
        if spelling is None:
            return None
        x, w = _operand(op, spelling.input), _operand(op, spelling.weight)
        bias = _operand(op, spelling.bias) if spelling.bias else None
        if spelling is LINEAR:
            call = Linear(op, op, x, w, False, bias)
            return dataclasses.replace(call, name=self._name(call))
        if x in self.constants:
            if w in self.constants:  # constants alone (a weight computed in forward): no activation involved
                return None
            call = Linear(op, op, w, x, False, None)
            return skip(self._name(call), "constant-left",
                        "a constant multiplies from the left (W @ x): it mixes along the rows, not the features")
        if w not in self.constants:
            return None  # both operands computed from the inputs (attention's q @ k): no weight
        weight, flipped = self._untransposed(w)
        alpha, beta = (float(op.kwargs.get(k, 1)) if k else 1.0 for k in (spelling.alpha, spelling.beta))
        call = Linear(op, op, x, weight, not flipped, bias, alpha, beta)
        call = dataclasses.replace(call, name=self._name(call))
        if len(shape_of(w) or ()) != 2:
            return skip(call.name, "weight-rank", f"its constant operand has shape {shape_of(w)}, not a (in, out) matrix")
        return self._with_bias_add(call) if spelling.bias_after else call

    def _with_bias_add(self, call: Linear) -> Linear:
        """A matmul whose one user adds a constant vector of its output width: that add is its bias."""
        (user,) = call.op.users if len(call.op.users) == 1 else (None,)
        if user is None or key(user) not in (operator.add, torch.add, "add", torch.ops.aten.add):
            return call
        if user.kwargs.get("alpha", 1) != 1 or len(user.args) != 2:
            return call
        bias = user.args[1] if user.args[0] is call.op else user.args[0]
        width = (shape_of(call.op) or (None,))[-1]
        if bias not in self.constants or math.prod(shape_of(bias) or (0,)) != width or shape_of(user) != shape_of(call.op):
            return call
        return dataclasses.replace(call, output=user, bias=bias)

    def _untransposed(self, node: Node) -> tuple[Node, bool]:
        """The node a chain of matrix transposes starts from, and whether the chain transposes it."""
        flipped = False
        while len(shape_of(node) or ()) == 2 and isinstance(first_input(node), Node):
            record = self.read(node)
            if record is None or record.rule.name != "permute" or record.params["perm"] != (1, 0):
                break
            node, flipped = first_input(node), not flipped
        return node, flipped

    def _name(self, call: Linear) -> str:
        """How a Linear call is named to a user: its module's qualified name where it has one; the second
        and later calls of one Linear are numbered."""
        if call.op.op == "call_module":
            label = str(call.op.target)
        elif isinstance(call.weight, Node) and call.weight.op == "get_attr":  # torch.export keeps the parameter's name
            label = call.weight.target.removesuffix(".weight").removesuffix("_weight")  # attn.in_proj_weight: attn.in_proj
        else:
            label = module_path(call.op) or call.op.name
        self.seen[label] = self.seen.get(label, 0) + 1
        return label if self.seen[label] == 1 else f"{label} (call {self.seen[label]})"


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


def _operand(node: Node, where: tuple[int, tuple[str, ...]]):
    index, names = where
    for name in names:
        if name in node.kwargs:
            return node.kwargs[name]
    return node.args[index] if len(node.args) > index else None


def _forward_of(module: nn.Module, base: type) -> bool:
    """Whether ``module`` computes what ``base`` does (its class does not override ``forward``)."""
    return type(module).forward is base.forward


def _qualified(target) -> str:
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', '')}"


def _module_refusal(module: nn.Linear) -> tuple[str, str] | None:
    """Why an ``nn.Linear`` module's call is more than ``F.linear`` (a rewrite would lose it), if it is."""
    if type(module).forward is not nn.Linear.forward:
        return "custom-forward", (
            f"{type(module).__name__} overrides Linear.forward (fake quantisation, adapters, ...), which a "
            "convolution would drop: capture with torch.export (capture='export') to see what it computes"
        )
    hooks = [h.strip("_").replace("_", " ") for h in _HOOKS if getattr(module, h, None)]
    global_hooks = [h for h in ("_global_forward_hooks", "_global_forward_pre_hooks") if getattr(nn.modules.module, h)]
    if hooks or global_hooks:
        return "hooked", (
            f"the module has {', '.join(hooks) or 'global module hooks'} (spectral_norm, weight_norm and feature "
            "taps use them), which a convolution would not run: capture with torch.export (capture='export') to inline them"
        )
    return None

