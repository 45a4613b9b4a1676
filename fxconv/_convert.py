"""``fxconv.convert``: trace a model, learn its shapes, and rewrite its flatten-fed Linear layers.

Before (a classifier head)::

    x (N, C, H, W) ─ flatten ─ Linear(C·H·W → F) ─ ReLU ─ Linear(F → K) ─▶ (N, K)

After, ``method="kernel"`` (the default)::

    x ─ conv2d(W1.view(F, C, H, W), kernel H×W) ─ ReLU ─ conv2d(W2.view(K, F, 1, 1)) ─ flatten ─▶ (N, K)

After, ``method="1x1"``::

    x ─ reshape (N, C·H·W, 1, 1) ─ conv2d(W1.view(F, C·H·W, 1, 1)) ─ ReLU ─ conv2d(W2.view(K, F, 1, 1))
      ─ flatten ─▶ (N, K)

Before, a transformer MLP on tokens (converted with ``scope="all"``)::

    x (N, L, C) ─ LayerNorm ─ Linear(C → 4C) ─ GELU ─ Linear(4C → C) ─ + x ─▶ (N, L, C)

After::

    x ─ permute, unsqueeze: (N, C, 1, L) ─ LayerNorm over dim 1 ─ conv 1x1 ─ GELU ─ conv 1x1 ─ + ─ squeeze, permute ─▶

The steps: capture (``capture.py``: symbolic_trace, torch.export, or the graph you give, with every
node's shape recorded on the example), the rewrite (``fxconv.engine`` planning and walking the graph
through the fx front end, ``fxconv.fx``; the ops it carries are ``fxconv.carry``'s rules; dense mode in
``fxconv.fx.dense``), and the report.
"""

from __future__ import annotations

import contextlib
import copy
from typing import NamedTuple

import torch
from torch import fx, nn
from torch.export import ExportedProgram

from ._util import Example
from .capture import capture as capture_graph  # the name ``capture`` is convert's keyword
from .capture import export_again
from .codes import skip
from .engine.rewrite import Rewrite
from .fx.dense import make_dense
from .fx.emit import FxBuilder
from .fx.read import FxView
from .fx.state import written_state
from .pipeline import run
from .report import Report, Verification
from .targets import Options, resolve
from .verify import verify as check_equal  # the name ``verify`` is convert's keyword

__all__ = ["ConvertResult", "convert"]


class ConvertResult(NamedTuple):
    """What :func:`convert` returns: unpack it as ``module, report = result``."""

    module: fx.GraphModule | ExportedProgram
    report: Report


def convert(
    model: nn.Module | ExportedProgram,
    example_inputs: torch.Tensor | tuple | dict,
    method: str | None = None,
    *,
    scope: str | None = None,
    layout: str | None = None,
    target: str = "onnxruntime",
    dense: bool = False,
    approximate: bool = False,
    strict: bool = False,
    inplace: bool = False,
    capture: str = "auto",
    verify: bool = True,
) -> ConvertResult:
    """Rewrite every Linear fed by a flattened feature map in ``model`` as a convolution (every Linear, with
    ``scope="all"``).

    ``model`` is an ``nn.Module``, a ``GraphModule`` you traced yourself (symbolic_trace, a custom
    tracer, or ``ExportedProgram.module()``), or an ``ExportedProgram`` (then the result is an
    ExportedProgram too, dynamic where the given one was). An ``nn.Module`` is captured with
    ``torch.fx.symbolic_trace`` when its graph gives the model's outputs on the example, else with
    ``torch.export`` (``capture="auto"``; ``"fx"`` or ``"export"`` choose one, ``"static"`` is
    torch.export at the example's own batch, for graphs that exist at one batch only); ``report.capture``
    says which, and ``report.fixed_batch`` the batch a static capture runs at. ``example_inputs`` — a
    tensor, a tuple of positional inputs, or a dict of keyword inputs (``model(**example_inputs)``), each a
    tensor or a dict, list or tuple of them — is run once to learn shapes.
    ``method`` is ``"kernel"`` (a conv whose kernel covers the map) or ``"1x1"`` (a 1x1 conv on the
    features reshaped to (N, C·H·W, 1, ...)). The model is copied first unless ``inplace=True``, in which
    case the result shares its parameters (and a GraphModule is rewritten in place). Every Linear call
    that is not converted is in ``report.skipped`` with a reason; with ``strict=True`` any such call
    raises :class:`NotConvertibleError`.

    ``scope="heads"`` (the default) converts the Linears that read a flattened or globally pooled map
    (``x.mean((2, 3))``, and ``x.mean(1)`` of (N, L, C) tokens); ``scope="all"`` converts every Linear:
    the others run at each position of their input as 1x1 convolutions, tokens (N, L, C) as (N, C, 1, L)
    and channels-last maps (N, H, W, C) as NCHW, and the element-wise ops and LayerNorms between them
    run in that layout too, so that a block changes layout once in and once out (see ``fxconv.layouts``).
    ``report.converted[i].layout`` says which layout each Linear took.

    ``layout`` says where the batch goes inside the head. ``"folded"`` (the default) tiles the batch
    along the last spatial axis, ``(N, K) -> (1, K, 1, N)``, so that a runtime which runs a convolution
    as one GEMM per image (onnxruntime's CPU kernels) does one GEMM for the whole batch, as the Linear
    did; ``"batched"`` keeps the batch first, ``(N, K, 1, 1)``: the plain textbook form, convolutions
    only, but several times slower than the Gemm in onnxruntime at batch 8 and more. Dense mode is
    always batched.

    ``dense=True`` (method "kernel") makes the model fully convolutional: for inputs larger than the
    example it returns (N, out, h, w), one prediction per window; see ``fxconv.fx.dense``. A model whose
    head cannot be made dense raises :class:`NotConvertibleError` naming the obstacle: every window is
    exact or the conversion is refused. ``approximate=True`` accepts global pools inside the backbone
    (squeeze-and-excitation blocks): each window then sees the whole image through them, and
    ``report.approximate`` lists them.

    State. A forward that writes buffers in place (a KV cache, a recurrent state, running statistics) keeps
    every write, in order; ``report.state`` names those buffers.

    Before it returns, the result is compared with the model (``fxconv.verify``): on the example and on
    fresh inputs at another batch where the batch is free, from the same state, several calls in a row
    where the forward writes state, each buffer it writes compared too. ``report.verified`` says what was
    compared and the largest difference; a difference over tolerance raises :class:`VerificationError`.
    ``verify=False`` skips it (a model too large to run twice); the report then says "NOT VERIFIED".
    """
    options = resolve(target, method, scope, layout, dense=dense, approximate=approximate, strict=strict,
                      verify=verify)  # fmt: skip
    inputs = Example.of(example_inputs)
    given = _Given(model, inplace)
    with given.put_back_on_failure():
        front = _Graph(given, inputs, capture, options)
        options.warn(stacklevel=2)
        return ConvertResult(*run(front, options))


class _Graph:
    """convert's front end for the pipeline (``fxconv.pipeline``): the model captured as a GraphModule, its
    view and builder; the result dense where asked, an ExportedProgram again where one was given; proven
    against the model (``fxconv.verify``)."""

    def __init__(self, given: _Given, inputs: Example, capture: str, options: Options):
        self.given, self.inputs, self.options = given, inputs, options
        self.captured = captured = capture_graph(given.model, inputs, capture, inplace=given.inplace)
        self.report = Report(options.method, options.scope, options.layout, options.dense, captured.how,
                             captured.note, options.target.name, captured.fixed_batch,
                             state=sorted(written_state(captured.gm)))  # fmt: skip
        self.report.skipped += [
            skip(name, "opaque", f"it runs inside {where}, which the graph keeps whole: capture='export' sees inside")
            for name, where in captured.hidden
        ]
        self.view = FxView(captured.gm, options.target.rules)
        self.builder = FxBuilder(captured.gm, self.view)

    def result(self, rewrite: Rewrite) -> fx.GraphModule | ExportedProgram:
        if self.options.dense:
            make_dense(rewrite, self.inputs, self.options.approximate)
        captured = self.captured
        return captured.gm if captured.program is None else export_again(captured.gm, captured.program, self.inputs)

    def verified(self, result) -> Verification:
        verified = check_equal(self.given.reference, result, self.inputs, batch_free=self.captured.fixed_batch is None,
                               dense=self.options.dense)  # fmt: skip
        if verified.compared:  # the buffers by the names the model gives them (torch.export may lift them)
            self.report.state = sorted(verified.state)
        return verified


class _Given:
    """The model as given, what the result is compared with, and — for a GraphModule rewritten in place — its
    graph as it was, put back if the conversion fails: nothing is left half-done."""

    def __init__(self, model, inplace: bool):
        self.model, self.inplace, self.reference = model, inplace, model
        if inplace and isinstance(model, fx.GraphModule):  # the result is the model itself: compare with its copy
            self.reference = fx.GraphModule(model, copy.deepcopy(model.graph), type(model).__name__)
            self.attributes = set(vars(model)) | set(model._buffers)

    @contextlib.contextmanager
    def put_back_on_failure(self):
        try:
            yield
        except BaseException:
            if self.reference is not self.model:
                for name in (set(vars(self.model)) | set(self.model._buffers)) - self.attributes:
                    if name.startswith("_fxconv_"):  # constants the rewrite registered
                        delattr(self.model, name)
                self.model.graph = self.reference.graph
                self.model.recompile()
            raise
