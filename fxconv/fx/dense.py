"""Dense mode: a converted classifier that slides over inputs larger than the example (OverFeat, FCN).

Before (after the "kernel" rewrite)::

    x ─ backbone ─ AdaptiveAvgPool2d(1) ─ conv 1x1 (fc) ─ flatten ─▶ (N, K)

After, ``dense=True``::

    x ─ backbone ─ avg_pool2d(kernel 7x7, stride 1) ─ conv 1x1 (fc) ─▶ (N, K, h, w)

For an input larger than the example, the backbone's map grows from (H, W) to (H', W') and the head —
convolutions only, the first with a kernel the size of the map the example produced — slides over it:
output location (i, j) is the original head applied to the (H, W) window of that map at offset (i, j),
and the work that overlapping windows share is done once. At the example's size h = w = 1 and the
output equals the original logits.

Exact, or refused. A pool in front of a head that resizes any map to a fixed size, or pools it with a
stride, would undo the sliding; it is frozen at the geometry it had for the example, dim by dim:

* output size 1 (adaptive, a reduction such as ``x.mean([2, 3])`` or ``x.flatten(2).mean(-1)``, or a
  fixed pool whose kernel is the whole map, ``F.avg_pool2d(x, 4)`` on a 4x4 map) → a pool whose kernel
  is the whole example map, stride 1;
* output size = input size (adaptive) → nothing;
* adaptive, input a multiple of the output → kernel = stride = the ratio (the grid steps by it);
* a fixed pool with output > 1 slides as it is.

What would make a window see pixels outside it is refused with :class:`NotConvertibleError`, naming
the module and source line: a fixed pool that covers only part of the example's map, a global pool,
reduction or GroupNorm inside the backbone (squeeze-and-excitation blocks), and a head whose map does
not grow when the input does (a pool hidden in a module the graph keeps whole; checked by running an
input twice the example's size once). ``approximate=True`` accepts the global pools of the backbone —
each window's features then depend on the whole image — and lists them in ``report.approximate``.
Last, each head's way out of its layout is dropped, moved past element-wise ops up to the model's
output, which becomes the (N, K, h, w) map.

The head finding and rewrite are the engine's (``fxconv.engine``); this module works on its result.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import fx
from torch.fx import Node

from .._util import Example, eval_mode
from ..capture import graph_inputs, node_place
from ..engine.rewrite import Rewrite
from ..errors import NotConvertibleError
from ..report import Frozen
from . import pools
from .nodes import module_path, shape_of

_AVG_POOLS = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_MAX_POOLS = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def make_dense(rewrite: Rewrite, inputs: Example, approximate: bool) -> None:
    """After ``rewrite`` ran: freeze the pooling in front of each head and hand its map to the output."""
    _Dense(rewrite, inputs, approximate).run()


class _Dense:
    def __init__(self, rewrite: Rewrite, inputs: Example, approximate: bool):
        self.rewrite, self.inputs, self.approximate = rewrite, inputs, approximate
        self.report, self.gm = rewrite.report, rewrite.view.gm
        self.graph, self.view = self.gm.graph, rewrite.view

    def run(self) -> None:
        # A Linear acting at each position of a map (a transformer block's MLP) slides along as it is.
        obstacles = [s for s in self.report.skipped if s.code != "not-2d"]
        if obstacles:
            left = "; ".join(f"{s.name}: {s.reason}" for s in obstacles)
            raise NotConvertibleError(f"dense mode needs every head Linear converted, but {len(obstacles)} "
                                      f"left alone: {left}")
        if not self.rewrite.heads:
            raise NotConvertibleError("dense mode: the model has no Linear fed by a flattened feature map")
        heads = self.rewrite.heads
        in_front = {head.map: self._pool_in_front(head.map) for head in heads}
        # Heads inside the backbone: a squeeze-and-excitation gate built from Linears.
        self.inner = {m for m, pool in in_front.items() if pool is not None and self._gates_a_map(pool)}
        global_pools = [n for n in self.graph.nodes if pools.pools_over_space(self.view, n)]
        inner_pools = {in_front[m] for m in self.inner}
        backbone = [n for n in global_pools if n not in in_front.values() or n in inner_pools]
        if backbone and not self.approximate:
            raise NotConvertibleError(
                f"dense mode: {node_place(backbone[0])} pools over the whole feature map inside the backbone "
                f"(squeeze-and-excitation, GroupNorm, ...), so every window would see the whole image"
                + (f"; {len(backbone) - 1} more such pools" if len(backbone) > 1 else "")
                + ". Pass approximate=True (CLI: --approximate) to accept that"
            )
        self.report.approximate = [node_place(n) for n in backbone]
        for head in heads:
            if head.pooled_positions and head.map not in self.inner:
                raise NotConvertibleError(
                    f"dense mode: the head at {node_place(in_front[head.map] or head.map)} pools over the positions "
                    "of a channels-last value; dense mode slides heads over (N, C, H, W) maps (scope='all' runs a "
                    "channels-last value as one when a Linear before the pool reads it)"
                )
        alive = set(self.graph.nodes)  # the ways out of a head's layout that something still reads
        outputs = [leaf for leaf, form in self.rewrite.leaves.items()
                   if leaf in alive and (form.head or form.entry) and (form.head or form.entry).map not in self.inner]
        for map_, pool in in_front.items():
            if pool is not None and map_ not in self.inner:
                self._freeze(pool)
        for leaf in outputs:
            self._drop_leave(leaf)
        self._lift_size_guards()
        self.rewrite.build.finish()
        self._check_growth()

    # -- the pool in front of a head -----------------------------------------------------------------

    def _pool_in_front(self, node: Node) -> Node | None:
        """The pool or reduction that a head's map comes from through single-input ops, if any."""
        while pools.pooling(self.view, node) is None and pools.fixed_pool(self.view, node) is None:
            inputs = [n for n in node.all_input_nodes if n.op != "get_attr"]
            if len(inputs) != 1 or pools.is_conv(self.view, node):  # the backbone: no pooling in front
                return None
            node = inputs[0]
        return node

    def _gates_a_map(self, pool: Node) -> bool:
        """Whether what a pool computes is combined with an unpooled feature map (a squeeze-and-excitation
        gate, ``x * sigmoid(fc(mean(x)))``) rather than only feeding a head."""
        after, todo = {pool}, [pool]
        while todo:
            for user in todo.pop().users:
                if user not in after:
                    after.add(user)
                    todo.append(user)
        for node in after - {pool}:  # the pool itself reads the map it pools
            for other in node.all_input_nodes:
                shape = shape_of(other)
                if other not in after and shape is not None and len(shape) >= 3 and math.prod(shape[2:]) > 1:
                    return True
        return False

    def _freeze(self, pool: Node) -> None:
        """Replace a pool in front of a head by the stride-1 (or identity) pool it was for the example."""
        x = pool.all_input_nodes[0]
        size_in = shape_of(x)[2:]
        size_out = (shape_of(pool) or (None, None, *(1,) * len(size_in)))[2:]
        fixed = pools.fixed_pool(self.view, pool)
        if fixed is not None:
            kind, padding, extras = fixed
            if all(o > 1 for o in size_out):
                return  # a fixed pool that keeps a map slides along as it is
            kernel = _as_tuple(pools.pool_arg(self.view, pool, "kernel_size", 1), len(size_in))
            covers = all(o > 1 or k == i for i, o, k in zip(size_in, size_out, kernel))
            if extras or not covers or any(_as_tuple(padding, len(size_in))):
                raise NotConvertibleError(
                    f"dense mode cannot freeze {node_place(pool)}: its kernel {kernel} covers only part of the "
                    f"example's {size_in} map (or pads, dilates or rescales it), so a window would not be the "
                    "model on its crop"
                )
            stride = pools.pool_arg(self.view, pool, "stride", 2)
            stride = _as_tuple(stride if stride not in (None, [], ()) else kernel, len(size_in))
            kernel = tuple(i if o == 1 else k for i, o, k in zip(size_in, size_out, kernel))
            stride = tuple(1 if o == 1 else s for o, s in zip(size_out, stride))
        else:
            kind = pools.pooling(self.view, pool)
            kernel, stride = [], []
            for i, o in zip(size_in, size_out):
                if i % o:
                    raise NotConvertibleError(
                        f"dense mode cannot freeze {node_place(pool)}: it pools a {size_in} map to {size_out}, "
                        "not a whole multiple, so no fixed pool computes it"
                    )
                kernel.append(i // o)
                stride.append(1 if o == 1 else i // o)
            kernel, stride = tuple(kernel), tuple(stride)
        with self.graph.inserting_before(pool):
            frozen = x if size_in == size_out else _fixed_pool(self.graph, x, kind, kernel, stride)
        pool.replace_all_uses_with(frozen)
        self.graph.erase_node(pool)
        now = "identity" if frozen is x else f"{kind} pool, kernel {kernel}, stride {stride}"
        self.report.frozen.append(Frozen(node_place(pool), f"{size_in} -> {size_out}", now))

    # -- the output ----------------------------------------------------------------------------------

    def _drop_leave(self, leaf: Node) -> None:
        """Hand a head's output to the model's output as the (N, K, h, w) map, not flattened."""
        form = self.rewrite.leaves[leaf]
        for user in list(leaf.users):
            if user.op == "output":
                user.replace_input_with(leaf, form.value)
                continue
            with self.rewrite.build.at(user, meta_from=user):
                moved = self.rewrite.carry(user, force=True)
            if not moved:
                raise NotConvertibleError(
                    f"dense mode: the flattened output of a head is read by {node_place(user)}, which needs "
                    "the (N, features) vector rather than a map"
                )
            self._drop_leave(self.rewrite.now[user])

    def _lift_size_guards(self) -> None:
        """Drop the checks a torch.export graph makes that inputs have the example's size.

        ``ExportedProgram.module()`` checks every input against the shapes it was captured with (a
        ``_guards_fn`` call and a forward pre-hook); a dense model exists to take larger inputs.
        """
        for node in [n for n in self.graph.nodes if n.op == "call_module" and n.target == "_guards_fn"]:
            self.graph.erase_node(node)
        hooks = self.gm._forward_pre_hooks
        for k, hook in list(hooks.items()):
            if getattr(getattr(hook, "func", hook), "__name__", "") == "_check_input_constraints_pre_hook":
                del hooks[k]
                self.gm._forward_pre_hooks_with_kwargs.pop(k, None)

    def _check_growth(self) -> None:
        """Run an input twice the example's size: every head's output must grow, or a pool hides in a
        module the graph keeps whole (a custom tracer's leaf) and the windows would not be the model's."""
        bigger = self.inputs.map(
            lambda t: torch.randn(*t.shape[:2], *(2 * s for s in t.shape[2:]), dtype=t.dtype)
            if t.dim() >= 3 and t.is_floating_point() else t
        )
        sizes: dict[Node, tuple[int, ...]] = {}

        class Probe(fx.Interpreter):
            def run_node(self, n):
                result = super().run_node(n)
                if isinstance(result, torch.Tensor):
                    sizes[n] = tuple(result.shape[2:])
                return result

        try:
            with torch.no_grad(), eval_mode(self.gm), torch.random.fork_rng(devices=[]):
                Probe(self.gm).run(*graph_inputs(self.gm, bigger))
        except Exception as e:
            raise NotConvertibleError(
                f"dense mode: the model cannot run an input twice the example's size: {type(e).__name__}: {e}"
            ) from e
        for head in self.rewrite.heads:
            conv = head.conv
            if head.map not in self.inner and conv in sizes and all(s == 1 for s in sizes[conv]):
                owner = self._owner(conv.args[0])
                raise NotConvertibleError(
                    f"dense mode: the map in front of {head.name} does not grow with the input; {node_place(owner)} "
                    "must pool it globally inside: trace that module through (or pass a graph that shows its pooling)"
                )

    def _owner(self, node: Node) -> Node:
        """The module call a map comes from, looking back past single-input function calls."""
        while node.op != "call_module" and len(node.all_input_nodes) == 1 and not module_path(node):
            node = node.all_input_nodes[0]
        return node


def _as_tuple(value, rank: int) -> tuple[int, ...]:
    """A pool's kernel/stride/padding argument as one int per spatial dim."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * rank


def _fixed_pool(graph, x: Node, kind: str, kernel: tuple[int, ...], stride: tuple[int, ...]) -> Node:
    """Insert a fixed pooling of ``x``: avg, sum (avg times the window size), max or min."""
    rank = len(kernel)
    if kind == "min":  # min pooling is max pooling of the negated map
        negated = graph.call_function(operator.neg, (x,))
        return graph.call_function(operator.neg, (graph.call_function(_MAX_POOLS[rank], (negated, kernel, stride)),))
    if kind == "max":
        return graph.call_function(_MAX_POOLS[rank], (x, kernel, stride))
    pooled = graph.call_function(_AVG_POOLS[rank], (x, kernel, stride))
    return graph.call_function(operator.mul, (pooled, math.prod(kernel))) if kind == "sum" else pooled
