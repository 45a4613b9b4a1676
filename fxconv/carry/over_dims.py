"""Reductions and softmax over dims, keeping the rank: ``x.mean(-1, keepdim=True)``, ``softmax(x, -1)``.

Before (tokens (N, L, C))::

    x.pow(2).mean(-1, keepdim=True)          an RMSNorm written by hand
    x.softmax(-1)

After (``m`` the form (N, C, 1, L))::

    m.pow(2).mean(1, keepdim=True)           dim d of the value is dim form_dim(d) of the form
    m.softmax(1)

A conv form is the value's elements permuted, with size-1 dims inserted, so an op over some dims of
the value is the same op over where those dims went (``PositionLayout.form_dim``). Only ops that keep
the rank carry (``keepdim=True``): a reduction that drops a dim would leave a value of another rank,
whose layout is another one. A global pooling that ends 2-D is a head's source instead (``fxconv.engine.plan``).
"""

from __future__ import annotations

from ..layouts import PositionLayout
from .rule import Moved, Rule

_REDUCE = {"mean": "mean", "sum": "sum", "amax": "max", "amin": "min"}
_ALONG = {"softmax": "softmax", "_softmax": "softmax", "log_softmax": "log_softmax", "_log_softmax": "log_softmax"}
_ONNX = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min",
         "Softmax": "softmax", "LogSoftmax": "log_softmax"}


class OverDims(Rule):
    name = "over-dims"
    torch = (*(f"torch.{n}" for n in ("mean", "sum", "amax", "amin", "softmax", "log_softmax")),
             *(f".{n}" for n in ("mean", "sum", "amax", "amin", "softmax", "log_softmax")),
             "F.softmax", "F.log_softmax")  # fmt: skip
    aten = ("mean", "sum", "amax", "amin", "softmax", "_softmax", "log_softmax", "_log_softmax")
    onnx = tuple(_ONNX)
    on_channels = True

    def read_fx(self, node, ctx) -> dict | None:
        if ctx.casts():  # a dtype= argument (or _softmax's half_to_float): not the same op on the form
            return None
        name = ctx.op_name
        if name in _ALONG:
            dim = ctx.arg(1, "dim")
            return {"kind": _ALONG[name], "dims": (dim,), "keepdim": True} if isinstance(dim, int) else None
        dims, keepdim = ctx.arg(1, "dim"), bool(ctx.arg(2, "keepdim", False))
        dims = (dims,) if isinstance(dims, int) else tuple(dims) if isinstance(dims, (tuple, list)) else None
        if dims is None or not all(isinstance(d, int) for d in dims):
            return None
        return {"kind": _REDUCE[name], "dims": dims, "keepdim": keepdim}

    def read_onnx(self, node, ctx) -> dict | None:
        kind = _ONNX[node.op_type]
        if kind in ("softmax", "log_softmax"):
            if ctx.opset < 13:
                return None  # before 13 Softmax ran over every dim from ``axis`` on: not one dim of a form
            return {"kind": kind, "dims": (ctx.attribute("axis", -1),), "keepdim": True}
        axes = ctx.axes()
        if not axes:
            return None  # every dim, or axes computed at run time
        return {"kind": kind, "dims": tuple(axes), "keepdim": bool(ctx.attribute("keepdims", 1))}

    def check(self, op, layout, formed) -> str | None:
        if not isinstance(layout, PositionLayout) or not op.params["keepdim"] or len(op.shape or ()) != layout.rank:
            return "it changes the value's rank, which a conv form keeps"
        return None

    def rewrite(self, op, layout, ctx, build) -> Moved:
        m = ctx.form(op.data.value)
        dims = tuple(sorted(layout.form_dim(d) for d in op.params["dims"]))
        kind = op.params["kind"]
        if kind in ("softmax", "log_softmax"):
            return Moved(build.along(kind, m, dims[0]), layout)
        return Moved(build.reduce(kind, m, dims), layout)
