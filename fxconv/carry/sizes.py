"""Reads of a value's size, answered from its conv form: ``x.shape[1]``, ``x.size(-1)``, ``aten.sym_size``.

Before (tokens (N, L, C) whose conv form is (N, C, 1, L))::

    B, L, C = x.shape ; x.view(B, L, 2, C // 2)

After: ``x.shape[1]`` is ``m.size(3)`` and ``x.shape[2]`` is ``m.size(1)`` (``PositionLayout.form_dim``),
so a size read keeps no way out of the layout alive. Metadata asserts that torch.export writes
(``aten._assert_tensor_metadata`` of a dtype or device) read the form too.
"""

from __future__ import annotations

from typing import ClassVar

from ..layouts import PositionLayout
from .rule import Replaced, Rule


class Sizes(Rule):
    name = "sizes"
    torch = (".size", "operator.getitem")
    aten = ("sym_size", "_assert_tensor_metadata")
    reads_form = True
    not_at: ClassVar[dict[str, str]] = {
        "onnx": "ONNX graphs read sizes with Shape nodes, which give whole shapes; fxconv leaves them reading "
        "the original value (it costs the way out where one is read)"
    }

    def read_fx(self, node, ctx) -> dict | None:
        name = ctx.op_name
        if name == "_assert_tensor_metadata":
            return {"dim": None} if ctx.kwarg("size") is None and ctx.kwarg("stride") is None else None
        if name == "getitem":  # x.shape[i]: getattr(x, "shape"), then getitem
            shape = ctx.first_input
            if not (ctx.is_shape_read(shape) and isinstance(ctx.arg(1, "index"), int)):
                return None
            return {"dim": ctx.arg(1, "index"), "inputs": [ctx.input_of(shape)]}
        dim = ctx.arg(1, "dim")
        return {"dim": dim} if isinstance(dim, int) else None

    def check(self, op, layout, formed) -> str | None:
        return None if isinstance(layout, PositionLayout) and formed(op.data.value) else "it reads a flattened map"

    def rewrite(self, op, layout, ctx, build) -> Replaced:
        form = ctx.form(op.data.value)
        if op.params["dim"] is None:
            return Replaced(build.copy(op, {op.data.value: form}))
        return Replaced(build.size(form, layout.form_dim(op.params["dim"])))
