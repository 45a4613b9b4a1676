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
import json
import logging
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from . import __version__
from .errors import FxconvError, InvalidArgumentError
from .options import (
    CAPTURES,
    DEPLOYMENTS,
    DEVICES,
    LAYOUTS,
    METHODS,
    OLDEST_OPSET,
    PRECISIONS,
    RUNTIMES,
    SCOPES,
    TARGETS,
)  # fmt: skip

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
    c.add_argument("-o", "--output", required=True, type=Path, metavar="OUT",
                   help="the file to write, its kind by its suffix: .onnx (any target), .mlpackage (a Core ML ML "
                   "program, --target coreml), .pte (an ExecuTorch program for Arm Ethos-U, --target ethos-u)")
    c.add_argument("--input-shape", metavar="N,C,H,W",
                   help="example input shape (default 1,3,224,224; a .pt2 file's own; 1,32 token ids for a "
                   "Hugging Face text model or a model that starts with an Embedding; a Whisper encoder's mel "
                   "frames from its config; for an .onnx MODEL, its declared input shape)")
    c.add_argument("--input", action="append", metavar="[NAME=]SHAPE[:DTYPE[:LOW,HIGH]]",
                   help="an example input, repeated for each: by position, or by NAME as a keyword; its dtype "
                   "(default the model's) and range of values; or NAME=FILE.npy / FILE.pt, its values "
                   "(e.g. --input input_ids=1,64:int64:0,32000 --input attention_mask=1,64:int64:1,1)")
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
    c.add_argument("--dense", action="store_true",
                   help=".onnx: fully convolutional, (N, classes, h, w) on larger inputs")
    c.add_argument("--report", type=Path, metavar="REPORT.json", help="also write everything printed as JSON")
    c.add_argument("--batch", type=_positive, metavar="N", help=".onnx: fix the file's batch size (default: dynamic)")
    c.add_argument("--opset", type=int, metavar="N", help=".onnx: ONNX opset, 13 or later (default 20)")
    c.add_argument("--runtime", choices=RUNTIMES, help=".onnx: what checks the file (default onnxruntime)")
    c.add_argument("--no-check", action="store_true", help=".onnx: skip the comparison of the file with the original")
    c.add_argument("--device", choices=DEVICES, help=".pte: the Ethos-U configuration Vela compiles for "
                   "(default ethos-u55-128)")
    c.add_argument("--calibration", type=Path, metavar="DATA",
                   help=".pte: the inputs that set the int8 scales: a .npy, .npz or .pt file of inputs stacked on "
                   "the first axis, or a folder of them (default: 4 random inputs in the example's ranges, with a "
                   "warning)")
    c.add_argument("--deployment", choices=DEPLOYMENTS,
                   help=".mlpackage: the minimum deployment target (default iOS17)")
    c.add_argument("--precision", choices=PRECISIONS, help=".mlpackage: the compute precision (default float16)")
    c.add_argument("--no-verify", action="store_true",
                   help="skip the comparison of the converted model with the original before it is written "
                   "(a model too large to run twice); the report then says NOT VERIFIED")
    c.add_argument("--state-dict", type=Path, metavar="WEIGHTS.pt", help="load these weights into the model first")
    c.add_argument("--allow-pickle", action="store_true",
                   help="load a torch.save(model) file, which runs code stored in it: only for files you trust")
    c.add_argument("--strict", action="store_true", help="exit 1 and write nothing if any Linear is left alone")
    c.add_argument("--force", action="store_true", help="replace OUT / REPORT.json if they exist")
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
        with _Interrupts(), warnings.catch_warnings(), _progress_shown():
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
    """``fxconv.ship`` with the command line's inputs, progress and exit codes: refusals first, then the
    model loaded, converted, written, proven."""
    from .artifacts import check_writable, plan  # torch is not imported: the refusals come at once

    _check_distinct(args)
    _check_before_torch(args)
    options = _artifact_options(args)
    plan(args.output, args.model, args.target, args.force, options)  # the suffix, options, compilers, the output
    if args.report:
        check_writable(args.report, args.force)
    from .artifacts import ship
    from .errors import NotConvertibleError, VerificationError
    from .report import versions

    timings = _Timings(started)
    onnx_input = args.model.lower().endswith(".onnx")
    model, example, shape = (_onnx_model if onnx_input else _pytorch_model)(args, timings)
    if args.calibration is not None:
        from .artifacts.calibration import load_calibration

        options["calibration"] = load_calibration(args.calibration, example)
    try:
        shipped = ship(
            model, example, args.output, target=args.target, method=args.method, scope=args.scope, layout=args.layout,
            capture=args.capture, approximate=args.approximate, strict=args.strict, verify=not args.no_verify,
            # In place: the model is the command line's own, and the result's convolutions read its weights rather
            # than a copy's (one copy of the weights fewer); the model's own forward is untouched, so it stays the
            # reference the self-check and the artifact's proof compare with.
            inplace=not onnx_input, force=args.force, progress=lambda what, key: _step(what, key, timings), **options,
        )
    except NotConvertibleError as e:
        if not (args.strict and hasattr(e, "report")):
            raise
        print(_as_flags(str(e.report)))
        print(f"fxconv: --strict: {len(e.report.skipped)} Linear left alone; nothing was written", file=sys.stderr)
        return EXIT_CHECK_FAILED
    except VerificationError as e:
        if not hasattr(e, "shipped"):
            raise
        shipped = e.shipped
    print(_as_flags(str(shipped)))
    if not shipped.report.converted:
        print("fxconv: note: no Linear was converted; the file holds the model as it was", file=sys.stderr)
    timings["total"] = time.perf_counter() - timings.started
    print(f"timings: {', '.join(f'{k} {v:.1f} s' for k, v in timings.items())}")
    if args.report:
        document = {"model": args.model, "input_shape": shape, **shipped.to_dict(), "timings_s": timings,
                    "versions": versions()}  # fmt: skip
        _write_json(args.report, document)
        print(f"wrote the report {args.report}")
    if shipped.path is None:
        print(f"fxconv: the proof failed; {args.output} was not written", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print(f"wrote {args.output}" + (" (not checked: --no-check)" if args.no_check else ""))
    return EXIT_OK


def _artifact_options(args: argparse.Namespace) -> dict:
    """The options of the file's kind the user gave (``fxconv.ship``'s keywords): one not for that kind of file
    is refused by ``plan``."""
    given = {"batch": args.batch, "opset": args.opset, "runtime": args.runtime, "check": False if args.no_check
             else None, "dense": args.dense or None, "device": args.device, "calibration": args.calibration,
             "deployment": args.deployment, "precision": args.precision}  # fmt: skip
    return {name: value for name, value in given.items() if value is not None}


def _pytorch_model(args: argparse.Namespace, timings: _Timings):
    """The model MODEL names, and its example inputs."""
    from ._inputs import example_from, parse_shape  # here, not at the top: `fxconv --help` without torch
    from ._load import example_input, load_model, model_dtype
    from .check import runtime_refusal

    shape = parse_shape(args.input_shape) if args.input_shape else None
    with _step("loading the model", "load", timings):
        model = load_model(args.model, args.state_dict, args.allow_pickle)
        dtype = model_dtype(model)
        refusal = None if args.no_check or args.output.suffix.lower() != ".onnx" else \
            runtime_refusal({dtype}, args.runtime or "onnxruntime")
        if refusal:
            raise InvalidArgumentError(f"the model is {dtype}: {refusal}")
        if not args.input:
            _refuse_several_inputs(model)
        example = example_from(args.input, model) if args.input else example_input(model, shape)
    tensors = example.tensors if args.input else [example]
    return model, example, [list(t.shape) for t in tensors] if len(tensors) > 1 else list(tensors[0].shape)


def _refuse_several_inputs(model) -> None:
    """A model whose forward needs more than one input cannot be given one example shape: say which --input
    flags describe it."""
    import inspect

    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return
    needed = [p.name for p in parameters if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
              p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]  # fmt: skip
    if len(needed) > 1:
        flags = " ".join(f"--input {name}=SHAPE" for name in needed)
        raise InvalidArgumentError(f"the model's forward takes {len(needed)} inputs ({', '.join(needed)}): describe "
                                   f"each with {flags} (SHAPE[:DTYPE[:LOW,HIGH]], or a .npy file)")  # fmt: skip


def _onnx_model(args: argparse.Namespace, timings: _Timings):
    """The ONNX file MODEL names (read by the conversion), and an example where --input-shape gives one: for
    files whose declared inputs have free dims beyond the batch (the check draws the values)."""
    if not args.input_shape:
        return args.model, None, None
    import numpy as np
    import onnx

    from ._inputs import parse_shape
    from .check import declared_inputs, load_onnx

    shape = list(parse_shape(args.input_shape))
    declared = declared_inputs(load_onnx(args.model, weights=False))[0].type.tensor_type.elem_type
    return args.model, np.zeros(shape, onnx.helper.tensor_dtype_to_np_dtype(declared)), shape


_OPTIONS = [  # the Python API's spelling of an option in a message, and the command line's
    (re.compile(r"\s*\(CLI: [^)]*\)"), ""),  # "approximate=True (CLI: --approximate)" says it once
    (re.compile(r"\(model\.config\.use_cache = False\)"),
     "(add use_cache=False to the model's keywords: \"transformers:CLASS(..., use_cache=False)\")"),
    (re.compile(r"\bcheck= is for"), "--no-check is for"),
    (re.compile(r"\b(\w+)= is for"), r"--\1 is for"),  # an artifact's option given for another kind of file
    (re.compile(r"\b(method|scope|layout|target|capture|runtime|device|deployment|precision)=['\"]([\w-]+)['\"]"),
     r"--\1 \2"),
    (re.compile(r"\b(approximate|dense|strict)=True\b"), r"--\1"),
    (re.compile(r"\b(batch|opset)=(\d+)\b"), r"--\1 \2"),
]


def _as_flags(text: str) -> str:
    """A message of the library as the command line says it: ``scope='all'`` as ``--scope all``."""
    for pattern, flag in _OPTIONS:
        text = pattern.sub(flag, text)
    return text


def _check_before_torch(args: argparse.Namespace) -> None:
    """Refuse what can be refused before torch is imported (seconds, far more on a loaded machine): a
    shape that is none, an opset fxconv does not write, a model file that is not there, and options an
    ONNX input does not take."""
    from ._inputs import parse_input, parse_shape

    if args.input_shape is not None and args.input:
        raise InvalidArgumentError("--input-shape and --input both describe the inputs: give one (--input N,C,H,W "
                                   "is --input-shape N,C,H,W)")  # fmt: skip
    if args.input_shape is not None:
        parse_shape(args.input_shape)
    args.input = [parse_input(text) for text in args.input or ()]
    if args.input and args.model.lower().endswith(".onnx"):
        raise InvalidArgumentError("--input: an ONNX file's inputs are the ones it declares (--input-shape gives "
                                   "the shape of one whose dims are free beyond the batch)")  # fmt: skip
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
    with _heartbeat(what, start):
        yield
    _Interrupts.raise_if_seen()
    timings[key] = time.perf_counter() - start
    print(f"    done in {timings[key]:.1f} s", file=sys.stderr, flush=True)


HEARTBEAT_S = 30.0  # how often a running step says it still runs


@contextlib.contextmanager
def _heartbeat(what: str, start: float):
    """A step of minutes (a 0.5B decoder's export) says it is alive: every HEARTBEAT_S seconds, for how long."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            print(f"    ... still {what}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    thread = threading.Thread(target=beat, name="fxconv-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def _progress_shown():
    """fxconv's progress messages (the exporter's stages: ``fxconv.export``) as indented lines on stderr."""
    logger = logging.getLogger("fxconv")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("    %(message)s"))
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


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
