"""The ``.onnx`` file onnxruntime and OpenVINO run (and every compiler that reads ONNX), written and proven.

A PyTorch model's conversion is exported (``fxconv.export_onnx``); an ONNX file's (``convert_onnx``) is
saved. The proof: the written file's op census — each figure read from the file, the Convs that replace
Linears marked, the matrix products still reading a weight counted (``check.weight_products``: QDQ forms
too) — and the file run in the runtime beside the original (``check_onnx``: PyTorch, or the original
file in the same runtime) at two batch sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..check import (
    PRODUCTS,
    OnnxCheck,
    check_loaded,
    declared_inputs,
    load_onnx,
    op_census,
    save_proto,
    weight_products,
)
from ..report import Report

__all__ = ["OnnxProof"]


@dataclass
class OnnxProof:
    """An ONNX file written: its op census, read from it, and its check in a runtime (None: not asked for)."""

    opset: int
    batch: int | None  # the file's batch where it is static (its first input's first dim), else None
    ops: dict[str, int]
    weight_products: int  # the matrix products still reading a weight: the Linears left in the file
    replacing: dict[str, int]  # ops reading a converted Linear's weight (by its name, which the export keeps)
    check: OnnxCheck | None
    reference: str  # what the check ran it against

    @property
    def passed(self) -> bool:
        return self.check is None or self.check.passed

    def __str__(self) -> str:
        lines = [f"  {'ONNX op':<24}{'count':>7}"]
        for op, n in self.ops.items():
            note = ""
            if op == "Conv" and self.replacing.get(op):
                note = f"   <- {self.replacing[op]} replace Linears"
            elif op in PRODUCTS and self.replacing.get(op):
                note = f"   <- {self.replacing[op]} Linears re-laid, not made convolutions (channels-last)"
            lines.append(f"  {op:<24}{n:>7}{note}")
        lines.append(f"  Gemm/MatMul reading a weight: {self.weight_products}")
        lines.append(str(self.check) if self.check else "not checked in a runtime (check=False)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"batch": self.batch, "opset": self.opset, "ops": self.ops, "weight_products": self.weight_products,
                "check": None if self.check is None else vars(self.check), "reference": self.reference}  # fmt: skip


def write_module(module, example, path, *, batch: int | None, opset: int | None, dense: bool) -> None:
    """Export a converted PyTorch model to ``path`` (dense: its spatial dims free, as dense mode runs)."""
    from ..export import export_onnx  # torch, imported only for a PyTorch model

    export_onnx(module, example, path, batch=batch, opset=opset, dynamic_spatial=dense)


def write_proto(converted: onnx.ModelProto, path) -> None:
    save_proto(converted, path)


def prove(path, report: Report, reference, reference_name: str, example, *, runtime: str | None, step) -> OnnxProof:
    """The file at ``path`` read back once (its graph, not its weights, checked) for the census and the run in
    ``runtime`` beside ``reference`` (None: not run)."""
    written = load_onnx(path, weights=False)
    check = None
    if runtime is not None:
        with step(f"checking with {runtime} against {reference_name}", "check"):
            check = check_loaded(path, written, reference, example, runtime=runtime)
    return OnnxProof(written.opset_import[0].version, _batch(written), op_census(written), weight_products(written),
                     _replacing(written, report), check, reference_name)  # fmt: skip


def _batch(model: onnx.ModelProto) -> int | None:
    dims = declared_inputs(model)[0].type.tensor_type.shape.dim if declared_inputs(model) else []
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else None


def _replacing(model: onnx.ModelProto, report: Report) -> dict[str, int]:
    """How many nodes of each op type read a converted Linear's weight."""
    names = {c.name.split(" (call ")[0] for c in report.converted}
    weights = names | {f"{name}.weight" for name in names}
    reading: dict[str, int] = {}
    for node in model.graph.node:
        if len(node.input) > 1 and (node.input[1] in weights or node.input[0] in weights):
            reading[node.op_type] = reading.get(node.op_type, 0) + 1
    return reading
