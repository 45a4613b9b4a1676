"""Expands of split channels: a factor of one repeated (GQA's key and value heads, before the attention).

Before (Hugging Face's ``repeat_kv``; ``k`` (N, KVH, L, D) the key projection split into heads)::

    k[:, :, None].expand(N, KVH, n_rep, L, D).reshape(N, KVH·n_rep, L, D) ─ sdpa ─▶

After (``m`` the form of ``k``, (N, KVH·D, 1, L))::

    m.squeeze(2).unflatten(1, (KVH, 1, D)).expand(-1, -1, n_rep, -1, -1)   the grouped view, (N, KVH, n_rep, D, L)
     .reshape(N, KVH·n_rep·D, 1, -1) ─ attention per head ─▶               the form of (N, H, L, D)

The size-1 factor the index inserts and the merge of (KVH, n_rep) into H cost nothing (``regroup``): the
channels stay in row-major order, head ``h`` of the result the key head ``h // n_rep``, as ``repeat_kv``'s.
The expand itself runs in the grouped view, where the factor is a dim of its own.
"""

from __future__ import annotations

from typing import ClassVar

from ..layouts import SplitLayout
from .rule import Moved, Rule


class Expand(Rule):
    name = "expand"
    torch = (".expand",)
    aten = ("expand",)
    not_at: ClassVar[dict[str, str]] = {
        "onnx": "channels are split into heads only where attention is carried, which the ONNX front end does not",
    }

    def check(self, op, layout, formed) -> str | None:
        if not isinstance(layout, SplitLayout) or op.shape is None or len(op.shape) != layout.rank:
            return "it expands a value whose channels are not split into heads"
        moved = [d for d, (a, b) in enumerate(zip(op.data.shape, op.shape)) if a != b]
        return None if all(layout.form_dim(d) is None for d in moved) else "it expands the batch or the positions"

    def rewrite(self, op, layout, ctx, build) -> Moved:
        grouped = ctx.grouped_form(ctx.form(op.data.value), layout)
        sizes = [-1] * layout.rank
        for d, (a, b) in enumerate(zip(op.data.shape, op.shape)):
            if a != b:
                sizes[layout.grouped_dim(d)] = b
        out = layout.of_shape(op.shape)
        return Moved(ctx.ungrouped(build.expand(grouped, tuple(sizes)), out), out)
