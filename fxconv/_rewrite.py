"""The rewrite: Linear layers fed by a flattened feature map become convolutions.

(Before and After diagrams of both methods: ``fxconv.convert``.)

The math. ``flatten`` is row-major over (C, H, W): feature ``k = (c·H + h)·W + w``. Hence

    y[n, o] = b[o] + Σ_k W[o, k] · flatten(x)[n, k]
            = b[o] + Σ_{c,h,w} W.view(F, C, H, W)[o, c, h, w] · x[n, c, h, w],

a convolution whose kernel covers the whole map and has one output position. The 1x1 form is the same
identity applied to ``x.reshape(N, C·H·W, 1, 1)``. A flatten of (N, C, L) gives conv1d, of
(N, C, D, H, W) conv3d. A global reduction that ends 2-D (``x.mean([2, 3])``) is the flatten of the same
reduction with ``keepdim=True``.

A Linear call may be spelled ``nn.Linear``, ``F.linear``, ``x @ W.t() + b``, ``torch.addmm(b, x, W.t())``,
``torch.matmul(x, W.T)`` or their ATen forms (``_patterns``): each is read as (input, weight, bias), the
weight laid out (out, in) by undoing the transposes it was written with, and a bias add after a matmul
becomes the convolution's bias.

How. Every step replaces a 2-D node ``v = op(flatten(m))`` by ``flatten(op(m))``: ops that commute with
flattening (element-wise ones always; per-feature ones such as BatchNorm1d, and LayerNorm over the
features, when all features sit on the channel axis) move in front of the flatten, and the Linear
itself becomes ``flatten(conv(m))``. Linear calls are visited in graph order, so the next Linear of a
head finds the flatten just made and becomes a 1x1 convolution: the whole head is convolutional and its
result is flattened once, at the end. Users of an intermediate value that are not part of the head read
``flatten(...)`` of it and see what they saw.

Layout. With ``layout="folded"`` the map a head reads is folded first, (N, C, *S) → (1, C, *S[:-1],
N·S[-1]): the batch items side by side along the last axis. The first convolution strides by its kernel
over them, the later 1x1 ones see one image of N positions, and a runtime that runs one GEMM per image
(onnxruntime on CPU) runs one GEMM for the whole batch, as it did for the Linear. The flatten at the end
of the head unfolds. ``layout="batched"`` keeps (N, C, *S).

Every Linear (``scope="all"``). A Linear that does not read a flattened map acts at each position of a
(N, *positions, C) value: it becomes ``leave(conv1x1(enter(x)))`` in the value's conv layout, (N, C, 1, L)
for tokens and (N, C, H, W) for channels-last maps (the layouts and their math: ``_layouts``). Walking the
graph in order, element-wise ops and LayerNorms whose input already has a conv form run in it, and the
form is kept beside each value, so the next Linear reads it without a layout change; a Linear's input
that has none is entered where the ops before it start (``fc1(norm(x))`` enters ``x``, which the
residual reads too). The ``leave`` nodes nobody reads are dropped at the end.

The convolutions read the Linear's own parameters through ``unflatten`` views: nothing is copied, a
Linear called from several places keeps one set of weights, gradients reach it, and the state_dict keys
do not change.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx import Node

from . import _patterns as P
from ._layouts import PositionLayout, layer_norm_over_channels, layout_for
from .report import Converted, Report, Skipped

log = logging.getLogger("fxconv")

CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}  # keyed by the number of spatial dims
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_CHANNEL_KINDS = (P.Kind.PER_FEATURE, P.Kind.ACROSS_FEATURES)  # need every feature on the channel axis


class _FeatureBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d accepting (N, F, 1, ...) too: statistics per feature (dim 1) over all other dims.

    A BatchNorm1d of a head is given this class once the head is convolutional; for the 2-D and 3-D
    inputs BatchNorm1d takes it computes exactly what BatchNorm1d does.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dims, got {input.dim()}")


@dataclass(frozen=True)
class _Flat:
    """A 2-D node known to equal ``flatten(map, 1)``, where ``map`` has shape (N, *features) (or is folded)."""

    node: Node
    map: Node
    features: tuple[int, ...]  # (C, *S) of one batch item's map
    origin: tuple[int, ...]  # (C, *S) of the map the user flattened (differs from ``features`` for 1x1)
    folded: bool = False  # the map is (1, C, *S[:-1], N·S[-1]): the batch tiled along the last axis
    squeezed: bool = False  # flattened by ``squeeze()``, which drops the batch dim too when it is 1

    @property
    def on_channels(self) -> bool:
        """Whether every feature sits on the channel axis."""
        return _on_channels(self.features)


def _on_channels(features: tuple[int, ...]) -> bool:
    """Whether a map of (C, *S) features has all its spatial dims equal to 1."""
    return all(s == 1 for s in features[1:])


@dataclass(frozen=True)
class LinearCall:
    """One Linear-like call, read as ``input @ weight.T + bias`` whatever its spelling."""

    node: Node  # the node whose value is the Linear's output (after a bias add, the add)
    input: Node
    weight: Node | str  # a node, or a parameter's qualified name (of an nn.Linear)
    transposed: bool  # the weight as given is laid out (in, out), as the right operand of a matmul
    bias: Node | str | None
    refusal: tuple[str, str] | None = None  # (code, reason): the call cannot be rewritten as written


@dataclass(frozen=True)
class _Path:
    """A Linear's input traced back to a flatten: ``source`` then the ``chain`` of ops to the Linear."""

    source: Node
    chain: list[Node]


def shape_of(node: object) -> tuple[int, ...] | None:
    """The recorded shape of a node's tensor, if any."""
    meta = node.meta.get("tensor_meta") if isinstance(node, Node) else None
    return tuple(meta.shape) if hasattr(meta, "shape") else None


def _label(call: LinearCall) -> str:
    """How a Linear call is named to a user: its module's qualified name where it has one."""
    if call.node.op == "call_module":
        return str(call.node.target)
    weight = _untransposed(call.weight)[0] if isinstance(call.weight, Node) else None
    if weight is not None and weight.op == "get_attr":  # torch.export keeps the parameter's name
        return weight.target.removesuffix(".weight").removesuffix("_weight")  # attn.in_proj_weight: attn.in_proj
    return P.module_path(call.node) or call.node.name


def _untransposed(node: Node) -> tuple[Node, bool]:
    """The node a chain of matrix transposes starts from, and whether the chain transposes it."""
    flipped = False
    while P.swaps_2d(node) and isinstance(P.first_input(node), Node) and len(shape_of(node) or ()) == 2:
        node, flipped = P.first_input(node), not flipped
    return node, flipped


def _constants(graph: fx.Graph) -> set[Node]:
    """The nodes computed from parameters, buffers and constants alone: what a weight operand may be."""
    found: set[Node] = set()
    for node in graph.nodes:
        inputs = node.all_input_nodes
        if node.op == "get_attr" or (node.op.startswith("call_") and inputs and all(i in found for i in inputs)):
            found.add(node)
    return found


def _module_refusal(module: nn.Linear) -> tuple[str, str] | None:
    """Why an ``nn.Linear`` module's call is more than ``F.linear`` (a rewrite would lose it), if it is."""
    if type(module).forward is not nn.Linear.forward:
        return (
            "custom-forward",
            (
                f"{type(module).__name__} overrides Linear.forward (fake quantisation, adapters, ...), which a "
                "convolution would drop: capture with torch.export (capture='export') to see what it computes"
            ),
        )
    hooks = [h.strip("_").replace("_", " ") for h in _HOOKS if getattr(module, h, None)]
    global_hooks = [h for h in ("_global_forward_hooks", "_global_forward_pre_hooks") if getattr(nn.modules.module, h)]
    if hooks or global_hooks:
        what = ", ".join(hooks) or "global module hooks"
        return (
            "hooked",
            (
                f"the module has {what} (spectral_norm, weight_norm and feature taps use them), which a "
                "convolution would not run: capture with torch.export (capture='export') to inline them"
            ),
        )
    return None


def describe(node: Node, modules: dict[str, nn.Module]) -> str:
    """A short description of what a node computes, for messages."""
    if node.op == "call_module":
        return f"{node.target!r} ({type(modules[node.target]).__name__})"
    if node.op in ("call_function", "call_method"):
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
        return f"{node.name!r} ({name})"
    return f"{node.name!r} ({node.op})"


class Rewriter:
    """Rewrites the Linear calls of one GraphModule, recording what it did in a Report."""

    def __init__(self, gm: fx.GraphModule, method: str, layout: str, report: Report, scope: str = "heads"):
        self.gm, self.graph, self.method, self.report = gm, gm.graph, method, report
        self.folded = layout == "folded"
        self.every_linear = scope == "all"
        self.modules = dict(gm.named_modules())
        self.constants = _constants(self.graph)
        self.seen: dict[str, int] = {}  # how many calls of each name were met: repeated calls are numbered
        self.flats: dict[Node, _Flat] = {}  # every node known to be a flatten of a map
        self.maps: list[Node] = []  # the feature maps that heads read (their first convolution's input)
        self.heads: list[tuple[Node, str]] = []  # each head's first convolution, with its Linear's name
        self.forms: dict[Node, Node] = {}  # scope "all": a value -> the same value in its conv layout
        self.replaced: set[Node] = set()  # nodes erased while the graph is walked

    def run(self) -> None:
        """Rewrite the Linear calls, then tidy the graph."""
        self.rewrite()
        self.finish()

    def finish(self) -> None:
        """Drop what the rewrite left unused (flattens, ``x.size(0)`` of a view, ...) and recompile."""
        if self.report.converted or self.forms:
            self.graph.eliminate_dead_code()
            self.graph.lint()
            self.gm.recompile()

    def rewrite(self) -> None:
        """Visit the nodes in graph order: convert each Linear call that can be, report the others.

        A head (a Linear fed by a flattened map) becomes a convolution over that map. With scope "all",
        any other Linear becomes a 1x1 convolution in its value's conv layout (``_layouts``), and
        element-wise ops and LayerNorms whose input is already in a conv layout move into it.
        """
        for node in list(self.graph.nodes):
            if node in self.replaced:
                continue
            call = self.linear_call(node)
            if call is None:
                if self.every_linear:
                    self._propagate(node)
                continue
            name = self._name(call)
            if call.refusal:
                found = Skipped(name, *call.refusal)
            elif self.every_linear and call.input in self.forms:
                found = self._convert_positions(call, name)
            else:
                found = self._trace_back(call, name)
                if isinstance(found, Skipped) and self.every_linear:
                    found = self._convert_positions(call, name)
            if isinstance(found, Skipped):
                self.report.skipped.append(found)
                log.debug("fxconv: left %s alone: %s", found.name, found.reason)
            elif isinstance(found, _Path):
                self._convert(call, name, found)

    def _name(self, call: LinearCall) -> str:
        """The call's label; the second and later calls of one Linear are numbered."""
        label = _label(call)
        self.seen[label] = self.seen.get(label, 0) + 1
        return label if self.seen[label] == 1 else f"{label} (call {self.seen[label]})"

    # -- finding Linear calls --------------------------------------------------------------------

    def linear_call(self, node: Node) -> LinearCall | None:
        """``node`` read as a Linear call, or None if it is none (an activation × activation matmul)."""
        if P.is_linear_module(node, self.modules):
            module = self.modules[node.target]
            bias = f"{node.target}.bias" if module.bias is not None else None
            return LinearCall(node, P.first_input(node), f"{node.target}.weight", False, bias, _module_refusal(module))
        form = P.role(node, "linear")
        if form == "linear":
            return LinearCall(node, P.arg(node, 0, "input"), P.arg(node, 1, "weight"), False, P.arg(node, 2, "bias"))
        if form == "addmm":
            bias, x, w = P.arg(node, 0, "input"), P.arg(node, 1, "mat1"), P.arg(node, 2, "mat2")
        elif form == "matmul":
            x = P.arg(node, 0, "input", node.kwargs.get("self"))
            w, bias = P.arg(node, 1, "other", node.kwargs.get("mat2")), None
        else:
            return None
        if x in self.constants:
            if w in self.constants:  # constants alone (a weight computed in forward): no activation involved
                return None
            return LinearCall(node, w, x, False, None, (
                "weight-on-left",
                "a constant multiplies from the left (W @ x): it mixes along the rows, not the features",
            ))  # fmt: skip
        if w not in self.constants:
            return None  # both operands computed from the inputs (attention's q @ k): no weight
        weight, flipped = _untransposed(w)
        call = LinearCall(node, x, weight, not flipped, bias)
        if len(shape_of(w) or ()) != 2:
            reason = f"its constant operand has shape {shape_of(w)}, not a (in, out) matrix"
            return dataclasses.replace(call, refusal=("weight-rank", reason))
        if form == "addmm":
            if (node.kwargs.get("beta", 1), node.kwargs.get("alpha", 1)) != (1, 1):
                reason = "addmm with beta or alpha other than 1 scales the product or the bias"
                return dataclasses.replace(call, refusal=("scaled", reason))
            return call
        return self._with_bias_add(call)

    def _with_bias_add(self, call: LinearCall) -> LinearCall:
        """A matmul whose one user adds a constant vector of its output width: that add is its bias."""
        (user,) = call.node.users if len(call.node.users) == 1 else (None,)
        if user is None or not P.has_role(user, "add") or user.kwargs.get("alpha", 1) != 1 or len(user.args) != 2:
            return call
        bias = user.args[1] if user.args[0] is call.node else user.args[0]
        width = (shape_of(call.node) or (None,))[-1]
        if bias not in self.constants or math.prod(shape_of(bias) or (0,)) != width or shape_of(user) != shape_of(call.node):
            return call
        return dataclasses.replace(call, node=user, bias=bias)

    # -- finding the flatten ---------------------------------------------------------------------

    def _trace_back(self, call: LinearCall, name: str) -> _Path | Skipped:
        """Follow the Linear's input back through movable ops to the flatten that feeds it."""
        linear, start = call.node, call.input
        if start in self.flats:  # made by this pass: a head's previous Linear, or a shared flatten
            return _Path(start, [])
        shape = shape_of(start)
        if shape is None or shape_of(linear) is None:
            return Skipped(name, "no-shape", "no shape was recorded for its input or output")
        if len(shape) < 2:
            return Skipped(
                name, "not-flattened",
                f"its input has shape {shape}: there is no batch dimension left (a squeeze of a batch of 1?)",
            )  # fmt: skip
        if len(shape) != 2 or len(shape_of(linear)) != 2:
            return Skipped(
                name, "not-2d",
                f"its input has shape {shape}: a Linear on a {len(shape)}-D tensor acts at each position "
                "along the last dim, it does not read a flattened feature map (scope='all' converts it "
                "as a 1x1 convolution)",
            )  # fmt: skip
        chain: list[Node] = []
        node = start
        while True:
            verdict = self._as_source(node, name)
            if isinstance(verdict, Skipped):
                return verdict
            if verdict:
                return self._check_chain(name, _Path(node, chain[::-1]))
            previous = self._step_back(node, shape)
            if previous is None:
                return Skipped(
                    name, "not-flattened",
                    f"its input comes from {describe(node, self.modules)}, which is neither a flatten of "
                    "a feature map nor an op that commutes with one (scope='all' converts it as a 1x1 "
                    "convolution)",
                )  # fmt: skip
            chain.append(node)
            node = previous

    def _as_source(self, node: Node, name: str) -> bool | Skipped:
        """Whether ``node`` flattens a feature map (a Skipped if it flattens one in a way fxconv can't use)."""
        if node in self.flats:
            return True
        out, inp = shape_of(node), shape_of(P.first_input(node))
        if out is None or inp is None or len(out) != 2 or len(inp) < 3:
            return False
        reduction = P.reduction_args(node)
        if reduction is not None:
            dims, keepdim = reduction
            dims = dims if isinstance(dims, (tuple, list)) else [dims]
            if keepdim or not all(isinstance(d, int) for d in dims):
                return False
            spatial = {d % len(inp) for d in dims} == set(range(2, len(inp))) and out == inp[:2]
            return spatial or self._pools_positions(node) is not None
        if not P.is_reshape(node, self.modules):
            return False
        if out[0] != inp[0]:
            return Skipped(
                name, "folds-batch",
                f"the flatten {describe(node, self.modules)} folds the batch dimension: {inp} -> {out}",
            )  # fmt: skip
        map_shape = shape_of(self._map_of(node))
        if len(map_shape) - 2 not in CONVS:
            return Skipped(
                name, "rank",
                f"it reads a flatten of a {len(map_shape) - 2}-D feature map {map_shape}; "
                f"there is no conv{len(map_shape) - 2}d",
            )  # fmt: skip
        return True

    def _pools_positions(self, node: Node) -> PositionLayout | None:
        """For a reduction over every position of a (N, *P, C) value (``x.mean(1)`` of tokens), its layout."""
        reduction, inp = P.reduction_args(node), shape_of(P.first_input(node))
        if reduction is None or inp is None or len(inp) < 3 or reduction[1]:
            return None
        dims = reduction[0] if isinstance(reduction[0], (tuple, list)) else [reduction[0]]
        if not all(isinstance(d, int) for d in dims) or {d % len(inp) for d in dims} != set(range(1, len(inp) - 1)):
            return None
        return layout_for(len(inp), self.folded) if shape_of(node) == (inp[0], inp[-1]) else None

    def _map_of(self, source: Node) -> Node:
        """The feature map a source node flattens, looking past reshapes that keep the batch dim.

        ``flatten(x.view(N, C, H·W)) == flatten(x)`` and ``flatten(x.squeeze(-1)) == flatten(x)``: every
        reshape is row-major, so the map is the tensor before such reshapes (up to 3 spatial dims).
        """
        node = P.first_input(source)
        if source in self.flats:
            return node
        if P.reduction_args(source) is not None:
            # A reduction over every dim after the channels reads the map before any reshape that keeps
            # (N, C): ``x.flatten(2).mean(-1) == x.mean((2, 3))``, so the map stays 2-D (or 3-D).
            while P.is_reshape(node, self.modules):
                before, after = shape_of(P.first_input(node)), shape_of(node)
                if before is None or after is None or not 3 <= len(before) <= 5 or before[:2] != after[:2]:
                    break
                node = P.first_input(node)
            return node
        while P.is_reshape(node, self.modules):
            before = shape_of(P.first_input(node))
            if before is None or not 3 <= len(before) <= 5 or before[0] != shape_of(node)[0]:
                break
            node = P.first_input(node)
        return node

    def _step_back(self, node: Node, shape: tuple[int, ...]) -> Node | None:
        """The input of ``node`` if it may move in front of a flatten (keeping ``shape``), else None."""
        if shape_of(node) != shape:
            return None
        if P.is_reshape(node, self.modules):  # one that leaves a 2-D tensor as it is: view(x.size(0), -1)
            return P.first_input(node) if shape_of(P.first_input(node)) == shape else None
        kind = P.op_kind(node, self.modules)
        if kind is None:
            return None
        return P.data_input(node, lambda other: self._broadcasts_alike(other, kind))

    def _broadcasts_alike(self, operand: Node, kind: P.Kind) -> bool:
        """Whether a constant operand of an op acts the same on the map as on the flattened (N, F) tensor.

        A norm over the features runs on the map with its channels last, where its per-feature weight
        broadcasts as before; an element-wise op's operand must be a single value (``x * self.scale``).
        """
        if operand not in self.constants:
            return False
        return kind is P.Kind.ACROSS_FEATURES or math.prod(shape_of(operand) or (0,)) == 1

    def _check_chain(self, name: str, path: _Path) -> _Path | Skipped:
        """Refuse chains whose ops cannot run on the map the method gives."""
        features = self._features(path.source)
        on_channels = self.method == "1x1" or _on_channels(features)
        for node in path.chain:
            if P.op_kind(node, self.modules) in _CHANNEL_KINDS and not on_channels:
                return Skipped(
                    name, "needs-1x1",
                    f"{describe(node, self.modules)} between the flatten and the Linear works on the "
                    f"{math.prod(features)} features as a vector, so it cannot run on the {features} map "
                    "that method='kernel' keeps: use method='1x1'",
                )  # fmt: skip
        if path.source not in self.flats and P.reduction_args(path.source) is None:
            written = [n for n in path.chain if P.is_inplace(n, self.modules)]
            if written and len(self._map_of(path.source).users) > 1:
                return Skipped(
                    name, "inplace",
                    f"{describe(written[0], self.modules)} writes in place into the flattened tensor, "
                    "whose feature map other nodes also read",
                )  # fmt: skip
        return path

    def _features(self, source: Node) -> tuple[int, ...]:
        """(C, *S) of the map a source node flattens (for a reduction, the map it keeps: (C, 1, ...))."""
        if source in self.flats:
            return self.flats[source].features
        positions = self._pools_positions(source)
        if positions is not None:  # (N, C) is the flatten of (N, C, 1, ...)
            return (shape_of(source)[1], *(1,) * positions.spatial)
        features = shape_of(self._map_of(source))[1:]
        if P.reduction_args(source) is not None:
            return features[:1] + (1,) * (len(features) - 1)
        return features

    # -- rewriting -------------------------------------------------------------------------------

    def _convert(self, call: LinearCall, name: str, path: _Path) -> None:
        """Rewrite ``linear(chain(source))`` as ``flatten(conv(chain(map)))``."""
        flat = self._open(path.source)
        for node in path.chain:
            flat = self.move(node, flat)
        spatial = flat.features[1:]
        linear = call.node
        out_features = shape_of(linear)[1]
        with self.graph.inserting_before(linear):
            # Folded, the batch items sit side by side along the last axis: the kernel steps over them.
            stride = spatial if flat.folded else 1
            conv = self._conv(call, flat.map, flat.features, stride)
        if flat.map in self.maps:
            self.heads.append((conv, name))
        self.report.converted.append(Converted(name, self.method, flat.origin, spatial, conv.name, self.report.layout))
        log.debug("fxconv: %s -> %s, kernel %s", name, conv.name, spatial)
        self._flatten(conv, (out_features, *(1,) * len(spatial)), linear, folded=flat.folded, squeezed=flat.squeezed)

    def _conv(self, call: LinearCall, map_: Node, features: tuple[int, ...], stride=1) -> Node:
        """The convolution of ``map_`` with the Linear's weight viewed as (out, *features) and its bias."""
        w = self._get_attr(call.weight) if isinstance(call.weight, str) else call.weight
        if call.transposed:
            w = self.graph.call_method("t", (w,))
        w = self.graph.call_method("unflatten", (w, 1, features))
        b = self._get_attr(call.bias) if isinstance(call.bias, str) else call.bias
        if len(shape_of(b) or (0,)) != 1:  # a (1, out) bias added after a matmul
            b = self.graph.call_method("reshape", (b, (-1,)))
        return self.graph.call_function(CONVS[len(features) - 1], (map_, w, b, stride))

    # -- scope "all": Linears at every position, and the ops between them ---------------------------

    def _convert_positions(self, call: LinearCall, name: str) -> Skipped | None:
        """Rewrite a Linear acting at each position of (N, *P, C) as ``leave(conv1x1(enter(x)))``."""
        shape = shape_of(call.input)
        if shape is None or shape_of(call.node) is None:
            return Skipped(name, "no-shape", "no shape was recorded for its input or output")
        if len(shape) < 2:
            return Skipped(name, "rank", f"its input has shape {shape}: there is no batch dimension")
        layout = layout_for(len(shape), self.folded)
        if layout is None:
            return self._convert_many_positions(call, name, shape)
        with self.graph.inserting_before(call.node):
            form = self._form(call.input, layout, walk=True)
            conv = self._conv(call, form, (shape[-1], *(1,) * layout.spatial))
        self._leave(call.node, conv, layout)
        self.report.converted.append(Converted(name, "1x1", (), (1,) * layout.spatial, conv.name, layout.shape))
        log.debug("fxconv: %s -> %s, %s", name, conv.name, layout.shape)
        return None

    def _convert_many_positions(self, call: LinearCall, name: str, shape: tuple[int, ...]) -> None:
        """More than three position dims (Twins' windows, (N, h, w, ws, ws, C)): run them as one row of tokens.

        ``x.flatten(1, -2)`` is (N, L, C) tokens; the result is unflattened to the sizes ``x`` has when
        it runs. No conv layout is kept for such a value: only this Linear runs in one.
        """
        tokens = layout_for(3, self.folded)
        with self.graph.inserting_before(call.node):
            row = tokens.enter(self.graph, self.graph.call_method("flatten", (call.input, 1, -2)), 3)
            conv = self._conv(call, row, (shape[-1], 1, 1))
            sizes = tuple(self.graph.call_method("size", (call.input, d)) for d in range(1, len(shape) - 1))
            self._replace(call.node, self.graph.call_method("unflatten", (tokens.leave(self.graph, conv), 1, sizes)))
        self.report.converted.append(Converted(name, "1x1", (), (1, 1), conv.name, "(N, *P, C) as (N, C, 1, L)"))
        log.debug("fxconv: %s -> %s, positions flattened", name, conv.name)

    def _form(self, value: Node, layout: PositionLayout, walk: bool = False) -> Node:
        """``value`` in ``layout``: its recorded form, or entered (once: the form is recorded).

        An operand of lower rank, broadcasting against the layout's values, is entered each time.
        ``walk``: enter the value the ops before ``value`` start from, and move those ops into the layout
        — ``fc1(norm(x))`` enters ``x``, which the residual ``x + ...`` reads too.
        """
        rank = len(shape_of(value) or ()) if isinstance(value, Node) else 0
        if rank != layout.rank:
            return layout.enter(self.graph, value, rank)
        chain, root = [], value
        while walk and root not in self.forms and self._movable(root, layout):
            chain.append(root)
            root = P.first_input(root)
        if root not in self.forms:
            if root.op == "placeholder":  # after every input: the code keeps its signature
                root_end = [n for n in self.graph.nodes if n.op == "placeholder"][-1].next
            else:
                root_end = root.next
            with self.graph.inserting_before(root_end):
                self._record_form(root, layout.enter(self.graph, root, rank), layout)
        form = self.forms[root]
        for node in reversed(chain):
            form = self._propagate(node)
            if form is None:  # it did not move after all: enter the value itself
                return layout.enter(self.graph, value, rank)
        return form

    def _movable(self, node: Node, layout: PositionLayout) -> bool:
        """Whether ``node`` is an op of one tensor (and constants) that runs as well in ``layout``."""
        source = P.first_input(node)
        if node.op not in ("call_function", "call_method", "call_module") or not isinstance(source, Node):
            return False
        if len(shape_of(node) or ()) != layout.rank or len(shape_of(source) or ()) != layout.rank:
            return False
        kind = P.op_kind(node, self.modules)
        others = [a for a in node.all_input_nodes if a is not source]
        return kind is P.Kind.ACROSS_FEATURES or (kind is P.Kind.ELEMENTWISE and all(a in self.constants for a in others))

    def _leave(self, node: Node, form: Node, layout: PositionLayout) -> None:
        """Replace ``node`` by ``leave(form)``, recorded as having that form."""
        with self.graph.inserting_before(node):
            left = layout.leave(self.graph, form)
        self._replace(node, left)
        self._record_form(left, form, layout)
        self._read_sizes_from(left, form, layout)

    def _record_form(self, value: Node, form: Node, layout: PositionLayout) -> None:
        """Record ``form`` as the conv form of ``value``, with its shape (dense mode reads it)."""
        self.forms[value] = form
        meta = value.meta.get("tensor_meta")
        if meta is not None and "tensor_meta" not in form.meta:
            form.meta["tensor_meta"] = meta._replace(shape=torch.Size(layout.form_shape(tuple(meta.shape))))

    def _read_sizes_from(self, left: Node, form: Node, layout: PositionLayout) -> None:
        """Let ``x.shape[i]`` / ``x.size(i)`` of ``left`` read the form's dim, so no layout change runs for a size."""
        for user in list(left.users):
            if P.op_name(user) == "getattr" and user.args[1:] == ("shape",):
                reads = list(user.users)
                if not all(P.op_name(r) == "getitem" and isinstance(r.args[1], int) for r in reads):
                    continue
            elif P.op_name(user) in ("size", "sym_size") and isinstance(P.arg(user, 1, "dim"), int):
                reads = [user]
            else:
                continue
            for read in reads:
                dim = layout.form_dim(read.args[1])
                with self.graph.inserting_before(read):
                    if isinstance(read.target, torch._ops.OpOverload):  # aten.sym_size.int
                        size = self.graph.call_function(read.target, (form, dim))
                    else:
                        size = self.graph.call_method("size", (form, dim))
                size.meta = dict(read.meta)
                read.replace_all_uses_with(size)
                self.graph.erase_node(read)
                self.replaced.add(read)

    def _replace(self, node: Node, value: Node) -> None:
        """Erase ``node`` for ``value``, a node computing the same tensor (which keeps its recorded shape)."""
        value.meta.setdefault("tensor_meta", node.meta.get("tensor_meta"))
        node.replace_all_uses_with(value)
        self.graph.erase_node(node)
        self.replaced.add(node)

    def _propagate(self, node: Node) -> Node | None:
        """Run ``node`` in its conv layout when one of its inputs already is (scope "all"); its form, if so.

        A permute of a value in a conv layout composes with the layout's own (``permute(0, 3, 1, 2)``
        of a channels-last value that is a conv form is that form); a permute that entering would undo
        records its input as its form. A reshape between (N, H, W, C) and (N, H·W, C) regroups the
        form's positions. Element-wise ops and LayerNorms over the last dim move into the layout, their
        other operands entered (a per-channel scale becomes (1, C, 1, 1)).
        """
        shape = shape_of(node)
        layout = layout_for(len(shape), self.folded) if shape is not None else None
        if layout is None or node.op not in ("call_function", "call_method", "call_module"):
            return None
        if node in self.constants:  # a weight (``w.t()``) stays what linear_call recognises, whatever reads it
            return None
        order = P.permutation(node, layout.rank)
        source = P.first_input(node)
        if order is not None and isinstance(source, Node):
            if source in self.forms:  # a permute keeps the rank: the source's form is in this layout
                with self.graph.inserting_before(node):
                    self._replace(node, layout.permuted(self.graph, self.forms[source], order))
            elif layout.cancels(order):
                with self.graph.inserting_before(node.next):
                    self._record_form(node, layout.enter(self.graph, node, layout.rank), layout)
            return None
        if P.is_reshape(node, self.modules) and source in self.forms:
            form = self._regrouped(node, source)
            if form is None:
                return None
        elif (kind := P.op_kind(node, self.modules)) is P.Kind.ACROSS_FEATURES:
            if source not in self.forms:
                return None
            weight, bias, eps = P.layer_norm_parts(node, self.modules)
            with self.graph.inserting_before(node):
                weight, bias = (self._get_attr(p) if isinstance(p, str) else p for p in (weight, bias))
                form = self.graph.call_function(layer_norm_over_channels, (self.forms[source], weight, bias, eps))
        elif kind is P.Kind.ELEMENTWISE:
            operands = node.all_input_nodes
            if not any(a in self.forms and len(shape_of(a) or ()) == layout.rank for a in operands):
                return None
            if any(shape_of(a) is None or len(shape_of(a)) > layout.rank for a in operands):
                return None
            with self.graph.inserting_before(node):
                entered = {a: self._form(a, layout) for a in operands}
                form = self.graph.node_copy(node, lambda a: entered[a])
            form.meta.pop("tensor_meta", None)
        else:
            return None
        self._leave(node, form, layout)
        return form

    def _regrouped(self, node: Node, source: Node) -> Node | None:
        """The form of a reshape that only regroups the positions: (N, H, W, C) <-> (N, H·W, C).

        Positions are row-major in both layouts, so the form regroups them the same way: (N, C, H, W)
        -> (N, C, 1, H·W) by ``flatten(2).unsqueeze(2)``, and back by ``squeeze(2).unflatten(2, (H, W))``
        with the sizes the reshape itself was given (which may be computed at run time).
        """
        before, after = shape_of(source), shape_of(node)
        if (before[0], before[-1]) != (after[0], after[-1]):
            return None
        form = self.forms[source]
        if len(before) == 4 and len(after) == 3:
            with self.graph.inserting_before(node):
                return self.graph.call_method("unsqueeze", (self.graph.call_method("flatten", (form, 2)), 2))
        sizes = node.args[1:] if len(node.args) != 2 or not isinstance(node.args[1], (list, tuple)) else node.args[1]
        if len(before) == 3 and len(after) == 4 and len(sizes) == 4:
            with self.graph.inserting_before(node):
                squeezed = self.graph.call_method("squeeze", (form, 2))
                return self.graph.call_method("unflatten", (squeezed, 2, tuple(sizes[1:3])))
        return None

    def _get_attr(self, name: str) -> Node:
        """A get_attr of a Linear's parameter; a parametrized one is a property, which fx warns of needlessly."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Attempted to insert a get_attr Node with no underlying reference")
            return self.graph.get_attr(name)

    def _open(self, source: Node) -> _Flat:
        """The flatten a path starts from, with its map built for the method (made once per source)."""
        if source in self.flats:
            return self.flats[source]
        features = self._features(source)
        reduction = P.reduction_args(source)
        positions = self._pools_positions(source)
        inp = self.forms.get(P.first_input(source)) if positions else self._map_of(source)
        if positions is not None and inp is None:
            # Pooled over the positions of a value not in a conv layout: a reshape of the (N, C) result.
            with self.graph.inserting_after(source):
                pooled = self.graph.call_method("reshape", (source, (-1, *features)))
            flat = _Flat(source, pooled, features, features)
        elif reduction is not None:
            # mean(x, dims) == flatten(mean(x, dims, keepdim=True)): keep the reduced dims as 1s (the
            # spatial dims of the map, or of the conv form of a value pooled over its positions).
            dims = list(range(2, 1 + len(features)))
            kwargs = {k: v for k, v in source.kwargs.items() if k not in ("input", "dim", "keepdim")}
            with self.graph.inserting_before(source):
                kept = self.graph.create_node(source.op, source.target, (inp, dims), {**kwargs, "keepdim": True})
            kept.meta.update({k: v for k, v in source.meta.items() if k != "tensor_meta"})
            flat = self._flatten(kept, features, source)
        else:
            flat = _Flat(source, inp, features, features, squeezed=P.squeezes_every_dim(source))
        self.maps.append(flat.map)
        if self.method == "1x1" and not flat.on_channels:
            with self.graph.inserting_after(flat.node):
                size = math.prod(features)
                ones = (1,) * (len(features) - 1)
                reshaped = self.graph.call_method("reshape", (flat.map, (-1, size, *ones)))
            flat = _Flat(flat.node, reshaped, (size, *ones), flat.origin, squeezed=flat.squeezed)
        if self.folded:
            # (N, C, *S) -> (C, *S[:-1], N, S[-1]) -> (1, C, *S[:-1], N·S[-1]): one image for the runtime,
            # so that each convolution is a single GEMM over the whole batch.
            with self.graph.inserting_after(flat.map):
                moved = self.graph.call_method("movedim", (flat.map, 0, -2))
            with self.graph.inserting_after(moved):
                folded = self.graph.call_method("reshape", (moved, (1, *flat.features[:-1], -1)))
            flat = _Flat(flat.node, folded, flat.features, flat.origin, folded=True, squeezed=flat.squeezed)
        self.flats[flat.node] = flat
        return flat

    def move(self, node: Node, flat: _Flat) -> _Flat:
        """Rewrite ``node(flatten(map))`` as ``flatten(node(map))``; return the new flatten."""
        if P.is_reshape(node, self.modules):  # the only reshapes a chain admits leave the tensor as it is
            node.replace_all_uses_with(flat.node)
            self.graph.erase_node(node)
            self.replaced.add(node)
            return flat
        if node.op == "call_module" and isinstance(self.modules[node.target], nn.BatchNorm1d):
            self.modules[node.target].__class__ = _FeatureBatchNorm
        across = P.op_kind(node, self.modules) is P.Kind.ACROSS_FEATURES
        with self.graph.inserting_before(node):
            # A norm over the last dim of (N, F) is the same norm over the channels of (N, F, 1, ...).
            map_ = self.graph.call_method("movedim", (flat.map, 1, -1)) if across else flat.map
            moved = self.graph.node_copy(node, lambda n: map_ if n is flat.node else n)
            moved.meta.pop("tensor_meta", None)  # its shape is the map's now, not the 2-D one
            if across:
                moved = self.graph.call_method("movedim", (moved, -1, 1))
        return self._flatten(moved, flat.features, node, origin=flat.origin, folded=flat.folded, squeezed=flat.squeezed)

    def _flatten(
        self, map_: Node, features: tuple[int, ...], replaces: Node, origin=None, folded=False, squeezed=False
    ) -> _Flat:
        """Insert the (N, K) flattening of ``map_`` in place of ``replaces`` (which is erased); record it.

        ``squeezed``: the head was flattened by ``squeeze()``, which gives (K,) for a batch of one, so the
        result is ``squeeze(0)``-ed too — a no-op for any other batch size.
        """
        with self.graph.inserting_before(replaces):
            batched = map_
            if folded:  # undo the fold: (1, C, *S[:-1], N·S[-1]) -> (C, *S[:-1], N, S[-1]) -> (N, C, *S)
                unfolded = self.graph.call_method("reshape", (map_, (*features[:-1], -1, features[-1])))
                batched = self.graph.call_method("movedim", (unfolded, -2, 0))
            node = self.graph.call_function(torch.flatten, (batched, 1))
            if squeezed:
                node = self.graph.call_method("squeeze", (node, 0))
        replaces.replace_all_uses_with(node)
        self.graph.erase_node(replaces)
        self.replaced.add(replaces)
        flat = _Flat(node, map_, features, origin or features, folded, squeezed)
        self.flats[node] = flat
        return flat
