"""The ONNX front end: the Linears of an existing ONNX file (Gemm, MatMul [+ Add]) become convolutions.

For users who hold an ONNX file, not a PyTorch model (an old export, tf2onnx, a vendor's int8 QDQ file).
The math is the PyTorch pass's (``fxconv._rewrite``, ``fxconv._layouts``): a Linear reading the
flattening of an (N, C, *S) map is a convolution with the weight viewed (out, C, *S); a Linear acting at
every position of (N, *P, C) is a 1x1 convolution in that value's conv layout. This module only reads
those patterns in ONNX and re-lays the weights out.

Before (TorchScript export of a VGG-like classifier, opset 13, dynamic batch):

    MaxPool → Flatten → Gemm(fc1.weight, transB=1) → Relu → Gemm(fc2.weight) → logits

After (``method="kernel"``, ``layout="folded"``):

    MaxPool → Transpose(1,2,0,3) → Reshape(1,C,H,-1) → Conv(fc1.weight as (out,C,H,W), stride (H,W))
            → Relu → Conv(fc2.weight as (out,in,1,1)) → Squeeze(0,2) → Transpose(1,0) → logits

The patterns, as in the PyTorch pass:

* A *Linear*: ``Gemm(x, B, C)`` (``alpha·x·B' + beta·C``, B' = B or Bᵀ by ``transB``; ``transA`` is
  refused) or ``MatMul(x, B)`` followed by an ``Add`` of a bias, B a constant: an initializer, a
  ``Constant``, or either through a ``DequantizeLinear``.
* A *flatten*: ``Flatten(axis=1)`` or a batch-keeping ``Reshape`` to (N, K) of an (N, C, *S) map, also
  through a ``Transpose`` to channels-last (TensorFlow graphs flatten NHWC): the weight's columns are then
  permuted to the NCHW map, ``W.reshape(out, H, W, C).transpose(0, 3, 1, 2)``, and the Transpose goes
  (the 1x1 method reads the NCHW map's own flattening). A global ``ReduceMean``/``ReduceMax`` over
  the spatial axes (or the token axis of (N, L, C)) is the flatten of an (N, C, 1, ...) map.
* *Movable* ops between the flatten and the Linear and between Linears: element-wise ones with
  single-value operands (Relu, Clip, Mul by a scalar, ``x · HardSigmoid(x)``, ...) and per-tensor
  ``QuantizeLinear`` / ``DequantizeLinear`` — so a QDQ file keeps its activation Q/DQ pairs around each
  new Conv, the Q right after it (onnxruntime fuses DQ → Conv → Q into one QLinearConv, as NPU compilers do).
* ``scope="all"``: any other Linear over (N, C), (N, L, C), (N, H, W, C) or (N, D, H, W, C) runs as a 1x1
  Conv in its conv layout (``fxconv._layouts``: tokens as (N, C, 1, L), channels-last maps as NCHW). The
  layout carries: element-wise ops run in it (a constant operand broadcasting along the channels
  re-laid out alike, a residual's other operand entered), LayerNorms and reductions over the channels
  run over the form's dim 1 (a LayerNormalization written out, as Apple's ``layer_norm.py``), Reshapes
  that only regroup positions ((N, H, W, C) ↔ (N, H·W, C)) reshape the form, and the model's own
  Transposes compose with the layout — ConvNeXt's NCHW → NHWC → NCHW pair cancels. A Linear's input is
  entered where the ops that lead to it start (``fc1(norm(x))`` enters ``x``, which the residual reads).

Quantised weights stay quantised: the int8 initializer is re-laid out like a float one (its
per-channel axis, the output features, becomes the Conv weight's axis 0) and read through a
``DequantizeLinear`` with the same scale and zero point, so a QDQ-consuming compiler sees DQ → Conv.

Every Gemm/MatMul with a constant operand is converted or in the report with a reason (a constant on the
left, a weight computed by nodes, ``transA``, weights quantised per input feature or in blocks, ...).

Names: each Conv takes its Linear's node name, each re-laid weight its initializer's name (when no
other node still reads the original; a weight shared by several converted Linears stays one
initializer), and every value the rest of the graph reads — the outputs included — keeps its name. The
opset, IR version and dynamic dims are kept. At a static batch of 1 the folded layout's Transposes of
size-1 axes become Reshapes and collapse (``fxconv._tidy``).
"""

from __future__ import annotations

import ast
import contextlib
import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from . import _tidy
from ._layouts import PositionLayout, layout_for
from .errors import InvalidArgumentError, NotConvertibleError, OnnxError
from .options import LAYOUTS, METHODS, SCOPES
from .report import Converted, Report, Skipped

__all__ = ["convert_onnx"]

_UNARY = frozenset({
    "Abs", "Ceil", "Celu", "Cos", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity",
    "LeakyRelu", "Log", "Mish", "Neg", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin", "Softplus",
    "Softsign", "Sqrt", "Tanh", "ThresholdedRelu",
})  # element-wise ops of one tensor (their attributes are scalars)
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum"})  # element-wise, broadcasting
_WITH_SCALARS = frozenset({"Clip", "QuantizeLinear", "DequantizeLinear", "Dropout"})  # extra inputs: single values
_REDUCTIONS = frozenset({"ReduceMean", "ReduceMax"})  # a global one of these is a flatten of an (N, C, 1, ...) map
_CHANNEL_OPS = frozenset({"LayerNormalization", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"})  # over the last dim
_QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
_QOPERATOR = frozenset({"QLinearMatMul", "MatMulInteger", "QGemm"})


def convert_onnx(
    model: str | os.PathLike | onnx.ModelProto,
    method: str = "kernel",
    *,
    scope: str = "heads",
    layout: str = "folded",
    strict: bool = False,
) -> tuple[onnx.ModelProto, Report]:
    """Rewrite the Linears (Gemm, MatMul) of an ONNX model that read a flattened map as convolutions.

    ``model`` is a path or an ``onnx.ModelProto`` (neither is modified). ``method``, ``scope`` and
    ``layout`` mean what they mean for :func:`fxconv.convert`. Returns ``(model_proto, report)``; every
    Gemm/MatMul with a constant operand is in ``report.converted`` or ``report.skipped`` with a reason,
    and with ``strict=True`` a skipped one raises :class:`NotConvertibleError`. The result is not
    checked here: ``check_onnx(path, original, None)`` runs both files on inputs of the declared shapes.
    """
    if method not in METHODS or scope not in SCOPES or layout not in LAYOUTS:
        raise InvalidArgumentError(
            f"method, scope and layout must be one of {METHODS}, {SCOPES} and {LAYOUTS}; "
            f"got {method!r}, {scope!r}, {layout!r}"
        )
    if isinstance(model, (str, os.PathLike)):
        from .check import load_onnx

        proto = load_onnx(model)
    elif isinstance(model, onnx.ModelProto):
        proto = model
    else:
        raise InvalidArgumentError(f"model must be an ONNX file's path or an onnx.ModelProto, not {type(model).__name__}")
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)  # the IR keeps the proto's tensors, and renaming a value renames its tensor
    graph_model = ir.from_proto(copy)
    report = Report(method=method, scope=scope, layout=layout, capture="ONNX")
    _OnnxRewriter(graph_model, method, layout, scope, report, _inferred_shapes(proto)).run()
    if strict and report.skipped:
        raise NotConvertibleError(f"strict=True, but {len(report.skipped)} Linear left alone:\n{report}")
    if report.converted and _static_inputs(graph_model.graph):
        graph_model = _tidied(graph_model)
    return ir.to_proto(graph_model), report


# -- reading the file --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Const:
    """A constant operand: an initializer or ``Constant``, possibly read through a ``DequantizeLinear``."""

    value: ir.Value  # what the Linear reads
    stored: ir.Value  # the value holding the numbers (an initializer, a Constant's output)
    array: np.ndarray  # those numbers (int8/int32 for a quantised one)
    dequantize: ir.Node | None = None
    axis: int | None = None  # the per-channel axis of ``array``; None when per-tensor or not quantised


@dataclass(frozen=True)
class _Linear:
    """One Linear: ``output = input @ matrix.T + bias``, ``matrix`` (out, in) from the stored weight."""

    node: ir.Node  # the Gemm/MatMul
    output: ir.Value  # the value it defines (a bias Add's output, after a MatMul)
    input: ir.Value
    weight: _Const
    transposed: bool  # the weight is stored (in, out)
    bias: _Const | None
    alpha: float = 1.0
    beta: float = 1.0
    name: str = ""


def _constant(value: ir.Value | None) -> _Const | None:
    """The constant behind ``value``, or None if it is computed at run time."""
    if value is None:
        return None
    producer = value.producer()
    if producer is not None and producer.op_type == "DequantizeLinear" and producer.domain in ("", "ai.onnx"):
        stored, scale = _numbers(producer.inputs[0]), _numbers(producer.inputs[1])
        if stored is None or scale is None or (len(producer.inputs) > 2 and producer.inputs[2] is not None and _numbers(producer.inputs[2]) is None):
            return None
        axis = producer.attributes.get_int("axis", 1) % max(stored.ndim, 1) if scale.size > 1 else None
        return _Const(value, producer.inputs[0], stored, producer, axis)
    array = _numbers(value)
    return None if array is None else _Const(value, value, array)


def _from_constants(value: ir.Value, depth: int = 8) -> bool:
    """Whether ``value`` is computed by nodes from constants alone (a Transpose of a weight, say)."""
    producer = value.producer()
    if producer is None or depth == 0 or not producer.inputs:
        return False
    return all(v is None or _numbers(v) is not None or _from_constants(v, depth - 1) for v in producer.inputs)


def _numbers(value: ir.Value | None) -> np.ndarray | None:
    """A constant's numbers, also through Identity nodes (the TorchScript exporter shares equal
    initializers that way: a zero bias may be ``Identity(features.3.fc1.bias)``)."""
    while value is not None and (producer := value.producer()) is not None and producer.op_type == "Identity":
        value = producer.inputs[0]
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    return None if tensor is None else tensor.numpy()


def _inferred_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Every value's dims by name: an int where fixed, None where free.

    ONNX's shape inference loses dims behind a Reshape whose shape is computed at run time from a free
    dim (the TorchScript exporter's transformers, Swin's window partition); when it leaves a Linear's
    dims unknown, onnxruntime's symbolic shape inference, which follows such arithmetic, fills them in.
    """
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


# -- the layouts -------------------------------------------------------------------------------------


def _vectors(spatial: int, folded: bool) -> PositionLayout:
    """The conv layout of (N, C) with ``spatial`` spatial dims: (1, C, 1, ..., N) folded, (N, C, 1, ...) batched."""
    if spatial == 2:
        return layout_for(2, folded)
    inserted = (0, *range(2, spatial + 1)) if folded else tuple(range(2, spatial + 2))
    return PositionLayout(2, (1, 0) if folded else (0, 1), inserted, "folded" if folded else "batched")


@dataclass(frozen=True)
class _MapLayout:
    """The conv form of a flattening ``flatten(map.transpose(perm))`` for a head's first conv.

    For a kernel covering the map: folded, the map (N, C, *S) is laid (1, C, *S[:-1], N·S[-1]), the batch
    items side by side along the last axis where the kernel steps over them (stride S); batched, it is
    the map itself. For a 1x1 conv (``kernel=False``, used when ``perm`` is not the identity): the map's
    own flattening, in the (N, K) vector layout — so the model's Transpose goes for either method.
    """

    features: tuple[int, ...]  # (C, *S)
    perm: tuple[int, ...]  # the Transpose between the map and the flatten (identity if none)
    folded: bool
    kernel: bool = True

    @property
    def spatial(self) -> int:
        return len(self.features) - 1


_Layout = PositionLayout | _MapLayout


def _flat_order(features: tuple[int, ...], perm: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The dims the flattened tensor was laid out in, and the axes that bring them back to (C, *S)."""
    dims = (0, *features)
    order = tuple(dims[p] for p in perm[1:])
    return order, (0, *(1 + perm[1:].index(d) for d in range(1, len(dims))))


def _conv_weight(matrix: np.ndarray, features: tuple[int, ...], perm: tuple[int, ...], kernel: tuple[int, ...]) -> np.ndarray:
    """A Linear's (out, in) matrix over ``flatten(map.transpose(perm))`` as a Conv weight (out, C, *kernel).

    ``flatten`` is row-major: column k of the matrix is element k of the transposed map's features, so
    viewing the matrix as (out, *transposed features) and moving the axes back gives (out, C, *S).
    """
    order, back = _flat_order(features, perm)
    relaid = matrix.reshape(matrix.shape[0], *order).transpose(back)
    return np.ascontiguousarray(relaid).reshape(matrix.shape[0], -1, *kernel)


# -- the rewrite -------------------------------------------------------------------------------------


class _OnnxRewriter:
    """Plan every Linear, then walk the graph once in order, laying inputs out and placing Convs."""

    def __init__(self, model: ir.Model, method: str, layout: str, scope: str, report: Report, shapes: dict):
        self.graph = model.graph
        self.shapes = {v: shapes[v.name] for v in _all_values(self.graph) if v.name in shapes}  # inferred dims
        self.method, self.folded, self.scope, self.report = method, layout == "folded", scope, report
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 13))
        self.forms: dict[ir.Value, tuple[ir.Value, _Layout]] = {}  # a value -> its conv form and layout
        # A flattening a head reads -> (the layout of its form, the value entered, the map's (C, *S)).
        self.sources: dict[ir.Value, tuple[_Layout, ir.Value, tuple[int, ...]]] = {}
        self.origins: dict[ir.Node, tuple[int, ...]] = {}  # a head's Linear -> the (C, *S) it reads
        self.chain: set[ir.Node] = set()  # movable ops between a flatten and a head's Linear
        self.replaced: dict[ir.Value, ir.Value] = {}  # a value the walk replaced -> what its readers read now
        self.entries: set[ir.Value] = set()  # values entered into their conv layout where first read (scope "all")
        self.relaid: dict[tuple, ir.Value] = {}  # (stored weight, how it is laid out) -> the Conv's weight
        self.names = {v.name for v in _all_values(self.graph)} | {n.name for n in self.graph.all_nodes()}
        self.anchor: ir.Node | None = None  # new nodes go before this one

    def run(self) -> None:
        dead_before = set(self.graph) - _live_nodes(self.graph)
        used_before = {v for v in self.graph.initializers.values() if v.uses()}
        linears = self._plan()
        for node in list(self.graph):
            self.anchor = node
            for value in node.inputs:
                if value in self.entries and value not in self.forms:
                    self._entered(value)
            if node in linears:
                self._convert(linears[node])
            elif self._movable(node):
                self._move(node)
            elif self.scope == "all" and node.op_type == "Transpose":
                self._free_form(node)
        for node in reversed(list(self.graph)):  # what the rewrite left unread (nodes dead before stay)
            if node not in dead_before and not any(v.uses() or v.is_graph_output() for v in node.outputs):
                self.graph.remove(node, safe=True)
        self._name_weights(used_before)

    def _shape(self, value: ir.Value | None) -> tuple[int | None, ...] | None:
        """A value's inferred dims (None where free), or None if unknown."""
        return self.shapes.get(value)

    # -- planning: which Linears convert, and from where ----------------------------------------

    def _plan(self) -> dict[ir.Node, _Linear]:
        linears: dict[ir.Node, _Linear] = {}
        converted: dict[ir.Value, int] = {}  # outputs of the Linears planned so far -> spatial dims of a head's
        for node in self.graph.all_nodes():
            if node.graph is not self.graph:
                constants = [_constant(v) for v in node.inputs[:2]]
                if node.op_type in ("Gemm", "MatMul") and any(c is not None for c in constants):
                    self._skip(_name_of(node, constants), "subgraph",
                               "it sits in a subgraph (an If, Loop or Scan body), which fxconv does not rewrite")
                continue
            call = self._read(node)
            if call is None:
                continue
            verdict = self._route(call, converted)
            if verdict is not None:
                self._skip(call.name, *verdict)
                continue
            linears[call.output.producer()] = call  # converted there: a MatMul's bias Add may read a later Constant
            origin = self.origins.get(node)
            converted[call.output] = 0 if origin is None else (len(origin) - 1 if self.method == "kernel" else 2)
        return linears

    def _read(self, node: ir.Node) -> _Linear | None:
        """``node`` read as a Linear; None if it is not one (and reported if it is one that can't convert)."""
        if node.op_type in _QOPERATOR and node.domain in ("", "ai.onnx", "com.microsoft"):
            return self._skip(_name_of(node, []), "qoperator",
                              f"{node.op_type} is the QOperator format; fxconv rewrites QDQ files (quantize with "
                              "QuantFormat.QDQ)")
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("Gemm", "MatMul"):
            return None
        inputs = list(node.inputs)
        x, w = (_constant(v) for v in inputs[:2])
        name = _name_of(node, [x, w])
        if w is None:
            if x is not None:
                return self._skip(name, "constant-left", f"its constant is the left operand of the {node.op_type}: "
                                  "it mixes the positions, not the features")
            computed = next((v for v in inputs[:2] if _from_constants(v)), None)
            if computed is not None:
                return self._skip(name, "computed-weight", f"its operand {computed.name!r} is computed from constants "
                                  "by nodes: fold constants first (onnxsim, onnxscript's optimizer)")
            return None  # activation times activation (attention scores): not a Linear
        if x is not None:
            return self._skip(name, "constant-only", "both operands are constants: constant folding removes it")
        attrs = node.attributes
        if node.op_type == "Gemm" and attrs.get_int("transA", 0):
            return self._skip(name, "transA", "Gemm with transA=1 reads its input transposed, (K, N): the batch "
                              "is not its first dim")
        if w.array.ndim != 2:
            return self._skip(name, "weight-rank", f"its weight has shape {w.array.shape}; a Linear's is 2-D")
        transposed = not (node.op_type == "Gemm" and attrs.get_int("transB", 0))
        out = w.array.shape[1 if transposed else 0]
        bias, output, alpha, beta = None, node.outputs[0], 1.0, 1.0
        if node.op_type == "Gemm":
            alpha, beta = attrs.get_float("alpha", 1.0), attrs.get_float("beta", 1.0)
            if len(inputs) > 2 and inputs[2] is not None:
                bias = _constant(inputs[2])
                if bias is None or bias.array.size not in (1, out) or bias.array.ndim > 2 or (bias.array.ndim == 2 and bias.array.shape[0] != 1):
                    return self._skip(name, "bias", "its C operand is not a constant bias of shape (out,), (1, out) or ()")
        elif len(output.uses()) == 1 and not output.is_graph_output():
            add, index = next(iter(output.uses()))
            other = _constant(add.inputs[1 - index]) if add.op_type == "Add" and len(add.inputs) == 2 else None
            if other is not None and other.array.size == out and self._shape(add.outputs[0]) == self._shape(output):
                bias, output = other, add.outputs[0]
        call = _Linear(node, output, inputs[0], w, transposed, bias, alpha, beta, name)
        refusal = _weight_refusal(call)
        return call if refusal is None else self._skip(name, *refusal)

    def _route(self, call: _Linear, converted: dict[ir.Value, int]) -> tuple[str, str] | None:
        """Plan where the Linear's input comes from; a (code, reason) if it does not convert."""
        shape = self._shape(call.input)
        if shape is None or self._shape(call.output) is None:
            return "no-shape", "ONNX shape inference found no shape for its input or output"
        if len(shape) < 2:
            return "not-2d", f"its input has shape {shape}: there is no batch dimension"
        if not isinstance(shape[-1], int):
            return "no-shape", f"its input's features, the last of its dims {shape}, are not known"
        if len(shape) == 2:
            chain: set[ir.Node] = set()
            root = self._walk(call.input, shape, converted, chain, {})
            if root is None:
                if self.scope == "all":
                    return self._plan_entry(call.input, converted)  # at every position: the (N, C) vector layout
                producer = call.input.producer()
                return "not-flattened", (
                    f"its input comes from {_describe(producer)}, which is neither a flatten of a feature map "
                    "nor an element-wise op of one (scope='all' converts it as a 1x1 convolution)"
                )
            self.chain |= chain
            if root in self.sources:
                self.origins[call.node] = self.sources[root][2]
            elif converted[root]:  # the next Linear of a head: a 1x1 conv on the previous one's output
                self.origins[call.node] = (shape[1], *(1,) * converted[root])
            return None
        if self.scope != "all":
            return "not-2d", (
                f"its input has shape {shape}: a Linear on a {len(shape)}-D tensor acts at each position along the "
                "last dim, it does not read a flattened feature map (scope='all' converts it as a 1x1 convolution)"
            )
        if layout_for(len(shape), self.folded) is None:
            return "rank", f"its input is {len(shape)}-D: there is no conv{len(shape) - 2}d for its positions"
        return self._plan_entry(call.input, converted)

    def _plan_entry(self, value: ir.Value, converted) -> None:
        """Plan where a Linear's input that has no conv form enters its layout: where the ops that can run
        in the layout and lead to it start, if they start from one value (``fc1(norm(x))`` enters ``x``,
        which the norm's mean and a residual read too); else at the input itself."""
        roots = self._roots(value, layout_for(len(self._shape(value)), self.folded), converted, {})
        self.entries |= roots if len(roots) <= 1 else {value}

    def _roots(self, value: ir.Value, layout: PositionLayout, converted, seen: dict) -> frozenset:
        """The values without a conv form that ``value`` is computed from by ops that run in ``layout``."""
        if value in converted:
            return frozenset()
        if value not in seen:
            seen[value] = frozenset({value})
            producer = value.producer()
            carried = self._carried(producer, layout) if producer is not None else None
            if carried:
                seen[value] = frozenset().union(*(self._roots(v, layout, converted, seen) for v in carried))
        return seen[value]

    def _walk(self, value: ir.Value, shape, converted, chain: set[ir.Node], seen: dict) -> ir.Value | None:
        """The flattening, or converted Linear's output, that ``value`` is computed from by element-wise ops
        alone (added to ``chain``; ``x * HardSigmoid(x)`` is one); None if there is none."""
        if value in seen:
            return seen[value]
        seen[value] = None
        producer = value.producer()
        if value in converted or value in self.sources or self._as_source(value):
            seen[value] = value
        elif producer is not None and self._shape(value) == shape and (data := self._data_inputs(producer)):
            roots = {self._walk(v, shape, converted, chain, seen) for v in data}
            if len(roots) == 1 and None not in roots:
                chain.add(producer)
                seen[value] = roots.pop()
        return seen[value]

    def _as_source(self, value: ir.Value) -> bool:
        """Whether ``value`` (N, K) flattens or globally pools a map; if so, plan how its form is made."""
        producer = value.producer()
        if producer is None:
            return False
        inp = self._shape(producer.inputs[0]) if producer.inputs else None
        out = self._shape(value)
        if inp is None or out is None or len(inp) < 3 or len(out) != 2 or not isinstance(out[1], int):
            return False
        vectors = _vectors(2, self.folded)
        if producer.op_type in _REDUCTIONS and not producer.attributes.get_int("keepdims", 1):
            pooled = {a % len(inp) for a in _axes(producer) or ()}
            over_map = pooled == set(range(2, len(inp))) and len(inp) - 2 <= 3
            if not (over_map or pooled == set(range(1, len(inp) - 1))):  # the map's positions, or the tokens
                return False
            # (N, C) is the flatten of an (N, C, 1, ...) map: entered as a vector.
            self.sources[value] = (vectors, value, (out[1], 1, 1))
            return True
        if not all(isinstance(d, int) for d in inp[1:]):  # a flattened map's features must be known
            return False
        flattens = (producer.op_type == "Flatten" and producer.attributes.get_int("axis", 1) == 1) or (
            producer.op_type == "Reshape" and out[1] == math.prod(inp[1:])
            and (not isinstance(out[0], int) or not isinstance(inp[0], int) or out[0] == inp[0])
        )
        if not flattens or not 1 <= len(inp) - 2 <= 3:
            return False
        map_, perm = producer.inputs[0], tuple(range(len(inp)))
        transpose = map_.producer()
        channels_last = (0, *range(2, len(inp)), 1)
        if transpose is not None and transpose.op_type == "Transpose" and tuple(transpose.attributes.get_ints("perm") or ()) == channels_last:
            # TensorFlow's NHWC flatten: the weight's columns are permuted to the NCHW map before it.
            map_, perm = transpose.inputs[0], channels_last
        features = tuple(self._shape(map_)[1:])
        if self.method == "1x1" and perm == tuple(range(len(inp))):  # the flattening itself, as (N, K, 1, 1)
            self.sources[value] = (vectors, value, features)
        else:
            self.sources[value] = (_MapLayout(features, perm, self.folded, self.method == "kernel"), map_, features)
        return True

    # -- moving ops into the conv layout --------------------------------------------------------

    def _data_inputs(self, node: ir.Node) -> list[ir.Value] | None:
        """The inputs an element-wise op computes on, if its other operands are single values; else None."""
        if node.domain not in ("", "ai.onnx") or not node.inputs or node.inputs[0] is None:
            return None
        if len(node.outputs) != 1 and not (node.op_type == "Dropout" and not any(v.uses() for v in node.outputs[1:])):
            return None
        if node.op_type in _UNARY:
            return [node.inputs[0]] if len(node.inputs) == 1 else None
        if node.op_type in _QDQ and node.attributes.get_int("block_size", 0):
            return None
        if node.op_type in _WITH_SCALARS:
            data, others = [node.inputs[0]], node.inputs[1:]
        elif node.op_type in _BINARY:
            data = [v for v in node.inputs if v is not None and _numbers(v) is None]
            others = [v for v in node.inputs if v not in data]
        else:
            return None
        return data if all(v is None or (a := _numbers(v)) is not None and a.size == 1 for v in others) else None

    def _movable(self, node: ir.Node) -> bool:
        """Whether the walk runs ``node`` on the conv form of its input(s)."""
        if node in self.chain:
            return True
        formed = [v for v in node.inputs if v in self.forms]
        if not formed or len({self.forms[v][1] for v in formed}) != 1 or any(v.is_graph_output() for v in node.outputs):
            return False
        layout = self.forms[formed[0]][1]
        data = self._data_inputs(node)
        if data and all(v in self.forms for v in data) and (self.scope == "all" or node.op_type in _QDQ):
            return True  # in both scopes, a Conv's output Q/DQ stays right after it (QDQ compilers match DQ → Conv → Q)
        if self.scope != "all" or not isinstance(layout, PositionLayout):
            return False
        if node.op_type == "Transpose":
            return True
        if node.op_type == "Reshape":
            return self._regrouped(node, layout) is not None
        return self._carried(node, layout) is not None

    def _carried(self, node: ir.Node, layout: PositionLayout) -> list[ir.Value] | None:
        """The activation inputs of ``node`` if it can run in ``layout`` once they are in it; else None.

        Element-wise ops (a constant operand laid out per channel, an activation of the same rank entered),
        and LayerNorms and reductions over the channels — the last dim, the form's dim 1.
        """
        if any(v.is_graph_output() for v in node.outputs):
            return None
        if node.op_type in _CHANNEL_OPS:
            return [node.inputs[0]] if self._over_channels(node, layout) else None
        data = self._data_inputs(node)
        if data is None and node.op_type in _BINARY and len(node.outputs) == 1:
            data = [v for v in node.inputs if _numbers(v) is None]
            if any(self._channel_array(v, layout) is None for v in node.inputs if v not in data):
                return None
        if not data or any(len(self._shape(v) or ()) != layout.rank for v in [*data, node.outputs[0]] if v not in self.forms):
            return None
        return data

    def _regrouped(self, node: ir.Node, layout: PositionLayout) -> PositionLayout | None:
        """For a Reshape that only regroups positions, (N, H, W, C) <-> (N, H·W, C), its output's layout."""
        before, after = self._shape(node.inputs[0]), self._shape(node.outputs[0])
        if before is None or after is None or len(before) != layout.rank or not 3 <= len(after) <= 5:
            return None
        positions = (*before[1:-1], *after[1:-1])
        if before[0] != after[0] or before[-1] != after[-1] or None in positions:
            return None
        return layout_for(len(after), self.folded) if math.prod(before[1:-1]) == math.prod(after[1:-1]) else None

    def _over_channels(self, node: ir.Node, layout: PositionLayout) -> bool:
        """Whether a LayerNormalization or reduction works over the last dim alone (the form's dim 1)."""
        last = layout.rank - 1
        if node.op_type == "LayerNormalization":
            constants = all(self._channel_array(v, layout) is not None for v in node.inputs[1:] if v is not None)
            unused = not any(v.uses() for v in node.outputs[1:])
            return node.attributes.get_int("axis", -1) % layout.rank == last and constants and unused
        axes = _axes(node)
        return axes is not None and [a % layout.rank for a in axes] == [last] and node.attributes.get_int("keepdims", 1) == 1

    def _move(self, node: ir.Node) -> None:
        """Run ``node`` on its input's conv form; the rest of the graph reads the form left again."""
        data = next(v for v in node.inputs if v in self.forms or v in self.sources)
        form, layout = self._form(data)
        if node.op_type == "Transpose":
            return self._move_transpose(node, form, layout)
        if node.op_type == "Reshape":  # the form's positions regrouped alike: C stays at dim 1
            after = self._regrouped(node, layout)
            shape = [0, *after.form_shape(self._shape(node.outputs[0]))[1:]]
            return self._replace(node.outputs[0], self._reshape(form, shape, node), after)
        if node.op_type == "LayerNormalization":
            return self._replace(node.outputs[0], self._layer_norm(node, form, layout), layout)
        if node.op_type in _CHANNEL_OPS:
            attributes = {k: v for k, v in node.attributes.items() if k != "axes"}
            return self._replace(node.outputs[0], self._reduce(node.op_type, form, attributes, node), layout)
        inputs = []
        for v in node.inputs:
            if v is None or v is data or v in self.forms:
                inputs.append(v and self._form(v)[0])
            elif (single := _numbers(v)) is not None and single.size == 1:
                inputs.append(v)
            elif (array := self._channel_array(v, layout)) is not None:
                inputs.append(self._initializer(array, v.name))
            else:
                inputs.append(self._enter(v, layout))
        outputs = self._add(node.op_type, inputs, dict(node.attributes), node, num_outputs=len(node.outputs))
        self._replace(node.outputs[0], outputs[0], layout)

    def _move_transpose(self, node: ir.Node, form: ir.Value, layout: PositionLayout) -> None:
        """``leave(form).transpose(p)`` as one Squeeze/Transpose of the form — or none, when they cancel
        (ConvNeXt's permute back to NCHW after its channels-last block is the form itself)."""
        if layout.inserted:
            form = self._unit_dims("Squeeze", form, layout.inserted)
        inverse = [layout.perm.index(d) for d in range(layout.rank)]
        composed = [inverse[p] for p in node.attributes.get_ints("perm", list(reversed(range(layout.rank))))]
        if composed != sorted(composed):
            form = self._add("Transpose", [form], {"perm": composed}, node)[0]
        node.outputs[0].replace_all_uses_with(form)
        self.replaced[node.outputs[0]] = form

    def _layer_norm(self, node: ir.Node, form: ir.Value, layout: PositionLayout) -> ir.Value:
        """A LayerNormalization over the channels, dim 1 of the form, written out (as Apple's layer_norm.py):
        ``(x - mean) / sqrt(var + eps) · scale + bias``, the means over dim 1."""
        dtype = _numbers(node.inputs[1]).dtype
        eps = self._initializer(np.array(node.attributes.get_float("epsilon", 1e-5), dtype), "epsilon")
        centred = self._add("Sub", [form, self._reduce("ReduceMean", form, {}, "mean")], {}, "centred")[0]
        square = self._add("Mul", [centred, centred], {}, "square")[0]
        variance = self._reduce("ReduceMean", square, {}, "variance")
        std = self._add("Sqrt", [self._add("Add", [variance, eps], {}, "variance_eps")[0]], {}, "std")[0]
        y = self._add("Div", [centred, std], {}, "normalised")[0]
        y = self._add("Mul", [y, self._initializer(self._channel_array(node.inputs[1], layout), node.inputs[1].name)], {}, "scaled")[0]
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            y = self._add("Add", [y, self._initializer(self._channel_array(node.inputs[2], layout), node.inputs[2].name)], {}, node)[0]
        return y

    def _reduce(self, op: str, form: ir.Value, attributes: dict, named) -> ir.Value:
        """``op`` over dim 1 of a form, keeping it (axes an input since opset 18, 13 for ReduceSum)."""
        attributes = {**attributes, "keepdims": 1}
        if self.opset >= (13 if op == "ReduceSum" else 18):
            return self._add(op, [form, self._initializer(np.array([1], np.int64), "axes")], attributes, named)[0]
        return self._add(op, [form], {**attributes, "axes": [1]}, named)[0]

    def _channel_array(self, value: ir.Value, layout: PositionLayout) -> np.ndarray | None:
        """A constant operand broadcasting against a value of ``layout``, laid out alike; None if it can't be."""
        array = _numbers(value)
        if array is None or array.ndim > layout.rank:
            return None
        full = array.reshape((1,) * (layout.rank - array.ndim) + array.shape)
        if full.shape[0] != 1:
            return None
        return full.transpose(layout.perm).reshape(layout.form_shape(full.shape))

    # -- converting a Linear ----------------------------------------------------------------------

    def _convert(self, call: _Linear) -> None:
        form, layout = self._form(call.input) if call.input in self.forms or call.input in self.sources else self._entered(call.input)
        origin = self.origins.get(call.node, ())
        if isinstance(layout, _MapLayout):
            kernel = layout.features[1:] if layout.kernel else (1, 1)
            relay = (layout.features, layout.perm, kernel)
            strides = kernel if layout.folded and layout.kernel else (1,) * len(kernel)
            out_layout = _vectors(len(kernel), self.folded)
        else:
            kernel = (1,) * layout.spatial
            relay = ((call.weight.array.size // _out_features(call), *kernel), None, kernel)
            strides, out_layout = kernel, layout
        inputs = [form, self._weight(call, *relay)] + ([self._bias(call)] if call.bias is not None else [])
        conv = self._add("Conv", inputs, {"kernel_shape": list(kernel), "strides": list(strides)}, call.node)[0]
        self._replace(call.output, conv, out_layout)
        described = ("folded" if self.folded else "batched") if origin else layout.shape
        self.report.converted.append(Converted(call.name, self.method, origin, kernel, conv.producer().name, described))

    def _weight(self, call: _Linear, features: tuple[int, ...], perm: tuple[int, ...] | None, kernel) -> ir.Value:
        """The Conv weight, read through a DequantizeLinear as the Linear's was; one per stored weight and layout."""
        w = call.weight
        key = (w.value, call.transposed, features, perm, kernel, call.alpha)
        if key not in self.relaid:
            matrix = w.array.T if call.transposed else w.array  # (out, in); a per-channel axis becomes 0
            perm = perm or tuple(range(len(features) + 1))
            array = _conv_weight(matrix, features, perm, kernel) * np.asarray(call.alpha, matrix.dtype)
            self.relaid[key] = self._dequantized(self._initializer(array, w.stored.name, w.stored), w)
        return self.relaid[key]

    def _bias(self, call: _Linear) -> ir.Value:
        """The Conv bias (out,): the Linear's own value when it is one already."""
        b, out = call.bias, _out_features(call)
        if b.array.shape == (out,) and call.beta == 1.0:
            return b.value
        array = np.broadcast_to(b.array.reshape(-1), (out,)) * np.asarray(call.beta, b.array.dtype)
        return self._dequantized(self._initializer(np.ascontiguousarray(array), b.stored.name, b.stored), b)

    def _dequantized(self, stored: ir.Value, like: _Const) -> ir.Value:
        """``stored`` read through a DequantizeLinear like ``like``'s (per-channel on axis 0), if it had one."""
        if like.dequantize is None:
            return stored
        attributes = {k: v for k, v in like.dequantize.attributes.items() if k != "axis"}
        if like.axis is not None:
            attributes["axis"] = ir.AttrInt64("axis", 0)
        return self._add("DequantizeLinear", [stored, *like.dequantize.inputs[1:]], attributes, like.dequantize.name)[0]

    # -- entering and leaving conv layouts ---------------------------------------------------------

    def _form(self, value: ir.Value) -> tuple[ir.Value, _Layout]:
        """The conv form of a value that has one, or of a planned flattening (entered here, once)."""
        if value not in self.forms:
            layout, entered, _ = self.sources[value]
            entered = self.replaced.get(entered, entered)  # a map the walk has moved into a conv layout since
            form = self._fold(entered, layout) if isinstance(layout, _MapLayout) else self._enter(entered, layout)
            self.forms[value] = (form, layout)
        return self.forms[value]

    def _fold(self, map_: ir.Value, layout: _MapLayout) -> ir.Value:
        """(N, C, *S) -> (1, C, *S[:-1], N·S[-1]) when folded; the map itself when batched (for a 1x1
        conv: the map's flattening as a vector, (1, K, 1, N) or (N, K, 1, 1))."""
        if not layout.kernel:
            return self._enter(self._add("Flatten", [map_], {"axis": 1}, "flatten")[0], _vectors(2, layout.folded))
        if not layout.folded:
            return map_
        r = len(layout.features) + 1
        moved = self._add("Transpose", [map_], {"perm": [*range(1, r - 1), 0, r - 1]}, "fold")[0]
        return self._reshape(moved, [1, *layout.features[:-1], -1])

    def _entered(self, value: ir.Value) -> tuple[ir.Value, PositionLayout]:
        """Give ``value`` (N, *P, C) its conv form: the ops after it that carry the layout run in it."""
        layout = layout_for(len(self._shape(value)), self.folded)
        self.forms[value] = (self._enter(value, layout), layout)
        return self.forms[value]

    def _free_form(self, node: ir.Node) -> None:
        """A Transpose to channels-last (NCHW → NHWC) has its own input as conv form: nothing to make."""
        output, perm = node.outputs[0], node.attributes.get_ints("perm")
        layout = layout_for(len(self._shape(output) or ()), self.folded)
        if layout is not None and not layout.inserted and perm is not None and layout.cancels(tuple(perm)):
            self.forms[output] = (node.inputs[0], layout)

    def _enter(self, value: ir.Value, layout: PositionLayout) -> ir.Value:
        """``value`` in ``layout``: a Transpose bringing C to dim 1, then size-1 dims inserted — or no
        Transpose, when ``value`` is one that the layout's undoes (tokens ``x.transpose(1, 2)`` of (N, C, L))."""
        producer = value.producer()
        perm = producer.attributes.get_ints("perm") if producer is not None and producer.op_type == "Transpose" else None
        if perm is not None and len(perm) == layout.rank and layout.cancels(tuple(perm)):
            value = producer.inputs[0]
        elif layout.perm != tuple(range(layout.rank)):
            value = self._add("Transpose", [value], {"perm": list(layout.perm)}, "enter")[0]
        return self._unit_dims("Unsqueeze", value, layout.inserted) if layout.inserted else value

    def _leave(self, form: ir.Value, layout: _Layout) -> ir.Value:
        """The original-layout value of a conv form (what the rest of the graph reads)."""
        if isinstance(layout, _MapLayout):  # a head's flattening before its first Linear: unfold, flatten
            r = len(layout.features) + 1
            unfold = list(range(r))
            if not layout.kernel:  # the map's flattening as a vector: back to (N, K), then (N, C, *S)
                form = self._reshape(self._leave(form, _vectors(2, layout.folded)), [-1, *layout.features])
            elif layout.folded:  # (1, C, *S[:-1], N·S[-1]) -> (C, *S[:-1], N, S[-1]), then N first
                form = self._reshape(form, [*layout.features[:-1], -1, layout.features[-1]])
                unfold = [r - 2, *range(r - 2), r - 1]
            perm = [unfold[p] for p in layout.perm]  # and the model's own Transpose before its flatten
            if perm != list(range(r)):
                form = self._add("Transpose", [form], {"perm": perm}, "leave")[0]
            return self._add("Flatten", [form], {"axis": 1}, "leave")[0]
        if layout.inserted:
            form = self._unit_dims("Squeeze", form, layout.inserted)
        inverse = [layout.perm.index(d) for d in range(layout.rank)]
        if inverse != list(range(layout.rank)):
            form = self._add("Transpose", [form], {"perm": inverse}, "leave")[0]
        return form

    def _replace(self, value: ir.Value, form: ir.Value, layout: _Layout) -> None:
        """``value`` is now computed as ``form``: its readers read the form left (dropped if none remain)."""
        left = self._leave(form, layout)
        left.type, left.shape, name = value.type, value.shape, value.name
        if value in self.shapes:
            self.shapes[left] = self.shapes[value]
        value.replace_all_uses_with(left, replace_graph_outputs=True)
        value.name, left.name = self._unique(f"{name}_replaced"), name
        self.replaced[value] = left
        self.forms[value] = self.forms[left] = (form, layout)

    # -- building nodes ----------------------------------------------------------------------------

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

    def _reshape(self, value: ir.Value, shape: list[int], named: ir.Node | str = "reshape") -> ir.Value:
        return self._add("Reshape", [value, self._initializer(np.array(shape, np.int64), "shape")], {}, named)[0]

    def _unit_dims(self, op: str, value: ir.Value, axes: tuple[int, ...]) -> ir.Value:
        """Squeeze/Unsqueeze ``axes``: an attribute before opset 13, an input since."""
        if self.opset < 13:
            return self._add(op, [value], {"axes": list(axes)}, op.lower())[0]
        return self._add(op, [value, self._initializer(np.array(axes, np.int64), "axes")], {}, op.lower())[0]

    def _initializer(self, array: np.ndarray, name: str, relaid_from: ir.Value | None = None) -> ir.Value:
        """A new initializer; ``relaid_from``: the weight it re-lays out, whose name it takes if that one goes."""
        value = ir.Value(name=self._unique(name), const_value=ir.tensor(np.ascontiguousarray(array)))
        value.meta["fxconv_relaid_from"] = relaid_from
        self.graph.register_initializer(value)
        return value

    def _unique(self, name: str) -> str:
        candidate, n = name, 0
        while candidate in self.names:
            n += 1
            candidate = f"{name}.{n}"
        self.names.add(candidate)
        return candidate

    def _name_weights(self, used_before: set[ir.Value]) -> None:
        """Drop the initializers the rewrite left unread; a re-laid weight takes its original's name."""
        for value in list(self.graph.initializers.values()):
            ours_or_was_read = value in used_before or "fxconv_relaid_from" in value.meta
            if ours_or_was_read and not value.uses() and not value.is_graph_input() and not value.is_graph_output():
                self.graph.initializers.pop(value.name)
        named: set[ir.Value] = set()
        for value in list(self.graph.initializers.values()):
            original = value.meta.get("fxconv_relaid_from")
            if original is None or original in named or original.uses() or original.is_graph_input() or original.is_graph_output():
                continue  # still read elsewhere, or re-laid twice: this copy keeps its own name (``name.1``)
            named.add(original)
            name, original.name = original.name, self._unique(f"{original.name}_replaced")
            self.graph.initializers.pop(value.name)
            value.name = name
            self.graph.register_initializer(value)

    def _skip(self, name: str, code: str, reason: str) -> None:
        self.report.skipped.append(Skipped(name, code, reason))


def _out_features(call: _Linear) -> int:
    return call.weight.array.shape[1 if call.transposed else 0]


def _weight_refusal(call: _Linear) -> tuple[str, str] | None:
    """Why a (quantised) Linear's weight or bias cannot be re-laid out for a Conv, or None."""
    out_axis = 1 if call.transposed else 0
    if call.weight.dequantize is not None and call.weight.dequantize.attributes.get_int("block_size", 0):
        return "quant-blocked", "its weight is quantised in blocks, which a Conv weight's DequantizeLinear cannot keep"
    if call.weight.axis is not None and call.weight.axis != out_axis:
        return "quant-axis", "its weight is quantised per input feature; a Conv weight's channel axis is its output's"
    if call.weight.dequantize is not None and call.alpha != 1.0:
        return "alpha", f"Gemm alpha={call.alpha} scales a quantised weight: fxconv does not requantise"
    b = call.bias
    if b is not None and b.dequantize is not None and (call.beta != 1.0 or (b.axis is not None and b.array.shape[b.axis] != b.array.size)):
        return "bias", "its quantised bias is scaled by beta or quantised along another axis than the output features"
    return None


def _axes(node: ir.Node) -> list[int] | None:
    """A reduction's axes: an attribute before opset 18, an input since."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = _numbers(node.inputs[1])
        return None if axes is None else [int(a) for a in axes.reshape(-1)]
    return node.attributes.get_ints("axes")


def _name_of(node: ir.Node, constants: list[_Const | None]) -> str:
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


def _describe(node: ir.Node | None) -> str:
    return "a graph input" if node is None else f"{node.op_type} node {node.name!r}"


def _all_values(graph: ir.Graph):
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in graph.all_nodes():
        yield from node.outputs


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


def _static_inputs(graph: ir.Graph) -> bool:
    return all(v.shape is not None and v.shape.is_static() for v in graph.inputs)


def _tidied(model: ir.Model) -> ir.Model:
    """At static input shapes: the folded layout's moves of size-1 axes as Reshapes, collapsed."""
    proto = onnx.shape_inference.infer_shapes(ir.to_proto(model), data_prop=True)
    model = ir.from_proto(proto)
    _tidy.simplify_moves(model)
    return model
