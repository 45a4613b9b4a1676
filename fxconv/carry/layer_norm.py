"""LayerNorm over the last dim (the channels), written out over dim 1 of the conv form.

Before (tokens (N, L, C))::

    x ─ LayerNorm(C) ─▶

After (``m`` the form (N, C, 1, L); as Apple's ml-ane-transformers ``layer_norm.py`` writes it)::

    μ = mean(m, dim=1) ; d = m − μ ; y = d · rsqrt(mean(d·d, dim=1) + eps) · w.view(1, C, 1, 1) + b.view(1, C, 1, 1)

The statistics of LayerNorm over the last dim are per position over the C channels, which the form
holds on dim 1: the same numbers, no transpose. ``rsqrt`` at the PyTorch level is one op on NPUs
(Ethos-U's RSQRT), not a square root and a division. It carries where the last dim is the form's
channel axis: tokens, channels-last maps, vectors, and a head's features when they all sit on the
channel axis.
"""

from __future__ import annotations

from .rule import Moved, Rule, over_channels


class NormOverLast(Rule):
    """What LayerNorm and RMSNorm share: their reading at every level and the check."""

    parameters: tuple[str, ...] = ("weight", "bias")  # after ``normalized_shape``, before ``eps``, in a call
    eps_default: float | None = 1e-5
    on_channels = True

    def read_fx(self, node, ctx) -> dict | None:
        module = ctx.module
        if module is not None:
            if len(module.normalized_shape) != 1:
                return None
            return {**{p: ctx.parameter(p) for p in self.parameters}, "eps": module.eps}
        shape = ctx.arg(1, "normalized_shape")
        if not isinstance(shape, (tuple, list)) or len(shape) != 1:
            return None
        found = {p: ctx.arg(2 + i, p) for i, p in enumerate(self.parameters)}
        return {**found, "eps": ctx.arg(2 + len(self.parameters), "eps", self.eps_default)}

    def read_onnx(self, node, ctx) -> dict | None:
        last = len(ctx.shape(node.inputs[0]) or ()) - 1
        if ctx.attribute("axis", -1) not in (-1, last) or not ctx.only_first_output_read():
            return None
        inputs = [*node.inputs[1:], None, None]
        return {**dict(zip(self.parameters, inputs)), "eps": ctx.attribute("epsilon", 1e-5)}

    def check(self, op, layout, formed) -> str | None:
        if not over_channels(layout, [-1]) or len(op.shape or ()) != layout.rank:
            return "it normalises over a dim the conv form does not keep on its channel axis"
        if any(formed(op.params[p]) for p in self.parameters if op.params[p] is not None):
            return "its weight is computed from the activations"
        return None


class LayerNorm(NormOverLast):
    name = "layer-norm"
    torch = ("nn.LayerNorm", "F.layer_norm")
    aten = ("layer_norm",)
    onnx = ("LayerNormalization",)

    def rewrite(self, op, layout, ctx, build) -> Moved:
        m = ctx.form(op.data.value)
        centred = build.binary("sub", m, build.reduce("mean", m, (1,)))
        variance = build.reduce("mean", build.binary("mul", centred, centred), (1,))
        y = build.binary("mul", centred, build.unary("rsqrt", build.binary("add", variance, op.params["eps"])))
        return Moved(affine(build, ctx, y, op.params["weight"], op.params["bias"]), layout)


def affine(build, ctx, y, weight, bias):
    """``y · weight + bias`` with per-channel parameters (C,) laid out against the form (either may be None)."""
    if weight is not None:
        y = build.binary("mul", y, ctx.form(weight))
    if bias is not None:
        y = build.binary("add", y, ctx.form(bias))
    return y
