"""Per-tensor QuantizeLinear / DequantizeLinear pairs of a QDQ file, kept around the new convolutions.

Before (an int8 QDQ file, as ``onnxruntime.quantization.quantize_static`` writes it)::

    Q ─ DQ ─ Flatten ─ Gemm(DQ(int8 W)) ─ Q ─ DQ ─ Relu ─▶

After::

    Q ─ DQ ─ Conv(DQ(int8 W as (out, C, H, W))) ─ Q ─ DQ ─ Relu ─▶

A per-tensor Q/DQ is element-wise with one scale and zero point: it carries like any element-wise op.
It carries in both scopes straight after a convolution, so that the Conv's output Q sits right behind
it, as QDQ compilers (and onnxruntime's QLinearConv fusion) match DQ → Conv → Q.
"""

from __future__ import annotations

from typing import ClassVar

from .rule import Moved, Rule, operand_reason


class QuantDequant(Rule):
    name = "quantize-dequantize"
    onnx = ("QuantizeLinear", "DequantizeLinear")
    not_at: ClassVar[dict[str, str]] = {
        "torch": "fxconv converts PyTorch models before they are quantised (pt2e quantises the converted graph)",
        "aten": "fxconv converts PyTorch models before they are quantised (pt2e quantises the converted graph)",
    }
    after_conv = True

    def read_onnx(self, node, ctx) -> dict | None:
        per_tensor = all(ctx.single(v) for v in node.inputs[1:] if v is not None)
        return {} if per_tensor and not ctx.attribute("block_size", 0) else None

    def check(self, op, layout, formed) -> str | None:
        return operand_reason(op, layout, formed, others_allowed=False)

    def rewrite(self, op, layout, ctx, build) -> Moved:
        return Moved(build.copy(op, {op.data.value: ctx.form(op.data.value)}), layout)
