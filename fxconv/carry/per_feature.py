"""Ops with one parameter per feature along dim 1: BatchNorm1d, PReLU with a weight per channel.

Before (a head: ``h`` (N, F) the output of a Linear, whose conv form is (1, F, 1, N) folded)::

    h ─ BatchNorm1d(F) ─ PReLU(F) ─▶

After::

    h_form ─ BatchNorm over dim 1 ─ PReLU over dim 1 ─▶ (1, F, 1, N)

These ops act on dim 1 of their input, whatever its rank: ``y[n, f, ...] = a[f] · x[n, f, ...] + b[f]``
(BatchNorm in eval; in training its statistics are over every other dim, the same elements in any
order). So they carry wherever the original's dim 1 is the form's dim 1 — a vector (N, F) — and not on
tokens (N, L, C), whose dim 1 is the positions. After a flatten, dim 1 holds all C·H·W features, which
the form keeps on the channel axis only when the map's spatial dims are 1 (or with ``method="1x1"``).
"""

from __future__ import annotations

from ..layouts import PositionLayout
from .rule import Moved, Rule


class PerFeature(Rule):
    name = "per-feature"
    torch = ("nn.BatchNorm1d", "nn.PReLU", "F.batch_norm", "F.prelu", ".prelu")
    aten = ("batch_norm", "prelu")
    onnx = ("BatchNormalization",)  # ONNX's PRelu broadcasts its slope like an element-wise operand
    on_channels = True

    def read_fx(self, node, ctx) -> dict | None:
        module = ctx.module
        if module is not None and type(module).__name__ == "PReLU" and module.num_parameters == 1:
            return None  # one weight for every element: element-wise
        return {}

    def read_onnx(self, node, ctx) -> dict | None:
        return {} if ctx.only_first_output_read() else None  # training mode's running statistics

    def check(self, op, layout, formed) -> str | None:
        if not isinstance(layout, PositionLayout) or layout.form_dim(1) != 1 or len(op.shape or ()) != layout.rank:
            return "it acts on dim 1 of its input, which the conv form does not keep on its channel axis"
        if any(formed(i.value) for i in op.inputs[1:]):
            return "its parameters are computed from the activations"
        return None

    def rewrite(self, op, layout, ctx, build) -> Moved:
        return Moved(build.copy(op, {op.data.value: ctx.form(op.data.value)}, any_rank=True), layout)
