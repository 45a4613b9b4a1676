"""Small helpers shared by fxconv's modules."""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from .errors import InvalidArgumentError


def as_tuple(example_inputs) -> tuple[torch.Tensor, ...]:
    """The example inputs as a tuple of tensors (a single tensor is accepted too)."""
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        kinds = ", ".join(type(t).__name__ for t in inputs) or "nothing"
        raise InvalidArgumentError(f"example_inputs must be a tensor or a tuple of tensors, got {kinds}")
    return tuple(inputs)


def batch_of_two(t: torch.Tensor) -> torch.Tensor:
    """An example with batch ≥ 2: torch.export specialises a batch of 1 to a constant."""
    return torch.cat([t, t]) if t.dim() > 0 and t.shape[0] == 1 else t


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """Put ``module`` in eval mode for the duration, then restore each submodule's own flag.

    The flags are set directly: ``ExportedProgram.module()`` refuses ``.eval()``.
    """
    flags = [(m, m.training) for m in module.modules()]
    for m, _ in flags:
        m.training = False
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


@contextlib.contextmanager
def buffers_kept(module: nn.Module):
    """Run ``module`` for the duration with its buffers given back as they were after: fxconv's own runs
    (recording shapes, comparing outputs) must not step a KV cache or a counter the forward updates."""
    saved = [(b, b.clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, was in saved:
                b.resize_(was.shape).copy_(was)  # resized too: an observer's empty min/max grows on its first run


@contextlib.contextmanager
def quiet(logger: logging.Logger):
    """``logger``'s warnings dropped for the duration (its errors still show)."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
