"""The NPU compilers that install from the package registry, driven as their users drive them — to prove a
converted model on the target's own compiler, without hardware.

* ``ethos_u(model, example, device)``: ExecuTorch's Arm flow — ``EthosUQuantizer`` (symmetric int8),
  ``prepare_pt2e``, calibration, ``convert_pt2e``, ``to_edge_transform_and_lower`` with the
  ``EthosUPartitioner`` — down to TOSA and Vela, whose summary gives the cycles (deterministic: the same
  model gives the same figure on every run). ``pip install 'fxconv[ethos-u]'``.
* ``coreml_ops(model, example, via)``: coremltools' conversion to an ML program, through
  ``torch.export`` (``run_decompositions({})``) or ``torch.jit.trace`` — the two paths Core ML users
  take — and the census of its MIL ops. Core ML predicts only on macOS; where its ops land (the Neural
  Engine or not) cannot be read here, so the census is the figure. ``pip install 'fxconv[coreml]'``.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import glob
import io
import itertools
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from ._util import Example, eval_mode
from .errors import InvalidArgumentError

__all__ = ["ETHOS_U", "EthosU", "coreml_ops", "ethos_u"]

# Vela's compile specs as ExecuTorch's Arm examples give them: (system config, memory mode).
ETHOS_U = {
    "ethos-u55-128": ("Ethos_U55_High_End_Embedded", "Shared_Sram"),
    "ethos-u85-256": ("Ethos_U85_SYS_DRAM_Mid", "Dedicated_Sram_384KB"),
}


@dataclass
class EthosU:
    """What Vela made of a model: its total cycles, and the ops left outside the NPU delegate."""

    device: str
    cycles: int  # Vela's cycles_total, summed over the delegated parts
    outside: list[str] = field(default_factory=list)  # ops that run on the CPU (the input's quantize excluded)
    parts: list[int] = field(default_factory=list)  # each delegated part's cycles, in the order Vela compiled them


def ethos_u(model: nn.Module, example_inputs, device: str = "ethos-u55-128", calibration: int = 4) -> EthosU:
    """Quantise ``model`` to int8 and compile it for ``device`` with ExecuTorch's Arm flow and Vela."""
    if device not in ETHOS_U:
        raise InvalidArgumentError(f"unknown Ethos-U device {device!r}: choose one of {', '.join(ETHOS_U)}")
    try:
        from executorch.backends.arm.ethosu import EthosUCompileSpec, EthosUPartitioner
        from executorch.backends.arm.quantizer import EthosUQuantizer, get_symmetric_quantization_config
        from executorch.exir import to_edge_transform_and_lower
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as e:
        raise InvalidArgumentError(
            f"the Ethos-U flow needs ExecuTorch and Vela: pip install 'fxconv[ethos-u]' ({e})"
        ) from e
    inputs = Example.of(example_inputs)
    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    system, memory = ETHOS_U[device]
    with tempfile.TemporaryDirectory(prefix="fxconv-vela-") as folder, _quiet(), _each_part_its_folder(folder):
        spec = EthosUCompileSpec(device, system_config=system, memory_mode=memory, extra_flags=["--output-format=raw"])
        quantizer = EthosUQuantizer(spec)
        quantizer.set_global(get_symmetric_quantization_config())
        with eval_mode(model):
            captured = torch.export.export(model, inputs.args, inputs.kwargs)
            prepared = prepare_pt2e(captured.module(check_guards=False), quantizer)
        generator = torch.Generator().manual_seed(0)
        def draw(t):
            return torch.randn(t.shape, generator=generator) if t.is_floating_point() else t

        for _ in range(calibration):
            inputs.map(draw).call(prepared)
        quantized = convert_pt2e(prepared)
        program = torch.export.export(quantized, inputs.args, inputs.kwargs)
        lowered = to_edge_transform_and_lower(program, partitioner=[EthosUPartitioner(spec)])
        summaries = sorted(glob.glob(f"{folder}/part-*/**/out_summary_*.csv", recursive=True),
                           key=lambda path: int(path.split("part-")[1].split(os.sep)[0]))  # fmt: skip
        parts = [int(float(next(csv.DictReader(open(path)))["cycles_total"])) for path in summaries]
    graph = lowered.exported_program().graph_module.graph
    outside = [_op(n) for n in graph.nodes if n.op == "call_function" and not _delegated_or_io(n)]
    return EthosU(device, sum(parts), outside, parts)


@contextlib.contextmanager
def _each_part_its_folder(folder: str):
    """Vela run on each delegated part in a folder of its own (``folder/part-0``, ...). ExecuTorch hands every
    part the one folder the compile spec names, where each part's summary overwrote the last: a model with an
    op left on the CPU between two NPU parts was said to cost its last part's cycles only."""
    from executorch.backends.arm.ethosu import backend

    compile_one, parts = backend.vela_compile, itertools.count()

    def compile_part(*args, intermediate_path=None, **kwargs):
        path = os.path.join(folder, f"part-{next(parts)}")
        os.makedirs(path)
        return compile_one(*args, intermediate_path=path, **kwargs)

    backend.vela_compile = compile_part
    try:
        yield
    finally:
        backend.vela_compile = compile_one


def coreml_ops(model: nn.Module, example_inputs, via: str = "export") -> collections.Counter:
    """The MIL op census of ``model`` converted by coremltools (iOS 17 ML program), ``via`` "export" or "trace"."""
    try:
        with _quiet():  # it warns at import of every native library it lacks off macOS
            import coremltools as ct
    except ImportError as e:
        raise InvalidArgumentError(f"the Core ML check needs coremltools: pip install 'fxconv[coreml]' ({e})") from e
    inputs = Example.of(example_inputs)
    if via == "trace" and inputs.kwargs:
        raise InvalidArgumentError("via='trace' takes positional inputs only, as torch.jit.trace does")
    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    with _quiet(), eval_mode(model), torch.no_grad():
        if via == "export":
            source, shapes = torch.export.export(model, inputs.args, inputs.kwargs).run_decompositions({}), None
        elif via == "trace":
            source = torch.jit.trace(model, inputs.args)
            shapes = [ct.TensorType(shape=t.shape) for t in inputs.tensors]
        else:
            raise InvalidArgumentError(f"via must be 'export' or 'trace', got {via!r}")
        ml = ct.convert(source, inputs=shapes, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                        compute_units=ct.ComputeUnit.CPU_ONLY)  # fmt: skip
    return collections.Counter(op.op_type for op in ml._mil_program.functions["main"].operations)


def _op(node) -> str:
    name = str(node.target)
    return name.split(".")[-2] if "." in name else name


def _delegated_or_io(node) -> bool:
    """A call of a lowered delegate, a getitem of its outputs, or the quantize/dequantize at the model's edges."""
    name = str(node.target)
    return "executorch_call_delegate" in name or "getitem" in name or "quantize_per_tensor" in name


@contextlib.contextmanager
def _quiet():
    """The compilers print pages (Vela's summary, coremltools' passes): keep them off the user's terminal."""
    level = logging.root.level
    logging.root.setLevel(logging.ERROR)
    try:
        quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
        with warnings.catch_warnings(), quiet[0], quiet[1]:
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.root.setLevel(level)
