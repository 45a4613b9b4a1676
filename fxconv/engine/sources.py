"""A head's sources: the values a head's first Linear reads, and how each gets its conv form.

A source is an (N, K) value that is

* a flatten of a map (N, C, *S), 1 to 3 spatial dims, looking past reshapes that keep the batch and
  past a channels-last permute (TensorFlow's NHWC flatten: the permute goes into the weight);
* a global pooling that ends 2-D (``x.mean((2, 3))``): the flatten of the same pooling with ``keepdim``
  — so the form is made from that keepdim pooling (dense mode freezes it);
* a pooling over the positions of tokens or a channels-last map (``x.mean(1)`` of (N, L, C)): pooled in
  the value's conv form when it has one, else the (N, C) result itself is the vector.

Its layout comes from ``fxconv.layouts``: a kernel over the (folded) map, or the vector layout when every
feature sits on the channel axis (or with the 1x1 method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..codes import skip
from ..layouts import Layout, MapLayout, layout_for, vectors
from ..report import Skipped


@dataclass(frozen=True)
class Source:
    """How the (N, K) value a head reads gets its conv form."""

    value: object  # the (N, K) value
    layout: Layout  # of the form
    origin: tuple[int, ...]  # (C, *S) of the map it flattens, for the report
    start: object  # what the form is computed from: the map, the pooled input, or the value itself
    steps: tuple = ()  # from ``start`` (reduced first, if ``reduce``) to the form
    reduce: tuple | None = None  # (kind, dims): ``start`` pooled over ``dims``, keeping them
    pooled_positions: bool = False  # ``reduce`` pools the positions of (N, *P, C): in its form, if it has one


@dataclass(frozen=True)
class _Spec:
    """What kind of source a value is, before its layout is chosen."""

    kind: str  # "flatten", "pool" (global, over a map's spatial dims) or "positions"
    start: object
    features: tuple[int, ...]
    perm: tuple[int, ...] = ()
    reduce: tuple | None = None
    drops_unit_batch: bool = False


class Sources:
    """Reads what kind of source a value is (cached), and chooses its layout."""

    def __init__(self, view, method: str, folded: bool):
        self.view, self.method, self.folded = view, method, folded
        self.specs: dict[object, _Spec | Skipped | None] = {}

    def spec(self, value, name: str) -> _Spec | Skipped | None:
        """What kind of source ``value`` is (cached), or None if it is none."""
        if value not in self.specs:
            self.specs[value] = self._read_spec(value, name)
        return self.specs[value]

    def _read_spec(self, value, name: str) -> _Spec | Skipped | None:
        view = self.view
        producer = view.producer(value)
        record = view.read(producer) if producer is not None else None
        out = view.shape(value)
        inp = record.data.shape if record is not None and record.inputs else None
        if out is None or inp is None or len(out) != 2 or len(inp) < 3 or not isinstance(out[1], int):
            return None
        if record.rule.name == "over-dims" and record.params["kind"] in ("mean", "sum", "max", "min"):
            if record.params["keepdim"]:
                return None
            dims = {d % len(inp) for d in record.params["dims"]}
            kind = record.params["kind"]
            if dims == set(range(2, len(inp))) and out[1] == inp[1] and len(inp) - 2 <= 3:
                start = self._pooled_map(record.data.value)
                rank = len(view.shape(start))
                features = (inp[1], *(1,) * (rank - 2))
                return _Spec("pool", start, features, reduce=(kind, tuple(range(2, rank))))
            layout = layout_for(len(inp), self.folded)
            if dims == set(range(1, len(inp) - 1)) and out[1] == inp[-1] and layout is not None:
                features = (inp[-1], *(1,) * layout.spatial)
                return _Spec("positions", record.data.value, features, reduce=(kind, tuple(sorted(dims))))
            return None
        if record.rule.name != "regroup":
            return None
        # The batch changed size: seen in the sizes, or as a feature count that is not the input's (the
        # batch free, as in a dynamic ONNX file or a dim that moves with it, its size unknown).
        static = all(isinstance(s, int) for s in inp[1:])
        if (isinstance(out[0], int) and isinstance(inp[0], int) and out[0] != inp[0]) or (
                static and math.prod(inp[1:]) != out[1]):
            return skip(name, "folds-batch",
                        f"the flatten {view.describe(producer)} folds the batch dimension: {inp} -> {out}")
        map_, perm = self._flattened_map(record.data.value)
        shape = view.shape(map_)
        if len(shape) - 2 not in (1, 2, 3):
            return skip(name, "rank", f"it reads a flatten of a {len(shape) - 2}-D feature map {shape}; "
                        f"there is no conv{len(shape) - 2}d")
        features = tuple(shape[1:])
        if not all(isinstance(s, int) for s in features) or out[1] != math.prod(features):
            return None
        return _Spec("flatten", map_, features, perm, drops_unit_batch=record.params["squeezes_all"])

    def _flattened_map(self, value):
        """The map a flatten reads, past reshapes that keep the batch (``x.view(N, C, H·W)``) and a
        channels-last permute; with that permute (the identity if none)."""
        view = self.view
        while (record := self.read_producer(value)) is not None and record.rule.name == "regroup":
            before = record.data.shape
            if before is None or not 3 <= len(before) <= 5 or before[0] != view.shape(value)[0]:
                break
            value = record.data.value
        rank = len(view.shape(value))
        record = self.read_producer(value)
        channels_last = (0, *range(2, rank), 1)
        if record is not None and record.rule.name == "permute" and record.params["perm"] == channels_last:
            return record.data.value, channels_last
        return value, tuple(range(rank))

    def _pooled_map(self, value):
        """The map a global pooling reads, past reshapes that keep (N, C): ``x.flatten(2).mean(-1)`` pools ``x``."""
        while (record := self.read_producer(value)) is not None and record.rule.name == "regroup":
            before, after = record.data.shape, self.view.shape(value)
            if before is None or not 3 <= len(before) <= 5 or before[:2] != after[:2]:
                break
            value = record.data.value
        return value

    def read_producer(self, value):
        producer = self.view.producer(value)
        return self.view.read(producer) if producer is not None else None

    def source(self, value, chain: list) -> Source | None:
        """The Source of a value whose spec was read, its layout chosen for the method and the ops after it
        (None: the channels-last method has nothing to change).

        The kernel method reads the (folded) map. Every feature on the channel axis, the map folded is
        already a vector layout. The 1x1 method reads the flattening in the vector layout: the map's own
        (a channels-last permute moved into the weight), or the value itself when ops over its features
        (a LayerNorm) sit between it and the Linear. The channels-last method reads the map's channels-last
        flattening, for a Linear that stays one; a map of 1x1, or one the model flattens channels-last
        already, has nothing to change.
        """
        spec = self.specs[value]
        spatial = len(spec.features) - 1
        identity = tuple(range(spatial + 2))
        fold = MapLayout(spec.features, identity, self.folded).enter_steps()
        vector = vectors(spatial, self.folded, spec.drops_unit_batch)
        on_channels = spec.kind != "flatten" or all(s == 1 for s in spec.features[1:])
        channels_last = (0, *range(2, spatial + 2), 1)
        if self.method == "channels-last" and (on_channels or spec.perm == channels_last):
            return None
        if spec.kind != "flatten":
            return Source(value, vector, spec.features, spec.start, tuple(fold), spec.reduce, spec.kind == "positions")
        if on_channels:
            return Source(value, vector, spec.features, spec.start, tuple(fold))
        over_features = any(self.view.read(op).rule.on_channels for op in chain)
        if self.method != "1x1" or (spec.perm != identity and not over_features):
            layout = MapLayout(spec.features, spec.perm, self.folded, self.method, spec.drops_unit_batch)
            return Source(value, layout, spec.features, spec.start, tuple(layout.enter_steps()))
        return Source(value, vector, spec.features, value, tuple(vector.enter_steps()))
