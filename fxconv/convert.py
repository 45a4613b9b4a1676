"""``fxconv.convert``: trace a model, learn its shapes, and rewrite its flatten-fed Linear layers.

Before (a classifier head)::

    x (N, C, H, W) ─ flatten ─ Linear(C·H·W → F) ─ ReLU ─ Linear(F → K) ─▶ (N, K)

After, ``method="kernel"`` (the default)::

    x ─ conv2d(W1.view(F, C, H, W), kernel H×W) ─ ReLU ─ conv2d(W2.view(K, F, 1, 1)) ─ flatten ─▶ (N, K)

After, ``method="1x1"``::

    x ─ reshape (N, C·H·W, 1, 1) ─ conv2d(W1.view(F, C·H·W, 1, 1)) ─ ReLU ─ conv2d(W2.view(K, F, 1, 1)) ─ flatten ─▶ (N, K)

The rewrite itself and its math are in ``_rewrite.py``; dense mode (``dense=True``) in ``_dense.py``.
This module holds what surrounds them: tracing (or accepting a traced GraphModule), copying unless
``inplace``, and one run on the example inputs that records every node's shape.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import fx, nn
from torch.fx import Node
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from ._dense import DenseRewriter
from ._rewrite import HeadRewriter
from ._util import as_tuple, eval_mode, first_line
from .errors import ExampleInputError, InvalidArgumentError, NotConvertibleError, TraceError
from .report import Report

__all__ = ["LAYOUTS", "METHODS", "ConvertResult", "convert"]

METHODS = ("kernel", "1x1")
LAYOUTS = ("folded", "batched")


class ConvertResult(NamedTuple):
    """What :func:`convert` returns: unpack it as ``module, report = result``."""

    module: fx.GraphModule
    report: Report


def convert(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    method: str = "kernel",
    *,
    layout: str | None = None,
    dense: bool = False,
    strict: bool = False,
    inplace: bool = False,
) -> ConvertResult:
    """Rewrite every Linear fed by a flattened feature map in ``model`` as a convolution.

    ``model`` is an ``nn.Module`` (traced with ``torch.fx.symbolic_trace``) or a ``GraphModule`` you
    traced yourself. ``example_inputs`` (a tensor or a tuple of tensors) is run once to learn shapes.
    ``method`` is ``"kernel"`` (a conv whose kernel covers the map) or ``"1x1"`` (a 1x1 conv on the
    features reshaped to (N, C·H·W, 1, ...)). The model is copied first unless ``inplace=True``, in which
    case the result shares its parameters (and a GraphModule is rewritten in place). With
    ``strict=True``, a Linear that has to be left alone raises :class:`NotConvertibleError`.

    ``layout`` says where the batch goes inside the head. ``"folded"`` (the default) tiles the batch
    along the last spatial axis, ``(N, K) -> (1, K, 1, N)``, so that a runtime which runs a convolution
    as one GEMM per image (onnxruntime's CPU kernels) does one GEMM for the whole batch, as the Linear
    did; ``"batched"`` keeps the batch first, ``(N, K, 1, 1)``: the plain textbook form, convolutions
    only, but several times slower than the Gemm in onnxruntime at batch 8 and more. Dense mode is
    always batched.

    ``dense=True`` (method "kernel") makes the model fully convolutional: for inputs larger than the
    example it returns (N, out, h, w), one prediction per window; see ``fxconv._dense``. A model whose
    head cannot be made dense raises :class:`NotConvertibleError` naming the obstacle.
    """
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if dense and method != "kernel":
        raise InvalidArgumentError("dense=True needs method='kernel': a 1x1 head reads a reshaped vector")
    layout = layout or ("batched" if dense else "folded")
    if layout not in LAYOUTS or (dense and layout != "batched"):
        raise InvalidArgumentError(
            f"layout {layout!r} is not one of {', '.join(LAYOUTS)}" if layout not in LAYOUTS
            else "dense=True needs layout='batched': the windows of one image already fill the spatial axes"
        )
    inputs = as_tuple(example_inputs)
    gm = _trace(model, inplace)
    _propagate_shapes(gm, inputs)
    report = Report(method=method, layout=layout, dense=dense)
    (DenseRewriter if dense else HeadRewriter)(gm, method, layout, report).run()
    if strict and report.skipped:
        raise NotConvertibleError(f"strict=True, but {len(report.skipped)} Linear left alone:\n{report}")
    return ConvertResult(gm, report)


def _trace(model: nn.Module, inplace: bool) -> fx.GraphModule:
    """The GraphModule to rewrite: ``model`` (or its copy) traced, or as given if already traced."""
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(model, fx.GraphModule):
        return model
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__}: {first_line(e)}. Trace it yourself (for example with a "
            "torch.fx.Tracer whose is_leaf_module keeps the untraceable part whole) and pass the "
            "resulting GraphModule to fxconv"
        ) from e
    # symbolic_trace rebuilds containers (ModuleList, ...) as new modules in training mode: give every
    # module the flag it had, so that an eval model stays entirely in eval mode.
    flags = {name: m.training for name, m in model.named_modules()}
    for name, m in gm.named_modules():
        m.training = flags.get(name, model.training)
    return gm


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and records each tensor's metadata as ``node.meta["tensor_meta"]``."""

    def run_node(self, n: Node):
        try:
            result = super().run_node(n)
        except Exception as e:
            raise ExampleInputError(
                f"the model rejects the example inputs at node {n.name!r} ({n.format_node()}): "
                f"{type(e).__name__}: {e}"
            ) from e
        if isinstance(result, torch.Tensor):
            n.meta["tensor_meta"] = _extract_tensor_metadata(result)
        return result


def _propagate_shapes(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    """Record every node's shape for ``inputs``, leaving the model's state and the RNG as they were."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) > len(placeholders):
        raise ExampleInputError(f"the model takes {len(placeholders)} inputs, {len(inputs)} were given")
    # Eval mode so that BatchNorm running statistics are not updated by this extra run; the shapes are
    # the same in both modes. fork_rng so that dropout here does not shift the user's random stream.
    with torch.no_grad(), eval_mode(gm), torch.random.fork_rng(devices=[]):
        _ShapeRecorder(gm).run(*inputs)
