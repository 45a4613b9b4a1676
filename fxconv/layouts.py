"""Where the channels, positions and batch go when a Linear runs as a convolution — maths only, no IR.

Both front ends (the torch.fx pass and the ONNX one) ask this module how a value is laid out for a
convolution, and get back *steps* (``permute``, ``unsqueeze``, ``squeeze``, ``reshape``, ``unflatten``,
``flatten``) that their builders turn into graph nodes, or into numpy calls on a constant. Nothing here
imports torch or onnx.

**Position layouts** (``PositionLayout``): a Linear applied at every position of a (N, *positions, C)
value is a 1x1 convolution once C is on dim 1. Each rank has one conv form (``layout_for``)::

    (N, C)           -> (1, C, 1, N)  folded: the batch along the width, one GEMM for all of it
                        (N, C, 1, 1)  batched
    (N, L, C)        -> (N, C, 1, L)  tokens (Apple's ml-ane-transformers, ExecuTorch's Qualcomm backend)
    (N, H, W, C)     -> (N, C, H, W)  channels-last maps as NCHW
    (N, D, H, W, C)  -> (N, C, D, H, W)

Entering is a permute bringing C to dim 1, then size-1 dims inserted; leaving undoes both. These are
views of one another, so in-place ops keep their meaning. For ``y = x @ W.T + b`` on (N, *P, C) and
``m = enter(x)``, (N, C, *S)::

    y[n, p, o] = b[o] + Σ_c W[o, c] · x[n, p, c] = conv(m, W.view(O, C, 1, ...), b)[n, o, s(p)],

so ``y = leave(conv(m))``. An op that acts on dims of ``x`` acts on the same dims of ``m``, moved
(``form_dim``): element-wise ops commute (a broadcasting operand is entered alike), a LayerNorm or a
reduction over the last dim runs over dim 1 of the form, and a permute the model writes composes with
the layout's own (``permuted``; ConvNeXt's NCHW -> NHWC -> NCHW pair ``cancels``).

**Head layouts** (``MapLayout``): a Linear reading ``flatten(map.permute(perm))``, map (N, C, *S), is a
convolution whose kernel covers the map. ``flatten`` is row-major: feature ``k = (c·H + h)·W + w``, so ::

    y[n, o] = b[o] + Σ_{c,h,w} W.view(O, C, H, W)[o, c, h, w] · map[n, c, h, w],

and with a channels-last permute before the flatten the weight's columns are read in that order and
moved back (``weight_steps``). Folded, the map's batch items are laid side by side along the last axis,
(N, C, *S) -> (1, C, *S[:-1], N·S[-1]), and the kernel strides over them by S: one GEMM for the batch
in runtimes that run one per image (onnxruntime's CPU convolution). The head's output, (1, O, 1, ..., N)
folded or (N, O, 1, ..., 1) batched, is then a vector layout (``vectors``) for the Linears after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KEEP = "keep"  # in a reshape: this dim as the input has it (ONNX's 0; torch's x.size(i))

Step = tuple  # ("permute", perm) | ("unsqueeze", dims) | ("squeeze", dims) | ("reshape", shape)
#               | ("unflatten", dim, sizes) | ("flatten", start)   — see apply_to_shape for their meaning


def apply_to_shape(shape: tuple, steps: list[Step]) -> tuple:
    """The shape ``steps`` give a tensor of ``shape``: what each step means, in one place.

    ``unsqueeze`` inserts size-1 dims one after the other at the positions given; ``squeeze`` removes the
    given (size-1) dims of its input; ``reshape`` entries are sizes, ``-1``, or ``KEEP``; ``unflatten``
    splits one dim; ``flatten`` merges the dims from ``start`` to the last.
    """
    shape = list(shape)
    for step in steps:
        kind = step[0]
        if kind == "permute":
            shape = [shape[d] for d in step[1]]
        elif kind == "unsqueeze":
            for d in step[1]:
                shape.insert(d, 1)
        elif kind == "squeeze":
            shape = [s for i, s in enumerate(shape) if i not in step[1]]
        elif kind == "reshape":
            sizes = [shape[i] if s == KEEP else s for i, s in enumerate(step[1])]
            if -1 in sizes:
                known = math.prod(s for s in sizes if s != -1)
                sizes[sizes.index(-1)] = math.prod(shape) // known
            shape = sizes
        elif kind == "unflatten":
            dim, sizes = step[1], list(step[2])
            if -1 in sizes:
                sizes[sizes.index(-1)] = shape[dim] // math.prod(s for s in sizes if s != -1)
            shape[dim : dim + 1] = sizes
        elif kind == "flatten":
            shape = [*shape[: step[1]], math.prod(shape[step[1] :])]
        else:
            raise ValueError(f"unknown step {step!r}")
    return tuple(shape)


def inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation that undoes ``perm``."""
    result = [0] * len(perm)
    for i, d in enumerate(perm):
        result[d] = i
    return tuple(result)


def compose(first: tuple[int, ...], then: tuple[int, ...]) -> tuple[int, ...]:
    """``x.permute(first).permute(then) == x.permute(compose(first, then))``."""
    return tuple(first[d] for d in then)


def _identity(perm) -> bool:
    return tuple(perm) == tuple(range(len(perm)))


@dataclass(frozen=True)
class PositionLayout:
    """The conv form of a (N, *positions, C) value: a permute, then size-1 dims inserted."""

    rank: int  # of the original value
    perm: tuple[int, ...]  # the permute that brings C to dim 1 (applied first)
    inserted: tuple[int, ...]  # the dims that ``unsqueeze`` inserts after it, in order
    shape: str  # for people: "(N, L, C) as (N, C, 1, L)"
    drops_unit_batch: bool = False  # a head flattened by ``squeeze()``, which drops a batch of 1 too

    @property
    def spatial(self) -> int:
        """How many spatial dims the conv form has (the convolution's rank)."""
        return self.rank + len(self.inserted) - 2

    def enter_steps(self, rank: int | None = None) -> list[Step]:
        """The steps that lay out a value of ``rank`` dims (≤ this layout's, broadcasting against it)."""
        steps: list[Step] = []
        if rank is not None and rank < self.rank:  # broadcasting aligns trailing dims: leading 1s first
            steps.append(("unsqueeze", (0,) * (self.rank - rank)))
        if not _identity(self.perm):
            steps.append(("permute", self.perm))
        if self.inserted:
            steps.append(("unsqueeze", self.inserted))
        return steps

    def constant_steps(self, shape: tuple) -> list[Step]:
        """The steps that lay out a constant of ``shape`` (broadcasting against this layout's values): one
        reshape when the layout only moves its size-1 dims (a per-channel (C,) becomes (1, C, 1, 1))."""
        steps = self.enter_steps(len(shape))
        padded = (1,) * (self.rank - len(shape)) + tuple(shape)
        long_axes = [d for d in self.perm if padded[d] != 1]
        if long_axes == sorted(long_axes):  # the permute keeps the order of the axes longer than 1
            return [("reshape", apply_to_shape(tuple(shape), steps))]
        return steps

    def leave_steps(self) -> list[Step]:
        """The steps from a conv form back to the original value."""
        steps = self.permuted_steps(tuple(range(self.rank)))
        return steps + [("squeeze", (0,))] if self.drops_unit_batch else steps

    def permuted_steps(self, order: tuple[int, ...]) -> list[Step]:
        """``leave(form).permute(order)`` as one squeeze and one permute of the form (no permute if they cancel)."""
        steps: list[Step] = [("squeeze", self.inserted)] if self.inserted else []
        composed = compose(inverse(self.perm), order)
        return steps if _identity(composed) else [*steps, ("permute", composed)]

    def form_shape(self, shape: tuple) -> tuple:
        """The shape of the conv form of a value of ``shape``."""
        return apply_to_shape(shape, self.enter_steps())

    def form_dim(self, dim: int) -> int:
        """Where dim ``dim`` of the original value sits in its conv form."""
        position = self.perm.index(dim % self.rank)
        for inserted in self.inserted:
            position += inserted <= position
        return position

    @property
    def channel_dim(self) -> int:
        """Where the original's last dim (the Linear's features) sits in the form: 1."""
        return self.form_dim(self.rank - 1)

    def cancels(self, order: tuple[int, ...]) -> bool:
        """Whether entering ``x.permute(order)`` needs no permute (it is ``x`` with dims inserted)."""
        return _identity(compose(order, self.perm))

    def weight_steps(self, in_features: int) -> list[Step]:
        """A Linear's (out, in) weight as the weight of this layout's 1x1 convolution."""
        return [("unflatten", 1, (in_features, *(1,) * self.spatial))]


def layout_for(rank: int, folded: bool) -> PositionLayout | None:
    """The conv layout of a rank-``rank`` value (None past 5 dims: there is no conv4d)."""
    if rank == 2:
        return vectors(2, folded)
    return _BY_RANK.get(rank)


def vectors(spatial: int, folded: bool, drops_unit_batch: bool = False) -> PositionLayout:
    """The conv layout of (N, C) with ``spatial`` spatial dims: (1, C, 1, ..., N) folded, (N, C, 1, ...) batched."""
    if folded:
        inserted, perm, shape = (0, *range(2, spatial + 1)), (1, 0), "(N, C) as (1, C, 1, N)"
    else:
        inserted, perm, shape = tuple(range(2, spatial + 2)), (0, 1), "(N, C) as (N, C, 1, 1)"
    return PositionLayout(2, perm, inserted, shape, drops_unit_batch)


_BY_RANK = {
    3: PositionLayout(3, (0, 2, 1), (2,), "(N, L, C) as (N, C, 1, L)"),
    4: PositionLayout(4, (0, 3, 1, 2), (), "(N, H, W, C) as (N, C, H, W)"),
    5: PositionLayout(5, (0, 4, 1, 2, 3), (), "(N, D, H, W, C) as (N, C, D, H, W)"),
}
MANY_POSITIONS = "(N, *P, C) as (N, C, 1, L)"  # more position dims than a conv has: flattened to one row


@dataclass(frozen=True)
class MapLayout:
    """The form of ``flatten(map.permute(perm))``, an (N, K) value, for the Linear that reads it, by ``mode``:

    * ``"kernel"``: the map itself (batched) or folded, (1, C, *S[:-1], N·S[-1]), for a convolution whose
      kernel covers it;
    * ``"1x1"`` (on a flatten the model permuted first): the map's own flattening in the vector layout,
      the permute moved into the weight's columns;
    * ``"channels-last"``: the map's channels-last flattening, ``flatten(map.permute(0, 2, 3, 1))``, for
      a Linear that stays one, its weight's columns in that order — what NHWC compilers (TOSA, TFLite)
      hold without a transpose.
    """

    features: tuple[int, ...]  # (C, *S) of the map
    perm: tuple[int, ...]  # the permute between the map and the flatten (identity if none)
    folded: bool
    mode: str = "kernel"
    drops_unit_batch: bool = False
    rank = 2  # of the original value

    @property
    def spatial(self) -> int:
        return len(self.features) - 1

    @property
    def conv_kernel(self) -> tuple[int, ...]:
        return tuple(self.features[1:]) if self.mode == "kernel" else (1,) * self.spatial

    @property
    def strides(self) -> tuple[int, ...]:
        """Folded, the kernel steps over the batch items laid side by side; else one position."""
        return self.conv_kernel if self.folded and self.mode == "kernel" else (1,) * self.spatial

    @property
    def out(self) -> PositionLayout | None:
        """The layout of the convolution's output (and of the Linears after it); None: no convolution."""
        return None if self.mode == "channels-last" else vectors(self.spatial, self.folded, self.drops_unit_batch)

    @property
    def _read_order(self) -> tuple[int, ...]:
        """The permute of the map whose flattening the form is (or holds, for the kernel method)."""
        r = len(self.features) + 1
        return (0, *range(2, r), 1) if self.mode == "channels-last" else tuple(range(r))

    def enter_steps(self) -> list[Step]:
        """From the map (N, C, *S) to the form."""
        if self.mode == "channels-last":
            return [("permute", self._read_order), ("flatten", 1)]
        if self.mode == "1x1":
            return [("flatten", 1), *vectors(self.spatial, self.folded).enter_steps()]
        if not self.folded:
            return []
        r = len(self.features) + 1
        return [("permute", (*range(1, r - 1), 0, r - 1)), ("reshape", (1, *self.features[:-1], -1))]

    def leave_steps(self) -> list[Step]:
        """From the form back to the (N, K) value."""
        r = len(self.features) + 1
        steps: list[Step]
        unfold = tuple(range(r))
        if self.mode == "channels-last":
            read = self._read_order
            steps = [("unflatten", 1, tuple(self.features[d - 1] for d in read[1:]))]
            unfold = inverse(read)
        elif self.mode == "1x1":
            steps = [*vectors(self.spatial, self.folded).leave_steps(), ("unflatten", 1, self.features)]
        elif self.folded:  # (1, C, *S[:-1], N·S[-1]) -> (C, *S[:-1], N, S[-1]), then N first
            steps = [("reshape", (*self.features[:-1], -1, self.features[-1]))]
            unfold = (r - 2, *range(r - 2), r - 1)
        else:
            steps = []
        order = compose(unfold, self.perm)  # and the model's own permute before its flatten
        if not _identity(order):
            steps.append(("permute", order))
        steps.append(("flatten", 1))
        return steps + [("squeeze", (0,))] if self.drops_unit_batch else steps

    def weight_steps(self, in_features: int) -> list[Step]:
        """The Linear's (out, K) weight, K in the permuted map's order, re-laid for the form: (out, C, *kernel)
        for a convolution, or (out, K) with K in the form's order for the channels-last flattening."""
        dims = (0, *self.features)
        order = tuple(dims[p] for p in self.perm[1:])  # the permuted map's dims, which K enumerates
        read = self._read_order
        back = tuple(self.perm.index(d) for d in read)  # from the weight's (out, *order) to the form's order
        steps: list[Step] = [("unflatten", 1, order)]
        if not _identity(back):
            steps.append(("permute", back))
        if self.mode == "1x1":
            steps.append(("reshape", (-1, in_features, *(1,) * self.spatial)))
        elif self.mode == "channels-last":
            steps.append(("reshape", (-1, in_features)))
        return steps


@dataclass(frozen=True)
class SplitLayout:
    """Tokens (N, L, C) whose channels the model split into factors — q/k/v, heads, a head's dims — with the
    value's dims in any order: ``qkv.reshape(N, L, 3, H, D).permute(2, 0, 3, 1, 4)``. The form stays the
    tokens form (N, C, 1, L), C the factors row-major, so splitting, permuting and merging them back cost
    nothing; attention then runs per head on slices of the channels (``fxconv.carry.attention``).
    """

    order: tuple  # each dim of the value: "N", "L", or the index of its channel factor (0 the outermost)
    factors: tuple[int, ...]
    shape = "(N, L, C) split into heads, as (N, C, 1, L)"

    @property
    def rank(self) -> int:
        return len(self.order)

    @property
    def canonical(self) -> tuple:
        return ("N", "L", *range(len(self.factors)))

    def permuted(self, order: tuple[int, ...]) -> SplitLayout:
        """The layout of ``value.permute(order)``: the same form, the dims relabelled."""
        return SplitLayout(tuple(self.order[d] for d in order), self.factors)

    def leave_steps(self) -> list[Step]:
        """(N, C, 1, L) -> the grouped view (N, *factors, L) -> the value's order."""
        perm = tuple(self._grouped.index(d) for d in self.order)
        return self.group_steps() if _identity(perm) else [*self.group_steps(), ("permute", perm)]

    # The grouped view (N, *factors, L): the form with its channels unflattened, a view of its memory. An op
    # along a factor — a slice or concatenation of a head's dims (the halves rotary embeddings rotate), an
    # operand that broadcasts over the heads (their cos and sin) — runs there, and its result is the form of
    # the op's output once flattened back (a reshape: nothing moves in memory but what the op itself moves).

    @property
    def _grouped(self) -> tuple:
        return ("N", *range(len(self.factors)), "L")

    def form_dim(self, dim: int) -> int | None:
        """The form's dim holding the value's ``dim`` (the batch or the positions); None for a factor."""
        return {"N": 0, "L": 3}.get(self.order[dim])

    def grouped_dim(self, dim: int) -> int:
        """The value's ``dim`` in the grouped view."""
        return self._grouped.index(self.order[dim])

    def group_steps(self) -> list[Step]:
        """The form (N, C, 1, L) -> the grouped view (N, *factors, L)."""
        return [("squeeze", (2,)), ("unflatten", 1, self.factors)]

    def ungroup_steps(self) -> list[Step]:
        """The grouped view -> the form (N, C, 1, L)."""
        return [("reshape", (KEEP, math.prod(self.factors), 1, -1))]

    def operand_steps(self, rank: int) -> list[Step]:
        """An operand of ``rank`` dims that broadcasts against the value -> the grouped view's order."""
        steps: list[Step] = [("unsqueeze", (0,) * (self.rank - rank))] if rank < self.rank else []
        perm = tuple(self.order.index(d) for d in self._grouped)
        return steps if _identity(perm) else [*steps, ("permute", perm)]

    def of_shape(self, shape: tuple) -> SplitLayout:
        """The layout of a value of ``shape`` with this one's dims (after a slice, a concatenation, a broadcast)."""
        return SplitLayout(self.order, tuple(shape[self.order.index(i)] for i in range(len(self.factors))))


Layout = PositionLayout | MapLayout | SplitLayout
