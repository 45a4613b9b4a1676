"""Where the channels, positions and batch go when a Linear acting at every position runs as a convolution.

``scope="all"`` converts Linears applied at each position of a (N, *positions, C) tensor — tokens,
channels-last maps, a batch of vectors — as 1x1 convolutions. Each rank has one conv layout (the
table ``_BY_RANK``):

    (N, C)           -> (1, C, 1, N)  folded: the batch along the width, one GEMM for all of it
                        (N, C, 1, 1)  batched
    (N, L, C)        -> (N, C, 1, L)  tokens along the width (the layout Apple's ml-ane-transformers
                                      and ExecuTorch's Qualcomm backend use)
    (N, H, W, C)     -> (N, C, H, W)  channels-last maps as NCHW
    (N, D, H, W, C)  -> (N, C, D, H, W)

Entering is a permute that brings C to dim 1 then unsqueezes; leaving undoes both. All of these are
views: a value and its conv form alias each other, so in-place ops keep their meaning.

The math. For ``y = x @ W.T + b`` on (N, *P, C) and ``m = enter(x)``, (N, C, *S):

    y[n, p, o] = b[o] + Σ_c W[o, c] · x[n, p, c] = conv(m, W.view(O, C, 1, ...), b)[n, o, s(p)],

so ``y = leave(conv(m))``. Element-wise ops commute with the layout change (``f(leave(m)) ==
leave(f(m))``, and an operand broadcasting against the value is entered the same way), and a LayerNorm
over the last dim is a LayerNorm over dim 1 of the conv form (``layer_norm_over_channels``): the rewrite
runs whole blocks in the conv layout, paying one layout change into them and one out.

Permutes the model writes itself compose with the layout's: a ConvNeXt block's ``permute(0, 2, 3, 1)``
of an NCHW map *is* ``leave`` of that map, and its ``permute(0, 3, 1, 2)`` back is ``enter`` — so they
cancel, and the block runs as NCHW throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx
from torch.fx import Node

from . import _patterns as P


@dataclass(frozen=True)
class PositionLayout:
    """The conv layout of a (N, *positions, C) value: a permute, then size-1 dims inserted."""

    rank: int  # of the original value
    perm: tuple[int, ...]  # the permute that brings C to dim 1 (applied first)
    inserted: tuple[int, ...]  # the dims that ``unsqueeze`` inserts after it, in order
    shape: str  # for people: "(N, L, C) as (N, C, 1, L)"

    @property
    def spatial(self) -> int:
        """How many spatial dims the conv form has (the convolution's rank)."""
        return self.rank + len(self.inserted) - 2

    def enter(self, graph: fx.Graph, value: Node, rank: int) -> Node:
        """``value`` (of ``rank`` ≤ this layout's rank dims, broadcasting against it) in the conv layout.

        A value that is itself a permute is composed with it (``x.transpose(1, 2)`` of an (N, C, L)
        tensor enters as ``x.unsqueeze(2)``, without a transpose).
        """
        for _ in range(self.rank - rank):  # broadcasting aligns trailing dims: pad with leading 1s
            value = graph.call_method("unsqueeze", (value, 0))
        return self._insert(graph, _permute(graph, value, self.perm, self.rank))

    def leave(self, graph: fx.Graph, form: Node) -> Node:
        """The original-layout value of a conv form."""
        return self.permuted(graph, form, tuple(range(self.rank)))

    def form_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the conv form of a value of ``shape``."""
        form = [shape[d] for d in self.perm]
        for dim in self.inserted:
            form.insert(dim, 1)
        return tuple(form)

    def form_dim(self, dim: int) -> int:
        """Where dim ``dim`` of the original value sits in its conv form."""
        position = self.perm.index(dim % self.rank)
        for inserted in self.inserted:
            position += inserted <= position
        return position

    def cancels(self, order: tuple[int, ...]) -> bool:
        """Whether entering ``x.permute(order)`` needs no permute (it is ``x`` with dims inserted)."""
        return tuple(order[d] for d in self.perm) == tuple(range(self.rank))

    def permuted(self, graph: fx.Graph, form: Node, order: tuple[int, ...]) -> Node:
        """``leave(form).permute(order)``, as one permute of the form (none when they cancel)."""
        for dim in reversed(self.inserted):
            form = graph.call_method("squeeze", (form, dim))
        inverse = _inverse(self.perm)
        return _permute(graph, form, tuple(inverse[d] for d in order), self.rank)

    def _insert(self, graph: fx.Graph, value: Node) -> Node:
        for dim in self.inserted:
            value = graph.call_method("unsqueeze", (value, dim))
        return value


def layout_for(rank: int, folded: bool) -> PositionLayout | None:
    """The conv layout of a rank-``rank`` value (None past 5 dims: there is no conv4d)."""
    if rank == 2:
        return _FOLDED_VECTORS if folded else _BATCHED_VECTORS
    return _BY_RANK.get(rank)


_FOLDED_VECTORS = PositionLayout(2, (1, 0), (0, 2), "(N, C) as (1, C, 1, N)")
_BATCHED_VECTORS = PositionLayout(2, (0, 1), (2, 3), "(N, C) as (N, C, 1, 1)")
_BY_RANK = {
    3: PositionLayout(3, (0, 2, 1), (2,), "(N, L, C) as (N, C, 1, L)"),
    4: PositionLayout(4, (0, 3, 1, 2), (), "(N, H, W, C) as (N, C, H, W)"),
    5: PositionLayout(5, (0, 4, 1, 2, 3), (), "(N, D, H, W, C) as (N, C, D, H, W)"),
}


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    inverse = [0] * len(perm)
    for i, d in enumerate(perm):
        inverse[d] = i
    return tuple(inverse)


def _permute(graph: fx.Graph, value: Node, order: tuple[int, ...], rank: int) -> Node:
    """``value.permute(order)``; composed with ``value``'s own permute when it is one; nothing if identity."""
    inner = P.permutation(value, rank) if isinstance(value, Node) else None
    if inner is not None and isinstance(P.first_input(value), Node):
        value, order = P.first_input(value), tuple(inner[d] for d in order)
    if order == tuple(range(rank)):
        return value
    return graph.call_method("permute", (value, order))


def layer_norm_over_channels(x: torch.Tensor, weight, bias, eps: float) -> torch.Tensor:
    """LayerNorm over dim 1 of (N, C, *S): what ``F.layer_norm(x.movedim(1, -1), (C,))`` computes, moved back.

    Written out (as Apple's ml-ane-transformers does) so that it exports as reductions over the channel
    axis rather than as a transpose, the fused op and a transpose back.
    """
    mean = x.mean(1, keepdim=True)
    centred = x - mean
    y = centred * torch.rsqrt((centred * centred).mean(1, keepdim=True) + eps)
    shape = (-1,) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y
