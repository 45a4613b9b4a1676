"""One pipeline for both front ends: ``convert`` (a PyTorch model) and ``convert_onnx`` (an ONNX file).

    options = resolve(target, method, scope, layout, ...)    # every choice, once, before any work
    front = <the front end's graph>                         # captured (fx) or loaded (ONNX): its view,
                                                            # builder and report of how it was had
    result, report = run(front, options)                    # the rewrite, strict, the result, the proof

Each front end says how its graph is had and how its result is made and proven; the steps between, and
their order, are here once.
"""

from __future__ import annotations

from typing import Any, Protocol

from .engine.rewrite import Rewrite
from .errors import NotConvertibleError
from .report import Report, Verification
from .targets import Options


class Front(Protocol):
    """A front end's graph, ready for the rewrite."""

    view: Any  # the engine's reader of the graph (fxconv.fx.read.FxView, fxconv.onnx.read.OnnxView)
    builder: Any  # ... and its writer (FxBuilder, OnnxBuilder)
    report: Report  # how the graph was had (capture, note, state), filled in by the rewrite

    def result(self, rewrite: Rewrite) -> Any:
        """The rewritten graph as the front end returns it (a module, a program, a ModelProto)."""

    def verified(self, result: Any) -> Verification:
        """The result run beside the original: what was compared, or a VerificationError."""


def run(front: Front, options: Options) -> tuple[Any, Report]:
    """Rewrite ``front``'s graph as ``options`` say; refuse under ``strict`` a Linear left alone; return the
    result and its report, proven equal to the original unless ``options.verify`` is False."""
    rewrite = Rewrite(front.view, front.builder, options, front.report)
    rewrite.run()
    report = front.report
    if options.strict and report.skipped:
        error = NotConvertibleError(f"strict=True, but {len(report.skipped)} Linear left alone:\n{report}")
        error.report = report  # what was converted and what was not, for a caller that shows it
        raise error
    result = front.result(rewrite)
    if options.verify:
        report.verified = front.verified(result)
    return result, report
