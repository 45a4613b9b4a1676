"""Selects that pick one entry of a dim: a token (``x[:, 0]``, a class token), or one of q/k/v (``qkv.unbind(0)``).

Before (a ViT's class-token head; a packed q/k/v of timm's attention)::

    h[:, 0] ─ head ─▶                                      h (N, L, C) tokens
    q, k, v = qkv.reshape(N, L, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)

After (``m`` the form (N, C, 1, L))::

    m[:, :, :, 0:1] ─ conv 1x1 ─▶                          (N, C, 1, 1): the vector, batch first
    q = m[:, 0:H·D], k = m[:, H·D:2·H·D], v = m[:, 2·H·D:]  each (N, H·D, 1, L): its heads' channels

A token of the form is a position of its width; the outermost factor of split channels (q/k/v) is a
contiguous block of them. Selecting an inner factor (one head's dim) is not a block, and is not carried.
"""

from __future__ import annotations

import math

from ..layouts import PositionLayout, SplitLayout, vectors
from .rule import Moved, Rule


class Select(Rule):
    name = "select"
    torch = ("operator.getitem", ".select", "torch.select")
    aten = ("select",)
    onnx = ("Gather",)

    def read_fx(self, node, ctx) -> dict | None:
        if ctx.op_name == "select":
            dim, index = ctx.arg(1, "dim"), ctx.arg(2, "index")
            return {"dim": dim, "index": index} if isinstance(dim, int) and isinstance(index, int) else None
        source, index = ctx.first_input, ctx.arg(1, "index")
        if ctx.is_call(source, "unbind") and isinstance(index, int):  # one output of x.unbind(dim)
            return {"dim": ctx.arg_of(source, 1, "dim", 0), "index": index, "inputs": [ctx.input_of(source)]}
        index = index if isinstance(index, tuple) else (index,)
        picks = [d for d, i in enumerate(index) if isinstance(i, int) and not isinstance(i, bool)]
        if len(picks) != 1 or not all(i == slice(None) for d, i in enumerate(index) if d != picks[0]):
            return None  # x[:, 0] and x[0] only: one int, every other index whole
        return {"dim": picks[0], "index": index[picks[0]]}

    def read_onnx(self, node, ctx) -> dict | None:
        index = ctx.numbers(node.inputs[1])
        shape = ctx.shape(node.inputs[1])
        if index is None or len(index) != 1 or shape != ():  # a scalar index drops the dim
            return None
        return {"dim": ctx.attribute("axis", 0), "index": index[0], "inputs": [node.inputs[0]]}

    def check(self, op, layout, formed) -> str | None:
        if not formed(op.data.value):
            return "it picks from an index, not from a laid-out value"
        dim = op.params["dim"] % layout.rank
        if isinstance(layout, SplitLayout):
            return None if layout.order[dim] == 0 else "it picks an inner channel factor: not a block of the form"
        if isinstance(layout, PositionLayout) and layout.rank == 3 and dim == 1:
            return None
        return "it picks along a dim whose entries are not one block of the form"

    def rewrite(self, op, layout, ctx, build) -> Moved:
        form = ctx.form(op.data.value)
        dim = op.params["dim"] % layout.rank
        size = op.data.shape[dim]
        index = op.params["index"] % size
        if isinstance(layout, SplitLayout):
            block = math.prod(layout.factors[1:])
            order = tuple(d if d in ("N", "L") else d - 1 for d in layout.order if d != 0)
            picked = build.slice(form, 1, index * block, (index + 1) * block, 1)
            return Moved(picked, SplitLayout(order, layout.factors[1:]))
        return Moved(build.slice(form, 3, index, index + 1, 1), vectors(2, folded=False))
