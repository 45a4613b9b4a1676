"""Why a Linear was left alone: one table of codes for both front ends (``convert`` and ``convert_onnx``).

Every Linear-like call fxconv does not convert is in ``report.skipped`` with one of these codes and a
sentence about that call. The table says what each code means and what to do; the docs' table is made
from this one (``docs/generate.py``), and ``skip`` refuses a code that is not in it.

Codes renamed since 0.1 are still understood where a user matches on them: ``Skipped.matches("weight-on-left")``
is true for a ``constant-left`` skip (``ALIASES``).
"""

from __future__ import annotations

from typing import NamedTuple

from .report import Skipped


class Code(NamedTuple):
    meaning: str
    to_do: str


CODES: dict[str, Code] = {
    "not-2d": Code("the Linear reads a 3-D or larger tensor: it acts at each position (a transformer block), "
                   "not on a flattened map", "scope='all' (CLI: --scope all) converts it as a 1x1 convolution"),
    "kept": Code("the target keeps it a Linear: its compiler runs it at least as fast as a convolution (measured), "
                 "or the method has nothing to change", "an explicit method or scope converts it (fxconv warns if "
                 "that was measured slower)"),
    "not-flattened": Code("its input is not a flatten or global pooling of a feature map (a class token "
                          "`x[:, 0]`, a plain vector)", "scope='all' converts it as a 1x1 convolution"),
    "no-batch": Code("its input has no batch dimension (a 1-D vector, or a squeeze of a batch of 1)",
                     "give an example input with a batch dimension"),
    "opaque": Code("it runs inside a call the graph keeps whole: a torch.nn module symbolic_trace does not enter "
                   "(nn.MultiheadAttention), or a torch.fx.wrap function that takes its weight",
                   "capture='auto' or capture='export' sees inside"),
    "folds-batch": Code("the reshape before it folds the batch dimension, e.g. (N, C, H, W) -> (N·C, H·W)",
                        "nothing: the Linear does not read one image's features"),
    "needs-1x1": Code("an op between the flatten and the Linear works on all C·H·W features as one vector "
                      "(LayerNorm, BatchNorm1d)", "method='1x1' (CLI: --method 1x1)"),
    "inplace": Code("an in-place op writes into the flattened tensor while other nodes read its feature map",
                    "make that op out of place"),
    "rank": Code("the flattened map has more than 3 spatial dims: there is no Conv4d", "nothing"),
    "no-shape": Code("no shape was recorded (or inferred) for its input or output", "give example inputs of "
                     "fixed size; for an ONNX file, declare its input shapes or run shape inference first"),
    "hooked": Code("the nn.Linear has forward/backward hooks or pre-hooks (spectral_norm, the old weight_norm, "
                   "feature taps), which a convolution would not run", "capture='export' inlines them"),
    "custom-forward": Code("a subclass of nn.Linear whose forward is its own (QAT's fake quantisation, adapters)",
                           "capture='export' shows what it computes"),
    "constant-left": Code("a constant multiplies from the left, W @ x: it mixes the rows (positions), not the "
                          "features", "nothing: it is no Linear over the features"),
    "constant-only": Code("both operands are constants", "fold constants first (onnxsim, onnxscript's optimizer)"),
    "computed-weight": Code("its weight is computed by nodes from constants (ONNX)",
                            "fold constants first (onnxsim, onnxscript's optimizer)"),
    "weight-rank": Code("its constant operand is not a matrix (a batched weight, bmm)", "nothing yet"),
    "einsum": Code("an einsum with a constant operand", "write it as F.linear(x, W) or x @ W.T, which convert"),
    "grouped-weight": Code("a grouped matmul of stacked expert weights (E, in, out): the tokens routed to each "
                           "expert meet its weight, in groups whose sizes depend on the routing (mixture of experts)",
                           "nothing: no convolution computes it at the original's cost"),
    "gathered-weight": Code("a matmul whose weight is gathered per row from a parameter (w[idx]: batched experts)",
                            "nothing: each row meets another weight, which no convolution computes at the "
                            "original's cost"),
    "transA": Code("Gemm with transA=1 reads its input transposed: the batch is not its first dim",
                   "export without transA"),
    "bias": Code("the bias operand is not a constant vector of the output width", "nothing"),
    "alpha": Code("Gemm alpha scales a quantised weight, which fxconv does not requantise",
                  "quantise after conversion"),
    "quant-axis": Code("the weight is quantised per input feature; a Conv weight's channel axis is its output",
                       "quantise per output channel"),
    "quant-blocked": Code("the weight is quantised in blocks, which a Conv weight's DequantizeLinear cannot keep",
                          "quantise per channel or per tensor"),
    "qoperator": Code("a QOperator node (QLinearMatMul, MatMulInteger, QGemm)", "quantise with QuantFormat.QDQ"),
    "subgraph": Code("it sits in a subgraph (an If, Loop or Scan body)", "nothing yet"),
}  # fmt: skip

# Old code -> the code that replaced it. ``scaled`` (addmm with alpha/beta) is gone: they are folded now.
ALIASES = {"weight-on-left": "constant-left"}


def skip(name: str, code: str, reason: str) -> Skipped:
    """A Skipped entry; ``code`` must be in the table."""
    if code not in CODES:
        raise ValueError(f"fxconv bug: refusal code {code!r} is not in fxconv.codes.CODES")
    return Skipped(name, code, reason)
