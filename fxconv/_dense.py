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

Adaptive pooling resizes any map back to a fixed size, which would undo the sliding, so the pooling in
front of each head is frozen at the geometry it had for the example, dim by dim: output size 1 → a pool
whose kernel is the whole map, stride 1; output size = input size → nothing; input a multiple of the
output → kernel = stride = the ratio (the grid then steps by that ratio in this map). A global reduction
such as ``x.mean([2, 3])`` is frozen the same way. Last, each head's final flatten is dropped, moved past
element-wise ops up to the model's output.
"""

from __future__ import annotations

import math
import operator

import torch.nn.functional as F
from torch.fx import Node

from . import _patterns as P
from ._rewrite import HeadRewriter, describe, shape_of
from .errors import NotConvertibleError
from .report import Frozen

_AVG_POOLS = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_MAX_POOLS = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


class DenseRewriter(HeadRewriter):
    """The head rewrite, then: freeze the pooling in front of each head and drop its final flatten."""

    def run(self) -> None:
        self.rewrite_heads()
        # A Linear acting at each position of a map (a transformer block's MLP) slides along as it is.
        obstacles = [s for s in self.report.skipped if s.code != "not-2d"]
        if obstacles:
            left = "; ".join(f"{s.name}: {s.reason}" for s in obstacles)
            raise NotConvertibleError(f"dense mode needs every head Linear converted, but {len(obstacles)} "
                                      f"left alone: {left}")
        if not self.report.converted:
            raise NotConvertibleError("dense mode: the model has no Linear fed by a flattened feature map")
        for map_ in dict.fromkeys(self.maps):
            pool = self._pool_in_front(map_)
            if pool is not None:
                self._freeze(pool)
        for node in [n for n in self.graph.nodes if n in self.flats]:
            self._drop_flatten(node)
        self._lift_size_guards()
        self.finish()

    def _lift_size_guards(self) -> None:
        """Drop the checks a torch.export graph makes that inputs have the example's size.

        ``ExportedProgram.module()`` checks every input against the shapes it was captured with (a
        ``_guards_fn`` call and a forward pre-hook); a dense model exists to take larger inputs.
        """
        for node in [n for n in self.graph.nodes if n.op == "call_module" and n.target == "_guards_fn"]:
            self.graph.erase_node(node)
        hooks = self.gm._forward_pre_hooks
        for key, hook in list(hooks.items()):
            if getattr(getattr(hook, "func", hook), "__name__", "") == "_check_input_constraints_pre_hook":
                del hooks[key]
                self.gm._forward_pre_hooks_with_kwargs.pop(key, None)

    def _pool_in_front(self, node: Node) -> Node | None:
        """The adaptive pool or reduction that a head's map comes from through single-input ops, if any."""
        while P.pooling(node, self.modules) is None:
            inputs = [n for n in node.all_input_nodes if n.op != "get_attr"]
            if len(inputs) != 1 or P.is_conv(node, self.modules):  # the backbone: no pooling in front
                return None
            node = inputs[0]
        return node

    def _freeze(self, pool: Node) -> None:
        """Replace an adaptive pool (or a keepdim reduction) by the fixed pool it was for the example."""
        x = pool.all_input_nodes[0]
        size_in, size_out = shape_of(x)[2:], _kept_size(pool, shape_of(x))
        kernel, stride = [], []
        for i, o in zip(size_in, size_out):
            if i % o:
                raise NotConvertibleError(
                    f"dense mode cannot freeze {describe(pool, self.modules)}: it pools a {size_in} map to "
                    f"{size_out}, not a whole multiple, so no fixed pool computes it"
                )
            kernel.append(i // o)
            stride.append(1 if o == 1 else i // o)
        kind = P.pooling(pool, self.modules)
        with self.graph.inserting_before(pool):
            frozen = x if size_in == size_out else _fixed_pool(self.graph, x, kind, tuple(kernel), tuple(stride))
        pool.replace_all_uses_with(frozen)
        self.graph.erase_node(pool)
        now = "identity" if frozen is x else f"{kind} pool, kernel {tuple(kernel)}, stride {tuple(stride)}"
        self.report.frozen.append(Frozen(describe(pool, self.modules), f"{size_in} -> {size_out}", now))

    def _drop_flatten(self, node: Node) -> None:
        """Hand a head's output to the model's output as the (N, K, h, w) map, not flattened."""
        flat = self.flats[node]
        for user in list(node.users):
            if user.op == "output":
                user.replace_input_with(node, flat.map)
            elif P.op_kind(user, self.modules) is P.Kind.ELEMENTWISE and P.data_input(user) is node:
                self._drop_flatten(self.move(user, flat).node)
            else:
                raise NotConvertibleError(
                    f"dense mode: the flattened output of a head is read by {describe(user, self.modules)}, "
                    "which needs the (N, features) vector rather than a map"
                )


def _kept_size(pool: Node, size_in: tuple[int, ...]) -> tuple[int, ...]:
    """The spatial size a pool produced for the example (a reduction keeps 1s)."""
    out = shape_of(pool)
    return out[2:] if out is not None else (1,) * (len(size_in) - 2)


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
