"""Tidy an exported ONNX graph into the file a convolution-only toolchain takes.

Before (converted AlexNet, ``layout="folded"``, exported at a static batch of 1):

    AveragePool → Transpose(1,2,0,3) → Reshape(1,256,6,6) → Conv(W=view_1, stride 6) → … → Conv
                → Reshape(1000,1,1,1) → Transpose(2,0,1,3) → Reshape(1,1000)
After:

    AveragePool → Conv(W=classifier.1.weight, stride 1) → … → Conv → Reshape(1,1000)

Every rule is exact:

* Re-layouts of constants (``linear.weight.unflatten(...)`` → Reshape, Transpose, ...) are folded into
  initializers: no node computes on constants alone, and each Conv reads a weight of its own shape. The
  folded weight takes the name of the weight it re-lays out (``classifier.1.weight``), so configs and
  quantisation overrides that name the Linear's weight still find it.
* A Transpose whose permutation keeps the order of the axes longer than 1 moves size-1 axes only: it
  is a Reshape to its output shape (at a static batch of 1 the folded layout's batch moves are such);
  so is a Squeeze, Unsqueeze or Flatten whose shapes are static.
* A Reshape of a Reshape is a Reshape of the first one's input (both keep row-major order), and a
  Reshape to its input's shape is no op at all.
* A Conv axis on which the input is exactly one kernel long, unpadded, has one output position whatever
  the stride: stride 1 says the same and is what NPU compilers expect of a first layer.

The shape rules need static shapes; with a dynamic batch they leave the batch moves in place, as they
must (onnxruntime runs the folded layout as one GEMM for the whole batch).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes
from onnxscript.optimizer import fold_constants, optimize

from .onnx.names import name_after_originals

_RELAYOUT_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"}
_RESHAPES = {"Squeeze", "Unsqueeze", "Flatten"}  # at static shapes, Reshapes to their output shape


def tidy(model: ir.Model) -> ir.Model:
    """Optimise an unoptimised export (``torch.onnx.export(..., optimize=False)``) as the exporter would,
    then apply the rules above; return the model."""
    weights = _relaid_weights(model.graph)  # before the optimiser folds the small ones away unnamed
    model = optimize(model)
    graph = model.graph
    fold_constants(model, should_fold=lambda node: True if node.op_type in _RELAYOUT_OPS else None)
    ir_passes.RemoveUnusedNodesPass()(model)  # drops the weights that were folded away
    name_after_originals(graph, {v: weights[v.name] for v in graph.initializers.values() if v.name in weights})
    simplify_moves(model)
    ir_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    return model


def simplify_moves(model: ir.Model) -> None:
    """The shape rules above: Transposes of size-1 axes as Reshapes, Reshape chains collapsed, unit strides."""
    graph = model.graph
    for node in list(graph):
        if (node.op_type == "Transpose" and _moves_unit_axes(node)) or (
            node.op_type in _RESHAPES and _static(node.inputs[0]) is not None and _static(node.outputs[0]) is not None
        ):
            _as_reshape(graph, node)
    for node in list(graph):
        if node.op_type == "Reshape":
            _collapse_reshape(node)
        elif node.op_type == "Conv":
            _unit_strides(node)
    ir_passes.RemoveUnusedNodesPass()(model)


def _relaid_weights(graph: ir.Graph) -> dict[str, str]:
    """{name of a re-layout's output: name of the initializer it re-lays out}, through chains."""
    roots: dict[str, str] = {}
    for node in graph:
        data = node.inputs[0] if node.inputs else None
        if node.op_type not in _RELAYOUT_OPS or data is None:
            continue
        root = roots.get(data.name) or (data.name if data.is_initializer() else None)
        if root is not None:
            roots[node.outputs[0].name] = root
    return roots


def constant_array(value: ir.Value | None):
    """A constant value's numbers (a numpy array), or None if it is computed at run time."""
    return value.const_value.numpy() if value is not None and value.const_value is not None else None


def _static(value: ir.Value | None) -> tuple[int, ...] | None:
    shape = value.shape if value is not None else None
    return tuple(shape) if shape is not None and shape.is_static() else None


def _moves_unit_axes(node: ir.Node) -> bool:
    """Whether a Transpose only moves axes of length 1 (the order of all others is kept)."""
    shape = _static(node.inputs[0])
    perm = node.attributes.get_ints("perm")
    if shape is None or perm is None:
        return False
    long_axes = [axis for axis in perm if shape[axis] != 1]
    return long_axes == sorted(long_axes)


def _as_reshape(graph: ir.Graph, node: ir.Node) -> None:
    """Replace a node that keeps the elements' order (a Transpose of size-1 axes, a Squeeze, ...) by the
    Reshape to its (static) output shape."""
    output = node.outputs[0]
    shape = ir.Value(name=f"{output.name}_shape", const_value=ir.tensor(np.array(_static(output), np.int64)))
    graph.register_initializer(shape)
    reshape = ir.node("Reshape", [node.inputs[0], shape], name=f"{node.name}_as_reshape")
    ir.convenience.replace_nodes_and_values(graph, node, [node], [reshape], [output], reshape.outputs)


def _collapse_reshape(node: ir.Node) -> None:
    """Read a Reshape's data past an earlier Reshape; make a Reshape to the same shape a pass-through."""
    data, shape = node.inputs[0], constant_array(node.inputs[1])
    copies_dims = shape is None or (0 in shape and not node.attributes.get_int("allowzero", 0))
    producer = data.producer()
    if producer is not None and producer.op_type == "Reshape" and not copies_dims:
        node.replace_input_with(0, producer.inputs[0])  # producers come first: chains collapse whole
        data = producer.inputs[0]
    output = node.outputs[0]
    if _static(data) is not None and _static(data) == _static(output) and not output.is_graph_output():
        ir.convenience.replace_all_uses_with(output, data)


def _unit_strides(node: ir.Node) -> None:
    """Stride 1 on each axis where the unpadded input is exactly one kernel long."""
    shape, weight = _static(node.inputs[0]), _static(node.inputs[1])
    strides = node.attributes.get_ints("strides")
    padded_by_rule = node.attributes.get_string("auto_pad", "NOTSET") != "NOTSET"
    if shape is None or weight is None or strides is None or padded_by_rule:
        return
    spatial = len(shape) - 2
    pads = node.attributes.get_ints("pads") or (0,) * 2 * spatial
    dilations = node.attributes.get_ints("dilations") or (1,) * spatial
    new = tuple(
        1 if shape[2 + i] == weight[2 + i] and pads[i] == pads[spatial + i] == 0 and dilations[i] == 1 else s
        for i, s in enumerate(strides)
    )
    if new != tuple(strides):
        node.attributes["strides"] = ir.AttrInt64s("strides", new)
