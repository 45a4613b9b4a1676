"""Slices along dims, keeping the rank: ``x[:, 1:]`` (drop a class token), ``x[:, -k:]`` (the last tokens),
and the pieces of a split (``qkv.split(C, dim=2)``, ``x.chunk(3, -1)``), each the slice of its input it is.

Before (tokens (N, L, C); Hugging Face's decoders keep the last ``logits_to_keep`` tokens before lm_head)::

    h[:, -k:, :] ─ lm_head ─▶

After (``m`` the form (N, C, 1, L))::

    m[:, :, :, -k:] ─ conv 1x1 ─▶

A slice of dim ``d`` of the value is the same slice of dim ``form_dim(d)`` of the form. On heads split along
the channels (``SplitLayout``) a slice of a head's dims — ``q[..., :D // 2]``, the half rotary embeddings
rotate — is the slice of the grouped view (N, H, D, L) along D, flattened back to (N, H·D/2, 1, L). An
index that drops a dim (``x[:, 0]``) changes the rank, and with it the layout: it is not carried.
"""

from __future__ import annotations

from ..layouts import PositionLayout, SplitLayout
from .rule import Moved, Rule

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
        index = ctx.arg(1, "index")
        source = ctx.first_input
        if isinstance(index, int) and any(ctx.is_call(source, kind) for kind in _PIECES):
            return _piece(ctx, source, index)
        # x[...]: slices, and an Ellipsis standing for the dims between them
        index = index if isinstance(index, tuple) else (index,)
        shape = ctx.shape(ctx.arg(0, "input"))
        if index.count(Ellipsis) == 1 and shape is not None:
            at = index.index(Ellipsis)
            index = (*index[:at], *(slice(None),) * (len(shape) - len(index) + 1), *index[at + 1:])
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
        if not isinstance(layout, (PositionLayout, SplitLayout)) or len(op.shape or ()) != layout.rank:
            return "it drops a dim, which changes the layout"
        if any(_bounds(op, layout, s) is None for s in op.params["slices"]):
            return "its bounds are computed at run time"
        return None

    def rewrite(self, op, layout, ctx, build) -> Moved:
        form = ctx.form(op.data.value)
        for dim, start, end, step in map(lambda s: _bounds(op, layout, s), op.params["slices"]):
            size = (op.data.shape or ())[dim] if op.data.shape else None
            to_the_end = end is None or end >= _END or (size is not None and end >= size)  # a free dim: INT64_MAX
            whole = start in (None, 0) and step == 1 and to_the_end
            if whole:  # torch.export writes x[:, 0] as a slice of all of dim 0, then a select
                continue
            end = _END if end is None else end
            if isinstance(layout, SplitLayout) and layout.form_dim(dim) is None:  # along a factor: grouped
                grouped = build.slice(ctx.grouped_form(form, layout), layout.grouped_dim(dim), start, end, step)
                layout = layout.of_shape(op.shape)
                form = ctx.ungrouped(grouped, layout)
            else:
                form = build.slice(form, layout.form_dim(dim), start, end, step)
        return Moved(form, layout)


_PIECES = ("split", "split_with_sizes", "chunk")  # x.split(C, dim=2)[i]: one piece is a slice of x


def _piece(ctx, source, index: int) -> dict | None:
    """Piece ``index`` of ``x.split(size_or_sizes, dim)`` or ``x.chunk(n, dim)`` as the slice of ``x`` it is
    (GPT-2's ``c_attn(h).split(C, dim=2)`` into q, k and v)."""
    x, kind = ctx.input_of(source), next(kind for kind in _PIECES if ctx.is_call(source, kind))
    shape = ctx.shape(x)
    dim = ctx.arg_of(source, 2, "dim", 0)
    sizes = next((v for v in (ctx.arg_of(source, 1, name) for name in _SIZES) if v is not None), None)
    if shape is None or not isinstance(dim, int) or sizes is None:
        return None
    whole = shape[dim % len(shape)]
    if kind == "chunk" and isinstance(sizes, int):
        sizes = -(-whole // sizes)  # torch.chunk: pieces of ceil(size / chunks)
    if isinstance(sizes, int):
        sizes = [sizes] * (-(-whole // sizes))
    if not all(isinstance(n, int) for n in sizes) or not 0 <= index < len(sizes):
        return None
    start = sum(sizes[:index])
    return {"slices": ((dim % len(shape), start, min(start + sizes[index], whole), 1),), "inputs": [x]}


_SIZES = ("split_size_or_sections", "split_size", "split_sizes", "chunks", "sections")


def _bounds(op, layout, slice_: tuple) -> tuple | None:
    """``(dim, start, end, step)`` with int bounds, or None if a bound is computed at run time. On a head's
    dims (a factor of a SplitLayout, fixed by the weights) a computed bound with the other side open —
    symbolic_trace's ``x[..., : x.shape[-1] // 2]`` and ``x[..., x.shape[-1] // 2 :]`` — is what the sizes
    recorded say it is: the slice keeps ``op.shape[dim]`` of its input's ``op.data.shape[dim]``."""
    dim, start, end, step = slice_
    if all(isinstance(v, int) or v is None for v in (start, end)):
        return slice_
    factor = isinstance(layout, SplitLayout) and layout.form_dim(dim) is None
    if not factor or step != 1 or op.shape is None or op.data.shape is None:
        return None
    kept, size = op.shape[dim], op.data.shape[dim]
    if start in (None, 0) and not isinstance(end, int):
        return dim, 0, kept, 1
    if not isinstance(start, int) and (end is None or (isinstance(end, int) and end >= size)):
        return dim, size - kept, size, 1
    return None
