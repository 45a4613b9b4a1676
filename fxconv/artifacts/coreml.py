"""The ``.mlpackage`` Core ML runs on Apple's Neural Engine — coremltools' ML program — written and proven.

The flow, as Apple's coremltools documentation drives it::

    converted module ─ torch.export ─ run_decompositions({}) ─ ct.convert(mlprogram, minimum deployment
                     target, compute precision) ─▶ .mlpackage (a folder)

Apple's defaults for the Neural Engine: an ML program for iOS 17 (``deployment``), computed in float16
(``precision``, coremltools' own default for ML programs).

The proof that runs everywhere: the MIL program's op census beside the original's — ``linear``, ``conv``,
``transpose``, ``reshape``, ``einsum``, ``matmul`` and the total — so a user sees no ``linear`` left and no
transposes gained. Core ML predicts on macOS only: there the written package is loaded and run on the
example and compared with the original model (float16 tolerance); elsewhere the proof says it was not run.
"""

from __future__ import annotations

import collections
import os
import sys
from dataclasses import dataclass

import torch
from torch import nn

from .._util import Example, eval_mode, silenced
from ..errors import CompilerError, FxconvError, InvalidArgumentError, first_line

__all__ = ["CoreMLProof", "coreml_ops"]

SHOWN = ("linear", "conv", "transpose", "reshape", "einsum", "matmul")  # the census's lines; then the total
# of every op but const


@dataclass
class CoreMLProof:
    """A ``.mlpackage`` written: its MIL op census beside the original model's, and its outputs where Core ML
    can run it (macOS)."""

    deployment: str
    precision: str
    converted: dict[str, int]  # the written program's MIL ops: {op: count}
    original: dict[str, int] | None  # the original model's, through the same path; None: it does not convert
    original_error: str | None = None
    max_abs_diff: float | None = None  # the package's outputs against the original's; None: not run (not macOS)
    tolerance: tuple[float, float] | None = None  # (rtol, atol) of that comparison
    allowed: float = float("inf")  # its bound: atol + rtol·(the outputs' largest magnitude)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff is None or self.max_abs_diff <= self.allowed

    def __str__(self) -> str:
        header = f"  {'MIL op':<12}{'original':>10}{'converted':>11}"
        rows = [header]
        for op in (*SHOWN, "total"):
            before = "-" if self.original is None else _count(self.original, op)
            rows.append(f"  {op:<12}{before:>10}{_count(self.converted, op):>11}")
        lines = [f"Core ML ML program ({self.deployment}, {self.precision}), ops beside the original's:", *rows]
        if self.original is None:
            lines.append(f"  the original does not convert: {self.original_error}")
        if self.max_abs_diff is None:
            lines.append("Core ML prediction not run: Core ML predicts on macOS only (checked here: the package "
                         "converts and saves, and its op census)")  # fmt: skip
        else:
            verdict = "PASSED" if self.passed else "FAILED"
            lines.append(f"Core ML prediction check {verdict}: max abs diff {self.max_abs_diff:.3g} "
                         f"(tolerance {self.tolerance[1]:g} + {self.tolerance[0]:g}·scale, {self.precision})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"deployment": self.deployment, "precision": self.precision, "converted": self.converted,
                "original": self.original, "original_error": self.original_error, "predicted": self.max_abs_diff
                is not None, "max_abs_diff": self.max_abs_diff, "passed": self.passed}  # fmt: skip


def _count(census: dict[str, int], op: str) -> int:
    """An op's count; the total counts every op but ``const`` (the weights and shapes), as Apple's figures do."""
    return sum(n for name, n in census.items() if name != "const") if op == "total" else census.get(op, 0)


def coreml_ops(model: nn.Module, example_inputs, via: str = "export") -> collections.Counter:
    """The MIL op census of ``model`` converted by coremltools (iOS 17 ML program), ``via`` "export" or "trace"
    — the two paths Core ML users take; the Targets benchmark's measure."""
    return _census(_program(model, Example.of(example_inputs), via, "iOS17", "float16"))


def write(model, module, example: Example, path: str, *, deployment: str, precision: str, step) -> CoreMLProof:
    """Write ``module`` (the conversion of ``model``) as an ML program at ``path``, and prove what can be."""
    with step(f"converting with coremltools ({deployment}, {precision})", "convert to Core ML"):
        try:
            program = _program(module, example, "export", deployment, precision)
        except FxconvError:
            raise
        except Exception as e:
            raise CompilerError(f"coremltools could not convert the converted model: {type(e).__name__}: "
                                f"{first_line(e)}") from e
    with step(f"writing the ML program {os.path.basename(path)}", "write"):
        with silenced():
            program.save(str(path))
    with step("converting the original with coremltools, for its op census", "original"):
        try:
            original, error = _census(_program(model, example, "export", deployment, precision)), None
        except Exception as e:  # the original not reaching Core ML is a finding, not a failure of the target's
            original, error = None, first_line(e)
    proof = CoreMLProof(deployment, precision, _census(_written(path)), original, error)  # the figures: the file's
    if sys.platform == "darwin":
        with step("running the package in Core ML against the original", "check"):
            _predict(proof, path, model, example)
    return proof


def _program(model, example: Example, via: str, deployment: str, precision: str):
    """coremltools' ML program of ``model``, through ``via``: torch.export or torch.jit.trace."""
    with silenced():  # it warns at import of every native library it lacks off macOS
        import coremltools as ct
    if via == "trace" and example.kwargs:
        raise InvalidArgumentError("via='trace' takes positional inputs only, as torch.jit.trace does")
    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    with silenced(), eval_mode(model), torch.no_grad():
        if via == "export":
            source, shapes = torch.export.export(model, example.args, example.kwargs).run_decompositions({}), None
        elif via == "trace":
            source = torch.jit.trace(model, example.args)
            shapes = [ct.TensorType(shape=t.shape) for t in example.tensors]
        else:
            raise InvalidArgumentError(f"via must be 'export' or 'trace', got {via!r}")
        return ct.convert(source, inputs=shapes, convert_to="mlprogram",
                          minimum_deployment_target=getattr(ct.target, deployment),
                          compute_precision=ct.precision(precision), compute_units=ct.ComputeUnit.CPU_ONLY)  # fmt: skip


def _census(program) -> collections.Counter:
    """The ops of an ML program's main function, read from its spec (what a saved package holds)."""
    main = program.get_spec().mlProgram.functions["main"]
    return collections.Counter(op.type for op in main.block_specializations[main.opset].operations)


def _written(path) -> object:
    """The package at ``path`` read back, as its user's tools read it (not compiled: that needs macOS)."""
    import coremltools as ct

    with silenced():
        return ct.models.MLModel(str(path), skip_model_load=True)


def _predict(proof: CoreMLProof, path: str, model, example: Example) -> None:
    """Run the written package (macOS) on the example beside the original model; the figures into ``proof``."""
    import coremltools as ct
    import numpy as np

    from ..check import tolerance

    package = ct.models.MLModel(str(path))
    spec = package.get_spec().description
    outputs = package.predict({i.name: t.numpy() for i, t in zip(spec.input, example.tensors)})
    got = [np.asarray(outputs[o.name], np.float64) for o in spec.output]
    with torch.no_grad(), eval_mode(model):
        want = [t.double().numpy() for t in torch.utils._pytree.tree_leaves(example.call(model))
                if isinstance(t, torch.Tensor)]  # fmt: skip
    rtol, atol = tolerance(proof.precision)
    scale = max((float(np.abs(w).max()) for w in want if w.size), default=0.0)
    same_shapes = len(got) == len(want) and all(g.size == w.size for g, w in zip(got, want))
    proof.max_abs_diff = max((float(np.abs(g.reshape(w.shape) - w).max()) for g, w in zip(got, want) if w.size),
                             default=0.0) if same_shapes else float("inf")  # fmt: skip
    proof.tolerance, proof.allowed = (rtol, atol), atol + rtol * scale
