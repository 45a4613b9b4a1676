"""Planning: which Linears convert, what each reads its conv form from, and which ops the walk carries.

Pure: it reads the graph through the front end's view and changes nothing.

**Heads.** A Linear reading an (N, K) value is a head when that value comes, through ops that run in a
conv layout (``fxconv.carry`` rules; a DAG such as ``x · hardsigmoid(x)`` too), from a *source*:

* a flatten of a map (N, C, *S), 1 to 3 spatial dims, looking past reshapes that keep the batch and
  past a channels-last permute (TensorFlow's NHWC flatten: the permute goes into the weight);
* a global pooling that ends 2-D (``x.mean((2, 3))``): the flatten of the same pooling with ``keepdim``;
* a pooling over the positions of tokens or a channels-last map (``x.mean(1)`` of (N, L, C));
* the output of a head's Linear planned before it (the next Linear of the head: a 1x1 convolution).

The source's conv form comes from ``fxconv.layouts``: a kernel over the (folded) map, or the vector
layout when every feature sits on the channel axis (or with the 1x1 method). The ops between are
checked by their rules against that layout; an op that needs the features on one axis (LayerNorm,
BatchNorm1d) on a map the kernel method keeps is ``needs-1x1``.

**Every Linear** (``scope="all"``). Any other Linear runs as a 1x1 convolution in its input's layout
(``layout_for``). Its input is *entered* where the ops that lead to it start, if they start from one
value that the layouts carry (``fc1(norm(x))`` enters ``x``, which the residual reads too): the walk then
carries those ops into the layout on its way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..codes import skip
from ..layouts import Layout, MapLayout, PositionLayout, layout_for, vectors
from ..report import Report, Skipped
from . import Linear


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
class Route:
    """How one Linear converts."""

    linear: Linear
    out: Layout | None  # the layout of its convolution's output (None: more position dims than a conv has)
    head: bool  # part of a head (reported with the map it reads)


@dataclass
class Plan:
    routes: dict = field(default_factory=dict)  # the op a Linear's output comes from -> its Route
    chain: set = field(default_factory=set)  # ops between a head's source and its Linears
    sources: dict = field(default_factory=dict)  # value -> Source
    entries: set = field(default_factory=set)  # values entered into their layout where first read


@dataclass(frozen=True)
class _Spec:
    """What kind of source a value is, before its layout is chosen."""

    kind: str  # "flatten", "pool" (global, over a map's spatial dims) or "positions"
    start: object
    features: tuple[int, ...]
    perm: tuple[int, ...] = ()
    reduce: tuple | None = None
    drops_unit_batch: bool = False


class Planner:
    def __init__(self, view, method: str, folded: bool, scope: str, report: Report):
        self.view, self.method, self.folded, self.scope, self.report = view, method, folded, scope, report
        self.plan = Plan()
        self.planned: dict[object, Route] = {}  # a planned Linear's output -> its route
        self.specs: dict[object, _Spec | Skipped | None] = {}
        self.order = {op: i for i, op in enumerate(view.ops())}

    def run(self) -> Plan:
        for op in self.view.ops():
            found = self.view.linear(op)
            if found is None:
                continue
            route = found if isinstance(found, Skipped) else self._route(found)
            if isinstance(route, Skipped):
                self.report.skipped.append(route)
                continue
            self.plan.routes[self.view.producer(found.output)] = route
            self.planned[found.output] = route
        return self.plan

    def _route(self, linear: Linear) -> Route | Skipped:
        view, name = self.view, linear.name
        shape, out = view.shape(linear.input), view.shape(linear.output)
        if shape is None or out is None:
            return skip(name, "no-shape", "no shape was recorded for its input or output")
        if len(shape) < 2:
            return skip(name, "no-batch", f"its input has shape {shape}: there is no batch dimension")
        if not isinstance(shape[-1], int):
            return skip(name, "no-shape", f"its input's features, the last of its dims {shape}, are not known")
        if len(shape) == 2:
            route = self._head(linear, shape)
            if not isinstance(route, Skipped) or self.scope != "all":
                return route
        elif self.scope != "all":
            return skip(name, "not-2d", (
                f"its input has shape {shape}: a Linear on a {len(shape)}-D tensor acts at each position along "
                "the last dim, it does not read a flattened feature map (scope='all' converts it as a 1x1 convolution)"
            ))  # fmt: skip
        layout = layout_for(len(shape), self.folded)
        if layout is None:
            if view.static_sizes and None in shape[1:-1]:
                return skip(name, "no-shape", f"the sizes of its {len(shape) - 2} position dims {shape} are not known")
            return Route(linear, None, head=False)
        self._plan_entry(linear.input, layout)
        return Route(linear, layout, head=False)

    # -- heads -----------------------------------------------------------------------------------

    def _head(self, linear: Linear, shape) -> Route | Skipped:
        chain: list = []
        dag: dict = {}
        root = self._walk(linear.input, shape, chain, dag, linear.name)
        if isinstance(root, Skipped):
            return root
        if root is None:
            producer = self.view.producer(linear.input)
            return skip(linear.name, "not-flattened", (
                f"its input comes from {self.view.describe(producer)}, which is neither a flatten of a feature map "
                "nor an op that commutes with one (scope='all' converts it as a 1x1 convolution)"
            ))  # fmt: skip
        chain.sort(key=self.order.get)
        if root in self.planned:
            route = self.planned[root]
            if not route.head:
                return skip(linear.name, "not-flattened", "its input comes from a Linear at every position")
            layout = route.out
        else:
            source = self.plan.sources.get(root) or self._source(root, chain)
            layout = source.layout
        formed = dag.__contains__
        for op in chain:
            record = self.view.read(op)
            if record.rule.on_channels and isinstance(layout, MapLayout):
                features = layout.features
                return skip(linear.name, "needs-1x1", (
                    f"{self.view.describe(op)} between the flatten and the Linear works on the "
                    f"{math.prod(features)} features as a vector, so it cannot run on the {features} map that "
                    "method='kernel' keeps: use method='1x1'"
                ))  # fmt: skip
            reason = record.rule.check(record, layout, formed)
            if reason is not None:
                return skip(linear.name, "not-flattened", f"{self.view.describe(op)} between the flatten and the "
                            f"Linear cannot run on its conv form: {reason}")
        refusal = self._writes_shared_map(root, chain, linear.name)
        if refusal is not None:
            return refusal
        if root not in self.planned:
            self.plan.sources[root] = source
        self.plan.chain.update(chain)
        return Route(linear, layout.out if isinstance(layout, MapLayout) else layout, head=True)

    def _walk(self, value, shape, chain: list, dag: dict, name: str):
        """The source (or a planned head Linear's output) ``value`` is computed from by ops that carry, in
        a DAG whose every path leads there; None if there is none; a Skipped if the source refuses."""
        if value in dag:
            return dag[value]
        dag[value] = None
        spec = self._spec(value, name)
        if isinstance(spec, Skipped):
            return spec
        if value in self.planned or value in self.plan.sources or spec is not None:
            dag[value] = value
            return value
        producer = self.view.producer(value)
        record = self.view.read(producer) if producer is not None else None
        if record is None or record.rule.reads_form or self.view.shape(value) != shape:
            return None
        data = [i.value for i in record.inputs if not i.constant]
        roots = {self._walk(v, shape, chain, dag, name) for v in data}
        refused = next((r for r in roots if isinstance(r, Skipped)), None)
        if refused is not None:
            return refused
        if len(roots) == 1 and None not in roots:
            chain.append(producer)
            dag[value] = roots.pop()
        return dag[value]

    def _spec(self, value, name: str) -> _Spec | Skipped | None:
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
        if isinstance(out[0], int) and isinstance(inp[0], int) and out[0] != inp[0]:
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
        while (record := self._read_producer(value)) is not None and record.rule.name == "regroup":
            before = record.data.shape
            if before is None or not 3 <= len(before) <= 5 or before[0] != view.shape(value)[0]:
                break
            value = record.data.value
        rank = len(view.shape(value))
        record = self._read_producer(value)
        channels_last = (0, *range(2, rank), 1)
        if record is not None and record.rule.name == "permute" and record.params["perm"] == channels_last:
            return record.data.value, channels_last
        return value, tuple(range(rank))

    def _pooled_map(self, value):
        """The map a global pooling reads, past reshapes that keep (N, C): ``x.flatten(2).mean(-1)`` pools ``x``."""
        while (record := self._read_producer(value)) is not None and record.rule.name == "regroup":
            before, after = record.data.shape, self.view.shape(value)
            if before is None or not 3 <= len(before) <= 5 or before[:2] != after[:2]:
                break
            value = record.data.value
        return value

    def _read_producer(self, value):
        producer = self.view.producer(value)
        return self.view.read(producer) if producer is not None else None

    def _source(self, value, chain: list) -> Source:
        """The Source of a value whose spec was read, its layout chosen for the method and the ops after it.

        The kernel method reads the (folded) map. Every feature on the channel axis, the map folded is
        already a vector layout. The 1x1 method reads the flattening in the vector layout: the map's own
        (a channels-last permute moved into the weight), or the value itself when ops over its features
        (a LayerNorm) sit between it and the Linear.
        """
        spec = self.specs[value]
        spatial = len(spec.features) - 1
        identity = tuple(range(spatial + 2))
        fold = MapLayout(spec.features, identity, self.folded).enter_steps()
        vector = vectors(spatial, self.folded, spec.drops_unit_batch)
        if spec.kind != "flatten":
            return Source(value, vector, spec.features, spec.start, tuple(fold), spec.reduce, spec.kind == "positions")
        if all(s == 1 for s in spec.features[1:]):
            return Source(value, vector, spec.features, spec.start, tuple(fold))
        over_features = any(self.view.read(op).rule.on_channels for op in chain)
        if self.method == "kernel" or (spec.perm != identity and not over_features):
            layout = MapLayout(spec.features, spec.perm, self.folded, self.method == "kernel", spec.drops_unit_batch)
            return Source(value, layout, spec.features, spec.start, tuple(layout.enter_steps()))
        return Source(value, vector, spec.features, value, tuple(vector.enter_steps()))

    def _writes_shared_map(self, root, chain: list, name: str) -> Skipped | None:
        """An in-place op between a flatten and its Linear writes into the map, which others read too."""
        spec = self.specs.get(root)
        if not isinstance(spec, _Spec) or spec.kind != "flatten":
            return None
        written = [op for op in chain if self.view.writes_input(op)]
        if written and len(self.view.users(spec.start)) > 1:
            return skip(name, "inplace", f"{self.view.describe(written[0])} writes in place into the flattened "
                        "tensor, whose feature map other nodes also read")
        return None

    # -- every Linear ------------------------------------------------------------------------------

    def _plan_entry(self, value, layout: PositionLayout) -> None:
        """Enter ``value`` where the ops that carry ``layout`` and lead to it start, if from one value."""
        roots = self._roots(value, layout, {})
        self.plan.entries |= roots if len(roots) <= 1 else {value}

    def _roots(self, value, layout: PositionLayout, seen: dict) -> frozenset:
        """The values without a conv form that ``value`` is computed from by ops that run in ``layout``."""
        if value in self.planned:
            return frozenset()
        if value not in seen:
            seen[value] = frozenset({value})
            record = self._read_producer(value)
            if record is not None and not record.rule.reads_form and len(self.view.shape(value) or ()) == layout.rank:
                data = [i.value for i in record.inputs
                        if not i.constant and not i.single and len(i.shape or ()) == layout.rank]  # fmt: skip
                if data and record.rule.check(record, layout, set(data).__contains__) is None:
                    seen[value] = frozenset().union(*(self._roots(v, layout, seen) for v in data))
        return seen[value]
