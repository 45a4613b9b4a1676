"""Reshapes that only regroup the positions: (N, H, W, C) <-> (N, H·W, C), and reshapes that change nothing.

Before (a Swin or ViT-style block moving between a channels-last map and tokens)::

    x (N, H, W, C) ─ view(N, H·W, C) ─ Linear ─▶

After (``m`` the form of ``x``, (N, C, H, W))::

    m ─ reshape(N, C, 1, H·W) ─ conv 1x1 ─▶

Both layouts keep the positions row-major after the channels, so regrouping the value's positions is
regrouping the form's: ``form_shape((N, *positions', C))`` of the target layout, the batch kept as it
is at run time. The sizes the model gave its reshape are used (they may be computed at run time);
otherwise the recorded ones. A reshape to the same shape (``view(x.size(0), -1)`` of an (N, K) vector)
leaves the form as it is, in any layout.
"""

from __future__ import annotations

import math

from ..layouts import KEEP, PositionLayout, SplitLayout, layout_for
from .rule import Moved, Rule


class Regroup(Rule):
    name = "regroup"
    torch = ("torch.flatten", "torch.reshape", "torch.squeeze", "torch.unsqueeze", "nn.Flatten", "nn.Unflatten",
             ".flatten", ".view", ".reshape", ".squeeze", ".unsqueeze", ".unflatten",
             "operator.getitem")  # x[:, :, None]: whole slices and new dims, an unsqueeze  # fmt: skip
    aten = ("flatten", "view", "reshape", "_unsafe_view", "squeeze", "unsqueeze", "unflatten")
    onnx = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")

    def __init__(self, split_heads: bool = False):
        self.split_heads = split_heads  # also split tokens' channels into heads, and merge them back (Core ML)

    def read_fx(self, node, ctx) -> dict | None:
        name = ctx.op_name
        if name == "getitem":
            index = ctx.arg(1, "index")
            index = index if isinstance(index, tuple) else (index,)
            if None not in index or not all(i is None or i == slice(None) or i is Ellipsis for i in index):
                return None
        squeezes_all = name == "squeeze" and ctx.arg(1, "dim") is None and ctx.module is None
        sizes = None
        if name in ("view", "reshape", "_unsafe_view"):
            sizes = ctx.args[1:] if len(ctx.args) != 2 or not isinstance(ctx.args[1], (list, tuple)) else ctx.args[1]
            sizes = ctx.kwarg("shape", ctx.kwarg("size", sizes))
        return {"sizes": None if sizes is None else tuple(sizes), "squeezes_all": squeezes_all}

    def read_onnx(self, node, ctx) -> dict | None:
        return {"sizes": None, "squeezes_all": False}

    def check(self, op, layout, formed) -> str | None:
        if unchanged(op):
            return None  # nothing changes: the form stays
        if op.params["squeezes_all"]:
            return "squeeze() also drops a batch of one"
        if self.split_heads and _heads(op, layout) is not None:
            return None
        return None if positions(op, layout) is not None else "it does not only regroup the positions"

    def rewrite(self, op, layout, ctx, build) -> Moved:
        form = ctx.form(op.data.value)
        if unchanged(op):
            return Moved(form, layout)
        if self.split_heads and (heads := _heads(op, layout)) is not None:
            return Moved(form, heads)  # the channels split into heads, or merged back: the same form
        target = layout_for(len(op.shape), folded=False)  # ranks 3 to 5: one layout each
        return Moved(build.reshape(form, target.form_shape((KEEP, *positions(op, layout), op.shape[-1]))), target)


def unchanged(op) -> bool:
    """A reshape to its input's own shape (the batch may be free, nothing else)."""
    return op.shape is not None and op.shape == op.data.shape and None not in op.shape[1:]


def positions(op, layout) -> tuple | None:
    """The sizes of the target's positions, if the op regroups the positions of a value in ``layout``."""
    before, after = op.data.shape, op.shape
    if not isinstance(layout, PositionLayout) or before is None or after is None or layout.rank != len(before):
        return None
    if not (3 <= len(before) <= 5 and 3 <= len(after) <= 5) or (before[0], before[-1]) != (after[0], after[-1]):
        return None
    known = [s for s in (*before[1:-1], *after[1:-1]) if s is not None]
    if len(known) == len(before) + len(after) - 4 and math.prod(before[1:-1]) != math.prod(after[1:-1]):
        return None
    sizes = op.params["sizes"]
    if sizes is not None and len(sizes) == len(after):
        return tuple(sizes[1:-1])
    if len(after) == 3:
        return (-1,)
    return tuple(after[1:-1]) if None not in after[1:-1] else None


def _heads(op, layout):
    """The layout of a reshape that splits tokens' channels into factors ((N, L, C) -> (N, L, 3, H, D)), merges
    split ones back ((N, L, H, D) -> (N, L, C)), inserts a factor of one or merges two neighbours (GQA's
    repeat of the key heads); None if it is none of these."""
    before, after = op.data.shape, op.shape
    if before is None or after is None or None in after[2:]:
        return None
    tokens, same_start = layout_for(3, folded=False), before[:2] == after[:2]
    if same_start and layout == tokens and len(after) > 3 and math.prod(after[2:]) == before[2]:
        return SplitLayout(("N", "L", *range(len(after) - 2)), tuple(after[2:]))
    if not isinstance(layout, SplitLayout) or len(before) != layout.rank:
        return None
    if same_start and layout.order == layout.canonical and len(after) == 3:
        return tokens
    return _one_factor_more(layout, before, after) or _factors_merged(layout, before, after)


def _one_factor_more(layout: SplitLayout, before: tuple, after: tuple) -> SplitLayout | None:
    """A size-1 dim inserted among split channels (``k[:, :, None]`` before repeating GQA's key heads): a new
    factor of size 1, numbered after the factors before it — the same form."""
    if len(after) != len(before) + 1:
        return None
    for d in range(1, len(after)):
        if after[d] == 1 and after[:d] + after[d + 1:] == before:
            new = sum(isinstance(label, int) for label in layout.order[:d])
            order = tuple(label + (isinstance(label, int) and label >= new) if label not in ("N", "L") else label
                          for label in layout.order)  # fmt: skip
            factors = (*layout.factors[:new], 1, *layout.factors[new:])
            return SplitLayout((*order[:d], new, *order[d:]), factors)
    return None


def _factors_merged(layout: SplitLayout, before: tuple, after: tuple) -> SplitLayout | None:
    """Two neighbouring factors merged into one, in their row-major order (GQA's (N, KVH, n_rep, L, D) ->
    (N, H, L, D) after the repeat): the same form."""
    if len(after) != len(before) - 1:
        return None
    for d in range(1, len(after)):
        first, second = layout.order[d], layout.order[d + 1]
        adjacent = isinstance(first, int) and isinstance(second, int) and second == first + 1
        if adjacent and after[d] == before[d] * before[d + 1] and (*before[:d], *before[d + 2:]) == (
                *after[:d], *after[d + 1:]):  # fmt: skip
            order = tuple(label - (isinstance(label, int) and label > first) if label not in ("N", "L") else label
                          for i, label in enumerate(layout.order) if i != d + 1)  # fmt: skip
            factors = (*layout.factors[:first], before[d] * before[d + 1], *layout.factors[second + 1:])
            return SplitLayout(order, factors)
    return None
