"""Calibration data for an int8 artifact (``.pte``): the inputs whose ranges set the quantisation scales.

From Python, ``ship(..., calibration=[inputs, ...])``: each like the example (its tensors' shapes and kinds of
dtype). From the command line, ``--calibration PATH``: a ``.npy``, ``.npz`` or ``.pt`` file, or a folder of
them (read in name order), for a model of one input. Each array is a stack of inputs, split along its first
axis into the example's batch — (K·N, C, H, W) for an example of (N, C, H, W) is K inputs — and each is
refused, before any work, unless its shape is the example's and its dtype the same kind (floating or
integer; float64 arrays become the example's float32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .._util import Example
from ..errors import InvalidArgumentError

__all__ = ["SUFFIXES", "calibration_like", "load_calibration"]

SUFFIXES = (".npy", ".npz", ".pt")


def calibration_like(calibration, example_inputs) -> list[Example]:
    """The calibration inputs as examples, each refused unless its tensors have the example's shapes and kinds
    of dtype (cast to the example's dtypes)."""
    example = Example.of(example_inputs)
    want = example.tensors
    samples = [Example.of(sample) for sample in calibration]
    if not samples:
        raise InvalidArgumentError("the calibration data holds no inputs")
    for i, sample in enumerate(samples):
        got = sample.tensors
        if len(got) != len(want):
            raise InvalidArgumentError(f"calibration input {i} has {len(got)} tensors; the example has {len(want)}")
        for g, w in zip(got, want):
            if g.shape != w.shape:
                raise InvalidArgumentError(f"calibration input {i} has shape {tuple(g.shape)}; the example's is "
                                           f"{tuple(w.shape)}")  # fmt: skip
            if g.is_floating_point() != w.is_floating_point() or (g.dtype == torch.bool) != (w.dtype == torch.bool):
                raise InvalidArgumentError(f"calibration input {i} is {g.dtype}; the example is {w.dtype}")
    return [s.with_tensors([g.to(w.dtype) for g, w in zip(s.tensors, want)]) for s in samples]


def load_calibration(path: Path, example_inputs) -> list[Example]:
    """The inputs in a ``.npy``/``.npz``/``.pt`` file or a folder of them, split into the example's batch and
    checked against it (``calibration_like``)."""
    example = Example.of(example_inputs)
    if len(example.tensors) != 1:
        raise InvalidArgumentError(f"--calibration reads data for a model of one input; this one takes "
                                   f"{len(example.tensors)} (pass calibration= from Python)")  # fmt: skip
    if not path.exists():
        raise InvalidArgumentError(f"no calibration data at {path}")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise InvalidArgumentError(f"{path} holds no {', '.join(SUFFIXES)} file")
    batch = example.tensors[0].shape[0] if example.tensors[0].dim() else 1
    samples = []
    for file in files:
        for array in _arrays(file):
            like = example.tensors[0]
            if array.dim() != max(like.dim(), 1) or array.shape[1:] != like.shape[1:] or array.shape[0] % batch:
                raise InvalidArgumentError(f"{file}: an array of shape {tuple(array.shape)} is not a stack of inputs "
                                           f"of the example's shape {tuple(example.tensors[0].shape)}")  # fmt: skip
            samples += [example.with_tensors([part]) for part in array.split(batch)]
    return calibration_like(samples, example)


def _arrays(file: Path) -> list[torch.Tensor]:
    suffix = file.suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidArgumentError(f"{file}: calibration data is a {', '.join(SUFFIXES)} file or a folder of them")
    try:
        if suffix == ".pt":
            loaded = torch.load(file, weights_only=True)  # tensors only: no code runs
            loaded = list(loaded) if isinstance(loaded, (list, tuple)) else [loaded]
        elif suffix == ".npy":
            loaded = [np.load(file, allow_pickle=False)]
        else:
            with np.load(file, allow_pickle=False) as data:
                loaded = [data[name] for name in data.files]
    except Exception as e:
        raise InvalidArgumentError(f"{file}: cannot read calibration data ({type(e).__name__}: {e})") from None
    arrays = [torch.as_tensor(np.asarray(a)) if not isinstance(a, torch.Tensor) else a for a in loaded]
    if not all(isinstance(a, torch.Tensor) for a in arrays):
        raise InvalidArgumentError(f"{file}: calibration data is arrays or tensors")
    return arrays
