"""Write an exported model at an older opset (13–17) than the exporter's lowest (18).

``torch.onnx.export`` writes opset 18 and later; for older ones it hands the model to ONNX's version
converter, which has no down-adapter for many ops (Relu 14 → 13 fails) and then silently keeps 18.
Between opset 13 and 18 most ops that changed only gained types or attributes the exporter does not
set; those keep their meaning when the opset is lowered. The few that changed form are rewritten
(the axes of ReduceMean/Max/Min moved from an attribute to an input in 18, Split's sizes likewise,
Reshape gained ``allowzero`` in 14, Shape its ``start``/``end`` in 15 (a Slice before), HardSwish
arrived in 14 as ``x · HardSigmoid(x, 1/6, 1/2)``).
An op with no form at the target opset (LayerNormalization before 17) is an error that names it and
the opsets that are possible.

Before:  opset 18  ReduceMean(x, axes=[2, 3] as an input), Reshape(x, s, allowzero=1), HardSwish(x)
After:   opset 13  ReduceMean(x, axes=[2, 3] as an attribute), Reshape(x, s), x · HardSigmoid(x)
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from ._tidy import constant_array
from .errors import OnnxError

# Ops whose versions between 13 and 18 only added input types, or attributes that are absent here
# (checked in _same_meaning): lowering the opset leaves their meaning as it is.
_SAME_MEANING = {
    "Relu", "Add", "Sub", "Mul", "Div", "Pow", "Identity", "Where", "LeakyRelu", "PRelu", "CumSum",
    "GreaterOrEqual", "LessOrEqual", "BatchNormalization", "Pad", "ScatterND", "ScatterElements",
}
_NEW_ATTRIBUTES = {"BatchNormalization": "training_mode", "ScatterND": "reduction", "ScatterElements": "reduction"}
_AXES_AS_INPUT = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                  "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}  # since opset 18


def lower_opset(model: ir.Model, opset: int) -> None:
    """Rewrite ``model`` (opset 18) in place to the default-domain ``opset`` (13–17)."""
    current = model.opset_imports[""]
    blocking: dict[str, int] = {}
    for node in [n for n in model.graph if n.domain in ("", "ai.onnx")]:
        now = onnx.defs.get_schema(node.op_type, current).since_version
        try:
            then = onnx.defs.get_schema(node.op_type, opset).since_version
        except onnx.defs.SchemaError:
            then = None
        if then == now or (then is not None and _same_meaning(node)):
            continue
        if node.op_type in _AXES_AS_INPUT and opset < 18 and _axes_to_attribute(node):
            continue
        if node.op_type == "Split" and opset < 18 and _split_sizes(model.graph, node):
            continue
        if node.op_type == "Reshape" and _drop_allowzero(node):
            continue
        if node.op_type == "Shape" and opset < 15:
            _shape_then_slice(model.graph, node)
            continue
        if node.op_type == "HardSwish" and opset < 14:
            _hard_sigmoid_times_x(model.graph, node)
            continue
        blocking[node.op_type] = now
    if blocking:
        lowest = max(blocking.values())
        ops = ", ".join(f"{op} (its form since opset {v})" for op, v in sorted(blocking.items()))
        raise OnnxError(f"opset {opset} cannot express this model: it uses {ops}; opsets {lowest} and later work")
    model.opset_imports[""] = opset
    ir_passes.RemoveUnusedNodesPass()(model)  # the axes inputs that became attributes


def _same_meaning(node: ir.Node) -> bool:
    """An op of _SAME_MEANING that does not use what its newer versions added."""
    if node.op_type not in _SAME_MEANING:
        return False
    extra = _NEW_ATTRIBUTES.get(node.op_type)
    if extra is not None and node.attributes.get(extra) is not None and node.attributes[extra].value not in (0, "none"):
        return False
    if node.op_type == "Pad" and len(node.inputs) > 3:  # the axes input arrived in 18
        return False
    return not (node.op_type == "BatchNormalization" and len(node.outputs) > 1)


def _axes_to_attribute(node: ir.Node) -> bool:
    """Move a constant axes input (input 1) into the attribute it was before opset 18."""
    noop = node.attributes.pop("noop_with_empty_axes", None)  # 18's: what an empty axes input means
    if len(node.inputs) < 2 or node.inputs[1] is None:
        return noop is None or noop.value == 0  # no axes: every axis, as before 18
    axes = constant_array(node.inputs[1])
    if axes is None or axes.size == 0:
        return False
    node.attributes["axes"] = ir.AttrInt64s("axes", [int(a) for a in axes])
    node.resize_inputs(1)
    return True


def _split_sizes(graph: ir.Graph, node: ir.Node) -> bool:
    """Split with ``num_outputs`` (18) → Split with a sizes input (13), from the static input shape."""
    count = node.attributes.get_int("num_outputs")
    if count is None:
        return True  # already the sizes-input form of 13
    shape = node.inputs[0].shape
    axis = node.attributes.get_int("axis", 0)
    if shape is None or not isinstance(shape[axis], int):
        return False
    length = shape[axis]
    chunk = -(-length // count)
    sizes = [chunk] * (length // chunk) + ([length % chunk] if length % chunk else [])
    value = ir.Value(name=f"{node.name}_sizes", const_value=ir.tensor(sizes, dtype=ir.DataType.INT64))
    graph.register_initializer(value)
    node.resize_inputs(2)
    node.replace_input_with(1, value)
    del node.attributes["num_outputs"]
    return True


def _drop_allowzero(node: ir.Node) -> bool:
    """Reshape before 14 has no ``allowzero``: fine when the target shape holds no 0."""
    shape = constant_array(node.inputs[1])
    if shape is None or 0 in shape:
        return False
    node.attributes.pop("allowzero", None)
    return True


def _hard_sigmoid_times_x(graph: ir.Graph, node: ir.Node) -> None:
    """HardSwish(x) = x · max(0, min(1, x/6 + 1/2)) = x · HardSigmoid(x, alpha=1/6, beta=1/2)."""
    x = node.inputs[0]
    gate = ir.node("HardSigmoid", [x], attributes={"alpha": 1 / 6, "beta": 0.5}, name=f"{node.name}_gate")
    product = ir.node("Mul", [x, gate.outputs[0]], name=node.name)
    ir.convenience.replace_nodes_and_values(graph, node, [node], [gate, product], node.outputs, product.outputs)


def _shape_then_slice(graph: ir.Graph, node: ir.Node) -> None:
    """Shape(x, start, end) (15) = Slice(Shape(x), [start], [end]) (13); a plain Shape is the same in both."""
    start, end = node.attributes.pop("start", None), node.attributes.pop("end", None)
    if start is None and end is None:
        return
    bounds = []
    for name, attr, default in (("starts", start, 0), ("ends", end, 2**62)):
        tensor = ir.tensor([attr.value if attr else default], dtype=ir.DataType.INT64)
        value = ir.Value(name=f"{node.name}_{name}", const_value=tensor)
        graph.register_initializer(value)
        bounds.append(value)
    shape = ir.node("Shape", [node.inputs[0]], name=f"{node.name}_whole")
    part = ir.node("Slice", [shape.outputs[0], *bounds], name=node.name)
    ir.convenience.replace_nodes_and_values(graph, node, [node], [shape, part], node.outputs, part.outputs)
