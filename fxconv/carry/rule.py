"""What every carry rule is built of: the op as a rule reads it (``Op``, ``Input``), what a rewrite gives
back (``Moved``, ``Replaced``), the ``Rule`` base, and the helpers several rules share. The rule files
import this module; ``fxconv.carry`` imports them and orders them (``CARRIED``, ``ATTENTION``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..layouts import Layout, PositionLayout

LEVELS = ("torch", "aten", "onnx")


@dataclass(frozen=True)
class Input:
    """One tensor an op reads, as the rules see it."""

    value: object
    shape: tuple | None
    constant: bool  # computed from parameters and constants alone
    single: bool  # a constant holding one number: it broadcasts against anything


@dataclass(frozen=True)
class Op:
    """One op of a graph, read by a rule: its tensor inputs and the parameters that family needs."""

    rule: Rule
    node: object  # the front end's node
    inputs: tuple[Input, ...]
    shape: tuple | None  # of its output
    params: dict = field(default_factory=dict)

    @property
    def data(self) -> Input:
        """The input the op computes on (the first)."""
        return self.inputs[0]


@dataclass(frozen=True)
class Moved:
    """The op ran on the form: ``form`` is its output's, in ``layout``."""

    form: object
    layout: Layout


@dataclass(frozen=True)
class Replaced:
    """The op's output is now ``value`` (in the original layout, or not a tensor: a size)."""

    value: object


class Rule:
    """One op family the conv layouts carry. Subclasses set the names and override the methods."""

    name = ""
    torch: tuple[str, ...] = ()  # "F.gelu" (torch.nn.functional), "torch.erf", "nn.GELU", ".gelu" (a Tensor method)
    aten: tuple[str, ...] = ()  # ATen overload packets: "gelu"
    onnx: tuple[str, ...] = ()  # ONNX op types (default domain)
    not_at: ClassVar[dict[str, str]] = {}  # level -> why this family is not carried there (yet)
    on_channels = False  # works on the features as one axis: needs them all on the form's channel axis
    reads_form = False  # rewritten to read its input's form, its output left in the original layout
    after_conv = False  # carried in scope "heads" too, straight after a convolution (Q/DQ)

    def read_fx(self, node, ctx) -> dict | None:
        """The parameters of a torch- or ATen-level call of this family; None if this call is not one."""
        return {}

    def read_onnx(self, node, ctx) -> dict | None:
        """The parameters of an ONNX node of this family; None if this node is not one."""
        return {}

    def check(self, op: Op, layout: Layout, formed) -> str | None:
        """None if ``op`` runs in ``layout`` once the inputs ``formed(value)`` says are in it are; else why not."""
        raise NotImplementedError

    def free_form(self, op: Op, folded: bool) -> Layout | None:
        """A layout in which the op's output, none of whose inputs is in a form, has one for free (its
        input: a permute that the layout's own undoes); None if none."""
        return None

    def rewrite(self, op: Op, layout: Layout, ctx, build) -> Moved | Replaced:
        """Build the op on the forms of its inputs with the builder's primitives (``fxconv.engine.Builder``).

        ``ctx.form(value)`` is a value in ``layout``: its form, or entered (an activation), or laid out (a
        constant: ``PositionLayout.constant_steps``).
        """
        raise NotImplementedError


def operand_reason(op: Op, layout: Layout, formed, others_allowed: bool) -> str | None:
    """Whether each tensor an element-wise op reads can be given in ``layout``: formed, a single value,
    a constant laid out alike, or (``others_allowed``) another activation entered. None, or why not."""
    if op.shape is None or len(op.shape) != layout.rank:
        return f"its output has shape {op.shape}, not the {layout.rank}-D value the layout holds"
    for i in op.inputs:
        if formed(i.value) or i.single:
            continue
        if not isinstance(layout, PositionLayout):
            return "an operand other than a single value would have to be laid out like the flattened map"
        if i.shape is None or len(i.shape) > layout.rank:
            return f"an operand of shape {i.shape} does not broadcast against the layout's values"
        if not i.constant and not others_allowed:
            return "it also reads another activation"
    return None


def over_channels(layout: Layout, dims) -> bool:
    """Whether ``dims`` of an op's input are exactly its last dim, which the form holds as dim 1."""
    return isinstance(layout, PositionLayout) and sorted(d % layout.rank for d in dims) == [layout.rank - 1]
