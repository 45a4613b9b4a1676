"""Building ONNX nodes for the engine: its primitives as nodes of the file's own opset.

Squeeze/Unsqueeze/Reduce* are written in the opset's form (axes an attribute or an input), names are
kept — each Conv takes its Linear's node name, each value the rest of the graph reads keeps its name
(the outputs included), a re-laid weight its initializer's (``fxconv.onnx.names``) — and quantised
weights stay quantised: the int8 initializer is re-laid out like a float one (its per-channel axis, the
output features, becomes the Conv weight's axis 0) and read through a ``DequantizeLinear`` with the
same scale and zero point, so a QDQ-consuming compiler sees DQ → Conv.
"""

from __future__ import annotations

import contextlib

import numpy as np
import onnx_ir as ir

from ..layouts import KEEP
from .names import name_after_originals
from .read import OnnxView
from .values import all_values, numbers

_REDUCE = {"mean": "ReduceMean", "sum": "ReduceSum", "max": "ReduceMax", "min": "ReduceMin"}
_ALONG = {"softmax": "Softmax", "log_softmax": "LogSoftmax"}
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div"}


def apply_to_array(array: np.ndarray, steps: list) -> np.ndarray:
    """``fxconv.layouts`` steps applied to a constant's numbers."""
    for step in steps:
        kind = step[0]
        if kind == "permute":
            array = array.transpose(step[1])
        elif kind == "unsqueeze":
            for dim in step[1]:
                array = np.expand_dims(array, dim)
        elif kind == "squeeze":
            array = array.squeeze(tuple(step[1]))
        elif kind == "reshape":
            array = array.reshape([array.shape[i] if s == KEEP else s for i, s in enumerate(step[1])])
        elif kind == "unflatten":
            array = array.reshape(*array.shape[: step[1]], *step[2], *array.shape[step[1] + 1 :])
        elif kind == "flatten":
            array = array.reshape(*array.shape[: step[1]], -1)
    return np.ascontiguousarray(array)


class OnnxBuilder:
    """The engine's primitives on one ONNX graph; new nodes go before the node the walk is at."""

    def __init__(self, model: ir.Model, view: OnnxView):
        self.graph, self.view, self.opset = model.graph, view, view.opset
        self.anchor: ir.Node | None = None
        self.names = {v.name for v in all_values(self.graph)} | {n.name for n in self.graph.all_nodes()}
        self.relaid: dict[tuple, ir.Value] = {}  # (stored weight, how it is laid out) -> the Conv's weight
        self.originals: dict[ir.Value, str] = {}  # each re-laid initializer -> the name of the one it re-lays
        self.created: set[ir.Value] = set()  # every initializer the rewrite made
        self.dead_before = set(self.graph) - _live_nodes(self.graph)
        self.used_before = {v for v in self.graph.initializers.values() if v.uses()}

    @contextlib.contextmanager
    def at(self, op: ir.Node, meta_from: ir.Node):
        self.anchor = op
        yield

    @contextlib.contextmanager
    def meta_from(self, op: ir.Node):  # new ONNX nodes are named, not annotated
        yield

    # -- node making -----------------------------------------------------------------------------

    def _add(self, op: str, inputs, attributes: dict, named: ir.Node | str, num_outputs: int = 1) -> list[ir.Value]:
        """A new node before the anchor; given the node it replaces, it takes that one's name."""
        if isinstance(named, ir.Node):
            name, named.name = named.name, self._unique(f"{named.name}_replaced")
        else:
            name = self._unique(named)
        node = ir.node(op, inputs, attributes, num_outputs=num_outputs, name=name)
        for out in node.outputs:
            out.name = self._unique(f"{name}_out")
        self.graph.insert_before(self.anchor, node)
        return list(node.outputs)

    def _initializer(self, array: np.ndarray, name: str, relays: ir.Value | None = None) -> ir.Value:
        value = ir.Value(name=self._unique(name), const_value=ir.tensor(np.ascontiguousarray(array)))
        self.graph.register_initializer(value)
        self.created.add(value)
        if relays is not None:
            self.originals[value] = relays.name
        return value

    def _unique(self, name: str) -> str:
        candidate, n = name, 0
        while candidate in self.names:
            n += 1
            candidate = f"{name}.{n}"
        self.names.add(candidate)
        return candidate

    def _axes(self, op: str, value: ir.Value, axes, attributes: dict | None = None) -> ir.Value:
        """An op taking axes (Squeeze, Unsqueeze, Reduce*): an attribute before opset 13 (18 for the
        reductions but ReduceSum), an input since."""
        attributes = dict(attributes or {})
        since = 18 if op.startswith("Reduce") and op != "ReduceSum" else 13
        if self.opset < since:
            return self._add(op, [value], {**attributes, "axes": list(axes)}, op.lower())[0]
        axes = self._initializer(np.array(list(axes), np.int64), "axes")
        return self._add(op, [value, axes], attributes, op.lower())[0]

    def apply(self, value: ir.Value, steps: list) -> ir.Value:
        for step in steps:
            kind = step[0]
            if kind == "permute":
                value = self._add("Transpose", [value], {"perm": list(step[1])}, "transpose")[0]
            elif kind == "unsqueeze":
                value = self._axes("Unsqueeze", value, _final_positions(step[1]))
            elif kind == "squeeze":
                value = self._axes("Squeeze", value, step[1])
            elif kind == "reshape":
                value = self.reshape(value, step[1])
            elif kind == "unflatten":
                value = self.reshape(value, (*(KEEP,) * step[1], *step[2]))
            elif kind == "flatten":
                value = self._add("Flatten", [value], {"axis": step[1]}, "flatten")[0] if step[1] == 1 else \
                    self.reshape(value, (*(KEEP,) * step[1], -1))
        return value

    def reshape(self, value: ir.Value, shape: tuple) -> ir.Value:
        sizes = np.array([0 if s == KEEP else s for s in shape], np.int64)
        return self._add("Reshape", [value, self._initializer(sizes, "shape")], {}, "reshape")[0]

    def constant(self, value: ir.Value, steps: list) -> ir.Value:
        return self._initializer(apply_to_array(numbers(value), steps), value.name)

    def copy(self, record, mapping: dict, any_rank: bool = False) -> ir.Value:
        """The node of ``record`` again, reading ``mapping[v]`` for each input ``v`` in it."""
        node = record.node
        inputs = [mapping.get(v, v) if v is not None else None for v in node.inputs]
        return self._add(node.op_type, inputs, dict(node.attributes), node, num_outputs=len(node.outputs))[0]

    def reduce(self, kind: str, value: ir.Value, dims: tuple) -> ir.Value:
        return self._axes(_REDUCE[kind], value, dims, {"keepdims": 1})

    def along(self, kind: str, value: ir.Value, dim: int) -> ir.Value:
        return self._add(_ALONG[kind], [value], {"axis": dim}, kind)[0]

    def binary(self, kind: str, a: ir.Value, b) -> ir.Value:
        if not isinstance(b, ir.Value):
            b = self._initializer(np.array(b, _dtype(a)), "scalar")
        return self._add(_BINARY[kind], [a, b], {}, kind)[0]

    def unary(self, kind: str, value: ir.Value) -> ir.Value:
        assert kind == "rsqrt"
        return self._add("Reciprocal", [self._add("Sqrt", [value], {}, "sqrt")[0]], {}, "rsqrt")[0]

    def slice(self, value: ir.Value, dim: int, start, end, step) -> ir.Value:
        bounds = [self._initializer(np.array([v], np.int64), name) for v, name in
                  ((0 if start is None else start, "starts"), (end, "ends"), (dim, "axes"), (step, "steps"))]
        return self._add("Slice", [value, *bounds], {}, "slice")[0]

    def where(self, condition: ir.Value, a, b) -> ir.Value:
        dtype = np.float32
        a, b = (self._initializer(np.array(v, dtype), "where") for v in (a, b))
        return self._add("Where", [condition, a, b], {}, "where")[0]

    def tensor(self, values: list, like: ir.Value) -> ir.Value:
        dtype = like.dtype.numpy() if like.dtype is not None else np.float32
        return self._initializer(np.array(values, dtype), "constant")

    def einsum(self, equation: str, *values: ir.Value) -> ir.Value:
        return self._add("Einsum", list(values), {"equation": equation}, "einsum")[0]

    def cat(self, values: list[ir.Value], dim: int) -> ir.Value:
        return self._add("Concat", list(values), {"axis": dim}, "concat")[0]

    def expand(self, value: ir.Value, sizes: tuple) -> ir.Value:
        return self._add("Expand", [value, self._initializer(np.array(sizes, np.int64), "sizes")], {}, "expand")[0]

    def sizes(self, value: ir.Value, dims) -> list[int]:
        shape = self.view.shape(value)
        return [shape[d] for d in dims]

    def epsilon_of(self, value: ir.Value) -> float:
        return float(np.finfo(_dtype(value)).eps)

    def conv(self, x: ir.Value, linear, weight_steps: list, kernel: tuple, strides: tuple) -> ir.Value:
        inputs = [x, self._weight(linear, weight_steps)] + ([self._bias(linear)] if linear.bias is not None else [])
        return self._add("Conv", inputs, {"kernel_shape": list(kernel), "strides": list(strides)}, linear.op)[0]

    def linear(self, x: ir.Value, linear, weight_steps: list) -> ir.Value:
        """The Linear again, as a Gemm on ``x``, its weight (out, in) re-laid by ``weight_steps``."""
        inputs = [x, self._weight(linear, weight_steps)] + ([self._bias(linear)] if linear.bias is not None else [])
        return self._add("Gemm", inputs, {"transB": 1}, linear.op)[0]

    def _weight(self, linear, steps: list) -> ir.Value:
        """The Conv weight, read through a DequantizeLinear as the Linear's was; one per stored weight and layout."""
        w = linear.weight
        key = (w.value, linear.transposed, repr(steps), linear.alpha)
        if key not in self.relaid:
            matrix = w.array.T if linear.transposed else w.array  # (out, in); a per-channel axis becomes 0
            array = apply_to_array(matrix, steps) * np.asarray(linear.alpha, matrix.dtype)
            self.relaid[key] = self._dequantized(self._initializer(array, w.stored.name, w.stored), w)
        return self.relaid[key]

    def _bias(self, linear) -> ir.Value:
        """The Conv bias (out,): the Linear's own value when it is one already."""
        b, out = linear.bias, linear.weight.array.shape[1 if linear.transposed else 0]
        if b.array.shape == (out,) and linear.beta == 1.0:
            return b.value
        array = np.broadcast_to(b.array.reshape(-1), (out,)) * np.asarray(linear.beta, b.array.dtype)
        return self._dequantized(self._initializer(np.ascontiguousarray(array), b.stored.name, b.stored), b)

    def _dequantized(self, stored: ir.Value, like) -> ir.Value:
        """``stored`` read through a DequantizeLinear like ``like``'s (per-channel on axis 0), if it had one."""
        if like.dequantize is None:
            return stored
        attributes = {k: v for k, v in like.dequantize.attributes.items() if k != "axis"}
        if like.axis is not None:
            attributes["axis"] = ir.AttrInt64("axis", 0)
        return self._add("DequantizeLinear", [stored, *like.dequantize.inputs[1:]], attributes, like.dequantize.name)[0]

    def replace(self, value: ir.Value, new: ir.Value) -> None:
        """``value`` is now computed as ``new``: its readers (the graph's outputs too) read ``new``, named as it was."""
        new.type, new.shape, name = value.type, value.shape, value.name
        if value in self.view.shapes:
            self.view.shapes[new] = self.view.shapes[value]
        value.replace_all_uses_with(new, replace_graph_outputs=True)
        value.name, new.name = self._unique(f"{name}_replaced"), name

    def name(self, value: ir.Value) -> str:
        return value.producer().name

    def finish(self) -> None:
        """Drop what the rewrite left unread (nodes dead before stay), and name the re-laid weights."""
        for node in reversed(list(self.graph)):
            if node not in self.dead_before and not any(v.uses() or v.is_graph_output() for v in node.outputs):
                self.graph.remove(node, safe=True)
        for value in list(self.graph.initializers.values()):
            ours_or_was_read = value in self.used_before or value in self.created
            if ours_or_was_read and not value.uses() and not value.is_graph_input() and not value.is_graph_output():
                self.graph.initializers.pop(value.name)
        kept = {v: root for v, root in self.originals.items() if v.name in self.graph.initializers}
        name_after_originals(self.graph, kept)


def _final_positions(dims) -> list[int]:
    """Where dims inserted one after the other (``layouts``' unsqueeze) end up: ONNX Unsqueeze's axes."""
    final: list[int] = []
    for d in dims:
        final = [f + (f >= d) for f in final] + [d]
    return sorted(final)


def _dtype(value: ir.Value) -> np.dtype:
    """The numpy dtype of a value, looking back through the nodes the rewrite made (which have no type yet)."""
    while value.dtype is None and value.producer() is not None and value.producer().inputs:
        value = value.producer().inputs[0]
    return value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)


def _live_nodes(graph: ir.Graph) -> set[ir.Node]:
    """The nodes the graph's outputs depend on."""
    live: set[ir.Node] = set()
    stack = [v.producer() for v in graph.outputs]
    while stack:
        node = stack.pop()
        if node is None or node in live:
            continue
        live.add(node)
        stack += [v.producer() for v in node.inputs if v is not None]
    return live
