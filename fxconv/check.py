"""Prove an ONNX file equal to its reference model with onnxruntime, and describe ONNX files.

``check_onnx`` validates the file (``onnx.checker`` with ``full_check=True``), opens an onnxruntime CPU
session, and runs file and reference on random inputs shaped like the example at several batch sizes,
one of them unlike the example's (which proves the batch is really dynamic).

Tolerance. A float32 dot product of K terms carries a rounding error of about sqrt(K)·2^-24 of its
terms' magnitude, and onnxruntime sums in another order than PyTorch: a 25k-wide head (VGG's fc6) differs
by ~1e-6 of the output's scale, more than an absolute 1e-5 on large logits. Randomly initialised deep
models reach logits of 1e9, where elementwise tolerances fail on the small entries. So each output is
judged against its own scale: ``|onnx - torch| <= atol + rtol · max|torch|`` with rtol = 1e-4 and
atol = 1e-5 by default: ten times the rounding seen on the zoo, while a wrong weight layout is off by
the order of the output itself.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.export import ExportedProgram

from ._util import as_tuple, eval_mode, first_line
from .errors import OnnxError

__all__ = ["OnnxCheck", "check_onnx", "load_onnx", "op_census"]

RTOL, ATOL = 1e-4, 1e-5


@dataclass
class OnnxCheck:
    """The outcome of :func:`check_onnx`."""

    passed: bool
    max_abs_diff: float
    max_rel_diff: float  # the largest difference over the output's largest magnitude
    ops: dict[str, int]  # the op census of the file: {op_type: count}
    batch_sizes: tuple[int, ...]
    rtol: float = RTOL
    atol: float = ATOL
    outputs: list[tuple[int, ...]] = field(default_factory=list)  # output shapes at the last batch size

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        return (
            f"onnxruntime check {verdict}: max abs diff {self.max_abs_diff:.3g}, max rel diff "
            f"{self.max_rel_diff:.3g} (tolerance {self.atol:g} + {self.rtol:g}·scale) at batch sizes "
            f"{', '.join(map(str, self.batch_sizes))}"
        )


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and fully check an ONNX file; an OnnxError says what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise OnnxError(f"no ONNX file at {path}")
    try:
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise OnnxError(f"{path} is not a valid ONNX model: {first_line(e)}") from e
    return model


def op_census(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the model's graph (and its local functions) hold."""
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    return dict(sorted(Counter(n.op_type for n in nodes).items()))


def check_onnx(
    path: str | os.PathLike,
    reference: nn.Module | ExportedProgram,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    batch_sizes: tuple[int, ...] | None = None,
    rtol: float = RTOL,
    atol: float = ATOL,
    seed: int = 0,
) -> OnnxCheck:
    """Run the ONNX file and ``reference`` (in eval mode) on the same random inputs and compare.

    ``batch_sizes`` defaults to 1 and one size larger than the example's batch (the file's own batch
    if it is static). A missing, corrupt or interface-mismatched file raises :class:`OnnxError`;
    differing numbers give ``passed=False``.
    """
    example = as_tuple(example_inputs)
    if isinstance(reference, ExportedProgram):
        reference = reference.module()
    model = load_onnx(path)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise OnnxError(f"onnxruntime cannot load {path}: {first_line(e)}") from e
    _check_interface(session, example, path)
    static = session.get_inputs()[0].shape[0]
    sizes = batch_sizes or ((static,) if isinstance(static, int) else (1, max(example[0].shape[0], 2) + 1))
    generator = torch.Generator().manual_seed(seed)
    max_abs = max_rel = 0.0
    passed = True
    for n in sizes:
        inputs = tuple(_random_like(t, n, generator) for t in example)
        with torch.no_grad(), eval_mode(reference):
            want = _tensors(reference(*inputs))
        got = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)})
        if len(got) != len(want):
            raise OnnxError(f"{path} has {len(got)} outputs, the reference model returns {len(want)}")
        for g, w in zip(got, want):
            w = w.numpy()
            if g.shape != w.shape:
                raise OnnxError(f"{path} gives an output of shape {g.shape} where the reference gives {w.shape}")
            diff = float(np.abs(g.astype(np.float64) - w).max(initial=0.0))
            scale = float(np.abs(w).max(initial=0.0))
            max_abs = max(max_abs, diff)
            max_rel = max(max_rel, diff / scale if scale else diff)
            passed &= diff <= atol + rtol * scale
    outputs = [tuple(g.shape) for g in got]
    return OnnxCheck(passed, max_abs, max_rel, op_census(model), tuple(sizes), rtol, atol, outputs)


def _check_interface(session: ort.InferenceSession, example: tuple[torch.Tensor, ...], path) -> None:
    """The file takes as many inputs as the example, of the same rank and fixed dims."""
    declared = session.get_inputs()
    if len(declared) != len(example):
        raise OnnxError(f"{path} takes {len(declared)} inputs, the example has {len(example)}")
    for spec, t in zip(declared, example):
        fixed = all(isinstance(d, str) or d is None or d == s for d, s in zip(spec.shape[1:], t.shape[1:]))
        if len(spec.shape) != t.dim() or not fixed:
            raise OnnxError(
                f"{path} expects input {spec.name!r} of shape {spec.shape}, the example is {tuple(t.shape)}: "
                "the file does not belong to this reference model"
            )


def _random_like(t: torch.Tensor, batch: int, generator: torch.Generator) -> torch.Tensor:
    """A random tensor shaped like ``t`` with another batch size (integer inputs repeat t's rows)."""
    shape = (batch, *t.shape[1:])
    if t.is_floating_point():
        return torch.randn(shape, generator=generator, dtype=t.dtype)
    return t[torch.arange(batch) % t.shape[0]]


def _tensors(output) -> list[torch.Tensor]:
    """The tensors of a model's output, in the order the exporter lays them out."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    return [t for item in output for t in _tensors(item)]
