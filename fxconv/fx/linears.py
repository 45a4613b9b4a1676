"""Reading Linear calls in a torch.fx graph, whatever their spelling, as ``fxconv.engine.Linear`` records.

A Linear call is ``nn.Linear`` (and subclasses: a custom ``forward`` or hooks are reported, never
dropped), ``F.linear``, or matrix algebra with a constant weight operand — a parameter, buffer, or
anything computed from them alone: ``x @ W.t() + b``, ``torch.addmm(b, x, W.t(), beta=β, alpha=α)``,
``torch.matmul(x, P)`` with ``P`` stored (in, out), and their ATen forms. Where each keeps its operands
is a ``Spelling`` record (the table below). The weight's transposes are undone to read it (out, in); a
bias added after a matmul is its bias. An activation × activation matmul (attention's ``q @ k.T``) is
no Linear.

Every other product that reads a weight is reported, never passed over: an einsum with a constant
operand, a grouped matmul of stacked expert weights (``torch._grouped_mm``, Hugging Face's
``grouped_mm`` experts), and a matmul whose weight is gathered per token from a parameter
(``w[expert_ids]``, the ``batched_mm`` experts) — each row meets another weight there, which no
convolution computes at the cost of the original.
"""

from __future__ import annotations

import dataclasses
import math
import operator

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import Node

from ..codes import skip
from ..engine import ADDMM, LINEAR, MATMUL, Linear
from ..report import Skipped
from .nodes import first_input, key, module_path, op_name, shape_of

aten = torch.ops.aten
_SPELLINGS = {
    F.linear: LINEAR, aten.linear: LINEAR,
    operator.matmul: MATMUL, torch.matmul: MATMUL, torch.mm: MATMUL, torch.bmm: MATMUL, "matmul": MATMUL,
    "mm": MATMUL, "bmm": MATMUL, "__matmul__": MATMUL, aten.matmul: MATMUL, aten.mm: MATMUL, aten.bmm: MATMUL,
    torch.addmm: ADDMM, "addmm": ADDMM, aten.addmm: ADDMM,
}  # fmt: skip
_ADDS = (operator.add, torch.add, "add", aten.add)
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def read_linear(view, op: Node) -> Linear | Skipped | None:
    """``op`` read as a Linear call, a Skipped if it is one that cannot convert, or None."""
    if op.op == "call_module":
        module = view.modules[op.target]
        if not isinstance(module, nn.Linear):
            return None
        bias = f"{op.target}.bias" if module.bias is not None else None
        call = _named(view, Linear(op, op, first_input(op), f"{op.target}.weight", False, bias))
        refusal = _module_refusal(module)
        return call if refusal is None else skip(call.name, *refusal)
    try:
        spelling = _SPELLINGS.get(key(op))
    except TypeError:  # an unhashable target
        return None
    if spelling is None:
        return _other_product(view, op)
    x, w = _operand(op, spelling.input), _operand(op, spelling.weight)
    bias = _operand(op, spelling.bias) if spelling.bias else None
    if spelling is LINEAR:
        return _named(view, Linear(op, op, x, w, False, bias))
    if x in view.constants:
        if w in view.constants:  # constants alone (a weight computed in forward): no activation involved
            return None
        return skip(_named(view, Linear(op, op, w, x, False, None)).name, "constant-left",
                    "a constant multiplies from the left (W @ x): it mixes along the rows, not the features")
    if w not in view.constants:
        gathered = _gathered_from(view, w) or _gathered_from(view, x)
        if gathered is not None:
            return skip(gathered.target, "gathered-weight", f"its operand is gathered per row from the parameter "
                        f"{gathered.target!r} {tuple(shape_of(gathered) or ())} (w[idx]: a mixture of experts), "
                        "so each row meets another weight")
        return None  # both operands computed from the inputs (attention's q @ k): no weight
    weight, flipped = _untransposed(view, w)
    alpha, beta = (float(op.kwargs.get(k, 1)) if k else 1.0 for k in (spelling.alpha, spelling.beta))
    call = _named(view, Linear(op, op, x, weight, not flipped, bias, alpha, beta))
    if len(shape_of(w) or ()) != 2:
        return skip(call.name, "weight-rank", f"its constant operand has shape {shape_of(w)}, not a (in, out) matrix")
    return _with_bias_add(view, call) if spelling.bias_after else call


_GROUPED = ("_grouped_mm", "grouped_mm", "grouped_mm_fallback")  # torch's, and transformers' custom ops
_GATHERS = frozenset({operator.getitem, "__getitem__", aten.index, aten.index_select, torch.index_select,
                      "index_select", aten.gather, torch.gather, "gather"})  # fmt: skip
_VIEWS = frozenset({"t", "transpose", "permute", "view", "reshape", "_unsafe_view", "contiguous", "to", "_to_copy",
                    "clone", "expand", "unsqueeze", "squeeze", "select", "slice", "flatten", "unflatten", "alias"})


def _other_product(view, op: Node) -> Skipped | None:
    """An einsum or grouped matmul that reads a constant or gathered weight, as a Skipped; else None."""
    name = op_name(op)
    if name not in ("einsum", *_GROUPED):
        return None
    operands = [a for a in (*op.args, *op.kwargs.values()) for a in (a if isinstance(a, (list, tuple)) else (a,))]
    weights = [a for a in operands if isinstance(a, Node) and (a in view.constants or _gathered_from(view, a))]
    if not weights or all(a in weights for a in operands if isinstance(a, Node)):
        return None  # no weight, or constants alone (folded by any exporter)
    root = _parameter(view, weights[0])
    label = root.target if root is not None else module_path(op) or op.name
    shape = tuple(shape_of(root if root is not None else weights[0]) or ())
    if name == "einsum":
        equation = next((a for a in op.args if isinstance(a, str)), "?")
        return skip(label, "einsum", f"an einsum ({equation!r}) with the weight {label!r} {shape}")
    return skip(label, "grouped-weight", f"a grouped matmul ({name}) of the stacked weights {label!r} {shape}: "
                "each group of rows (the tokens routed to one expert) meets its own weight, in groups whose sizes "
                "depend on the routing")


def _gathered_from(view, node) -> Node | None:
    """The parameter ``node`` is gathered from by index ops (``w[idx]``, ``index_select``; through views),
    indices computed from the inputs; None if it is not such a gather."""
    gathered = False
    while isinstance(node, Node) and node not in view.constants:
        if key(node) in _GATHERS:
            gathered = True
        elif op_name(node) not in _VIEWS:
            return None
        node = first_input(node)
    return _parameter(view, node) if gathered and isinstance(node, Node) else None


def _parameter(view, node: Node) -> Node | None:
    """The first parameter or buffer (a ``get_attr``) a constant is computed from."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop(0)
        if n.op == "get_attr":
            return n
        seen.add(n)
        todo += [i for i in n.all_input_nodes if i in view.constants and i not in seen]
    return None


def _with_bias_add(view, call: Linear) -> Linear:
    """A matmul whose one user adds a constant vector of its output width: that add is its bias."""
    (user,) = call.op.users if len(call.op.users) == 1 else (None,)
    if user is None or key(user) not in _ADDS or user.kwargs.get("alpha", 1) != 1 or len(user.args) != 2:
        return call
    bias = user.args[1] if user.args[0] is call.op else user.args[0]
    width = (shape_of(call.op) or (None,))[-1]
    if bias not in view.constants or math.prod(shape_of(bias) or (0,)) != width or shape_of(user) != shape_of(call.op):
        return call
    return dataclasses.replace(call, output=user, bias=bias)


def _untransposed(view, node: Node) -> tuple[Node, bool]:
    """The node a chain of matrix transposes starts from, and whether the chain transposes it."""
    flipped = False
    while len(shape_of(node) or ()) == 2 and isinstance(first_input(node), Node):
        record = view.read(node)
        if record is None or record.rule.name != "permute" or record.params["perm"] != (1, 0):
            break
        node, flipped = first_input(node), not flipped
    return node, flipped


def _named(view, call: Linear) -> Linear:
    """The call with the name a user knows it by: its module's qualified name where it has one; the
    second and later calls of one Linear are numbered."""
    if call.op.op == "call_module":
        label = str(call.op.target)
    elif isinstance(call.weight, Node) and call.weight.op == "get_attr":  # torch.export keeps the parameter's name
        label = call.weight.target.removesuffix(".weight").removesuffix("_weight")  # attn.in_proj_weight: attn.in_proj
    else:
        label = module_path(call.op) or call.op.name
    view.seen[label] = view.seen.get(label, 0) + 1
    return dataclasses.replace(call, name=label if view.seen[label] == 1 else f"{label} (call {view.seen[label]})")


def _operand(node: Node, where: tuple[int, tuple[str, ...]]):
    index, names = where
    for name in names:
        if name in node.kwargs:
            return node.kwargs[name]
    return node.args[index] if len(node.args) > index else None


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
            "taps use them), which a convolution would not run: capture with torch.export (capture='export') "
            "to inline them"
        )
    return None

