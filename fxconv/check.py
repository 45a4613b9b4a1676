"""Prove an ONNX file equal to its reference model in a runtime, and describe ONNX files.

``check_onnx`` validates the file (``onnx.checker`` with ``full_check=True``), opens it in onnxruntime
(CPU) or OpenVINO (CPU, f32 precision: on CPUs with AMX OpenVINO would otherwise compute in bf16), and
runs file and reference on random inputs shaped like the example at several batch sizes, one of them
unlike the example's (which proves the batch is really dynamic).

Tolerance. A dot product of K terms carries a rounding error of about sqrt(K)·eps of its terms'
magnitude, and a runtime sums in another order than PyTorch: a 25k-wide head (VGG's fc6) differs by
~1e-6 of the output's scale in float32, more than an absolute 1e-5 on large logits. Randomly initialised
deep models reach logits of 1e9, where elementwise tolerances fail on the small entries. So each output
is judged against its own scale: ``|file - torch| <= atol + rtol · max|torch|``, with (rtol, atol) =
(1e-4, 1e-5) for float32 inputs — ten times the rounding seen on the zoo — and (1e-2, 1e-3) for float16,
whose eps is 2^-10 (unconverted float16 files differ from PyTorch by ~5e-4 of the scale). A wrong weight
layout is off by the order of the output itself in every dtype.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_ir as ir
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from .errors import InvalidArgumentError, OnnxError, first_line
from .options import RUNTIMES

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.export import ExportedProgram

__all__ = ["OnnxCheck", "Session", "check_onnx", "load_onnx", "op_census", "open_session", "runtime_refusal",
           "save_proto", "tolerance"]

_TOLERANCES = {"float16": (1e-2, 1e-3), "bfloat16": (5e-2, 1e-2)}  # (rtol, atol); else float32's
RTOL, ATOL = 1e-4, 1e-5
# The metadata key of the batches a file's graph holds for, where they are bounded ("1 <= batch <= 63":
# a branch on the batch in the model): an ONNX dim has no range, and the check stays inside it.
BATCH_RANGE = "fxconv.batch_range"
PROTOBUF_LIMIT = 2**31 - 2**20  # bytes of weights that would take a one-file model past protobuf's 2 GB (less room)


def tolerance(dtype) -> tuple[float, float]:
    """(rtol, atol) for outputs computed from inputs of ``dtype``, a torch or NumPy dtype (see the module
    docstring)."""
    return _TOLERANCES.get(_dtype_name(dtype), (RTOL, ATOL))


def _dtype_name(dtype) -> str:
    """'float16' for torch.float16 and np.float16 alike: the ONNX path runs without torch."""
    return str(dtype).removeprefix("torch.")


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
    runtime: str = "onnxruntime"

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        return (
            f"{self.runtime} check {verdict}: max abs diff {self.max_abs_diff:.3g}, max rel diff "
            f"{self.max_rel_diff:.3g} (tolerance {self.atol:g} + {self.rtol:g}·scale) at batch sizes "
            f"{', '.join(map(str, self.batch_sizes))}"
        )


def load_onnx(path: str | os.PathLike, *, weights: bool = True) -> onnx.ModelProto:
    """Load and fully check an ONNX file; an OnnxError says what is wrong with it. ``weights=False`` leaves
    weights kept in a ``.data`` file beside it there (the graph, its dtypes and shapes are read; the bytes
    of a large model are not held twice)."""
    path = Path(path)
    if not path.is_file():
        raise OnnxError(f"no ONNX file at {path}")
    try:
        model = onnx.load(path, format="protobuf", load_external_data=False)  # protobuf whatever the name
    except Exception as e:
        raise OnnxError(f"{path} is not a valid ONNX model: {first_line(e)}") from e
    data = {ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)}
    missing = sorted(name for name in data if not (path.parent / name).is_file())
    if missing:
        raise OnnxError(f"{path} keeps its weights in {', '.join(missing)}, which is not beside it (in "
                        f"{path.resolve().parent}): copy the file's .data with it")
    try:
        # Checked by path: the checker reads the weights from disk itself, where a proto holding them all could
        # not be handed to it past protobuf's 2 GB ("Failed to serialize proto").
        onnx.checker.check_model(str(path), full_check=True)
        if weights:
            onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as e:
        raise OnnxError(f"{path} is not a valid ONNX model: {first_line(e)}") from e
    return model


def _weights_beside(model: onnx.ModelProto) -> bool:
    """Whether the file's weights are kept in a ``.data`` file beside it (external data)."""
    return any(uses_external_data(t) for t in model.graph.initializer)


def save_proto(model: onnx.ModelProto | ir.Model, path: str | os.PathLike) -> None:
    """Save a model as one file, or — where its weights would take one file past protobuf's 2 GB — with them
    beside it in ``<name>.data``. ``model`` is left as it was (onnx.save's ``save_as_external_data`` moves
    the weights out of the proto it is given; onnx_ir writes them from where they are)."""
    model = model if isinstance(model, ir.Model) else ir.from_proto(model)  # the tensors are not copied
    weights = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    external = f"{Path(path).name}.data" if weights >= PROTOBUF_LIMIT else None
    ir.save(model, path, format="protobuf", external_data=external)


def without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new ModelProto of ``model`` with each float initializer's bytes left out (its name, type and dims
    kept, said to be external data, which shape inference never loads), but for the smallest. Made without
    copying the weights, and without serialising a proto protobuf cannot past 2 GB. Integer tensors stay:
    inference reads their values (a shape, Swin's table of relative positions that a Gather indexes)."""
    outline = onnx.ModelProto()
    _copy_fields(model, outline, but="graph")
    _copy_fields(model.graph, outline.graph, but="initializer")
    for tensor in model.graph.initializer:
        if tensor.ByteSize() < 2**10 or tensor.data_type not in _FLOATS:
            outline.graph.initializer.append(tensor)
        else:
            stub = outline.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
            stub.data_location = onnx.TensorProto.EXTERNAL
            stub.external_data.add(key="location", value="left-out")
    return outline


_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}


def _copy_fields(source, into, but: str) -> None:
    """Copy every set field of a protobuf message but one (which is not copied at all)."""
    for descriptor, value in source.ListFields():
        if descriptor.name == but:
            continue
        if hasattr(value, "extend"):  # a repeated field
            getattr(into, descriptor.name).extend(value)
        elif descriptor.message_type is not None:
            getattr(into, descriptor.name).CopyFrom(value)
        else:
            setattr(into, descriptor.name, value)


def op_census(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the model's graph (and its local functions) hold."""
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    return dict(sorted(Counter(n.op_type for n in nodes).items()))


@dataclass
class Session:
    """An ONNX file opened in a runtime: its declared inputs, and a call from arrays to output arrays."""

    runtime: str
    inputs: list[tuple[str, list[int | str | None]]]  # (name, dims); a free dim is a str or None
    run: Callable[[list[np.ndarray]], list[np.ndarray]]


# Every op that multiplies by a matrix: float, and the quantised forms (QOperator files, int4 weights).
PRODUCTS = frozenset({"Gemm", "MatMul", "QGemm", "QLinearMatMul", "MatMulInteger", "MatMulNBits", "FusedMatMul"})


def weight_products(model: onnx.ModelProto) -> int:
    """How many matrix products of the graph read a weight — an initializer, or a value computed from
    initializers alone (a QDQ file's DequantizeLinear of an int8 weight, a transposed weight): the
    Linears still in the file."""
    constants = {i.name for i in model.graph.initializer}
    count = 0
    for n in model.graph.node:  # in topological order, as ONNX requires
        inputs = [i for i in n.input if i]
        if n.op_type == "Constant" or (inputs and all(i in constants for i in inputs)):
            constants.update(n.output)
        elif n.op_type in PRODUCTS and any(i in constants for i in inputs):
            count += 1
    return count


def open_session(
    path: str | os.PathLike, runtime: str = "onnxruntime", *, threads: int | None = None, lean: bool = False
) -> Session:
    """Open an ONNX file on the CPU of ``runtime`` ("onnxruntime" or "openvino", computing in f32).

    ``lean`` (onnxruntime): without the layout pass of its highest optimisation level, which copies every
    convolution weight into a blocked layout (NCHWc) and so holds a large model's weights twice; the check
    opens a file that keeps its weights beside it (over 2 GB) so, and its weights stay memory-mapped."""
    if runtime not in RUNTIMES:
        raise InvalidArgumentError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    try:
        if runtime == "openvino":
            return _openvino(str(path), threads)
        return _onnxruntime(str(path), threads, lean)
    except ImportError as e:
        raise InvalidArgumentError(f"{runtime} is not installed: pip install 'fxconv[{runtime}]'") from e
    except Exception as e:
        raise OnnxError(f"{runtime} cannot load {path}: {first_line(e)}") from e


def runtime_refusal(dtypes: set, runtime: str) -> str | None:
    """Why ``runtime`` cannot run a converted model computing in these (torch or NumPy) dtypes, with the
    way out; or None."""
    if runtime == "onnxruntime" and "float64" in {_dtype_name(d) for d in dtypes}:
        return (
            "onnxruntime has no float64 (double) Conv kernel, so a float64 model with convolutions cannot run "
            "there; convert a float32 copy (model.float(), float32 example inputs), or check with OpenVINO"
        )
    return None


def _file_dtypes(model: onnx.ModelProto) -> set[str]:
    """The names of a model's input and initializer dtypes ('float32', 'int64', ...)."""
    types = [v.type.tensor_type.elem_type for v in model.graph.input] + [i.data_type for i in model.graph.initializer]
    return {str(onnx.helper.tensor_dtype_to_np_dtype(t)) for t in types if t}


def _onnxruntime(path: str, threads: int | None, lean: bool) -> Session:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if lean:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # onnxruntime reads a file named *.json as a JSON model and *.ort as its own format, whatever it holds:
    # an ONNX file under such a name is handed over as bytes (one over 2 GB, with external data, cannot be).
    source = Path(path).read_bytes() if str(path).lower().endswith((".json", ".ort")) else path
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return Session(
        "onnxruntime",
        [(i.name, list(i.shape)) for i in session.get_inputs()],
        lambda arrays: session.run(None, dict(zip(names, arrays))),
    )


def _openvino(path: str, threads: int | None) -> Session:
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "f32"}  # not bf16 on AMX CPUs: the check compares with f32 PyTorch
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(path, "CPU", config)
    request = compiled.create_infer_request()

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        results = request.infer(arrays)
        return [np.asarray(results[port]) for port in compiled.outputs]

    dims = [[d.get_length() if d.is_static else None for d in port.get_partial_shape()] for port in compiled.inputs]
    return Session("openvino", [(port.get_any_name(), d) for port, d in zip(compiled.inputs, dims)], run)


def check_onnx(
    path: str | os.PathLike,
    reference: nn.Module | ExportedProgram | str | os.PathLike | onnx.ModelProto,
    example_inputs: torch.Tensor | np.ndarray | tuple | None = None,
    *,
    runtime: str = "onnxruntime",
    batch_sizes: tuple[int, ...] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
) -> OnnxCheck:
    """Run the ONNX file in ``runtime`` and ``reference`` on the same random inputs; compare.

    ``reference`` is a PyTorch model (run in eval mode) or another ONNX file — a path or a ModelProto,
    run in the same runtime (as when proving ``convert_onnx``'s output equal to its input; torch is not
    needed then). ``example_inputs`` are NumPy arrays, or tensors as :func:`fxconv.convert` takes them (a
    tuple, a dict of keyword inputs, nests): the file is fed their tensors in order, and a PyTorch reference
    is called with them as the example passes them. Without them they are made from the reference file's
    declared input shapes and types, which must be static but for the batch.
    ``batch_sizes`` defaults to 1 and one size larger than the example's batch (the file's own batch if
    it is static). ``rtol``/``atol`` default to the example's dtype (:func:`tolerance`). A missing,
    corrupt or interface-mismatched file, or one the runtime cannot run (float64 convolutions in
    onnxruntime), raises :class:`OnnxError`; differing numbers give ``passed=False``.
    """
    return check_loaded(path, load_onnx(path, weights=False), reference, example_inputs, runtime=runtime,
                        batch_sizes=batch_sizes, rtol=rtol, atol=atol, seed=seed)  # fmt: skip


def check_loaded(path, model: onnx.ModelProto, reference, example_inputs, *, runtime: str = "onnxruntime",
                 batch_sizes=None, rtol=None, atol=None, seed: int = 0) -> OnnxCheck:  # fmt: skip
    """:func:`check_onnx` of the file at ``path`` whose graph ``load_onnx(path, weights=False)`` read already
    (``model``): a caller that reads the file itself does not load and check it twice."""
    with contextlib.ExitStack() as stack:
        run_reference, reference_file = _reference(reference, example_inputs, runtime, stack)
        if example_inputs is None:
            if reference_file is None:
                raise InvalidArgumentError("check_onnx needs example_inputs to run a PyTorch reference model")
            example = _declared_example(reference_file)
        else:
            example = _arrays(example_inputs)
        return _compare(path, model, run_reference, example, runtime, batch_sizes, rtol, atol, seed)


def _arrays(example_inputs) -> tuple[np.ndarray, ...]:
    """The example's tensors as NumPy arrays: arrays, or tensors as ``convert`` takes them (a tuple, a dict
    of keyword inputs, nests of them)."""
    given = _torch_example(example_inputs)
    if given is not None:
        return tuple(t.detach().cpu().numpy() for t in given.tensors)
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not inputs or not all(isinstance(a, np.ndarray) for a in inputs):
        kinds = ", ".join(type(t).__name__ for t in inputs) or "nothing"
        raise InvalidArgumentError(f"example_inputs must be tensors or arrays, or a tuple of them, got {kinds}")
    return tuple(inputs)


def _torch_example(example_inputs):
    """The example as an ``fxconv._util.Example`` where it holds torch tensors, else None (NumPy arrays,
    or nothing: torch is imported only where a tensor can exist)."""
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if "torch" not in sys.modules or example_inputs is None or all(isinstance(a, np.ndarray) for a in inputs):
        return None
    from ._util import Example

    return Example.of(example_inputs)


Run = Callable[[tuple[np.ndarray, ...]], list[np.ndarray]]


def _reference(
    reference, example_inputs, runtime: str, stack: contextlib.ExitStack
) -> tuple[Run, onnx.ModelProto | None]:
    """(a call from input arrays to output arrays, the reference's ModelProto if it is a file, else None)."""
    run_module = _torch_reference(reference, example_inputs)
    if run_module is not None:
        return run_module, None
    if isinstance(reference, onnx.ModelProto):
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="fxconv-reference-"))
        model, reference = reference, Path(folder) / "reference.onnx"
        save_proto(model, reference)
    elif isinstance(reference, (str, os.PathLike)):
        model = load_onnx(reference, weights=False)
    else:
        raise InvalidArgumentError(
            f"reference must be an nn.Module, an ExportedProgram or an ONNX file, not {type(reference).__name__}"
        )
    session = open_session(reference, runtime, lean=_weights_beside(model))
    return (lambda inputs: session.run(list(inputs))), model


def _torch_reference(reference, example_inputs) -> Run | None:
    """A call running a PyTorch reference (in eval mode) on arrays, which it passes as the example passes its
    tensors (by position, by keyword, in dicts); None if ``reference`` is none."""
    torch = sys.modules.get("torch")  # a PyTorch model exists only where torch was imported
    if torch is None:
        return None
    if isinstance(reference, torch.export.ExportedProgram):
        reference = reference.module()
    if not isinstance(reference, torch.nn.Module):
        return None
    from ._util import Example, buffers_kept, eval_mode

    given = _torch_example(example_inputs)
    if given is not None:
        given = given.bound(reference)

    def run(inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        tensors = [torch.from_numpy(a) for a in inputs]
        call = given.with_tensors(tensors) if given is not None else Example(tuple(tensors))
        with torch.no_grad(), eval_mode(reference), buffers_kept(reference):  # the check steps no cache
            outputs = _tensors(call.call(reference), torch)
        return [t.detach().to(torch.float64).numpy() for t in outputs]

    return run


def declared_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph's inputs a caller feeds: not the initializers that files of IR version < 4 list as inputs."""
    initializers = {i.name for i in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def _declared_example(model: onnx.ModelProto) -> tuple[np.ndarray, ...]:
    """Zeros shaped as the model's declared inputs (a free batch dim as 1); an error if other dims are free."""
    arrays = []
    for value in declared_inputs(model):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        if None in dims[1:] or not dims:
            raise InvalidArgumentError(
                f"input {value.name!r} of the reference file has free dims {dims} beyond the batch: pass example_inputs"
            )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        arrays.append(np.zeros([dims[0] or 1, *dims[1:]], dtype))
    return tuple(arrays)


def _larger(model: onnx.ModelProto, batch: int) -> int:
    """A batch larger than the example's (and than 1), within the file's batch range if it has one."""
    bounds = {p.key: p.value for p in model.metadata_props}.get(BATCH_RANGE, "")
    upper = bounds.rpartition("<= ")[2]
    return min(max(batch, 2) + 1, int(upper)) if upper.isdigit() else max(batch, 2) + 1


def _compare(path, model, run_reference: Run, example, runtime, batch_sizes, rtol, atol, seed) -> OnnxCheck:
    floats = [a.dtype for a in example if np.issubdtype(a.dtype, np.floating)]
    default_rtol, default_atol = max((tolerance(d) for d in floats), default=(RTOL, ATOL))
    rtol, atol = default_rtol if rtol is None else rtol, default_atol if atol is None else atol
    ops = op_census(model)
    refusal = runtime_refusal(_file_dtypes(model), runtime) if "Conv" in ops else None
    if refusal:
        raise OnnxError(f"{path}: {refusal}")
    session = open_session(path, runtime, lean=_weights_beside(model))
    _check_interface(session, example, path)
    static = session.inputs[0][1][0]
    sizes = batch_sizes or ((static,) if isinstance(static, int) else (1, _larger(model, example[0].shape[0])))
    generator = np.random.default_rng(seed)
    max_abs = max_rel = 0.0
    passed = True
    for n in sizes:
        inputs = tuple(_random_like(a, n, generator) for a in example)
        want = run_reference(inputs)
        got = session.run(list(inputs))
        if len(got) != len(want):
            raise OnnxError(f"{path} has {len(got)} outputs, the reference model returns {len(want)}")
        for g, w in zip(got, want):
            w = np.asarray(w, np.float64)
            if g.shape != w.shape:
                raise OnnxError(f"{path} gives an output of shape {g.shape} where the reference gives {w.shape}")
            diff = float(np.abs(g.astype(np.float64) - w).max(initial=0.0))
            scale = float(np.abs(w).max(initial=0.0))
            max_abs = max(max_abs, diff)
            max_rel = max(max_rel, diff / scale if scale else diff)
            passed &= diff <= atol + rtol * scale
    outputs = [tuple(g.shape) for g in got]
    return OnnxCheck(passed, max_abs, max_rel, ops, tuple(sizes), rtol, atol, outputs, runtime)


def _check_interface(session: Session, example: tuple[np.ndarray, ...], path) -> None:
    """The file takes as many inputs as the example, of the same rank and fixed dims."""
    if len(session.inputs) != len(example):
        raise OnnxError(f"{path} takes {len(session.inputs)} inputs, the example has {len(example)}")
    for (name, shape), a in zip(session.inputs, example):
        fixed = all(not isinstance(d, int) or d == s for d, s in zip(shape[1:], a.shape[1:]))
        if len(shape) != a.ndim or not fixed:
            raise OnnxError(
                f"{path} expects input {name!r} of shape {shape}, the example is {tuple(a.shape)}: "
                "the file does not belong to this reference model"
            )


def _random_like(a: np.ndarray, batch: int, generator: np.random.Generator) -> np.ndarray:
    """A random array shaped like ``a`` with another batch size (integer inputs repeat a's rows)."""
    shape = (batch, *a.shape[1:])
    if np.issubdtype(a.dtype, np.floating):
        return generator.standard_normal(shape).astype(a.dtype)
    return a[np.arange(batch) % a.shape[0]]


def _tensors(output, torch) -> list:
    """The tensors of a model's output, in the order the exporter lays them out (None and plain values, which
    an ONNX file does not return, left out)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if not isinstance(output, (list, tuple)):
        return []
    return [t for item in output for t in _tensors(item, torch)]
