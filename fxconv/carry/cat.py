"""Concatenations along a dim: a class token before the patch tokens, ``torch.cat([cls, x], dim=1)``.

Before (a ViT's embedding; ``x`` (N, L, C) tokens)::

    torch.cat([cls_token.expand(N, -1, -1), x], dim=1) ─ + pos_embed ─▶

After (``m`` the form of ``x``, (N, C, 1, L))::

    torch.cat([cls_token.view(1, C, 1, 1).expand(N, -1, -1, -1), m], dim=3) ─ + pos_embed laid out ─▶

Each operand is laid out like the value (a constant re-laid, an expanded constant expanded in the form),
and the dim the model concatenates along is the form's ``form_dim``.
"""

from __future__ import annotations

from ..layouts import PositionLayout
from . import Moved, Rule


class Cat(Rule):
    name = "cat"
    torch = ("torch.cat", "torch.concat", "torch.concatenate")
    aten = ("cat", "concat")
    onnx = ("Concat",)

    def read_fx(self, node, ctx) -> dict | None:
        dim = ctx.arg(1, "dim", 0)
        return {"dim": dim} if isinstance(dim, int) else None

    def read_onnx(self, node, ctx) -> dict | None:
        return {"dim": ctx.attribute("axis", 0)}

    def check(self, op, layout, formed) -> str | None:
        if not isinstance(layout, PositionLayout) or any(len(i.shape or ()) != layout.rank for i in op.inputs):
            return "it joins values of another rank than the layout's"
        return None

    def rewrite(self, op, layout, ctx, build) -> Moved:
        parts = [ctx.form(i.value) for i in op.inputs]
        return Moved(build.cat(parts, layout.form_dim(op.params["dim"])), layout)
