"""RMSNorm over the last dim (Llama, Qwen, Mistral, Gemma blocks), written out over dim 1 of the conv form.

Before (tokens (N, L, C))::

    x ─ RMSNorm(C) ─▶          nn.RMSNorm, F.rms_norm, ONNX RMSNormalization

After (``m`` the form (N, C, 1, L))::

    y = m · rsqrt(mean(m·m, dim=1) + eps) · w.view(1, C, 1, 1)

The root mean square is per position over the channels, dim 1 of the form. An RMSNorm written by hand
(``x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w``, as transformers' ``LlamaRMSNorm``)
needs no rule of its own: it is element-wise ops and a mean over the channels (``over_dims``), each carried.
"""

from __future__ import annotations

from . import Moved, Rule, over_channels
from .layer_norm import affine


class RmsNorm(Rule):
    name = "rms-norm"
    torch = ("nn.RMSNorm", "F.rms_norm")
    aten = ("rms_norm",)
    onnx = ("RMSNormalization",)
    on_channels = True

    def read_fx(self, node, ctx) -> dict | None:
        module = ctx.module
        if module is not None:
            if len(module.normalized_shape) != 1:
                return None
            return {"weight": ctx.parameter("weight"), "eps": module.eps}
        shape = ctx.arg(1, "normalized_shape")
        if not isinstance(shape, (tuple, list)) or len(shape) != 1:
            return None
        return {"weight": ctx.arg(2, "weight"), "eps": ctx.arg(3, "eps")}

    def read_onnx(self, node, ctx) -> dict | None:
        if ctx.attribute("axis", -1) not in (-1, len(ctx.shape(node.inputs[0]) or ()) - 1):
            return None
        return {"weight": node.inputs[1] if len(node.inputs) > 1 else None, "eps": ctx.attribute("epsilon", 1e-5)}

    def check(self, op, layout, formed) -> str | None:
        if not over_channels(layout, [-1]) or len(op.shape or ()) != layout.rank:
            return "it normalises over a dim the conv form does not keep on its channel axis"
        if op.params["weight"] is not None and formed(op.params["weight"]):
            return "its weight is computed from the activations"
        return None

    def rewrite(self, op, layout, ctx, build) -> Moved:
        m = ctx.form(op.data.value)
        eps = op.params["eps"]
        if eps is None:  # torch's default: the dtype's machine epsilon
            eps = build.epsilon_of(op.data.value)
        mean_square = build.reduce("mean", build.binary("mul", m, m), (1,))
        y = build.binary("mul", m, build.unary("rsqrt", build.binary("add", mean_square, eps)))
        return Moved(affine(build, ctx, y, op.params["weight"], None), layout)
