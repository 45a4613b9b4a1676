"""Constants in an ONNX graph: an initializer or a ``Constant``, through ``Identity`` or a ``DequantizeLinear``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir


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


def from_constants(value: ir.Value, depth: int = 8) -> bool:
    """Whether ``value`` is computed by nodes from constants alone (a Transpose of a weight, say)."""
    producer = value.producer()
    if producer is None or depth == 0 or not producer.inputs:
        return False
    return all(v is None or numbers(v) is not None or from_constants(v, depth - 1) for v in producer.inputs)


def all_values(graph: ir.Graph):
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in graph.all_nodes():
        yield from node.outputs
