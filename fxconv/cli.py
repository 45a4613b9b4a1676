"""The ``fxconv`` command line: convert a model to a checked ONNX file in one line, or inspect a file.

    fxconv convert torchvision:resnet50 -o resnet50.onnx
    fxconv convert mypkg.models:make_net --input-shape 1,3,96,96 --method 1x1 -o net.onnx --report r.json
    fxconv convert "efficientnet_pytorch:EfficientNet.from_name('efficientnet-b0')" -o b0.onnx
    fxconv convert timm:resnet18 -o r18.onnx;  fxconv convert model.pt2 -o model.onnx
    fxconv convert "transformers:BertModel(num_hidden_layers=2)" --scope all -o bert.onnx   # random init from a config
    fxconv convert vendor_int8.onnx -o vendor_int8_conv.onnx   # an ONNX file's Gemm/MatMul Linears (float or QDQ)
    fxconv inspect resnet50.onnx

    fxconv convert torchvision:alexnet --batch 1 --opset 13 --runtime openvino -o alexnet_npu.onnx
    fxconv convert timm:vit_small_patch16_224 --scope all -o vit.onnx   # every Linear, not just the head

Exit codes: 0 success, 1 the check failed (or ``--strict`` found a Linear left alone), 2 bad usage or
input, 130 interrupted, 141 the output's reader went away (``fxconv inspect FILE | head``), as shells
say. Errors are one line on stderr (``--debug`` shows the traceback). The output appears only once it is
complete and checked; an existing file is never replaced unless ``--force`` is given. torch is imported
only once a command runs: ``fxconv --help`` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .errors import FxconvError, InvalidArgumentError
from .options import CAPTURES, LAYOUTS, METHODS, OLDEST_OPSET, RUNTIMES, SCOPES, TARGETS

if TYPE_CHECKING:
    import onnx

    from .report import Report

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 130, 141  # 128 + SIGINT, SIGPIPE


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line and exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"fxconv: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fxconv", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Rewrite a model's Linear layers as the convolutions they are, export ONNX, and check the "
        "file against the original.",
        epilog="examples:\n"
        "  fxconv convert torchvision:resnet18 -o resnet18.onnx\n"
        "  fxconv convert timm:vit_small_patch16_224 --scope all -o vit.onnx\n"
        "  fxconv convert \"transformers:BertModel(num_hidden_layers=2)\" --scope all -o bert.onnx\n"
        "  fxconv convert mypkg.models:make_net --input-shape 1,3,96,96 --target ethos-u -o net.onnx\n"
        "  fxconv convert vendor_int8.onnx -o vendor_int8_conv.onnx\n"
        "  fxconv inspect resnet18.onnx\n"
        "more: fxconv convert --help",
    )
    parser.add_argument("--version", action="version", version=f"fxconv {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = commands.add_parser("convert", help="convert a model and write a checked ONNX file")
    c.add_argument(
        "model", metavar="MODEL",
        help="torchvision:NAME, timm:NAME (both with keyword literals: NAME(num_classes=10)), "
        "transformers:CLASS(config fields) or transformers:CLASS('config.json'), package.module:Factory(args) "
        "(literal arguments, dotted names), a torch.export.save file (.pt2), a torch.save(model) file, or an "
        "ONNX file (.onnx) to rewrite",
    )
    c.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.onnx", help="the ONNX file to write")
    c.add_argument("--input-shape", metavar="N,C,H,W",
                   help="example input shape (default 1,3,224,224; a .pt2 file's own; 1,32 token ids for a "
                   "Hugging Face text model; for an .onnx MODEL, its declared input shape)")
    c.add_argument("--target", default="onnxruntime", choices=TARGETS,
                   help="the compiler the file is for: its measured choices of method, scope and layout "
                   "(default onnxruntime)")
    c.add_argument("--method", choices=METHODS, help="how a head reads its map (default: the target's; kernel)")
    c.add_argument("--scope", choices=SCOPES,
                   help="heads: Linears fed by a flattened or pooled map; all: every Linear, as 1x1 convolutions "
                   "on (N, C, 1, L) tokens and NCHW maps (default: the target's; heads)")
    c.add_argument("--layout", choices=LAYOUTS, help="where the batch goes in the head (default: the target's; folded)")
    c.add_argument("--capture", default="auto", choices=CAPTURES,
                   help="symbolic_trace (fx), torch.export with a dynamic batch (export) or at the example's "
                   "batch (static), or auto (default): the first faithful one, static only where dynamic fails")
    c.add_argument("--approximate", action="store_true",
                   help="with --dense: accept global pools inside the backbone (squeeze-and-excitation)")
    c.add_argument("--dense", action="store_true", help="fully convolutional: (N, classes, h, w) on larger inputs")
    c.add_argument("--report", type=Path, metavar="REPORT.json", help="also write everything printed as JSON")
    c.add_argument("--batch", type=_positive, metavar="N", help="fix the file's batch size (default: dynamic)")
    c.add_argument("--opset", type=int, metavar="N", help="ONNX opset, 13 or later (default: the exporter's, 20)")
    c.add_argument("--runtime", default="onnxruntime", choices=RUNTIMES,
                   help="what checks the file (default onnxruntime)")
    c.add_argument("--no-check", action="store_true", help="skip the comparison of the file with the original")
    c.add_argument("--no-verify", action="store_true",
                   help="skip the comparison of the converted model with the original before it is written "
                   "(a model too large to run twice); the report then says NOT VERIFIED")
    c.add_argument("--state-dict", type=Path, metavar="WEIGHTS.pt", help="load these weights into the model first")
    c.add_argument("--allow-pickle", action="store_true",
                   help="load a torch.save(model) file, which runs code stored in it: only for files you trust")
    c.add_argument("--strict", action="store_true", help="exit 1 and write nothing if any Linear is left alone")
    c.add_argument("--force", action="store_true", help="replace OUT.onnx / REPORT.json if they exist")
    c.add_argument("--debug", action="store_true", help="show tracebacks")

    i = commands.add_parser("inspect", help="print an ONNX file's op census, inputs, outputs and size")
    i.add_argument("file", type=Path, metavar="FILE.onnx")
    i.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as the command line says things: one line, in its flags (``--scope all``), no source path."""
    text = _as_flags(" ".join(str(message).split()))
    print(f"fxconv: warning: {text}", file=sys.stderr if file is None else file)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def run() -> None:
    """The ``fxconv`` console script and ``python -m fxconv``: :func:`main`, then exit with its code."""
    _Interrupts.last = True  # the process ends with this run: Ctrl-C pressed again must not kill it by SIGINT
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    """The command line, as a function: parse ``argv``, run the command, return the exit code."""
    started = time.perf_counter()
    args = _parser().parse_args(argv)
    try:
        with _Interrupts(), warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return _convert(args, started) if args.command == "convert" else _inspect(args)
    except KeyboardInterrupt:  # the staging folders are context managers: nothing is left behind
        print("fxconv: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # ``fxconv inspect FILE | head``: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit stays quiet
        return EXIT_PIPE
    except Exception as e:
        if args.debug:
            raise
        kind = "" if isinstance(e, FxconvError) else f"unexpected {type(e).__name__}: "
        message = _as_flags(" ".join(str(e).split())) or type(e).__name__
        print(f"fxconv: error: {kind}{message}", file=sys.stderr)
        return EXIT_USAGE


# -- convert -------------------------------------------------------------------------------------


def _convert(args: argparse.Namespace, started: float) -> int:
    _check_distinct(args)
    for path in filter(None, (args.output, args.report)):
        _check_writable(path, args.force)
    _check_before_torch(args)
    if args.output.suffix.lower() != ".onnx":
        print(f"fxconv: warning: -o {args.output} does not end in .onnx; it is written as an ONNX file all the same",
              file=sys.stderr)
    if not args.no_check and importlib.util.find_spec(args.runtime) is None:
        raise InvalidArgumentError(
            f"--runtime {args.runtime}: it is not installed (pip install 'fxconv[{args.runtime}]')"
        )
    from .check import check_onnx, load_onnx, op_census, weight_products
    from .report import versions

    timings = _Timings(started)
    source = (_from_onnx if args.model.lower().endswith(".onnx") else _from_pytorch)(args, timings)
    report = source.report
    print(_as_flags(str(report)))
    if args.strict and report.skipped:
        print(f"fxconv: --strict: {len(report.skipped)} Linear left alone; nothing was written", file=sys.stderr)
        return EXIT_CHECK_FAILED
    if not report.converted:
        print("fxconv: note: no Linear was converted; the file will hold the model as it was", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix=".fxconv-", dir=args.output.parent) as staging:
        staged = Path(staging) / args.output.name
        with _step(*source.writing, timings):
            source.write(staged)
        written_model = load_onnx(staged, weights=False)
        ops, products = op_census(written_model), weight_products(written_model)
        print(_census_table(written_model, report, ops, products))
        check = None
        if not args.no_check:
            with _step(f"checking with {args.runtime} against {source.reference_name}", "check", timings):
                check = check_onnx(staged, source.reference, source.example, runtime=args.runtime)
            print(check)
        written = check is None or check.passed
        _Interrupts.raise_if_seen()
        if written:
            _check_writable(args.output, args.force)  # again: the file may have appeared meanwhile
            if Path(f"{staged}.data").exists():  # external weights first: the model never names a missing file
                os.replace(f"{staged}.data", f"{args.output}.data")
            os.replace(staged, args.output)
    timings["total"] = time.perf_counter() - timings.started
    print(f"timings: {', '.join(f'{k} {v:.1f} s' for k, v in timings.items())}")

    if args.report:
        document = {
            "model": args.model,
            "input_shape": source.input_shape,
            "output": str(args.output) if written else None,
            **report.to_dict(),
            "onnx": {"batch": args.batch, "opset": written_model.opset_import[0].version, "ops": ops,
                     "weight_products": products},
            "check": None if check is None else vars(check),
            "timings_s": timings,
            "versions": versions(),
        }
        _write_json(args.report, document)
        print(f"wrote the report {args.report}")
    if not written:
        print(f"fxconv: the check failed; {args.output} was not written", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print(f"wrote {args.output}" + (" (not checked: --no-check)" if check is None else ""))
    return EXIT_OK


@dataclass
class _Source:
    """A converted model, ready to be written and checked."""

    report: Report
    write: Callable[[Path], object]  # writes the ONNX file at the given path
    writing: tuple[str, str]  # what writing it is, for people; its name in the timings
    reference: object  # what the check runs it against
    reference_name: str
    example: object  # the check's example inputs (None: from the reference file's declared shapes)
    input_shape: list[int] | None


def _from_pytorch(args: argparse.Namespace, timings: _Timings) -> _Source:
    """Load a PyTorch model and convert it (``write`` then exports it)."""
    shape = _parse_shape(args.input_shape) if args.input_shape else None
    from ._convert import convert  # imported here, not at the top: `fxconv --help` answers without torch
    from ._load import example_input, load_model, model_dtype
    from .check import runtime_refusal
    from .export import export_onnx

    with _step("loading the model", "load", timings):
        model = load_model(args.model, args.state_dict, args.allow_pickle)
        dtype = model_dtype(model)
        refusal = None if args.no_check else runtime_refusal({dtype}, args.runtime)
        if refusal:
            raise InvalidArgumentError(f"the model is {dtype}: {refusal}")
        example = example_input(model, shape)
    with _step("tracing and converting", "convert", timings):
        # In place: the model is the command line's own, and the result's convolutions read its weights rather
        # than a copy's (one copy of the weights fewer); the model's own forward is untouched, so it stays the
        # reference the self-check and the file's check compare with.
        module, report = convert(
            model, example, args.method, scope=args.scope, layout=args.layout, target=args.target, dense=args.dense,
            approximate=args.approximate, capture=args.capture, verify=not args.no_verify, inplace=True,
        )
    # A dense file answers (N, K, h, w): it is checked against the dense PyTorch model, whose output at
    # the example's size convert() proves equal to the original's logits.
    reference, name = (module, "the dense PyTorch model") if args.dense else (model, "the original")
    def write(path: Path) -> None:
        export_onnx(module, example, path, batch=args.batch, opset=args.opset, dynamic_spatial=args.dense)

    writing = ("exporting the converted model to ONNX", "export")
    return _Source(report, write, writing, reference, name, example, list(example.shape))


def _from_onnx(args: argparse.Namespace, timings: _Timings) -> _Source:
    """Convert an ONNX file (never modified; ``write`` saves the result)."""
    import onnx

    from .check import declared_inputs, load_onnx, save_proto
    from .onnx.convert import convert_onnx

    with _step("loading the ONNX file", "load", timings):
        original = load_onnx(args.model)
    with _step("converting", "convert", timings):
        converted, report = convert_onnx(
            original, args.method, scope=args.scope, layout=args.layout, target=args.target, verify=not args.no_verify
        )
    shape = list(_parse_shape(args.input_shape)) if args.input_shape else None
    example = None
    if shape:  # for files whose declared inputs have free dims beyond the batch (the check draws the values)
        import numpy as np

        declared = declared_inputs(original)[0].type.tensor_type.elem_type
        example = np.zeros(shape, onnx.helper.tensor_dtype_to_np_dtype(declared))

    def write(path: Path) -> None:
        save_proto(converted, path)

    reference_name = f"the original {args.model}"
    writing = ("writing the converted ONNX file", "write")
    return _Source(report, write, writing, args.model, reference_name, example, shape)


_OPTIONS = [  # the Python API's spelling of an option in a message, and the command line's
    (re.compile(r"\s*\(CLI: [^)]*\)"), ""),  # "approximate=True (CLI: --approximate)" says it once
    (re.compile(r"\b(method|scope|layout|target|capture|runtime)=['\"]([\w-]+)['\"]"), r"--\1 \2"),
    (re.compile(r"\b(approximate|dense|strict)=True\b"), r"--\1"),
    (re.compile(r"\b(batch|opset)=(\d+)\b"), r"--\1 \2"),
]


def _as_flags(text: str) -> str:
    """A message of the library as the command line says it: ``scope='all'`` as ``--scope all``."""
    for pattern, flag in _OPTIONS:
        text = pattern.sub(flag, text)
    return text


def _parse_shape(text: str) -> tuple[int, ...]:
    """'1,3,224,224' -> (1, 3, 224, 224); a shape whose float32 example alone would not fit in this machine's
    memory is refused before anything is allocated."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) < 1:
        raise InvalidArgumentError(f"--input-shape {text!r} is not a shape like 1,3,224,224")
    size, memory = math.prod(shape) * 4, _memory()
    if memory and size > memory:
        raise InvalidArgumentError(f"--input-shape {text}: one example is {_bytes(size)} of float32, more than this "
                                   f"machine's {_bytes(memory)} of memory")  # fmt: skip
    return shape


def _memory() -> int:
    """This machine's physical memory in bytes (0 where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0


def _bytes(n: float) -> str:
    """1.2 GiB, 18.2 TiB: a size for people, in the units ``inspect`` prints."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _check_before_torch(args: argparse.Namespace) -> None:
    """Refuse what can be refused before torch is imported (seconds, far more on a loaded machine): a
    shape that is none, an opset fxconv does not write, a model file that is not there, and options an
    ONNX input does not take."""
    if args.input_shape is not None:
        _parse_shape(args.input_shape)
    if ":" not in args.model and not Path(args.model).is_file():
        raise InvalidArgumentError(f"MODEL {args.model!r} is neither torchvision:NAME, timm:NAME, transformers:CLASS, "
                                   "package.module:callable, nor an existing file")
    if args.model.lower().endswith(".onnx"):
        given = {"--batch": args.batch, "--opset": args.opset, "--dense": args.dense,
                 "--approximate": args.approximate, "--state-dict": args.state_dict,
                 "--allow-pickle": args.allow_pickle, "--capture": args.capture != "auto"}  # fmt: skip
        wrong = [option for option, value in given.items() if value]
        if wrong:
            raise InvalidArgumentError(
                f"{', '.join(wrong)}: not for an ONNX input, whose batch, opset and graph the conversion keeps"
            )
    elif args.opset is not None:
        import onnx  # the opsets fxconv writes: OLDEST_OPSET to this onnx's newest (fxconv.export.OPSETS)

        newest = onnx.defs.onnx_opset_version()
        if not OLDEST_OPSET <= args.opset <= newest:
            raise InvalidArgumentError(f"--opset {args.opset}: fxconv writes opsets {OLDEST_OPSET} to {newest}")


def _check_distinct(args: argparse.Namespace) -> None:
    """Refuse, before any work, two of MODEL, -o and --report that name one file (links and ``..`` resolved):
    the later write would replace the earlier one, or the input, with --force too."""
    named = {"-o": args.output, "--report": args.report}
    if Path(args.model).exists():
        named = {"MODEL": Path(args.model), **named}
    seen: dict[Path, str] = {}
    for option, path in named.items():
        if path is None:
            continue
        key = (path.stat().st_dev, path.stat().st_ino) if path.is_file() else path.resolve()  # hard links too
        if key in seen:
            raise InvalidArgumentError(f"{seen[key]} and {option} both name {path}: give each its own file")
        seen[key] = option


def _check_writable(path: Path, force: bool) -> None:
    """Refuse, before any work, an output whose folder is missing or cannot be written in, or that exists
    (unless forced)."""
    if path.is_dir():
        raise InvalidArgumentError(f"{path} is a directory: name the file to write, e.g. {path / 'model.onnx'}")
    if not path.parent.is_dir():
        raise InvalidArgumentError(f"cannot write {path}: directory {path.parent} does not exist")
    if path.exists() and not force:
        raise InvalidArgumentError(f"{path} exists; pass --force to replace it")
    try:  # what the write will do: a staging file beside the output (permissions, a read-only file system)
        with tempfile.TemporaryFile(prefix=".fxconv-", dir=path.parent):
            pass
    except OSError as e:
        raise InvalidArgumentError(f"cannot write {path}: {e.strerror or e} in {path.parent}") from None


class _Timings(dict):
    """Each step's seconds by name (the first step also records the start-up before it), and when the
    command started."""

    def __init__(self, started: float):
        super().__init__()
        self.started = started


@contextlib.contextmanager
def _step(what: str, key: str, timings: _Timings):
    """Say on stderr that a step is running, and how long it took once done. The first step also
    records the start-up before it: importing fxconv, and torch for a PyTorch model."""
    timings.setdefault("start-up", time.perf_counter() - timings.started)
    print(f"... {what}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    _Interrupts.raise_if_seen()
    timings[key] = time.perf_counter() - start
    print(f"    done in {timings[key]:.1f} s", file=sys.stderr, flush=True)


class _Interrupts:
    """Ctrl-C raises KeyboardInterrupt as usual, and is also remembered, so that nothing can let the run
    go on: every step ends by raising it again, and nothing is written after an interrupt.

    Three ways it could otherwise be lost: a library that catches the exception mid-step; a signal that
    lands in a ``__del__`` or a callback, where Python prints "Exception ignored in ..." with a traceback
    and goes on (those reports are dropped here: the run stops anyway); and a parent process that ignores
    SIGINT (pytest-xdist workers, nohup), whose children inherit SIG_IGN and would never see Ctrl-C.
    Pressed again, Ctrl-C is ignored: a second KeyboardInterrupt could cut the clean-up of a staging
    folder short, or (as Python shuts down, which takes a while with torch loaded) turn exit code 130
    into death by SIGINT.
    """

    seen = False
    last = False  # the process ends after this run (the console script): later presses stay ignored

    def __enter__(self):
        type(self).seen = False
        self.previous = signal.signal(signal.SIGINT, self._handle) if _main_thread() else None
        self.previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN if self.seen and self.last else self.previous)
        sys.unraisablehook = self.previous_hook

    def _unraisable(self, report) -> None:
        if not isinstance(report.exc_value, KeyboardInterrupt):
            self.previous_hook(report)

    @classmethod
    def _handle(cls, signum, frame):
        if cls.seen:  # pressed again: the run is already stopping, and its clean-up must not be cut short
            return
        cls.seen = True
        raise KeyboardInterrupt

    @classmethod
    def raise_if_seen(cls) -> None:
        if cls.seen:
            raise KeyboardInterrupt


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # signals can only be set there


def _census_table(model: onnx.ModelProto, report: Report, ops: dict[str, int], products: int) -> str:
    """The file's op counts, each figure read from the file: the Convs and Gemms that read a converted
    Linear's weight (by its name, which the export keeps) are marked, and the matrix products still reading
    a weight counted (``check.weight_products``: quantised forms too).

    The original model is not exported for a comparison (that would double the export time).
    """
    from .check import PRODUCTS

    names = {c.name.split(" (call ")[0] for c in report.converted}
    weights = names | {f"{name}.weight" for name in names}
    reading: dict[str, int] = {}
    for node in model.graph.node:
        if len(node.input) > 1 and (node.input[1] in weights or node.input[0] in weights):
            reading[node.op_type] = reading.get(node.op_type, 0) + 1
    lines = [f"  {'ONNX op':<24}{'count':>7}"]
    for op, n in ops.items():
        note = ""
        if op == "Conv" and reading.get(op):
            note = f"   <- {reading[op]} replace Linears"
        elif op in PRODUCTS and reading.get(op):
            note = f"   <- {reading[op]} Linears re-laid, not made convolutions (channels-last)"
        lines.append(f"  {op:<24}{n:>7}{note}")
    lines.append(f"  Gemm/MatMul reading a weight: {products}")
    return "\n".join(lines)


def _write_json(path: Path, document: dict) -> None:
    """Write JSON atomically (a temporary file beside it, then a rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's file is private (0600): the mode any new file gets, as the ONNX file
    with os.fdopen(fd, "w") as f:
        json.dump(document, f, indent=2, default=str)
    os.replace(tmp, path)


# -- inspect -------------------------------------------------------------------------------------


def _inspect(args: argparse.Namespace) -> int:
    from .check import declared_inputs, load_onnx, op_census

    model = load_onnx(args.file, weights=False)
    graph = model.graph
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    print(f"{args.file}: opsets {opsets}")
    inputs = declared_inputs(model)
    for title, values in (("inputs", inputs), ("outputs", graph.output)):
        print(f"{title}:")
        for v in values:
            dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            print(f"  {v.name}: {_dtype(v.type.tensor_type.elem_type)} [{', '.join(map(str, dims))}]")
    count = sum(math.prod(i.dims) for i in graph.initializer)
    size = sum(math.prod(i.dims) * _itemsize(i.data_type) for i in graph.initializer)
    print(f"parameters: {count:,} in {len(graph.initializer)} initializers ({size / 2**20:.1f} MiB)")
    print("ops:")
    for op, n in op_census(model).items():
        print(f"  {op:<24}{n:>6}")
    return EXIT_OK


def _dtype(elem_type: int) -> str:
    import onnx

    return onnx.TensorProto.DataType.Name(elem_type).lower()


def _itemsize(data_type: int) -> int:
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize


if __name__ == "__main__":
    run()
