"""Concatenations along a dim: a class token before the patch tokens, ``torch.cat([cls, x], dim=1)``.

Before (a ViT's embedding; ``x`` (N, L, C) tokens)::

    torch.cat([cls_token.expand(N, -1, -1), x], dim=1) ─ + pos_embed ─▶

After (``m`` the form of ``x``, (N, C, 1, L))::

    torch.cat([cls_token.view(1, C, 1, 1).expand(N, -1, -1, -1), m], dim=3) ─ + pos_embed laid out ─▶

Each operand is laid out like the value (a constant re-laid, an expanded constant expanded in the form),
and the dim the model concatenates along is the form's ``form_dim``. On heads split along the channels
(``SplitLayout``) a concatenation of a head's dims — rotary embeddings' ``cat((-x2, x1), -1)`` — joins
the grouped views (N, H, D/2, L) along D and flattens them back to (N, H·D, 1, L).
"""

from __future__ import annotations

from ..layouts import PositionLayout, SplitLayout
from .rule import Moved, Rule


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
        if not isinstance(layout, (PositionLayout, SplitLayout)) or any(len(i.shape or ()) != layout.rank
                                                                         for i in op.inputs):  # fmt: skip
            return "it joins values of another rank than the layout's"
        if isinstance(layout, SplitLayout) and not all(formed(i.value) for i in op.inputs):
            return "it joins heads with a value that is not split into them"
        return None

    def rewrite(self, op, layout, ctx, build) -> Moved:
        dim = op.params["dim"] % layout.rank
        if isinstance(layout, SplitLayout) and layout.form_dim(dim) is None:  # along a factor: grouped
            joined = build.cat([ctx.grouped(i.value) for i in op.inputs], layout.grouped_dim(dim))
            out = layout.of_shape(op.shape)
            return Moved(ctx.ungrouped(joined, out), out)
        return Moved(build.cat([ctx.form(i.value) for i in op.inputs], layout.form_dim(dim)), layout)
