"""Carry rules: the ops that run in a conv layout as they run outside it, one op family per file.

Once a Linear runs as a convolution its output lives in a conv layout (``fxconv.layouts``), and every
op the layout can carry runs on that form instead of paying a layout change: a transformer block then
changes layout once in and once out. Each family is one rule, the same for both graph levels:

* the op names it matches — at the **torch** level (``symbolic_trace``: functions, modules, Tensor
  methods), the **ATen** level (``torch.export``) and in **ONNX** — and how each level writes its
  parameters (``read_fx``, ``read_onnx``);
* ``check``: whether it can run in a layout, or the reason it cannot (planning and the walk ask it);
* ``rewrite``: what it becomes, written once with the builder's primitives (``fxconv.engine.Builder``),
  which each front end turns into its own nodes.

A family not carried at one level says why in ``not_at``: drift shows as a missing reader, and a test
walks ``CARRIED`` to hold the levels together. Nothing here imports torch or onnx: the ONNX front end
runs without torch, and the torch-level names are strings the fx front end resolves.
"""

from __future__ import annotations

from .attention import Attention
from .cat import Cat
from .elementwise import Elementwise
from .expand import Expand
from .layer_norm import LayerNorm
from .over_dims import OverDims
from .per_feature import PerFeature
from .permute import Permute
from .qdq import QuantDequant
from .regroup import Regroup
from .rms_norm import RmsNorm
from .rule import LEVELS, Input, Moved, Op, Replaced, Rule
from .select import Select
from .sizes import Sizes
from .slice import Slice

# The rules, in the order a node is offered to them (the first that reads it owns it).
CARRIED: tuple[Rule, ...] = (
    Permute(), Regroup(), Sizes(), Slice(), LayerNorm(), RmsNorm(), PerFeature(), OverDims(), QuantDequant(),
    Elementwise(),
)

# Attention in the layout, as Core ML's Neural Engine wants it: reshapes that split tokens' channels into
# heads, selects of q/k/v and of a class token, concatenations, repeats of key heads (GQA), and the
# split-einsum attention itself.
# Measured slower in onnxruntime (one permute moving the innermost dim runs in its slow generic kernel),
# so only the targets that ask for it carry them (fxconv.targets).
ATTENTION: tuple[Rule, ...] = (
    *(Regroup(split_heads=True) if isinstance(rule, Regroup) else rule for rule in CARRIED),
    Select(), Cat(), Expand(), Attention(),
)

__all__ = ["ATTENTION", "CARRIED", "LEVELS", "Input", "Moved", "Op", "Replaced", "Rule"]
