"""Slices along dims, keeping the rank: ``x[:, 1:]`` (drop a class token), ``x[:, -k:]`` (the last tokens).

Before (tokens (N, L, C); Hugging Face's decoders keep the last ``logits_to_keep`` tokens before lm_head)::

    h[:, -k:, :] ─ lm_head ─▶

After (``m`` the form (N, C, 1, L))::

    m[:, :, :, -k:] ─ conv 1x1 ─▶

A slice of dim ``d`` of the value is the same slice of dim ``form_dim(d)`` of the form. An index that
drops a dim (``x[:, 0]``) changes the rank, and with it the layout: it is not carried.
"""

from __future__ import annotations

from ..layouts import PositionLayout
from . import Moved, Rule

_END = 2**63 - 1  # "to the end", as torch.export and ONNX write it


class Slice(Rule):
    name = "slice"
    torch = ("operator.getitem", ".narrow", "torch.narrow")
    aten = ("slice", "narrow")
    onnx = ("Slice",)

    def read_fx(self, node, ctx) -> dict | None:
        name = ctx.op_name
        if name == "narrow":
            dim, start, length = ctx.arg(1, "dim"), ctx.arg(2, "start"), ctx.arg(3, "length")
            if not all(isinstance(v, int) for v in (dim, start, length)):
                return None
            return {"slices": ((dim, start, start + length, 1),)}
        if name == "slice":  # aten.slice.Tensor(x, dim, start, end, step)
            dim = ctx.arg(1, "dim", 0)
            return {"slices": ((dim, ctx.arg(2, "start"), ctx.arg(3, "end"), ctx.arg(4, "step", 1)),)}
        index = ctx.arg(1, "index")  # x[...]: only slices (and a leading Ellipsis-free tuple of them)
        index = index if isinstance(index, tuple) else (index,)
        if not index or not all(isinstance(i, slice) for i in index):
            return None
        return {"slices": tuple((d, i.start, i.stop, i.step or 1) for d, i in enumerate(index)
                                if (i.start, i.stop, i.step) != (None, None, None))}  # fmt: skip

    def read_onnx(self, node, ctx) -> dict | None:
        values = [ctx.numbers(v) if v is not None else None for v in list(node.inputs[1:]) + [None] * 4][:4]
        starts, ends, axes, steps = values
        if starts is None or ends is None or (len(node.inputs) > 3 and node.inputs[3] is not None and axes is None):
            return None
        axes = list(range(len(starts))) if axes is None else axes
        steps = [1] * len(starts) if steps is None else steps
        return {"slices": tuple((int(a), int(s), int(e), int(t)) for a, s, e, t in zip(axes, starts, ends, steps))}

    def check(self, op, layout, formed) -> str | None:
        if not isinstance(layout, PositionLayout) or len(op.shape or ()) != layout.rank:
            return "it drops a dim, which changes the layout"
        if any(not isinstance(v, int) and v is not None for s in op.params["slices"] for v in s[1:]):
            return "its bounds are computed at run time"
        return None

    def rewrite(self, op, layout, ctx, build) -> Moved:
        form = ctx.form(op.data.value)
        for dim, start, end, step in op.params["slices"]:
            size = (op.data.shape or ())[dim] if op.data.shape else None
            to_the_end = end is None or end >= _END or (size is not None and end >= size)  # a free dim: INT64_MAX
            whole = start in (None, 0) and step == 1 and to_the_end
            if not whole:  # torch.export writes x[:, 0] as a slice of all of dim 0, then a select
                form = build.slice(form, layout.form_dim(dim), start, _END if end is None else end, step)
        return Moved(form, layout)
