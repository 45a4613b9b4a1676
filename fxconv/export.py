"""ONNX export of any module (original or converted): dynamic batch, one file, written atomically.

Uses ``torch.onnx.export`` (the torch.export-based exporter, which needs onnxscript). Two things are
added on top of it:

* The convolutions fxconv builds read ``linear.weight.unflatten(...)``. The exporter folds constants only
  below a size limit, so a large head would keep a ``Reshape`` of its weight at run time; fxconv folds
  every pure re-layout of a constant (Reshape, Transpose, ...) so each Conv reads an initializer of
  its own shape and the file is what a convolution-only toolchain expects.
* The file appears at its path only when complete: it is written beside it under a temporary name and
  renamed over it, so a failure leaves neither a partial file nor a clobbered one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import onnx_ir.passes.common as ir_passes
import torch
from onnxscript.optimizer import fold_constants
from torch import nn
from torch.export import ExportedProgram

from ._util import as_tuple, batch_of_two, eval_mode, first_line
from .errors import OnnxError

__all__ = ["export_onnx"]

log = logging.getLogger(__name__)

_RELAYOUT_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"}
_PROTOBUF_LIMIT = 2 * 1024**3  # one-file ONNX models must stay under protobuf's 2 GB


def export_onnx(
    module: nn.Module | ExportedProgram,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    *,
    dynamic_spatial: bool = False,
) -> Path:
    """Export ``module`` (in eval mode) to ONNX at ``path``; return the path.

    The batch dimension of every input is dynamic (named ``batch``); with ``dynamic_spatial=True`` the
    spatial dims are too (``dim2``, ``dim3``, ...: for dense models). An ``ExportedProgram`` is exported
    as it is, dynamic where it is. Models under 2 GB are one
    self-contained file; larger ones keep their weights in ``<path>.data`` beside it. An existing file
    at ``path`` is replaced only once the new one is complete.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise OnnxError(f"cannot write {path}: directory {path.parent} does not exist")
    inputs = tuple(batch_of_two(t) for t in as_tuple(example_inputs))
    exported = isinstance(module, ExportedProgram)
    dynamic = None if exported else tuple(_dynamic_dims(t, dynamic_spatial) for t in inputs)
    try:
        with contextlib.nullcontext() if exported else eval_mode(module), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's business
            program = torch.onnx.export(module, inputs, dynamo=True, dynamic_shapes=dynamic, verbose=False)
    except Exception as e:
        raise OnnxError(f"torch.onnx.export failed for {type(module).__name__}: {first_line(e)}") from e
    fold_constants(program.model, should_fold=lambda node: True if node.op_type in _RELAYOUT_OPS else None)
    ir_passes.RemoveUnusedNodesPass()(program.model)
    tensors = module.state_dict.values() if exported else module.parameters()
    external = sum(p.numel() * p.element_size() for p in tensors) >= _PROTOBUF_LIMIT
    _write_atomically(program, path, external)
    log.debug("fxconv: wrote %s", path)
    return path


def _dynamic_dims(t: torch.Tensor, spatial: bool) -> dict[int, str]:
    """The dims of one input that the file leaves free."""
    dims = {0: "batch"}
    if spatial:
        dims.update({d: f"dim{d}" for d in range(2, t.dim())})
    return dims


def _write_atomically(program, path: Path, external: bool) -> None:
    """Save ``program`` under its final name in a temporary folder beside ``path``, then move it there.

    The folder (and whatever a failed save left in it) is removed in every case. With external data
    the weights file, which the model names, moves first: a new model never points at missing weights.
    """
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as folder:
        staged = Path(folder) / path.name
        try:
            program.save(staged, external_data=external)
            if external:
                os.replace(f"{staged}.data", f"{path}.data")
            os.replace(staged, path)
        except Exception as e:
            raise OnnxError(f"cannot write {path}: {first_line(e)}") from e
