"""Planning: which Linears convert, what each reads its conv form from, and which ops the walk carries.

Pure: it reads the graph through the front end's view and changes nothing.

**Heads.** A Linear reading an (N, K) value is a head when that value comes, through ops that run in a
conv layout (``fxconv.carry`` rules; a DAG such as ``x · hardsigmoid(x)`` too), from a *source* — a
flatten or a global pooling of a map (``fxconv.engine.sources``) — or from the output of a head's Linear
planned before it (the next Linear of the head: a 1x1 convolution). The ops between are checked by their
rules against the source's layout; an op that needs the features on one axis (LayerNorm, BatchNorm1d)
on a map the kernel method keeps is ``needs-1x1``.

**Every Linear** (``scope="all"``). Any other Linear runs as a 1x1 convolution in its input's layout
(``layout_for``). Its input is *entered* where the ops that lead to it start, if they start from one
value that the layouts carry (``fc1(norm(x))`` enters ``x``, which the residual reads too): the walk then
carries those ops into the layout on its way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..codes import skip
from ..layouts import Layout, MapLayout, PositionLayout, layout_for
from ..report import Report, Skipped
from ..targets import Options
from . import Linear
from .sources import Sources


@dataclass(frozen=True)
class Route:
    """How one Linear converts."""

    linear: Linear
    out: Layout | None  # the layout of its convolution's output (None: no form after it)
    head: bool  # part of a head (reported with the map it reads)
    many: bool = False  # more position dims than a conv has: run as one row of tokens


@dataclass
class Plan:
    routes: dict = field(default_factory=dict)  # the op a Linear's output comes from -> its Route
    chain: set = field(default_factory=set)  # ops between a head's source and its Linears
    sources: dict = field(default_factory=dict)  # value -> Source
    entries: set = field(default_factory=set)  # values entered into their layout where first read


class Planner:
    def __init__(self, view, options: Options, report: Report):
        self.view, self.report = view, report
        self.method, self.folded, self.scope = options.method, options.folded, options.scope
        self.keeps = options.keeps  # the target's reasons for the Linears it does not rewrite, by what they read
        self.carries = options.target.carries  # False: a Linear at each position enters its own input
        self.plan = Plan()
        self.planned: dict[object, Route] = {}  # a planned Linear's output -> its route
        self.sources = Sources(view, self.method, self.folded)
        self.order = {op: i for i, op in enumerate(view.ops())}

    def run(self) -> Plan:
        for op in self.view.ops():
            found = self.view.linear(op)
            if found is None:
                continue
            route = found if isinstance(found, Skipped) else self._review(found, self._route(found))
            if isinstance(route, Skipped):
                (self.report.kept if route.code == "kept" else self.report.skipped).append(route)
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
            kept = isinstance(route, Skipped) and route.code == "kept" and self.keeps is not None  # by the target
            if not isinstance(route, Skipped) or self.scope != "all" or kept:
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
            return Route(linear, None, head=False, many=True)
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
            if not route.head or route.out is None:
                return skip(linear.name, "not-flattened", "its input is a vector a Linear made, not a flattened map")
            layout = route.out
        else:
            source = self.plan.sources.get(root) or self.sources.source(root, chain)
            if source is None:
                return skip(linear.name, "kept", "its map's flattening is already channels-last (a 1x1 map, or one "
                            "flattened NHWC): the channels-last method has nothing to change")
            layout = source.layout
            if self.keeps and "1-d map" in self.keeps and isinstance(layout, MapLayout) and len(layout.features) == 2:
                return skip(linear.name, "kept", self.keeps["1-d map"])
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

    def _review(self, linear: Linear, route: Route | Skipped) -> Route | Skipped:
        """What the target makes of a Linear: ``keeps`` turns what it does not rewrite into a kept entry."""
        if self.keeps is None or (isinstance(route, Route) and route.head and route.out is None):
            return route
        kind = "vector" if len(self.view.shape(linear.input) or ()) == 2 else "positions"
        if kind == "positions" and "flattened" in self.keeps and isinstance(route, Route) \
                and self._flattened(linear.output):  # fmt: skip
            return skip(linear.name, "kept", self.keeps["flattened"])
        if kind in self.keeps and (isinstance(route, Route) or route.code in ("not-2d", "not-flattened")):
            return skip(linear.name, "kept", self.keeps[kind])
        return route

    def _flattened(self, value) -> bool:
        """Whether ``value`` is flattened to (N, features) — by its reader, or after ops that keep its shape."""
        shape = self.view.shape(value)
        if shape is None or len(shape) < 3 or None in shape[1:]:
            return False
        features, seen, values = math.prod(shape[1:]), {value}, [value]
        while values:
            for op in self.view.users(values.pop()):
                out = self.view.output(op)
                found = self.view.shape(out) if out is not None else None
                if found is not None and len(found) == 2 and found[1] == features:
                    return True
                if found == shape and out not in seen:
                    seen.add(out)
                    values.append(out)
        return False

    def _walk(self, value, shape, chain: list, dag: dict, name: str):
        """The source (or a planned head Linear's output) ``value`` is computed from by ops that carry, in
        a DAG whose every path leads there; None if there is none; a Skipped if the source refuses."""
        if value in dag:
            return dag[value]
        dag[value] = None
        spec = self.sources.spec(value, name)
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

    def _writes_shared_map(self, root, chain: list, name: str) -> Skipped | None:
        """An in-place op between a flatten and its Linear writes into the map, which others read too."""
        spec = self.sources.specs.get(root)
        if spec is None or isinstance(spec, Skipped) or spec.kind != "flatten":
            return None
        written = [op for op in chain if self.view.writes_input(op)]
        if written and len(self.view.users(spec.start)) > 1:
            return skip(name, "inplace", f"{self.view.describe(written[0])} writes in place into the flattened "
                        "tensor, whose feature map other nodes also read")
        return None

    # -- every Linear ------------------------------------------------------------------------------

    def _plan_entry(self, value, layout: PositionLayout) -> None:
        """Enter ``value`` where the ops that carry ``layout`` and lead to it start, if from one value."""
        roots = self._roots(value, layout, {}) if self.carries else {value}
        self.plan.entries |= roots if len(roots) <= 1 else {value}

    def _roots(self, value, layout: PositionLayout, seen: dict) -> frozenset:
        """The values without a conv form that ``value`` is computed from by ops that run in ``layout``."""
        if value in self.planned:
            return frozenset()
        if value not in seen:
            seen[value] = frozenset({value})
            record = self.sources.read_producer(value)
            if record is not None and not record.rule.reads_form and len(self.view.shape(value) or ()) == layout.rank:
                data = [i.value for i in record.inputs
                        if not i.constant and not i.single and len(i.shape or ()) == layout.rank]  # fmt: skip
                if data and record.rule.check(record, layout, set(data).__contains__) is None:
                    seen[value] = frozenset().union(*(self._roots(v, layout, seen) for v in data))
        return seen[value]
