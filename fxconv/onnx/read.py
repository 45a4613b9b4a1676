"""Reading an ONNX graph for the engine: its nodes, inferred shapes, constants, Linears and carried ops.

A *Linear* is ``Gemm(x, B, C)`` (``alpha·x·B' + beta·C``, B' = B or Bᵀ by ``transB``; ``transA`` is
reported) or ``MatMul(x, B)`` followed by an ``Add`` of a bias, B a constant: an initializer, a
``Constant``, through ``Identity`` (the TorchScript exporter shares equal initializers that way), or
any of these through a ``DequantizeLinear`` (a QDQ file's int8 weight). Every Gemm/MatMul with a
constant operand is converted or reported with a reason (a constant on the left, a weight computed by
nodes, per-input-feature or blocked quantisation, QOperator nodes, a subgraph, ...).

Shapes come from ONNX shape inference; when it leaves a Linear's dims unknown (the TorchScript
exporter's transformers compute their Reshapes at run time), onnxruntime's symbolic shape inference,
which follows such arithmetic, fills them in.
"""

from __future__ import annotations

import ast
import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from ..carry import CARRIED, Input, Op
from ..codes import skip
from ..engine import GEMM, MATMUL, Linear
from ..errors import OnnxError
from ..report import Skipped

_QOPERATOR = frozenset({"QLinearMatMul", "MatMulInteger", "QGemm"})
_INDEX: dict[str, list] = {}
for _rule in CARRIED:
    for _op_type in _rule.onnx:
        _INDEX.setdefault(_op_type, []).append(_rule)


@dataclass(frozen=True)
class Const:
    """A constant operand: an initializer or ``Constant``, possibly read through a ``DequantizeLinear``."""

    value: ir.Value  # what the Linear reads
    stored: ir.Value  # the value holding the numbers (an initializer, a Constant's output)
    array: np.ndarray  # those numbers (int8/int32 for a quantised one)
    dequantize: ir.Node | None = None
    axis: int | None = None  # the per-channel axis of ``array``; None when per-tensor or not quantised


def numbers(value: ir.Value | None) -> np.ndarray | None:
    """A constant's numbers, also through Identity nodes; None if it is computed at run time."""
    while value is not None and (producer := value.producer()) is not None and producer.op_type == "Identity":
        value = producer.inputs[0]
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    return None if tensor is None else tensor.numpy()


def constant(value: ir.Value | None) -> Const | None:
    """The constant behind ``value`` (through a DequantizeLinear too), or None if it is computed at run time."""
    if value is None:
        return None
    producer = value.producer()
    if producer is not None and producer.op_type == "DequantizeLinear" and producer.domain in ("", "ai.onnx"):
        stored, scale = numbers(producer.inputs[0]), numbers(producer.inputs[1])
        zero = producer.inputs[2] if len(producer.inputs) > 2 else None
        if stored is None or scale is None or (zero is not None and numbers(zero) is None):
            return None
        axis = producer.attributes.get_int("axis", 1) % max(stored.ndim, 1) if scale.size > 1 else None
        return Const(value, producer.inputs[0], stored, producer, axis)
    array = numbers(value)
    return None if array is None else Const(value, value, array)


def _from_constants(value: ir.Value, depth: int = 8) -> bool:
    """Whether ``value`` is computed by nodes from constants alone (a Transpose of a weight, say)."""
    producer = value.producer()
    if producer is None or depth == 0 or not producer.inputs:
        return False
    return all(v is None or numbers(v) is not None or _from_constants(v, depth - 1) for v in producer.inputs)


class OnnxView:
    """The engine's view of an ONNX graph, with every value's dims (an int where fixed, None where free)."""

    static_sizes = True  # a Reshape's sizes must be known here

    def __init__(self, model: ir.Model, shapes: dict[str, tuple]):
        self.graph = model.graph
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 13))
        self.shapes = {v: shapes[v.name] for v in all_values(self.graph) if v.name in shapes}
        self._ops = list(self.graph.all_nodes())

    # -- the graph -------------------------------------------------------------------------------

    def ops(self) -> list[ir.Node]:
        return self._ops

    def alive(self, op: ir.Node) -> bool:
        return op.graph is self.graph  # subgraph bodies are not rewritten

    def output(self, op: ir.Node) -> ir.Value | None:
        return op.outputs[0] if op.outputs else None

    def inputs(self, op: ir.Node) -> list[ir.Value]:
        return [v for v in op.inputs if v is not None]

    def shape(self, value) -> tuple | None:
        return self.shapes.get(value)

    def producer(self, value: ir.Value) -> ir.Node | None:
        return value.producer()

    def users(self, value: ir.Value) -> list[ir.Node]:
        return [node for node, _ in value.uses()]

    def is_constant(self, value) -> bool:
        return numbers(value) is not None

    def single(self, value) -> bool:
        array = numbers(value)
        return array is not None and array.size == 1

    def writes_input(self, op: ir.Node) -> bool:
        return False

    def describe(self, op: ir.Node | None) -> str:
        return "a graph input" if op is None else f"{op.op_type} node {op.name!r}"

    # -- carried ops -----------------------------------------------------------------------------

    def read(self, op: ir.Node) -> Op | None:
        """``op`` as the first rule that reads it sees it, or None."""
        if op.domain not in ("", "ai.onnx") or not op.inputs or op.inputs[0] is None:
            return None
        context = _ReadContext(self, op)
        for rule in _INDEX.get(op.op_type, ()):
            params = rule.read_onnx(op, context)
            if params is not None:
                inputs = tuple(Input(v, self.shape(v), self.is_constant(v), self.single(v)) for v in self.inputs(op))
                return Op(rule, op, inputs, self.shape(op.outputs[0]), params)
        return None

    # -- Linears ---------------------------------------------------------------------------------

    def linear(self, node: ir.Node) -> Linear | Skipped | None:
        """``node`` read as a Linear; a Skipped if it is one that can't convert; None if it is none."""
        if node.op_type in _QOPERATOR and node.domain in ("", "ai.onnx", "com.microsoft"):
            return skip(name_of(node, []), "qoperator", f"{node.op_type} is the QOperator format; fxconv rewrites "
                        "QDQ files (quantize with QuantFormat.QDQ)")
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("Gemm", "MatMul"):
            return None
        inputs = list(node.inputs)
        x, w = (constant(v) for v in inputs[:2])
        name = name_of(node, [x, w])
        if node.graph is not self.graph:
            if x is None and w is None:
                return None
            return skip(name, "subgraph", "it sits in a subgraph (an If, Loop or Scan body), which fxconv does not rewrite")
        if w is None:
            if x is not None:
                return skip(name, "constant-left", f"its constant is the left operand of the {node.op_type}: "
                            "it mixes the positions, not the features")
            computed = next((v for v in inputs[:2] if _from_constants(v)), None)
            if computed is not None:
                return skip(name, "computed-weight", f"its operand {computed.name!r} is computed from constants "
                            "by nodes: fold constants first (onnxsim, onnxscript's optimizer)")
            return None  # activation times activation (attention scores): not a Linear
        if x is not None:
            return skip(name, "constant-only", "both operands are constants: constant folding removes it")
        spelling = GEMM if node.op_type == "Gemm" else MATMUL
        attrs = node.attributes
        if node.op_type == "Gemm" and attrs.get_int("transA", 0):
            return skip(name, "transA", "Gemm with transA=1 reads its input transposed, (K, N): the batch is not its first dim")
        if w.array.ndim != 2:
            return skip(name, "weight-rank", f"its weight has shape {w.array.shape}; a Linear's is 2-D")
        transposed = not (spelling.transposes_weight and attrs.get_int(spelling.transposes_weight, 0))
        out = w.array.shape[1 if transposed else 0]
        bias, output = None, node.outputs[0]
        alpha = attrs.get_float(spelling.alpha, 1.0) if spelling.alpha else 1.0
        beta = attrs.get_float(spelling.beta, 1.0) if spelling.beta else 1.0
        if spelling.bias is not None and len(inputs) > 2 and inputs[2] is not None:
            bias = constant(inputs[2])
            if bias is None or bias.array.size not in (1, out) or bias.array.ndim > 2 or (bias.array.ndim == 2 and bias.array.shape[0] != 1):
                return skip(name, "bias", "its C operand is not a constant bias of shape (out,), (1, out) or ()")
        elif spelling.bias_after and len(output.uses()) == 1 and not output.is_graph_output():
            add, index = next(iter(output.uses()))
            other = constant(add.inputs[1 - index]) if add.op_type == "Add" and len(add.inputs) == 2 else None
            if other is not None and other.array.size == out and self.shape(add.outputs[0]) == self.shape(output):
                bias, output = other, add.outputs[0]
        call = Linear(node, output, inputs[0], w, transposed, bias, alpha, beta, name)
        refusal = _weight_refusal(call)
        return call if refusal is None else skip(name, *refusal)


class _ReadContext:
    """What a rule's ``read_onnx`` may ask about the node it reads."""

    def __init__(self, view: OnnxView, node: ir.Node):
        self.view, self.node, self.opset = view, node, view.opset

    def attribute(self, name: str, default=None):
        attribute = self.node.attributes.get(name)
        return default if attribute is None else attribute.value

    def shape(self, value):
        return self.view.shape(value)

    def single(self, value) -> bool:
        return self.view.single(value)

    def numbers(self, value):
        found = numbers(value)
        return None if found is None else [int(v) for v in found.reshape(-1)]

    def only_first_output_read(self) -> bool:
        return not any(v.uses() or v.is_graph_output() for v in self.node.outputs[1:])

    def axes(self) -> list[int] | None:
        """A reduction's axes: an attribute before opset 18 (13 for ReduceSum), an input since."""
        node = self.node
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            found = numbers(node.inputs[1])
            return None if found is None else [int(a) for a in found.reshape(-1)]
        return self.attribute("axes")


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
    if b is not None and b.dequantize is not None and (call.beta != 1.0 or (b.axis is not None and b.array.shape[b.axis] != b.array.size)):
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


def all_values(graph: ir.Graph):
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in graph.all_nodes():
        yield from node.outputs


def inferred_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Every value's dims by name: an int where fixed, None where free (see the module docstring)."""
    shapes = _infer(proto)

    def known(name: str) -> bool:  # the features, the last dim, fixed
        return bool(shapes.get(name)) and shapes[name][-1] is not None

    if all(known(n.input[0]) and known(n.output[0]) for n in proto.graph.node if n.op_type in ("Gemm", "MatMul")):
        return shapes
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    quiet = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level, quiet.level = quiet.level, logging.ERROR  # it warns of every dim it merges
    try:
        symbolic = SymbolicShapeInference.infer_shapes(proto, auto_merge=True)
    except Exception:  # it is a fallback: without it the Linears it would have shaped are reported
        return shapes
    finally:
        quiet.setLevel(level)
    better = {name: dims for name, dims in _dims(symbolic.graph).items()
              if name not in shapes or dims.count(None) < shapes[name].count(None)}  # fmt: skip
    return shapes | better


def _infer(proto: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    try:
        return _dims(onnx.shape_inference.infer_shapes(proto, data_prop=True).graph)
    except Exception as e:
        raise OnnxError(f"onnx shape inference fails on the model: {' '.join(str(e).split())[:300]}") from e


def _dims(graph: onnx.GraphProto) -> dict[str, tuple[int | None, ...]]:
    """The dims a graph's value_info, inputs, outputs and initializers declare."""
    shapes = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return shapes | {initializer.name: tuple(initializer.dims) for initializer in graph.initializer}
