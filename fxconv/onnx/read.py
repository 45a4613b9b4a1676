"""Reading an ONNX graph for the engine: its nodes, inferred shapes, constants, Linears and carried ops.

Linears are read in ``linears``, constants in ``values``.

Shapes come from ONNX shape inference; when it leaves a Linear's dims unknown (the TorchScript
exporter's transformers compute their Reshapes at run time), onnxruntime's symbolic shape inference,
which follows such arithmetic, fills them in.
"""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir

from ..carry import CARRIED, Input, Op
from ..check import without_weights
from ..engine import Linear
from ..errors import OnnxError
from ..report import Skipped
from .linears import read_linear
from .values import all_values, numbers


def _rule_index(rules: tuple) -> dict[str, list]:
    """What each ONNX op type is read by: the rules in their order."""
    index: dict[str, list] = {}
    for rule in rules:
        for op_type in rule.onnx:
            index.setdefault(op_type, []).append(rule)
    return index


class OnnxView:
    """The engine's view of an ONNX graph, with every value's dims (an int where fixed, None where free)."""

    static_sizes = True  # a Reshape's sizes must be known here

    def __init__(self, model: ir.Model, shapes: dict[str, tuple], rules: tuple = CARRIED):
        self.graph = model.graph
        self.index = _rule_index(rules)
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

    def expanded(self, value) -> tuple[ir.Value, tuple] | None:
        """``(x, sizes)`` for a value made by ``Expand(x, shape)`` of the same rank, shape a constant; else None."""
        producer = value.producer()
        if producer is None or producer.op_type != "Expand" or numbers(producer.inputs[1]) is None:
            return None
        sizes = tuple(int(s) for s in numbers(producer.inputs[1]))
        return (producer.inputs[0], sizes) if len(self.shape(producer.inputs[0]) or ()) == len(sizes) else None

    def describe(self, op: ir.Node | None) -> str:
        return "a graph input" if op is None else f"{op.op_type} node {op.name!r}"

    # -- carried ops -----------------------------------------------------------------------------

    def read(self, op: ir.Node) -> Op | None:
        """``op`` as the first rule that reads it sees it, or None."""
        if op.domain not in ("", "ai.onnx") or not op.inputs or op.inputs[0] is None:
            return None
        context = _ReadContext(self, op)
        for rule in self.index.get(op.op_type, ()):
            params = rule.read_onnx(op, context)
            if params is not None:
                inputs = tuple(Input(v, self.shape(v), self.is_constant(v), self.single(v)) for v in self.inputs(op))
                return Op(rule, op, inputs, self.shape(op.outputs[0]), params)
        return None

    # -- Linears ---------------------------------------------------------------------------------

    def linear(self, node: ir.Node) -> Linear | Skipped | None:
        """``node`` read as a Linear; a Skipped if it is one that can't convert; None if it is none (``linears``)."""
        return read_linear(self, node)


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


def inferred_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Every value's dims by name: an int where fixed, None where free (see the module docstring)."""
    shapes = _dims(_inferred(without_weights(proto)).graph)

    def known(name: str) -> bool:  # the features, the last dim, fixed
        return bool(shapes.get(name)) and shapes[name][-1] is not None

    if all(known(n.input[0]) and known(n.output[0]) for n in proto.graph.node if n.op_type in ("Gemm", "MatMul")):
        return shapes
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    quiet = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level, quiet.level = quiet.level, logging.ERROR  # it warns of every dim it merges
    try:  # with the weights: it reads the constants it folds (past 2 GB it fails, and the Linears are reported)
        symbolic = SymbolicShapeInference.infer_shapes(proto, auto_merge=True)
    except Exception:  # it is a fallback: without it the Linears it would have shaped are reported
        return shapes
    finally:
        quiet.setLevel(level)
    better = {name: dims for name, dims in _dims(symbolic.graph).items()
              if name not in shapes or dims.count(None) < shapes[name].count(None)}  # fmt: skip
    return shapes | better


def inferred_value_info(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The type and shape of every inner value, as onnx's shape inference (with data propagation) finds them."""
    return list(_inferred(without_weights(proto)).graph.value_info)


def _inferred(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(proto, data_prop=True)
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
