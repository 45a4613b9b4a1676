"""Element-wise ops: activations, arithmetic, residual adds, casts, Dropout — one output element per input element.

Before (tokens (N, L, C); ``m`` the conv form (N, C, 1, L) of ``x``)::

    y = gelu(x) * gamma + x          gamma (C,), a per-channel scale

After::

    y_form = gelu(m) * gamma.view(1, C, 1, 1) + m

``f(leave(m)) == leave(f(m))`` for any element-wise ``f``: the layout change is a permutation of the
elements plus size-1 dims. An operand that broadcasts against the value is laid out the same way
(padded to the value's rank with leading 1s, then entered: ``gamma`` becomes (1, C, 1, 1)), a single
value stays as it is, and another activation (a residual, a mask) is entered into the layout. Between a
flatten and a head's Linear the operands must be single values: the features are a map there. On heads
split along the channels (``SplitLayout``) an operand that broadcasts over them — rotary embeddings'
``q * cos``, cos (N, 1, L, D) — meets the form in its grouped view (N, H, D, L), cos permuted to
(N, 1, D, L), and the product is flattened back: one transpose of cos, none of q.
"""

from __future__ import annotations

from ..layouts import SplitLayout
from .rule import Moved, Rule, operand_reason

_ACTIVATIONS = (
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "hardswish", "hardsigmoid",
    "hardtanh", "sigmoid", "tanh", "softplus", "softsign",
)  # fmt: skip
_MATH = ("abs", "neg", "exp", "expm1", "log", "log1p", "sqrt", "rsqrt", "reciprocal", "sin", "cos", "erf", "erfc",
         "floor", "ceil", "round", "sign", "square")  # fmt: skip
_BINARY = ("add", "sub", "mul", "div", "pow", "maximum", "minimum", "where", "clamp", "clamp_min", "clamp_max",
           "masked_fill")  # fmt: skip
_METHODS = ("relu", "sigmoid", "tanh", *_MATH, *_BINARY, "clone", "contiguous", "detach", "to", "type_as",
            "float", "half", "bfloat16", "double")  # fmt: skip
_INPLACE = tuple(f"{n}_" for n in ("relu", "sigmoid", "tanh", *_MATH, "add", "sub", "mul", "div", "pow", "clamp",
                                   "clamp_min", "clamp_max", "masked_fill"))  # Tensor methods and ATen ops alike
_DROPOUTS = ("dropout", "alpha_dropout", "feature_alpha_dropout")
_MODULES = ("ReLU", "ReLU6", "LeakyReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Hardswish", "Hardsigmoid",
            "Hardtanh", "Sigmoid", "Tanh", "Softplus", "Softsign", "Dropout", "AlphaDropout", "Identity",
            "PReLU")  # PReLU of one weight (per channel: per_feature)  # fmt: skip


class Elementwise(Rule):
    name = "element-wise"
    torch = (
        *(f"F.{n}" for n in (*_ACTIVATIONS, "relu_", "elu_", "leaky_relu_", "hardtanh_", *_DROPOUTS)),
        *(f"torch.{n}" for n in ("relu", "relu_", "sigmoid", "tanh", *_MATH, *_BINARY, "clamp_", "dropout")),
        *(f"operator.{n}" for n in ("add", "sub", "mul", "truediv", "neg", "pow", "iadd", "isub", "imul", "itruediv")),
        *(f"nn.{n}" for n in _MODULES),
        *(f".{n}" for n in (*_METHODS, *_INPLACE)),
        "torchvision.ops.stochastic_depth.stochastic_depth",  # wrapped by torchvision: the identity in eval
    )  # fmt: skip
    aten = (*(n for n in _ACTIVATIONS if n != "softsign"), "relu_", "leaky_relu_", "elu_", "silu_", "hardswish_",
            "hardsigmoid_", "hardtanh_", *_MATH, *_BINARY, *_INPLACE, "clone", "contiguous", "detach", "alias",
            "dropout", "dropout_", "alpha_dropout", "alpha_dropout_", "feature_dropout", "feature_alpha_dropout",
            "_to_copy", "to", "type_as", "_prelu_kernel")  # fmt: skip
    onnx = (
        "Abs", "Ceil", "Celu", "Cos", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity",
        "LeakyRelu", "Log", "Mish", "Neg", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin",
        "Softplus", "Softsign", "Sqrt", "Tanh", "ThresholdedRelu", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min",
        "Sum", "Where", "Clip", "Dropout", "Cast", "PRelu",
    )  # fmt: skip

    def read_fx(self, node, ctx) -> dict | None:
        if ctx.names("torchvision.ops.stochastic_depth.stochastic_depth"):
            return {} if ctx.arg(3, "training", True) is False else None  # random outside eval
        return {}

    def read_onnx(self, node, ctx) -> dict | None:
        return {} if ctx.only_first_output_read() else None  # Dropout's mask is no element-wise result

    def check(self, op, layout, formed) -> str | None:
        if isinstance(layout, SplitLayout):  # any operand broadcasting against the value, in the grouped view
            ranks = [len(i.shape) if i.shape is not None else None for i in op.inputs if not i.single]
            fits = op.shape is not None and len(op.shape) == layout.rank and None not in ranks
            broadcasts = fits and max(ranks, default=0) <= layout.rank
            return None if broadcasts else "an operand does not broadcast against the heads"
        return operand_reason(op, layout, formed, others_allowed=True)

    def rewrite(self, op, layout, ctx, build) -> Moved:
        tensors = [i for i in op.inputs if not i.single]
        out = layout.of_shape(op.shape) if isinstance(layout, SplitLayout) else layout
        if isinstance(layout, SplitLayout) and any(ctx.layout_of(i.value) != out for i in tensors):
            # heads split otherwise, or an operand that is not: in the grouped view, where each broadcasts
            grouped = build.copy(op, {i.value: ctx.grouped(i.value) for i in tensors})
            return Moved(ctx.ungrouped(grouped, out), out)
        return Moved(build.copy(op, {i.value: ctx.form(i.value) for i in tensors}), layout)
