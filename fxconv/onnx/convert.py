"""``convert_onnx``: the Linears of an existing ONNX file (Gemm, MatMul [+ Add]) become convolutions.

For users who hold an ONNX file, not a PyTorch model (an old export, tf2onnx, a vendor's int8 QDQ file).
The rewrite is the PyTorch pass's — the same engine (``fxconv.engine``), rules (``fxconv.carry``) and
layouts (``fxconv.layouts``), read in ONNX (``read``) and built as ONNX nodes (``emit``); weights are
re-laid out in numpy, float or int8.

Before (TorchScript export of a VGG-like classifier, opset 13, dynamic batch)::

    MaxPool → Flatten → Gemm(fc1.weight, transB=1) → Relu → Gemm(fc2.weight) → logits

After (``method="kernel"``, ``layout="folded"``)::

    MaxPool → Transpose(1,2,0,3) → Reshape(1,C,H,-1) → Conv(fc1.weight as (out,C,H,W), stride (H,W))
            → Relu → Conv(fc2.weight as (out,in,1,1)) → Squeeze(0,2) → Transpose(1,0) → logits

The opset, IR version, dynamic dims and names are kept. At a static batch of 1 the folded layout's
moves of size-1 axes become Reshapes and collapse (``fxconv._tidy``). This module imports no torch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir

from .. import _tidy
from ..errors import InvalidArgumentError, VerificationError
from ..pipeline import run
from ..report import Report, Verification
from ..targets import Options, resolve
from .emit import OnnxBuilder
from .read import OnnxView, inferred_shapes, inferred_value_info

__all__ = ["convert_onnx"]


def convert_onnx(
    model: str | os.PathLike | onnx.ModelProto,
    method: str | None = None,
    *,
    scope: str | None = None,
    layout: str | None = None,
    target: str = "onnxruntime",
    strict: bool = False,
    verify: bool = True,
) -> tuple[onnx.ModelProto, Report]:
    """Rewrite the Linears (Gemm, MatMul) of an ONNX model that read a flattened map as convolutions.

    ``model`` is a path or an ``onnx.ModelProto`` (neither is modified). ``method``, ``scope`` and
    ``layout`` mean what they mean for :func:`fxconv.convert`. Returns ``(model_proto, report)``; every
    Gemm/MatMul with a constant operand is in ``report.converted`` or ``report.skipped`` with a reason,
    and with ``strict=True`` a skipped one raises :class:`NotConvertibleError`. Before it returns, the result
    is run beside the original in onnxruntime on random inputs of the declared shapes at two batches
    (``check_onnx``); ``report.verified`` says what was compared, a difference over tolerance raises
    :class:`VerificationError`, and ``verify=False`` skips it (the report then says "NOT VERIFIED"). A file
    whose inputs have free dims beyond the batch cannot be run without an example: then ``check_onnx(path,
    original, example)`` is the proof, and the report says it was not verified and why.
    """
    options = resolve(target, method, scope, layout, strict=strict, verify=verify)
    options.warn(stacklevel=2)
    front = _File(model, options)
    return run(front, options)


class _File:
    """convert_onnx's front end for the pipeline (``fxconv.pipeline``): the file's graph as onnx_ir holds it,
    its view and builder; the result a ModelProto, at a static batch with its layout moves simplified;
    proven against the original file in onnxruntime."""

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, options: Options):
        if isinstance(model, (str, os.PathLike)):
            from ..check import load_onnx

            self.original, proto = Path(model), load_onnx(model)
        elif isinstance(model, onnx.ModelProto):
            self.original = proto = model
        else:
            raise InvalidArgumentError(
                f"model must be an ONNX file's path or an onnx.ModelProto, not {type(model).__name__}"
            )
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)  # the IR keeps the proto's tensors, and renaming a value renames its tensor
        self.graph = ir.from_proto(copy)
        self.report = Report(options.method, options.scope, options.layout, capture="ONNX", target=options.target.name)
        self.view = OnnxView(self.graph, inferred_shapes(proto), options.target.rules)
        self.builder = OnnxBuilder(self.graph, self.view)

    def result(self, rewrite) -> onnx.ModelProto:
        result = ir.to_proto(self.graph)
        if self.report.converted and all(v.shape is not None and v.shape.is_static() for v in self.graph.graph.inputs):
            inferred = inferred_value_info(result)  # those the graph had among them
            del result.graph.value_info[:]
            result.graph.value_info.extend(inferred)
            graph = ir.from_proto(result)
            _tidy.simplify_moves(graph)
            result = ir.to_proto(graph)
        return result

    def verified(self, result: onnx.ModelProto) -> Verification:
        # against the user's file where there is one: a proto would be written out again to be run
        return _verified(result, self.original)


def _verified(converted: onnx.ModelProto, original: onnx.ModelProto | Path) -> Verification:
    """The converted file run beside the original in onnxruntime (``check_onnx``); a VerificationError where
    they differ."""
    from ..check import check_onnx, save_proto

    with tempfile.TemporaryDirectory(prefix="fxconv-verify-") as folder:
        path = Path(folder) / "converted.onnx"
        save_proto(converted, path)
        try:
            check = check_onnx(path, original)
        except InvalidArgumentError as e:  # free dims beyond the batch: no inputs can be drawn without an example
            return Verification((), 0, 0.0, compared=False, note=f"not run in onnxruntime: {e}")
    if not check.passed:
        raise VerificationError(f"the converted file differs from the original in onnxruntime: {check}")
    return Verification(check.batch_sizes, 1, check.max_abs_diff)
