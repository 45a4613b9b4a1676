"""The walk: visit the ops in graph order and build the plan — convolutions, carried ops, layout changes.

Every value the walk lays out keeps its conv form beside it (``forms``). At each op:

* a value planned as an entry (``fxconv.engine.plan``) that the op reads is entered into its layout;
* a planned Linear becomes a convolution of its input's form — ``fxconv.layouts`` says the kernel,
  stride and how its weight is viewed — and its output is replaced by the way out of the layout;
* any other op with an input in a conv form is offered to its rule (``fxconv.carry``): in scope "all"
  always, in scope "heads" only between a head's source and its Linears (and Q/DQ right after a conv).
  A rule that accepts builds the op on the forms; its output, too, is replaced by the way out.

The ways out nobody reads are dropped at the end (``Builder.finish``), so a chain of carried ops pays one
layout change in and one out. Values are those of the graph as the walk finds it: a value the walk
replaced is looked up by the one it replaced (``was``), and the plan's values by what replaced them (``now``).
"""

from __future__ import annotations

import logging

from ..carry import Moved
from ..layouts import KEEP, MANY_POSITIONS, MapLayout, PositionLayout, SplitLayout, apply_to_shape, compose, layout_for
from ..report import Converted, Report
from ..targets import Options
from . import Entry, Form, Head
from .plan import Planner, Route
from .sources import Source

log = logging.getLogger("fxconv")


class Rewrite:
    """Rewrites the Linears of one graph (through a front end's view and builder), recording them in a Report."""

    def __init__(self, view, build, options: Options, report: Report):
        """``options`` (``fxconv.targets.Options``): the method, scope and layout, the target's reason to
        record on each Linear converted (``why``) and its reasons for those it keeps; with the target's
        ``carries=False`` every Linear at each position changes layout on its own, in and out, nothing else
        runs in the layout (measured faster on Ethos-U)."""
        self.view, self.build, self.options, self.report = view, build, options, report
        self.method, self.scope, self.folded = options.method, options.scope, options.folded
        self.why, self.carries = options.target.why, options.target.carries
        self.forms: dict[object, Form] = {}  # a value (original or its replacement) -> its conv form
        self.now: dict[object, object] = {}  # a value the walk replaced -> what its readers read now
        self.was: dict[object, object] = {}  # ... and back
        self.heads: list[Head] = []
        self.leaves: dict[object, Form] = {}  # each way out the walk made -> the form it leaves
        self.memo: dict = {}  # what rules build once per walk (``_Context.once``)

    def run(self) -> None:
        planner = Planner(self.view, self.options, self.report)
        self.plan = planner.run()
        self.walk()
        self.build.finish()

    def walk(self) -> None:
        for op in self.view.ops():
            if not self.view.alive(op):
                continue
            route = self.plan.routes.get(op)
            with self.build.at(op, meta_from=route.linear.op if route else op):
                for value in self.view.inputs(op):  # entries and heads' sources enter where first read
                    original = self.was.get(value, value)
                    if original in self.forms:
                        continue
                    if original in self.plan.sources:
                        self._enter_source(self.plan.sources[original])
                    elif original in self.plan.entries:
                        self._enter(original)
                if route is not None:
                    self._convert(route)
                else:
                    self.carry(op)

    # -- carried ops ---------------------------------------------------------------------------------

    def carry(self, op, force: bool = False) -> bool:
        """Run ``op`` on the form of its inputs if its rule accepts (``force``: in any scope)."""
        out = self.view.output(op)
        record = self.view.read(op) if out is not None and not self.view.is_constant(out) else None
        formed = [self.forms[i.value] for i in record.inputs if i.value in self.forms] if record else []
        every = self.scope == "all" and self.carries
        if record is not None and not formed and every:
            return self._free_form(out, record)
        if not formed:
            return False
        layout = formed[0].layout  # an input in another layout is entered anew, if the rule takes it
        if not (force or every or op in self.plan.chain or record.rule.after_conv):
            return False
        if record.rule.check(record, layout, lambda v: v in self.forms and _compatible(self.forms[v].layout, layout)):
            return False
        result = record.rule.rewrite(record, layout, _Context(self, layout), self.build)
        if isinstance(result, Moved):
            self._replace(out, result.form, result.layout, formed[0].head, formed[0].entry)
        else:
            self._substitute(out, result.value)
        return True

    def _free_form(self, out, record) -> bool:
        """Record the form an op's output has for free (ConvNeXt's permute to channels-last: the NCHW map)."""
        layout = record.rule.free_form(record, self.folded)
        if layout is None:
            return False
        self.forms[out] = Form(self._apply_entering(out, layout.enter_steps()), layout)
        return True

    # -- Linears -------------------------------------------------------------------------------------

    def _convert(self, route: Route) -> None:
        linear = route.linear
        if route.many:
            return self._convert_many(route)
        form = self._form_of(linear.input)
        layout, in_features = form.layout, self.view.shape(linear.input)[-1]
        if route.out is None:  # the channels-last flattening: the Linear stays one, its weight re-laid
            y = self.build.linear(form.value, linear, layout.weight_steps(in_features))
            self._substitute(linear.output, y)
            self.report.converted.append(Converted(
                linear.name, self.method, form.entry.origin, (), self.build.name(y), "channels-last",
                self.why.get("head", ""),
            ))  # fmt: skip
            return None
        if isinstance(layout, MapLayout):
            kernel, strides = layout.conv_kernel, layout.strides
        else:
            kernel = strides = (1,) * layout.spatial
        conv = self.build.conv(form.value, linear, layout.weight_steps(in_features), kernel, strides)
        head = form.head
        if route.head and head is None:  # the first Linear of a head
            head = Head(linear.name, form.entry.map, conv, form.entry.pooled_positions)
            self.heads.append(head)
            origin = form.entry.origin
        else:
            origin = (in_features, *(1,) * len(kernel))
        self._replace(linear.output, conv, route.out, head)
        described = ("folded" if self.folded else "batched") if head else route.out.shape
        method, origin = (self.method, origin) if head else ("1x1", ())
        why = self.why.get("head" if head else "positions", "")
        converted = Converted(linear.name, method, origin, kernel, self.build.name(conv), described, why)
        self.report.converted.append(converted)
        log.debug("fxconv: %s -> %s, %s", linear.name, self.build.name(conv), described)

    def _convert_many(self, route: Route) -> None:
        """More position dims than a conv has (Twins' (N, h, w, ws, ws, C) windows): run them as one row of
        tokens (N, C, 1, L) for this Linear, and unflatten the result to the sizes its input has when it runs."""
        linear = route.linear
        x, shape = self._current(linear.input), self.view.shape(linear.input)
        tokens = layout_for(3, self.folded)
        row = self.build.apply(x, [("reshape", (KEEP, -1, shape[-1])), *tokens.enter_steps()])
        conv = self.build.conv(row, linear, tokens.weight_steps(shape[-1]), (1, 1), (1, 1))
        back = self.build.apply(conv, tokens.leave_steps())
        sizes = self.build.sizes(x, range(1, len(shape) - 1))
        self._substitute(linear.output, self.build.reshape(back, (KEEP, *sizes, self.view.shape(linear.output)[-1])))
        name = self.build.name(conv)
        why = self.why.get("positions", "")
        self.report.converted.append(Converted(linear.name, "1x1", (), (1, 1), name, MANY_POSITIONS, why))

    # -- forms ---------------------------------------------------------------------------------------

    def _form_of(self, value) -> Form:
        """The conv form a Linear reads: recorded, a head's source entered now, or the value entered now."""
        if value in self.forms:
            return self.forms[value]
        source = self.plan.sources.get(value)
        if source is not None:
            return self._enter_source(source)
        return self._enter(value)

    def _enter_source(self, source: Source) -> Form:
        """A head's flattened value in its conv form, made from its map (reduced first for a pooling)."""
        with self.build.meta_from(self.view.producer(source.value)):  # the flatten's or pooling's source line
            return self._make_source_form(source)

    def _make_source_form(self, source: Source) -> Form:
        start = self._current(source.start)
        pooled_form = self.forms.get(source.start) if source.pooled_positions else None
        outside = source.pooled_positions and not isinstance(getattr(pooled_form, "layout", None), PositionLayout)
        if outside:  # pooled over the positions of a value not in a conv layout: the (N, C) result is the vector
            map_ = form = self.build.apply(self._current(source.value), source.layout.enter_steps())
        else:
            if pooled_form is not None:  # the form's spatial dims are the positions
                kind, dims = source.reduce[0], tuple(range(2, 2 + pooled_form.layout.spatial))
                map_ = self.build.reduce(kind, pooled_form.value, dims)
            elif source.reduce is not None:
                map_ = self.build.reduce(source.reduce[0], start, source.reduce[1])
            else:
                map_ = start
            form = self._apply_entering(map_, list(source.steps))
        self.forms[source.value] = Form(form, source.layout, entry=Entry(map_, source.origin, outside))
        return self.forms[source.value]

    def _enter(self, value) -> Form:
        """Give ``value`` (N, *P, C) its conv form (recorded: the ops after it that carry run in it)."""
        layout = layout_for(len(self.view.shape(value)), self.folded)
        form = Form(self._apply_entering(self._current(value), layout.enter_steps()), layout)
        self.forms[value] = self.forms[self._current(value)] = form
        return form

    def _apply_entering(self, value, steps: list):
        """``steps`` applied to ``value``, a leading permute composed with the one ``value`` is made by (so
        ``x.transpose(1, 2)`` of an (N, C, L) tensor enters the tokens layout without a transpose), and an
        expanded constant laid out before it is expanded (a class token: no transpose at run time)."""
        expanded = self.view.expanded(value)
        if expanded is not None and self.view.is_constant(expanded[0]) and all(s[0] != "reshape" for s in steps):
            source, sizes = expanded
            return self.build.expand(self.build.constant(source, steps), apply_to_shape(tuple(sizes), steps))
        producer = self.view.producer(value)
        record = self.view.read(producer) if steps and steps[0][0] == "permute" and producer is not None else None
        if record is not None and record.rule.name == "permute" and not self.view.is_constant(value):
            value, order = record.data.value, compose(record.params["perm"], steps[0][1])
            steps = steps[1:] if order == tuple(range(len(order))) else [("permute", order), *steps[1:]]
        return self.build.apply(value, steps)

    def _replace(self, value, form, layout, head: Head | None, entry: Entry | None = None) -> None:
        """``value`` is now ``leave(form)``; record the form for both."""
        left = self.build.apply(form, layout.leave_steps())
        self._substitute(value, left)
        self.forms[value] = self.forms[left] = self.leaves[left] = Form(form, layout, head, entry)

    def _substitute(self, value, new) -> None:
        self.build.replace(value, new)
        self.now[value], self.was[new] = new, self.was.get(value, value)

    def _current(self, value):
        while value in self.now:
            value = self.now[value]
        return value


def _compatible(layout, other) -> bool:
    """Values in these layouts can be read together: the same, or channels split into as many factors in the
    same order (GQA's fewer key heads, the halves of a head that rotary embeddings rotate): a rule reads
    each in its own layout (``_Context.layout_of``)."""
    if isinstance(layout, SplitLayout) and isinstance(other, SplitLayout):
        return layout.order == other.order and len(layout.factors) == len(other.factors)
    return layout == other


class _Context:
    """What a rule's rewrite may ask the walk: any value in the layout it runs in."""

    def __init__(self, rewrite: Rewrite, layout):
        self.rewrite, self.layout = rewrite, layout

    def shape(self, value):
        return self.rewrite.view.shape(value)

    def original(self, value):
        """What the graph reads for ``value`` now (a value the walk replaced: its replacement)."""
        return self.rewrite._current(value)

    def once(self, key, make):
        """``make()``, built once per ``key`` in this walk (an attention mask every layer reads)."""
        if key not in self.rewrite.memo:
            self.rewrite.memo[key] = make()
        return self.rewrite.memo[key]

    def layout_of(self, value):
        """The layout of ``value``'s form, if it has one that can be read with the layout's."""
        known = self.rewrite.forms.get(value)
        return known.layout if known is not None and _compatible(known.layout, self.layout) else None

    def grouped(self, value):
        """``value`` in the grouped view (N, *factors, L) of the SplitLayout the op runs in: a form unflattened
        (by its own factors), any other operand permuted to the view's order — once per walk, as cos and sin
        are read by the queries and the keys alike."""
        rewrite, layout = self.rewrite, self.layout
        own = self.layout_of(value)
        if own is not None:
            return self.grouped_form(self.form(value), own)
        steps = layout.operand_steps(len(self.shape(value)))
        if rewrite.view.is_constant(value):
            return self.once(("grouped", value, *steps), lambda: rewrite.build.constant(value, steps))
        return self.once(("grouped", value, *steps), lambda: rewrite._apply_entering(rewrite._current(value), steps))

    def grouped_form(self, form, layout):
        """A form of ``layout`` (a SplitLayout) in its grouped view, once per walk."""
        return self.once(("grouped", form, layout), lambda: self.rewrite.build.apply(form, layout.group_steps()))

    def ungrouped(self, grouped, layout):
        """The form of a value computed in the grouped view of ``layout``; a later op reading it grouped reads
        ``grouped`` itself (chained ops on a head's dims flatten back once, where something else reads them)."""
        form = self.rewrite.build.apply(grouped, layout.ungroup_steps())
        self.rewrite.memo[("grouped", form, layout)] = grouped  # the same form read in another layout is not
        return form

    def form(self, value):
        """``value`` in the layout: its form, a constant laid out alike, or an activation entered."""
        rewrite, layout = self.rewrite, self.layout
        known = rewrite.forms.get(value)
        if known is not None and _compatible(known.layout, layout):
            return known.value
        shape = rewrite.view.shape(value)
        if rewrite.view.is_constant(value):
            return rewrite.build.constant(value, layout.constant_steps(shape))
        rank = len(shape)
        if rank == layout.rank and layout == layout_for(rank, rewrite.folded):
            return rewrite._enter(value).value
        return rewrite._apply_entering(rewrite._current(value), layout.enter_steps(rank))
