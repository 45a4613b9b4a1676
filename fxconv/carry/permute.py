"""The model's own permutes and transposes, composed with the conv layout's.

Before (a ConvNeXt block: ``y`` is (N, C, H, W))::

    y.permute(0, 2, 3, 1) ─ LayerNorm ─ fc1 ─ GELU ─ fc2 ─ .permute(0, 3, 1, 2) ─▶

After: the channels-last value's conv form *is* the NCHW map it was permuted from (``free_form``: the
engine records it for ``x.permute(p)`` when the layout's permute undoes ``p``, and enters such a value
as ``x``), so the way in costs nothing, and the way out composes with the layout's leave::

    leave(m).permute(order) == m.squeeze(inserted).permute(inverse(layout.perm) ∘ order)

— here the identity: ``permute(0, 3, 1, 2)`` of the form is the form itself, and the block runs NCHW.
A permute is not carried into the layout (its output is in the original layout); it is rewritten to
read the form, which saves the way out.
"""

from __future__ import annotations

from ..layouts import Layout, PositionLayout, SplitLayout, layout_for
from .rule import Moved, Replaced, Rule


class Permute(Rule):
    name = "permute"
    torch = ("torch.permute", "torch.transpose", "torch.t", "torch.swapaxes", "torch.swapdims", "torch.movedim",
             ".permute", ".transpose", ".t", ".swapaxes", ".swapdims", ".movedim", "builtins.getattr")  # fmt: skip
    aten = ("permute", "transpose", "t", "numpy_T", "mT", "swapaxes", "swapdims", "movedim")
    onnx = ("Transpose",)
    reads_form = True

    def read_fx(self, node, ctx) -> dict | None:
        rank = len(ctx.shape(ctx.first_input) or ())
        perm = _permutation(ctx, rank)
        return None if perm is None else {"perm": perm}

    def read_onnx(self, node, ctx) -> dict | None:
        rank = len(ctx.shape(node.inputs[0]) or ())
        perm = ctx.attribute("perm", None)
        perm = tuple(reversed(range(rank))) if perm is None else tuple(perm)
        return {"perm": perm} if len(perm) == rank else None

    def check(self, op, layout, formed) -> str | None:
        if not isinstance(layout, PositionLayout | SplitLayout) or not formed(op.data.value):
            return "it permutes a flattened map"
        return None

    def free_form(self, op, folded: bool) -> Layout | None:
        """``x.permute(0, 2, 3, 1)`` of an NCHW map is a channels-last value whose form is ``x`` itself."""
        layout = layout_for(len(op.shape or ()), folded)
        return layout if layout is not None and layout.cancels(op.params["perm"]) else None

    def rewrite(self, op, layout, ctx, build) -> Moved | Replaced:
        if isinstance(layout, SplitLayout):  # heads moved among the dims: the same form, relabelled
            return Moved(ctx.form(op.data.value), layout.permuted(op.params["perm"]))
        return Replaced(build.apply(ctx.form(op.data.value), layout.permuted_steps(op.params["perm"])))


def _permutation(ctx, rank: int) -> tuple[int, ...] | None:
    """The dims order a transpose-like call gives a tensor of ``rank`` dims (``x.permute(0, 2, 1)`` -> (0, 2, 1))."""
    name, order = ctx.op_name, list(range(rank))
    if name == "getattr":  # ``w.T`` / ``w.mT`` as symbolic_trace records them
        name = {"T": "numpy_T", "mT": "mT"}.get(ctx.arg(1, "name"))
    if name in ("t", "numpy_T"):
        return tuple(reversed(order)) if rank <= 2 or name == "numpy_T" else None
    if name == "mT" and rank >= 2:
        order[-2:] = order[-1], order[-2]
        return tuple(order)
    if name == "permute":
        dims = ctx.arg(1, "dims")
        dims = ctx.args[1:] if isinstance(dims, int) else dims  # x.permute(1, 0)
        if isinstance(dims, (tuple, list)) and len(dims) == rank and all(isinstance(d, int) for d in dims):
            return tuple(d % rank for d in dims)
        return None
    a, b = ctx.arg(1, "dim0"), ctx.arg(2, "dim1")
    if name == "movedim":
        a, b = ctx.arg(1, "source"), ctx.arg(2, "destination")
        if isinstance(a, int) and isinstance(b, int) and rank:
            order.insert(b % rank, order.pop(a % rank))
            return tuple(order)
        return None
    if name in ("transpose", "swapaxes", "swapdims") and isinstance(a, int) and isinstance(b, int) and rank:
        order[a % rank], order[b % rank] = order[b % rank], order[a % rank]
        return tuple(order)
    return None
