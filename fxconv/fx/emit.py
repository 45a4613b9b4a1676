"""Building torch-level nodes for the engine: its primitives as ``call_method``/``call_function`` nodes.

The new nodes are torch-level calls in a graph of either level (an ATen graph runs them as they are, and
torch.export traces them again). They copy the ``meta`` of the op they are made for (its stack trace
and module path: errors and ExecuTorch's delegates name the user's code), with the shape each computes.

Weights are never copied: a convolution reads its Linear's parameter through views —
``weight.unflatten(1, (C, H, W))``, transposed or permuted where the Linear read it so — so a Linear
called twice keeps one set of weights, gradients reach it, and the state_dict keys stay.
"""

from __future__ import annotations

import contextlib
import operator
import warnings

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx import Node

from ..layouts import KEEP, apply_to_shape
from .nodes import shape_of
from .read import FxView
from .state import is_side_effect

CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}  # keyed by the number of spatial dims
_REDUCE = {"mean": torch.mean, "sum": torch.sum, "max": torch.amax, "min": torch.amin}
_ALONG = {"softmax": torch.softmax, "log_softmax": torch.log_softmax}
_BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}
_UNARY = {"rsqrt": torch.rsqrt, "isnan": torch.isnan}
_KEPT_META = ("stack_trace", "nn_module_stack", "source_fn_stack", "from_node", "seq_nr", "torch_fn")


class _FeatureBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d accepting (N, F, 1, ...) too: statistics per feature (dim 1) over all other dims.

    A BatchNorm1d module carried into a conv layout is given this class; for the 2-D and 3-D inputs
    BatchNorm1d takes it computes exactly what BatchNorm1d does.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dims, got {input.dim()}")


class FxBuilder:
    """The engine's primitives on one GraphModule; new nodes go before the op the walk is at."""

    def __init__(self, gm: fx.GraphModule, view: FxView):
        self.gm, self.graph, self.view = gm, gm.graph, view
        self.meta: dict = {}
        self.made: set[Node] = set()  # every node the rewrite made
        self.changed = False

    @contextlib.contextmanager
    def at(self, op: Node, meta_from: Node):
        self.meta = {k: v for k, v in meta_from.meta.items() if k in _KEPT_META}
        with self.graph.inserting_before(op):
            yield

    @contextlib.contextmanager
    def meta_from(self, op: Node):
        """The nodes made meanwhile copy ``op``'s meta instead (a head's source entered at its reader)."""
        kept, self.meta = self.meta, {k: v for k, v in op.meta.items() if k in _KEPT_META}
        try:
            yield
        finally:
            self.meta = kept

    # -- node making -----------------------------------------------------------------------------

    def _node(self, op: str, target, args: tuple, kwargs: dict | None = None, shape=None, like=None) -> Node:
        node = self.graph.create_node(op, target, args, kwargs or {})
        node.meta.update(self.meta)
        self.made.add(node)
        meta = (like or args[0]).meta.get("tensor_meta") if isinstance(like or args[0], Node) else None
        if shape is not None and meta is not None:
            node.meta["tensor_meta"] = meta._replace(shape=torch.Size(shape))
        self.changed = True
        return node

    def _method(self, name: str, value: Node, *args, shape=None) -> Node:
        return self._node("call_method", name, (value, *args), shape=shape)

    def apply(self, value: Node, steps: list) -> Node:
        for step in steps:
            shape = shape_of(value)
            after = apply_to_shape(shape, [step]) if shape is not None and not _dynamic(step) else None
            kind = step[0]
            if kind == "permute":
                value = self._method("permute", value, tuple(step[1]), shape=after)
            elif kind == "unsqueeze":
                for dim in step[1]:
                    shape = shape_of(value)
                    value = self._method("unsqueeze", value, dim, shape=None if shape is None else
                                         apply_to_shape(shape, [("unsqueeze", (dim,))]))
            elif kind == "squeeze":
                dims = tuple(step[1])
                value = self._method("squeeze", value, dims[0] if len(dims) == 1 else dims, shape=after)
            elif kind == "reshape":
                sizes = tuple(self.size(value, i) if s == KEEP else s for i, s in enumerate(step[1]))
                value = self._method("reshape", value, sizes, shape=after)
            elif kind == "unflatten":
                value = self._method("unflatten", value, step[1], tuple(step[2]), shape=after)
            elif kind == "flatten":
                value = self._node("call_function", torch.flatten, (value, step[1]), shape=after)
        return value

    def reshape(self, value: Node, shape: tuple) -> Node:
        return self.apply(value, [("reshape", shape)])

    def constant(self, value, steps: list) -> Node:
        """A parameter (by name) or a node computed from constants, laid out by ``steps`` (views)."""
        return self.apply(self._get_attr(value) if isinstance(value, str) else value, steps)

    def copy(self, record, mapping: dict, any_rank: bool = False) -> Node:
        """The node of ``record`` again, reading ``mapping[v]`` for each input ``v`` in it."""
        op = record.node
        if any_rank and op.op == "call_module" and type(self.view.modules[op.target]) is nn.BatchNorm1d:
            self.view.modules[op.target].__class__ = _FeatureBatchNorm
        node = self.graph.node_copy(op, lambda n: mapping.get(n, n))
        for k in ("tensor_meta", "val", "example_value"):  # its shape is the form's now
            node.meta.pop(k, None)
        self.changed = True
        return node

    def reduce(self, kind: str, value: Node, dims: tuple) -> Node:
        shape = shape_of(value)
        after = None if shape is None else tuple(1 if i in dims else s for i, s in enumerate(shape))
        return self._node("call_function", _REDUCE[kind], (value, list(dims)), {"keepdim": True}, shape=after)

    def along(self, kind: str, value: Node, dim: int) -> Node:
        return self._node("call_function", _ALONG[kind], (value, dim), shape=shape_of(value))

    def binary(self, kind: str, a: Node, b) -> Node:
        return self._node("call_function", _BINARY[kind], (a, b), shape=shape_of(a))

    def unary(self, kind: str, value: Node) -> Node:
        return self._node("call_function", _UNARY[kind], (value,), shape=shape_of(value))

    def slice(self, value: Node, dim: int, start, end, step) -> Node:
        index = (*(slice(None),) * dim, slice(start, end, step))
        return self._node("call_function", operator.getitem, (value, index))

    def where(self, condition: Node, a, b) -> Node:
        return self._node("call_function", torch.where, (condition, a, b))

    def tensor(self, values: list, like: Node) -> Node:
        """A constant holding ``values`` (nested lists) in ``like``'s dtype: a buffer of the module, kept out of
        its state_dict (a checkpoint of the original still loads), moved with it by ``.to()``."""
        meta = like.meta.get("tensor_meta")
        device = next(iter(self.gm.parameters()), torch.empty(0)).device
        tensor = torch.tensor(values, dtype=meta.dtype if meta is not None else torch.float32, device=device)
        name, n = "_fxconv_constant", 0
        while hasattr(self.gm, f"{name}_{n}"):
            n += 1
        self.gm.register_buffer(f"{name}_{n}", tensor, persistent=False)
        return self._get_attr(f"{name}_{n}")

    def einsum(self, equation: str, *values: Node) -> Node:
        return self._node("call_function", torch.einsum, (equation, *values))

    def cat(self, values: list[Node], dim: int) -> Node:
        return self._node("call_function", torch.cat, (list(values), dim))

    def expand(self, value: Node, sizes: tuple) -> Node:
        return self._method("expand", value, tuple(sizes))

    def size(self, value: Node, dim: int) -> Node:
        return self._method("size", value, dim)

    def sizes(self, value: Node, dims) -> list[Node]:
        return [self.size(value, d) for d in dims]

    def epsilon_of(self, value: Node) -> float:
        meta = value.meta.get("tensor_meta")
        return torch.finfo(meta.dtype if meta is not None else torch.float32).eps

    def conv(self, x: Node, linear, weight_steps: list, kernel: tuple, strides: tuple) -> Node:
        """The convolution of ``x`` with the Linear's weight viewed by ``weight_steps``, and its bias."""
        w, b = self._weight_and_bias(linear, weight_steps)
        out = None
        if shape_of(x) is not None:
            batch, out_features = shape_of(x)[0], (shape_of(linear.output) or (None,))[-1]
            out = (batch, out_features, *((s - k) // t + 1 for s, k, t in zip(shape_of(x)[2:], kernel, strides)))
        stride = strides if len(set(strides)) > 1 else strides[0]
        return self._node("call_function", CONVS[len(kernel)], (x, w, b, stride), shape=out, like=x)

    def linear(self, x: Node, linear, weight_steps: list) -> Node:
        """The Linear again, on ``x``, its weight viewed by ``weight_steps`` (the columns re-laid)."""
        w, b = self._weight_and_bias(linear, weight_steps)
        return self._node("call_function", F.linear, (x, w, b), shape=shape_of(linear.output), like=x)

    def _weight_and_bias(self, linear, weight_steps: list) -> tuple[Node, Node | None]:
        """Views of the Linear's own parameters (no copy): the weight (out, in) re-laid by ``weight_steps``
        and scaled by alpha, the bias (out,) scaled by beta."""
        w = self._get_attr(linear.weight) if isinstance(linear.weight, str) else linear.weight
        if linear.transposed:
            w = self._method("t", w)
        w = self.apply(w, weight_steps)
        if linear.alpha != 1:
            w = self.binary("mul", w, linear.alpha)
        b = self._get_attr(linear.bias) if isinstance(linear.bias, str) else linear.bias
        if b is not None and len(self.view.shape(linear.bias) or (0,)) != 1:  # a (1, out) bias added after a matmul
            b = self._method("reshape", b, (-1,))
        if b is not None and linear.beta != 1:
            b = self.binary("mul", b, linear.beta)
        return w, b

    def replace(self, old: Node, new: Node) -> None:
        """Erase ``old`` for ``new``, a node computing the same tensor (which takes its recorded shape)."""
        new.meta.setdefault("tensor_meta", old.meta.get("tensor_meta"))
        if "batch_dims" in old.meta:  # the dims that move with the batch (fxconv.capture)
            new.meta.setdefault("batch_dims", old.meta["batch_dims"])
        old.replace_all_uses_with(new)
        self.graph.erase_node(old)
        self.view.erased.add(old)
        self.changed = True

    def name(self, node: Node) -> str:
        return node.name

    def finish(self) -> None:
        """Drop what the rewrite left unused (ways out of a layout, ``x.size(0)`` of a view, ...) and recompile."""
        if self.changed:
            self._contiguous_before_views()
            self.graph.eliminate_dead_code(is_impure_node=is_side_effect)  # a write in place is never dead
            self.graph.lint()
            self.gm.recompile()

    def _contiguous_before_views(self) -> None:
        """A model's ``view`` of a value the rewrite made (a way out of a layout, a permute's result) views
        a contiguous copy: the tensor it viewed was contiguous, this one may not be, and the view would
        fail at some sizes only ("view size is not compatible", at batch 2 and not 1)."""
        for user in list(self.graph.nodes):
            value = user.args[0] if user.args else None
            if _views(user) and self._permuted(value):
                with self.graph.inserting_before(user):
                    dense = self._method("contiguous", value, shape=shape_of(value))
                user.replace_input_with(value, dense)

    def _permuted(self, value: Node) -> bool:
        """``value`` is a permute the rewrite made, seen through the squeezes and reshapes after it."""
        while value in self.made and value.op == "call_method":
            if value.target == "permute":
                return True
            if value.target not in ("squeeze", "unsqueeze", "reshape", "unflatten"):
                return False
            value = value.args[0]
        return False

    def _get_attr(self, name: str) -> Node:
        """A get_attr of a Linear's parameter; a parametrized one is a property, which fx warns of needlessly."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Attempted to insert a get_attr Node with no underlying reference")
            node = self.graph.get_attr(name)
        node.meta.update(self.meta)
        return node


_VIEWS = {torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default}


def _views(user: Node) -> bool:
    """``user`` views its first argument's memory as other sizes, which needs strides a permute may not give."""
    if user.op == "call_method":
        return user.target == "view"
    return user.op == "call_function" and user.target in _VIEWS


def _dynamic(step) -> bool:
    """A reshape or unflatten to sizes read at run time: its shape is not computed here."""
    sizes = step[1] if step[0] == "reshape" else step[2] if step[0] == "unflatten" else ()
    return any(isinstance(s, Node) for s in sizes)
