"""The ``.pte`` an Arm Ethos-U device runs — ExecuTorch's Arm flow down to Vela — written, measured and proven.

The flow, as ExecuTorch's Arm examples drive it::

    model ─ torch.export ─ EthosUQuantizer + prepare_pt2e ─ calibration ─ convert_pt2e (int8 Q/DQ program)
          ─ to_edge_transform_and_lower(EthosUPartitioner) ─ each delegated part: TOSA ─ Vela ─▶ .pte

The proof: each delegated part's TOSA program — the bytes Vela compiled, caught on their way to it — runs
in the TOSA reference model (``tosa-tools``: TOSA's int8 semantics, bit-exact, on the CPU) inside the lowered
program, whose ops left on the CPU run in PyTorch; on the example and on fresh inputs its outputs are
compared with the **original** model's quantised program run the same way — the original as the device
would run it. (PyTorch's simulation of the int8 program is no reference: TOSA's integer rescales round
differently, and a ResNet-18 drifts 3 steps from it with no rewrite at all.) The figure is in each output's
quantisation steps, ``max |got − want| / scale``: at most one step passes (the rewrite reorders sums, and a
sum that lands on a rounding boundary may round the other way; any real difference is many steps).

Vela's figures (cycles, every delegated part's, and the ops left outside the NPU) are read for the original
and the converted model side by side, so a user sees the gain — or that there is none.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import glob
import itertools
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .._util import Example, eval_mode, silenced
from ..errors import CompilerError, FxconvError, FxconvWarning, InvalidArgumentError, VerificationError, first_line
from ..options import DEVICES

__all__ = ["MEASURED", "EthosU", "EthosUProof", "ethos_u"]

# The system configuration and memory mode the Targets benchmark measured with; other devices take
# ExecuTorch's defaults for their family.
MEASURED = {
    "ethos-u55-128": ("Ethos_U55_High_End_Embedded", "Shared_Sram"),
    "ethos-u85-256": ("Ethos_U85_SYS_DRAM_Mid", "Dedicated_Sram_384KB"),
}
STEPS = 1.0  # the proof's tolerance, in quantisation steps of each output


@dataclass
class EthosU:
    """What Vela made of a model: its total cycles, and the ops left outside the NPU delegate."""

    device: str
    cycles: int  # Vela's cycles_total, summed over the delegated parts
    outside: list[str] = field(default_factory=list)  # ops that run on the CPU (the input's quantize excluded)
    parts: list[int] = field(default_factory=list)  # each delegated part's cycles, in the order Vela compiled them


@dataclass
class EthosUProof:
    """A ``.pte`` proven: the converted model's TOSA programs, run in the TOSA reference model, beside the
    original model's quantised program; and Vela's figures for both."""

    original: EthosU
    converted: EthosU
    steps: float  # the largest difference from the original's quantised outputs, in quantisation steps
    runs: int  # the input sets compared: the example and fresh ones
    calibration: str  # what the int8 scales were calibrated on

    @property
    def passed(self) -> bool:
        return self.steps <= STEPS

    def __str__(self) -> str:
        o, c = self.original, self.converted
        change = f"{(c.cycles - o.cycles) / o.cycles:+.1%}" if o.cycles else "n/a"
        verdict = "PASSED" if self.passed else "FAILED"
        return "\n".join([
            f"Ethos-U ({c.device}, Vela): {o.cycles:,} cycles original, {c.cycles:,} converted ({change}); "
            f"ops outside the NPU: {_ops(o.outside)} original, {_ops(c.outside)} converted",
            f"TOSA reference model check {verdict}: the int8 program Vela compiled gives the original's int8 "
            f"program's outputs within {self.steps:.2g} quantisation steps (tolerance {STEPS:g}) on {self.runs} "
            f"input sets; calibrated on {self.calibration}",
        ])

    def to_dict(self) -> dict:
        return {"original": vars(self.original), "converted": vars(self.converted), "steps": self.steps,
                "runs": self.runs, "calibration": self.calibration, "passed": self.passed}  # fmt: skip


def _ops(names: list[str]) -> str:
    """``index_select, where ×2``: each op once, with how many there are."""
    counts = collections.Counter(names)
    return ", ".join(f"{op} ×{n}" if n > 1 else op for op, n in counts.items()) or "none"


@dataclass
class _Lowered:
    figures: EthosU
    program: object  # ExecuTorch's EdgeProgramManager, lowered for the device
    tosa: dict[bytes, bytes]  # each delegated part's Vela output -> the TOSA program Vela compiled into it


def ethos_u(model: nn.Module, example_inputs, device: str = "ethos-u55-128", calibration: int = 4) -> EthosU:
    """Vela's figures for ``model`` quantised to int8 (calibrated on ``calibration`` random inputs in the
    example's ranges) and compiled for ``device`` — the Targets benchmark's measure."""
    inputs = Example.of(example_inputs)
    return _lower(model, inputs, device, _draws(inputs, calibration, seed=0)).figures


def write(model, module, example: Example, path: str, *, device: str, calibration: list[Example] | None,
          step) -> EthosUProof:  # fmt: skip
    """Write ``module`` (the conversion of ``model``) for ``device`` as a ``.pte`` at ``path``, and prove it."""
    if calibration is not None:
        told = f"{len(calibration)} given inputs"
    else:
        calibration, told = _draws(example, 4, seed=0), "4 random inputs in the example's ranges (not representative)"
        warnings.warn("the int8 scales are calibrated on 4 random inputs in the example's ranges, not representative "
                      "of real data: give calibration data for a program to ship (ship's calibration=, the command "
                      "line's --calibration DATA)", FxconvWarning, stacklevel=4)  # ship's caller  # fmt: skip
    with step(f"quantising the original and lowering it for {device} (Vela)", "original"):
        original = _lowered(model, "the original", example, device, calibration)
    with step(f"quantising the converted model and lowering it for {device} (Vela)", "lower"):
        converted = _lowered(module, "the converted model", example, device, calibration)
    runs = [example, *_draws(example, 2, seed=1)]
    with step("running its TOSA programs in the TOSA reference model", "prove"):
        scales = _output_scales(converted.program.exported_program())
        steps = max(_steps(_flat(_in_reference(original, run)), _flat(_in_reference(converted, run)), scales)
                    for run in runs)  # fmt: skip
    with step(f"writing the ExecuTorch program {os.path.basename(path)}", "write"):
        with silenced():
            buffer = converted.program.to_executorch().buffer
        with open(path, "wb") as f:
            f.write(buffer)
    return EthosUProof(original.figures, converted.figures, steps, len(runs), told)


def _draws(example: Example, count: int, seed: int) -> list[Example]:
    """``count`` inputs like ``example`` drawn at random in its ranges: each float tensor uniform between its
    least and greatest value, each integer tensor (token ids) between its own."""
    generator = torch.Generator().manual_seed(seed)

    def draw(t: torch.Tensor) -> torch.Tensor:
        low, high = (t.min(), t.max()) if t.numel() else (0, 1)
        if t.is_floating_point():
            return torch.rand(t.shape, generator=generator).to(t.dtype) * (high - low) + low
        if t.dtype == torch.bool:
            return t
        return torch.randint(int(low), int(high) + 1, t.shape, generator=generator, dtype=t.dtype)

    return [example.map(draw) for _ in range(count)]


def _lowered(model, which: str, example: Example, device: str, calibration: list[Example]) -> _Lowered:
    """``_lower``, its failure said as fxconv's: which model, which step of ExecuTorch's flow."""
    try:
        return _lower(model, example, device, calibration)
    except FxconvError:
        raise
    except Exception as e:
        raise CompilerError(f"ExecuTorch's Arm flow failed on {which} for {device}: {type(e).__name__}: "
                            f"{first_line(e)}") from e


def _lower(model, example: Example, device: str, calibration: list[Example]) -> _Lowered:
    """``model`` quantised to int8 on ``calibration`` and lowered for ``device`` through Vela."""
    with silenced():  # torchao and ExecuTorch log warnings as they import
        from executorch.backends.arm.ethosu import EthosUCompileSpec, EthosUPartitioner
        from executorch.backends.arm.quantizer import EthosUQuantizer, get_symmetric_quantization_config
        from executorch.exir import to_edge_transform_and_lower
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if device not in DEVICES:
        raise InvalidArgumentError(f"unknown Ethos-U device {device!r}: choose one of {', '.join(DEVICES)}")
    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    system, memory = MEASURED.get(device, (None, None))
    tosa: dict[bytes, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="fxconv-vela-") as folder, silenced(), _each_part(folder, tosa):
        spec = EthosUCompileSpec(device, system_config=system, memory_mode=memory, extra_flags=["--output-format=raw"])
        quantizer = EthosUQuantizer(spec)
        quantizer.set_global(get_symmetric_quantization_config())
        with eval_mode(model):
            captured = torch.export.export(model, example.args, example.kwargs)
            prepared = prepare_pt2e(captured.module(check_guards=False), quantizer)
        for inputs in calibration:
            inputs.call(prepared)
        quantized = convert_pt2e(prepared)
        program = torch.export.export(quantized, example.args, example.kwargs)
        lowered = to_edge_transform_and_lower(program, partitioner=[EthosUPartitioner(spec)])
        summaries = sorted(glob.glob(f"{folder}/part-*/**/out_summary_*.csv", recursive=True),
                           key=lambda path: int(path.split("part-")[1].split(os.sep)[0]))  # fmt: skip
        parts = [int(float(next(csv.DictReader(open(path)))["cycles_total"])) for path in summaries]
    graph = lowered.exported_program().graph_module.graph
    outside = [_op(n) for n in graph.nodes if n.op == "call_function" and not _delegated_or_io(n)]
    return _Lowered(EthosU(device, sum(parts), outside, parts), lowered, tosa)


@contextlib.contextmanager
def _each_part(folder: str, tosa: dict[bytes, bytes]):
    """Vela run on each delegated part in a folder of its own (``folder/part-0``, ...), and the TOSA program it
    compiled kept by what Vela made of it. ExecuTorch hands every part the one folder the compile spec names,
    where each part's summary overwrote the last: a model with an op left on the CPU between two NPU parts
    was said to cost its last part's cycles only."""
    from executorch.backends.arm.ethosu import backend

    compile_one, parts = backend.vela_compile, itertools.count()

    def compile_part(flatbuffer, *args, intermediate_path=None, **kwargs):
        path = os.path.join(folder, f"part-{next(parts)}")
        os.makedirs(path)
        result = compile_one(flatbuffer, *args, intermediate_path=path, **kwargs)
        tosa[bytes(result.processed_bytes)] = bytes(flatbuffer)
        return result

    backend.vela_compile = compile_part
    try:
        yield
    finally:
        backend.vela_compile = compile_one


class _TosaReference(TorchFunctionMode):
    """Each call of a delegated part run as its TOSA program in the TOSA reference model (as ExecuTorch's Arm
    tests do, ``backends/arm/test/runner_utils.py``); every other op in PyTorch."""

    def __init__(self, tosa: dict[bytes, bytes]):
        super().__init__()
        self.tosa = tosa

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch._higher_order_ops.executorch_call_delegate:
            part, inputs = args[0], args[1:]
            return _run_tosa(self.tosa[bytes(part.processed_bytes)], inputs, part.original_module)
        return func(*args, **(kwargs or {}))


def _in_reference(lowered: _Lowered, inputs: Example):
    with _TosaReference(lowered.tosa), torch.no_grad():
        return inputs.call(lowered.program.exported_program().module())


_NHWC = {4: (0, 2, 3, 1), 5: (0, 1, 3, 4, 2)}  # the dim orders TOSA holds a channels-last tensor in


def _run_tosa(flatbuffer: bytes, inputs, part) -> tuple[torch.Tensor, ...]:
    import tosa_reference_model

    arrays = [(t.permute(_NHWC[t.dim()]) if _channels_last(t) else t).detach().contiguous().numpy() for t in inputs]
    with _native_output_dropped():  # its C++ notes on TOSA versions, on every run
        outputs, status = tosa_reference_model.run(flatbuffer, arrays)
    if status != tosa_reference_model.GraphStatus.TOSA_VALID:
        raise VerificationError(f"the TOSA reference model found the program Vela compiled invalid ({status.name})")
    results = []
    for array, node in zip(outputs, part.graph.output_node().args[0]):
        want = node.meta["val"]
        if _channels_last(want):
            order = _NHWC[want.dim()]
            tensor = torch.from_numpy(array).reshape([want.shape[i] for i in order])
            results.append(tensor.permute([order.index(i) for i in range(want.dim())]).contiguous())
        else:
            results.append(torch.from_numpy(array).reshape(want.shape))
    return tuple(results)


@contextlib.contextmanager
def _native_output_dropped():
    """What native code writes to the process's stdout and stderr, dropped for the duration."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved, devnull = [os.dup(1), os.dup(2)], os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _channels_last(t: torch.Tensor) -> bool:
    return t.dim() in _NHWC and t.dim_order() == _NHWC[t.dim()]


def _output_scales(program) -> list[float | None]:
    """Each output's quantisation step: the scale of the dequantize that makes it (None: not dequantized)."""
    outputs = program.graph_module.graph.output_node().args[0]
    return [float(n.args[1]) if isinstance(n, torch.fx.Node) and "dequantize_per_tensor" in str(n.target) else None
            for n in outputs]  # fmt: skip


def _flat(outputs) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(outputs) if isinstance(t, torch.Tensor)]


def _steps(want: list[torch.Tensor], got: list[torch.Tensor], scales: list[float | None]) -> float:
    """The largest difference of ``got`` from ``want`` in quantisation steps (an output not dequantized must be
    equal: any difference is infinitely many steps)."""
    if len(want) != len(got) or any(w.shape != g.shape for w, g in zip(want, got)):
        return float("inf")
    worst = 0.0
    for w, g, scale in zip(want, got, scales + [None] * len(want)):
        diff = (w.double() - g.double()).abs().max().item() if w.numel() else 0.0
        worst = max(worst, diff / scale if scale else (0.0 if diff == 0 else float("inf")))
    return worst


def _op(node) -> str:
    """An op's name as PyTorch's schema gives it: ``ge``, ``avg_pool2d``."""
    schema = getattr(node.target, "_schema", None)
    if schema is not None:
        return schema.name.split("::")[-1]
    name = str(node.target)
    return name.split(".")[-2] if "." in name else name


def _delegated_or_io(node) -> bool:
    """A call of a lowered delegate, a getitem of its outputs, or the quantize/dequantize at the model's edges."""
    name = str(node.target)
    return "executorch_call_delegate" in name or "getitem" in name or "quantize_per_tensor" in name
