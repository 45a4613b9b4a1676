"""ONNX export of any module (original or converted) in the form a deployment toolchain takes.

Uses ``torch.onnx.export`` (the torch.export-based exporter, which needs onnxscript), then:

* tidies the graph (``_tidy``): weight re-layouts folded into initializers named after the Linear's
  weight, and at a static batch the layout moves of size-1 axes dropped, so a converted head exported at
  ``batch=1`` is Conv/activation/.../Reshape only, its first Conv at stride 1;
* names the inputs and outputs the same for every model (``input``/``output``, or ``input_0``, ...),
  so the original and the converted file of one model are interchangeable in a deployment config;
* writes the requested opset: the exporter writes 18 and later, and ``_opset`` lowers its file to 13-17
  (ONNX's version converter, which the exporter falls back to, lacks most down-adapters and then keeps
  18 without a word);
* writes the file atomically: beside its path under a temporary name, renamed over it when complete,
  so a failure leaves neither a partial file nor a clobbered one.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import onnx_ir as ir
import torch
from torch import nn
from torch.export import ExportedProgram

from ._opset import lower_opset
from ._tidy import tidy
from ._util import Example, batch_of_two, buffers_kept, call_noting_writes, eval_mode, quiet
from .capture import batch_range, fixed_batch
from .check import BATCH_RANGE, save_proto
from .errors import InvalidArgumentError, OnnxError, first_line
from .options import OLDEST_OPSET

__all__ = ["OPSETS", "export_onnx"]

log = logging.getLogger(__name__)

_EXPORTER_OPSET = 18  # the lowest opset torch.onnx's exporter writes itself
OPSETS = range(OLDEST_OPSET, onnx.defs.onnx_opset_version() + 1)


def export_onnx(
    module: nn.Module | ExportedProgram,
    example_inputs: torch.Tensor | tuple | dict,
    path: str | os.PathLike,
    *,
    batch: int | None = None,
    opset: int | None = None,
    input_names: list[str] | tuple[str, ...] | None = None,
    output_names: list[str] | tuple[str, ...] | None = None,
    dynamic_spatial: bool = False,
) -> Path:
    """Export ``module`` (in eval mode) to ONNX at ``path``; return the path.

    ``batch=None`` leaves the batch dimension of every input free (named ``batch``) — except for a graph
    torch.export captured at one batch (fxconv's static capture, a plain ``torch.export.export``), which is
    exported at that batch; an int fixes it (the example's rows are repeated or cut to that size). With
    ``dynamic_spatial=True`` the spatial dims are free too (``dim2``, ``dim3``, ...: for dense models). An
    ``ExportedProgram`` is exported dynamic where it is, unless ``batch`` is given. ``opset`` is any of
    :data:`OPSETS` (default: the exporter's own, 20 in torch 2.9+). ``example_inputs`` as
    :func:`fxconv.convert` takes them (a tuple, a dict of keyword inputs, nests): the file takes each tensor
    as an input, in the order torch.export flattens them. Inputs are named ``input`` and outputs
    ``output`` (``input_0``, ``input_1``, ... when there are several) unless named here. Models under 2 GB
    are one self-contained file; larger ones keep their weights in ``<path>.data`` beside it. An existing
    file at ``path`` is replaced only once the new one is complete.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise OnnxError(f"cannot write {path}: directory {path.parent} does not exist")
    if opset is not None and opset not in OPSETS:
        raise InvalidArgumentError(f"opset {opset} is not one fxconv writes: choose {OPSETS[0]} to {OPSETS[-1]}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise InvalidArgumentError(f"batch must be a positive int or None (dynamic), got {batch!r}")
    example = Example.of(example_inputs)
    _refuse_state(module, _state(module, example))
    if not isinstance(module, ExportedProgram):
        example = example.bound(module)  # as capture passed it to torch.export
    count = len(example.tensors)
    if input_names is not None and len(input_names) != count:
        raise InvalidArgumentError(f"the model takes {count} input tensors; input_names gives {list(input_names)}")
    if batch is None and fixed_batch(module) is not None:  # a static capture runs at its batch only
        batch = fixed_batch(module)
    if batch is None:
        inputs = example.map(batch_of_two)
    else:
        inputs = example.map(lambda t: t[torch.arange(batch) % t.shape[0]] if t.dim() else t)
        if isinstance(module, ExportedProgram):
            module = module.module()  # re-captured at the fixed batch
    exported = isinstance(module, ExportedProgram)
    dynamic = None
    if not exported and (batch is None or dynamic_spatial):
        dims = functools.partial(_dynamic_dims, batch=batch is None, spatial=dynamic_spatial)
        try:
            dynamic = inputs.by_name(module.forward, dims)
        except (TypeError, ValueError):  # no signature to read: the exporter's own message says why
            dynamic = tuple(map(dims, inputs.tensors))
    args = inputs.args
    if args and isinstance(args[-1], dict) and not inputs.kwargs:
        args += ({},)  # torch.onnx reads a last dict as the keyword inputs, unless an empty one follows it
    progress = log.isEnabledFor(logging.INFO)  # the exporter's stages, passed on (the command line shows them)
    try:
        with contextlib.nullcontext() if exported else eval_mode(module), warnings.catch_warnings(), \
                quiet(_CONVERTER), contextlib.redirect_stdout(_Lines(log)) if progress else contextlib.nullcontext():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's business
            program = torch.onnx.export(
                module, args, kwargs=inputs.kwargs, dynamo=True, dynamic_shapes=dynamic, verbose=progress,
                optimize=False, opset_version=max(opset, _EXPORTER_OPSET) if opset else None,
            )
    except Exception as e:
        raise OnnxError(f"torch.onnx.export failed for {type(module).__name__}: {first_line(e)}") from e
    model = tidy(program.model)
    bounds = batch_range(program.exported_program) if program.exported_program is not None else None
    if bounds:  # an ONNX dim has no range: the file says where its graph holds (diffusers' batch < 64)
        model.metadata_props[BATCH_RANGE] = bounds
    _name_values(model.graph, model.graph.inputs, input_names, "input")
    _name_values(model.graph, model.graph.outputs, output_names, "output")
    if opset is not None and opset < _EXPORTER_OPSET:
        lower_opset(model, opset)
    log.info("writing %s", path.name)
    _write_atomically(model, path)
    return path


class _Lines(io.TextIOBase):
    """A stream whose lines go to ``log`` at INFO: what the exporter prints of its stages."""

    def __init__(self, logger: logging.Logger):
        self.logger, self.pending = logger, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in filter(str.strip, lines):
            self.logger.info(line.strip())
        return len(text)


def _state(module, example: Example) -> list[str]:
    """The buffers ``module``'s forward writes (torch.export's mutations; for a module, one call in eval mode
    on the example, its buffers given back)."""
    if isinstance(module, ExportedProgram):
        return sorted(set(module.graph_signature.buffers_to_mutate.values()))
    with torch.no_grad(), eval_mode(module), buffers_kept(module), torch.random.fork_rng(devices=[]):
        try:
            return sorted(call_noting_writes(module, example.bound(module))[1])
        except Exception:  # the exporter will say why the model does not run
            return []


def _refuse_state(module, state: list[str]) -> None:
    """An ONNX file has no state: a module whose forward writes buffers would be right for its first call only."""
    if state:
        raise OnnxError(
            f"{type(module).__name__} writes the buffer{'s' * (len(state) > 1)} {', '.join(map(repr, state))} in its "
            "forward (a KV cache, a recurrent state, "
            "running statistics): an ONNX file runs each call from the same constants, so every call after the "
            "first would differ. Export a step that takes that state as an input and returns the new state"
        )


_CONVERTER = logging.getLogger("onnxscript.version_converter")  # above opset 20 it says it hands over to onnx's


def _name_values(graph: ir.Graph, values, names, default: str) -> None:
    """Name the graph's inputs or outputs: ``names`` if given, else ``default`` (numbered if several)."""
    if names is None:
        names = [default] if len(values) == 1 else [f"{default}_{i}" for i in range(len(values))]
    names = list(names)
    if len(names) != len(values) or len(set(names)) != len(names):
        raise InvalidArgumentError(f"the file has {len(values)} {default}s; {default}_names gives {names}")
    others = {v.name: v for node in graph for v in node.outputs} | dict(graph.initializers)
    for value in values:
        others.pop(value.name, None)
    for name in names:  # an inner value that holds a wanted name gives it up
        if name in others:
            others[name].name = f"{name}_inner"
    for value, name in zip(values, names):
        value.name = name


def _dynamic_dims(t: torch.Tensor, batch: bool, spatial: bool) -> dict[int, str] | None:
    """The dims of one input that the file leaves free."""
    dims = {0: "batch"} if batch else {}
    if spatial:
        dims.update({d: f"dim{d}" for d in range(2, t.dim())})
    return dims or None


def _write_atomically(model: ir.Model, path: Path) -> None:
    """Save ``model`` under its final name in a temporary folder beside ``path``, then move it there.

    The folder (and whatever a failed save left in it) is removed in every case. With external data
    the weights file, which the model names, moves first: a new model never points at missing weights.
    """
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as folder:
        staged = Path(folder) / path.name
        try:
            save_proto(model, staged)
            if Path(f"{staged}.data").exists():
                os.replace(f"{staged}.data", f"{path}.data")
            os.replace(staged, path)
        except Exception as e:
            raise OnnxError(f"cannot write {path}: {first_line(e)}") from e
