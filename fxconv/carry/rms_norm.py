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

from .layer_norm import NormOverLast, affine
from .rule import Moved


class RmsNorm(NormOverLast):
    name = "rms-norm"
    torch = ("nn.RMSNorm", "F.rms_norm")
    aten = ("rms_norm",)
    onnx = ("RMSNormalization",)
    parameters = ("weight",)
    eps_default = None  # torch's default: the dtype's machine epsilon

    def rewrite(self, op, layout, ctx, build) -> Moved:
        m = ctx.form(op.data.value)
        eps = op.params["eps"]
        if eps is None:
            eps = build.epsilon_of(op.data.value)
        mean_square = build.reduce("mean", build.binary("mul", m, m), (1,))
        y = build.binary("mul", m, build.unary("rsqrt", build.binary("add", mean_square, eps)))
        return Moved(affine(build, ctx, y, op.params["weight"], None), layout)
