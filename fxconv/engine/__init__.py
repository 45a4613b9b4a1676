"""The rewrite engine: one plan and one walk for both graph levels (torch.fx graphs and ONNX files).

::

    front end (fxconv.fx, fxconv.onnx)          engine (this package)                rules (fxconv.carry)
    ─ a View of the graph: ops in order,  ──▶   plan.py: which Linears convert,  ◀── which ops each family
      shapes, constants, Linear readers         from which source, which ops           reads, whether it runs
    ─ a Builder: primitives as nodes      ◀──   carry them (pure: no graph edit)       in a layout, and what
                                                rewrite.py: the walk, in graph         it becomes
                                                order, building the plan
                                                layouts: fxconv.layouts (maths, no IR)

A front end gives the engine two objects. The **view** answers questions about the graph as it was:
``ops()``, ``output(op)``, ``shape(value)``, ``producer(value)``, ``users(value)``, ``is_constant(value)``,
``single(value)``, ``read(op)`` (an ``fxconv.carry.Op`` through the rules) and ``linear(op)`` (a
``Linear``, a ``Skipped`` or None), ``describe(op)``. The **builder** makes nodes before the op the walk is
at: ``apply(value, steps)`` (``fxconv.layouts`` steps), ``reshape``, ``constant(value, steps)``,
``copy(op, mapping)``, ``reduce``, ``along``, ``binary``, ``unary``, ``slice``, ``where``, ``einsum``, ``cat``,
``expand``, ``tensor(values, like)`` (a constant in ``like``'s dtype), ``size``, ``sizes``, ``epsilon_of``,
``conv(x, linear, weight_steps, kernel, strides)``, ``replace(old, new)``. Each primitive is one
function per IR; every rule and every layout change is written once, above them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..layouts import Layout


@dataclass(frozen=True)
class Linear:
    """One Linear-like call, read as ``input @ weight.T · alpha + bias · beta`` whatever its spelling."""

    op: object  # the node computing the product
    output: object  # the value it defines (after a bias add: the add's)
    input: object
    weight: object  # the front end's handle of the stored weight
    transposed: bool  # the weight is stored (in, out), as the right operand of a matmul
    bias: object | None
    alpha: float = 1.0
    beta: float = 1.0
    name: str = ""


@dataclass(frozen=True)
class Spelling:
    """Where a Linear-like call keeps its operands: the readers' data, one record per spelling.

    Positions are positional indexes, names the keywords the same operand may be passed by.
    """

    input: tuple[int, tuple[str, ...]]
    weight: tuple[int, tuple[str, ...]]
    bias: tuple[int, tuple[str, ...]] | None = None
    weight_in_out: bool = False  # stored (in, out): the right operand of a matmul
    bias_after: bool = False  # a following add of a constant vector of the output width is its bias
    alpha: str | None = None  # the keyword (fx) or attribute (ONNX) scaling the product
    beta: str | None = None  # ... scaling the bias
    transposes_weight: str | None = None  # the attribute that says the weight is stored (out, in): Gemm's transB


LINEAR = Spelling(input=(0, ("input",)), weight=(1, ("weight",)), bias=(2, ("bias",)))
MATMUL = Spelling(input=(0, ("input", "self")), weight=(1, ("other", "mat2")), weight_in_out=True, bias_after=True)
ADDMM = Spelling(input=(1, ("mat1",)), weight=(2, ("mat2",)), bias=(0, ("input", "self")), weight_in_out=True,
                 alpha="alpha", beta="beta")
GEMM = Spelling(input=(0, ()), weight=(1, ()), bias=(2, ()), weight_in_out=True, alpha="alpha", beta="beta",
                transposes_weight="transB")


@dataclass(frozen=True)
class Head:
    """A head: the Linears that read a flattened (or globally pooled) map, as convolutions over it."""

    name: str  # its first Linear's
    map: object  # the value its first convolution reads, before the batch is folded in (dense mode freezes its pool)
    conv: object  # its first convolution
    pooled_positions: bool = False  # it reads a pooling over the positions of a value in no conv layout


@dataclass(frozen=True)
class Entry:
    """Where a head's source entered its layout, before its first Linear makes it a Head."""

    map: object  # the value the form was made from (after a pooling's reduction)
    origin: tuple[int, ...]  # (C, *S) of the map the model flattened, for the report
    pooled_positions: bool = False  # pooled over the positions of a value in no conv layout


@dataclass(frozen=True)
class Form:
    """A value's conv form: the same numbers in ``layout``."""

    value: object
    layout: Layout
    head: Head | None = None  # the head it belongs to (reported as a head), if any
    entry: Entry | None = None  # between a head's source and its first Linear: where it entered
