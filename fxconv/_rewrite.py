"""The rewrite: Linear layers fed by a flattened feature map become convolutions.

(Before and After diagrams of both methods: ``fxconv.convert``.)

The math. ``flatten`` is row-major over (C, H, W): feature ``k = (c·H + h)·W + w``. Hence

    y[n, o] = b[o] + Σ_k W[o, k] · flatten(x)[n, k]
            = b[o] + Σ_{c,h,w} W.view(F, C, H, W)[o, c, h, w] · x[n, c, h, w],

a convolution whose kernel covers the whole map and has one output position. The 1x1 form is the same
identity applied to ``x.reshape(N, C·H·W, 1, 1)``. A flatten of (N, C, L) gives conv1d, of
(N, C, D, H, W) conv3d. A global reduction that ends 2-D (``x.mean([2, 3])``) is the flatten of the same
reduction with ``keepdim=True``.

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

The convolutions read the Linear's own parameters through ``unflatten`` views: nothing is copied, a
Linear called from several places keeps one set of weights, gradients reach it, and the state_dict keys
do not change.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx import Node

from . import _patterns as P
from .report import Converted, Report, Skipped

log = logging.getLogger("fxconv")

CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}  # keyed by the number of spatial dims
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

    @property
    def on_channels(self) -> bool:
        """Whether every feature sits on the channel axis."""
        return _on_channels(self.features)


def _on_channels(features: tuple[int, ...]) -> bool:
    """Whether a map of (C, *S) features has all its spatial dims equal to 1."""
    return all(s == 1 for s in features[1:])


@dataclass(frozen=True)
class _Path:
    """A Linear's input traced back to a flatten: ``source`` then the ``chain`` of ops to the Linear."""

    source: Node
    chain: list[Node]


def shape_of(node: object) -> tuple[int, ...] | None:
    """The recorded shape of a node's tensor, if any."""
    meta = node.meta.get("tensor_meta") if isinstance(node, Node) else None
    return tuple(meta.shape) if hasattr(meta, "shape") else None


def _label(node: Node) -> str:
    """How a node is named to a user: the module it calls, or the node's own name."""
    return str(node.target) if node.op == "call_module" else node.name


def describe(node: Node, modules: dict[str, nn.Module]) -> str:
    """A short description of what a node computes, for messages."""
    if node.op == "call_module":
        return f"{node.target!r} ({type(modules[node.target]).__name__})"
    if node.op in ("call_function", "call_method"):
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
        return f"{node.name!r} ({name})"
    return f"{node.name!r} ({node.op})"


class HeadRewriter:
    """Rewrites the Linear calls of one GraphModule, recording what it did in a Report."""

    def __init__(self, gm: fx.GraphModule, method: str, layout: str, report: Report):
        self.gm, self.graph, self.method, self.report = gm, gm.graph, method, report
        self.folded = layout == "folded"
        self.modules = dict(gm.named_modules())
        self.flats: dict[Node, _Flat] = {}  # every node known to be a flatten of a map
        self.maps: list[Node] = []  # the feature maps that heads read (their first convolution's input)

    def run(self) -> None:
        """Rewrite the heads, then tidy the graph."""
        self.rewrite_heads()
        self.finish()

    def finish(self) -> None:
        """Drop what the rewrite left unused (flattens, ``x.size(0)`` of a view, ...) and recompile."""
        if self.report.converted:
            self.graph.eliminate_dead_code()
            self.graph.lint()
            self.gm.recompile()

    def rewrite_heads(self) -> None:
        """Visit the Linear calls in graph order; convert each one that can be, report the others."""
        for node in list(self.graph.nodes):
            operands = P.linear_operands(node, self.modules)
            if operands is None:
                continue
            found = self._trace_back(node, operands[0])
            if isinstance(found, Skipped):
                self.report.skipped.append(found)
                log.debug("fxconv: left %s alone: %s", found.name, found.reason)
                continue
            self._convert(node, found, *operands[1:])

    # -- finding the flatten ---------------------------------------------------------------------

    def _trace_back(self, linear: Node, start: object) -> _Path | Skipped:
        """Follow the Linear's input back through movable ops to the flatten that feeds it."""
        name = _label(linear)
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
                "along the last dim, it does not read a flattened feature map",
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
                    "a feature map nor an op that commutes with one",
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
            return {d % len(inp) for d in dims} == set(range(2, len(inp))) and out == inp[:2]
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

    def _map_of(self, source: Node) -> Node:
        """The feature map a source node flattens, looking past reshapes that keep the batch dim.

        ``flatten(x.view(N, C, H·W)) == flatten(x)`` and ``flatten(x.squeeze(-1)) == flatten(x)``: every
        reshape is row-major, so the map is the tensor before such reshapes (up to 3 spatial dims).
        """
        node = P.first_input(source)
        if source in self.flats or P.reduction_args(source) is not None:
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
        return P.data_input(node) if P.op_kind(node, self.modules) is not None else None

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
        features = shape_of(self._map_of(source))[1:]
        if P.reduction_args(source) is not None:
            return features[:1] + (1,) * (len(features) - 1)
        return features

    # -- rewriting -------------------------------------------------------------------------------

    def _convert(self, linear: Node, path: _Path, weight, bias) -> None:
        """Rewrite ``linear(chain(source))`` as ``flatten(conv(chain(map)))``."""
        flat = self._open(path.source)
        for node in path.chain:
            flat = self.move(node, flat)
        spatial = flat.features[1:]
        out_features = shape_of(linear)[1]
        with self.graph.inserting_before(linear):
            w = self.graph.get_attr(weight) if isinstance(weight, str) else weight
            w = self.graph.call_method("unflatten", (w, 1, flat.features))
            b = self.graph.get_attr(bias) if isinstance(bias, str) else bias
            # Folded, the batch items sit side by side along the last axis: the kernel steps over them.
            stride = spatial if flat.folded else 1
            conv = self.graph.call_function(CONVS[len(spatial)], (flat.map, w, b, stride))
        self.report.converted.append(Converted(_label(linear), self.method, flat.origin, spatial, conv.name))
        log.debug("fxconv: %s -> %s, kernel %s", _label(linear), conv.name, spatial)
        self._flatten(conv, (out_features, *(1,) * len(spatial)), linear, folded=flat.folded)

    def _open(self, source: Node) -> _Flat:
        """The flatten a path starts from, with its map built for the method (made once per source)."""
        if source in self.flats:
            return self.flats[source]
        inp = self._map_of(source)
        features = self._features(source)
        reduction = P.reduction_args(source)
        if reduction is not None:
            # mean(x, dims) == flatten(mean(x, dims, keepdim=True)): keep the reduced dims as 1s.
            dims, _ = reduction
            kwargs = {k: v for k, v in source.kwargs.items() if k not in ("input", "dim", "keepdim")}
            with self.graph.inserting_before(source):
                kept = self.graph.create_node(source.op, source.target, (inp, dims), {**kwargs, "keepdim": True})
            kept.meta.update({k: v for k, v in source.meta.items() if k != "tensor_meta"})
            flat = self._flatten(kept, features, source)
        else:
            flat = _Flat(source, inp, features, features)
        self.maps.append(flat.map)
        if self.method == "1x1" and not flat.on_channels:
            with self.graph.inserting_after(flat.node):
                size = math.prod(features)
                ones = (1,) * (len(features) - 1)
                reshaped = self.graph.call_method("reshape", (flat.map, (-1, size, *ones)))
            flat = _Flat(flat.node, reshaped, (size, *ones), flat.origin)
        if self.folded:
            # (N, C, *S) -> (C, *S[:-1], N, S[-1]) -> (1, C, *S[:-1], N·S[-1]): one image for the runtime,
            # so that each convolution is a single GEMM over the whole batch.
            with self.graph.inserting_after(flat.map):
                moved = self.graph.call_method("movedim", (flat.map, 0, -2))
            with self.graph.inserting_after(moved):
                folded = self.graph.call_method("reshape", (moved, (1, *flat.features[:-1], -1)))
            flat = _Flat(flat.node, folded, flat.features, flat.origin, folded=True)
        self.flats[flat.node] = flat
        return flat

    def move(self, node: Node, flat: _Flat) -> _Flat:
        """Rewrite ``node(flatten(map))`` as ``flatten(node(map))``; return the new flatten."""
        if P.is_reshape(node, self.modules):  # the only reshapes a chain admits leave the tensor as it is
            node.replace_all_uses_with(flat.node)
            self.graph.erase_node(node)
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
        return self._flatten(moved, flat.features, node, origin=flat.origin, folded=flat.folded)

    def _flatten(self, map_: Node, features: tuple[int, ...], replaces: Node, origin=None, folded=False) -> _Flat:
        """Insert the (N, K) flattening of ``map_`` in place of ``replaces`` (which is erased); record it."""
        with self.graph.inserting_before(replaces):
            batched = map_
            if folded:  # undo the fold: (1, C, *S[:-1], N·S[-1]) -> (C, *S[:-1], N, S[-1]) -> (N, C, *S)
                unfolded = self.graph.call_method("reshape", (map_, (*features[:-1], -1, features[-1])))
                batched = self.graph.call_method("movedim", (unfolded, -2, 0))
            node = self.graph.call_function(torch.flatten, (batched, 1))
        replaces.replace_all_uses_with(node)
        self.graph.erase_node(replaces)
        flat = _Flat(node, map_, features, origin or features, folded)
        self.flats[node] = flat
        return flat
