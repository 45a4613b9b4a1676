"""Shared helpers: equality checks used by every test module, and the command line as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import torch


def assert_same_outputs(converted, original, *inputs, scaled: bool = False) -> None:
    """The converted model's outputs equal the original's (float32/float64 defaults of assert_close).

    ``scaled=True`` compares both relative to the reference's largest magnitude. Randomly initialised
    deep networks (resnet152, inception_v3, ...) produce logits up to ~1e9; the two graphs sum the same
    products in a different order, an error of ~5e-7 of the output's scale, which elementwise
    tolerances reject on the small entries even though the models are equal.
    """
    with torch.no_grad():
        got, want = converted(*inputs), original(*inputs)
    if scaled:
        scale = want.abs().max().clamp_min(1.0)
        got, want = got / scale, want / scale
    torch.testing.assert_close(got, want)


def onnx_session(path):
    """An onnxruntime CPU session on an ONNX file, as a function from input tensors to output tensors."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(*inputs: torch.Tensor) -> list[torch.Tensor]:
        feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
        return [torch.from_numpy(a) for a in session.run(None, feed)]

    return run


def fxconv_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    """The command line run as a user runs it: a fresh interpreter, its exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "fxconv", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
