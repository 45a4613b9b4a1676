"""Reading the Linears of an ONNX graph — Gemm, MatMul [+ Add] — as ``fxconv.engine.Linear`` records.

A *Linear* is ``Gemm(x, B, C)`` (``alpha·x·B' + beta·C``, B' = B or Bᵀ by ``transB``; ``transA`` is
reported) or ``MatMul(x, B)`` followed by an ``Add`` of a bias, B a constant: an initializer, a
``Constant``, through ``Identity`` (the TorchScript exporter shares equal initializers that way), or
any of these through a ``DequantizeLinear`` (a QDQ file's int8 weight). Every Gemm/MatMul with a
constant operand is converted or reported with a reason (a constant on the left, a weight computed by
nodes, per-input-feature or blocked quantisation, QOperator nodes, a subgraph, ...).
"""

from __future__ import annotations

import ast
import contextlib

import onnx_ir as ir

from ..codes import skip
from ..engine import GEMM, MATMUL, Linear
from ..report import Skipped
from .values import Const, constant, from_constants

_QOPERATOR = frozenset({"QLinearMatMul", "MatMulInteger", "QGemm"})


def read_linear(view, node: ir.Node) -> Linear | Skipped | None:
    """``node`` read as a Linear; a Skipped if it is one that can't convert; None if it is none."""
    if node.op_type in _QOPERATOR and node.domain in ("", "ai.onnx", "com.microsoft"):
        return skip(name_of(node, []), "qoperator", f"{node.op_type} is the QOperator format; fxconv rewrites "
                    "QDQ files (quantize with QuantFormat.QDQ)")
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Einsum":
        weights = [c for c in map(constant, node.inputs) if c is not None]
        if not weights or len(weights) == len(node.inputs):
            return None  # no weight, or constants alone (folded by any optimizer)
        name = name_of(node, weights)
        return skip(name, "einsum", f"an einsum ({node.attributes.get_string('equation', '?')!r}) with the weight "
                    f"{weights[0].stored.name!r} {weights[0].array.shape}")
    if node.op_type not in ("Gemm", "MatMul"):
        return None
    inputs = list(node.inputs)
    x, w = (constant(v) for v in inputs[:2])
    name = name_of(node, [x, w])
    if node.graph is not view.graph:
        if x is None and w is None:
            return None
        return skip(name, "subgraph", "it sits in a subgraph (an If, Loop or Scan body), which fxconv does not rewrite")
    if w is None:
        if x is not None:
            return skip(name, "constant-left", f"its constant is the left operand of the {node.op_type}: "
                        "it mixes the positions, not the features")
        gathered = next((g for g in map(_gathered, inputs[:2]) if g is not None), None)
        if gathered is not None:
            return skip(name_of(node, [gathered]), "gathered-weight", f"its operand is gathered per row from the "
                        f"weight {gathered.stored.name!r} {gathered.array.shape} (a mixture of experts), so each row "
                        "meets another weight")
        computed = next((v for v in inputs[:2] if from_constants(v)), None)
        if computed is not None:
            return skip(name, "computed-weight", f"its operand {computed.name!r} is computed from constants "
                        "by nodes: fold constants first (onnxsim, onnxscript's optimizer)")
        return None  # activation times activation (attention scores): not a Linear
    if x is not None:
        return skip(name, "constant-only", "both operands are constants: constant folding removes it")
    spelling = GEMM if node.op_type == "Gemm" else MATMUL
    attrs = node.attributes
    if node.op_type == "Gemm" and attrs.get_int("transA", 0):
        return skip(name, "transA", "Gemm with transA=1 reads its input transposed, (K, N): the batch is not "
                    "its first dim")
    if w.array.ndim != 2:
        return skip(name, "weight-rank", f"its weight has shape {w.array.shape}; a Linear's is 2-D")
    transposed = not (spelling.transposes_weight and attrs.get_int(spelling.transposes_weight, 0))
    out = w.array.shape[1 if transposed else 0]
    bias, output = None, node.outputs[0]
    alpha = attrs.get_float(spelling.alpha, 1.0) if spelling.alpha else 1.0
    beta = attrs.get_float(spelling.beta, 1.0) if spelling.beta else 1.0
    if spelling.bias is not None and len(inputs) > 2 and inputs[2] is not None:
        bias = constant(inputs[2])
        if bias is None or bias.array.shape not in ((), (1,), (out,), (1, 1), (1, out)):
            return skip(name, "bias", "its C operand is not a constant bias of shape (out,), (1, out) or ()")
    elif spelling.bias_after and len(output.uses()) == 1 and not output.is_graph_output():
        add, index = next(iter(output.uses()))
        other = constant(add.inputs[1 - index]) if add.op_type == "Add" and len(add.inputs) == 2 else None
        if other is not None and other.array.size == out and view.shape(add.outputs[0]) == view.shape(output):
            bias, output = other, add.outputs[0]
    call = Linear(node, output, inputs[0], w, transposed, bias, alpha, beta, name)
    refusal = _weight_refusal(call)
    return call if refusal is None else skip(name, *refusal)


_VIEWS = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Cast", "Identity", "Expand"})


def _gathered(value: ir.Value | None) -> Const | None:
    """The constant ``value`` is gathered from by run-time indices (``Gather``/``GatherND``, through
    views), or None."""
    gathered = False
    while value is not None and constant(value) is None:
        producer = value.producer()
        if producer is None or producer.domain not in ("", "ai.onnx"):
            return None
        if producer.op_type in ("Gather", "GatherND", "GatherElements"):
            gathered = True
        elif producer.op_type not in _VIEWS:
            return None
        value = producer.inputs[0]
    return constant(value) if gathered else None


def _weight_refusal(call: Linear) -> tuple[str, str] | None:
    """Why a (quantised) Linear's weight or bias cannot be re-laid out for a Conv, or None."""
    out_axis = 1 if call.transposed else 0
    w, b = call.weight, call.bias
    if w.dequantize is not None and w.dequantize.attributes.get_int("block_size", 0):
        return "quant-blocked", "its weight is quantised in blocks, which a Conv weight's DequantizeLinear cannot keep"
    if w.axis is not None and w.axis != out_axis:
        return "quant-axis", "its weight is quantised per input feature; a Conv weight's channel axis is its output's"
    if w.dequantize is not None and call.alpha != 1.0:
        return "alpha", f"Gemm alpha={call.alpha} scales a quantised weight: fxconv does not requantise"
    along_other_axis = b is not None and b.axis is not None and b.array.shape[b.axis] != b.array.size
    if b is not None and b.dequantize is not None and (call.beta != 1.0 or along_other_axis):
        return "bias", "its quantised bias is scaled by beta or quantised along another axis than the output features"
    return None


def name_of(node: ir.Node, constants: list[Const | None]) -> str:
    """A Linear's name in the report: the PyTorch module it was exported from, else its weight, else its node."""
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")  # the dynamo exporter's module path
    if scopes:
        with contextlib.suppress(ValueError, SyntaxError):
            path = ast.literal_eval(scopes)
            if isinstance(path, list) and len(path) >= 2 and path[-2]:
                return str(path[-2])
    weight = next((c for c in reversed(constants) if c is not None), None)
    generated = weight is None or not weight.stored.name or weight.stored.name.startswith("onnx::")  # TorchScript's
    return (node.name or node.op_type) if generated else weight.stored.name
