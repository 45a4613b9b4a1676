"""The ``fxconv`` command line: convert a model to a checked ONNX file in one line, or inspect a file.

    fxconv convert torchvision:resnet50 -o resnet50.onnx
    fxconv convert mypkg.models:make_net --input-shape 1,3,96,96 --method 1x1 -o net.onnx --report r.json
    fxconv convert "efficientnet_pytorch:EfficientNet.from_name('efficientnet-b0')" -o b0.onnx
    fxconv convert timm:resnet18 -o r18.onnx;  fxconv convert model.pt2 -o model.onnx
    fxconv inspect resnet50.onnx

Exit codes: 0 success, 1 the onnxruntime check failed (or ``--strict`` found a Linear left alone), 2 bad
usage or input, 130 interrupted. Errors are one line on
stderr (``--debug`` shows the traceback). The output appears only once it is complete and checked; an
existing file is never replaced unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import math
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.export import ExportedProgram

from . import __version__
from ._util import first_line, versions
from .check import check_onnx, load_onnx, op_census
from .convert import CAPTURES, LAYOUTS, METHODS, convert
from .errors import FxconvError, InvalidArgumentError
from .export import export_onnx

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130  # 130: 128 + SIGINT, as shells do


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line and exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"fxconv: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fxconv", description="Rewrite flatten→Linear heads as convolutions, export ONNX, check it.")
    parser.add_argument("--version", action="version", version=f"fxconv {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = commands.add_parser("convert", help="convert a model and write a checked ONNX file")
    c.add_argument(
        "model", metavar="MODEL",
        help="torchvision:NAME, timm:NAME, package.module:Factory(args) (literal arguments, dotted names), "
        "a torch.export.save file (.pt2), or a torch.save(model) file",
    )
    c.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.onnx", help="the ONNX file to write")
    c.add_argument("--input-shape", default="1,3,224,224", metavar="N,C,H,W", help="example input shape (default 1,3,224,224)")
    c.add_argument("--method", default="kernel", choices=METHODS, help="default kernel")
    c.add_argument("--layout", choices=LAYOUTS, help="where the batch goes in the head (default folded)")
    c.add_argument("--capture", default="auto", choices=CAPTURES, help="symbolic_trace (fx), torch.export, or auto (default)")
    c.add_argument("--approximate", action="store_true",
                   help="with --dense: accept global pools inside the backbone (squeeze-and-excitation)")
    c.add_argument("--dense", action="store_true", help="fully convolutional: (N, classes, h, w) on larger inputs")
    c.add_argument("--report", type=Path, metavar="REPORT.json", help="also write everything printed as JSON")
    c.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison with the original")
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fxconv`` console script."""
    args = _parser().parse_args(argv)
    try:
        return _convert(args) if args.command == "convert" else _inspect(args)
    except KeyboardInterrupt:  # the staging folders are context managers: nothing is left behind
        print("fxconv: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if args.debug:
            raise
        kind = "" if isinstance(e, FxconvError) else f"unexpected {type(e).__name__}: "
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"fxconv: error: {kind}{message}", file=sys.stderr)
        return EXIT_USAGE


# -- convert -------------------------------------------------------------------------------------


def _convert(args: argparse.Namespace) -> int:
    shape = _parse_shape(args.input_shape)
    for path in filter(None, (args.output, args.report)):
        _check_writable(path, args.force)

    timings: dict[str, float] = {}
    with _step("loading the model", timings, "load"):
        model = _load_model(args.model, args.state_dict, args.allow_pickle)
        example = torch.randn(shape)
    with _step("tracing and converting", timings, "convert"):
        module, report = convert(model, example, args.method, layout=args.layout, dense=args.dense, approximate=args.approximate, capture=args.capture)
    print(report)
    if not report.converted:
        print("fxconv: note: no Linear was converted; the file will hold the model as it was", file=sys.stderr)
    if args.strict and report.skipped:
        print(f"fxconv: --strict: {len(report.skipped)} Linear left alone; nothing was written", file=sys.stderr)
        return EXIT_CHECK_FAILED

    with tempfile.TemporaryDirectory(prefix=".fxconv-", dir=args.output.parent) as staging:
        staged = Path(staging) / args.output.name
        with _step("exporting the original model to ONNX (for the op census)", timings, "export_original"):
            original_ops = op_census(load_onnx(export_onnx(model, example, Path(staging) / "original.onnx")))
        with _step("exporting the converted model to ONNX", timings, "export"):
            export_onnx(module, example, staged, dynamic_spatial=args.dense)
        converted_ops = op_census(load_onnx(staged))
        print(_census_table(original_ops, converted_ops))
        check = None
        if not args.no_check:
            # A dense file answers (N, K, h, w): it is checked against the dense PyTorch model, whose
            # output at the example's size convert() proves equal to the original's logits.
            reference, name = (module, "the dense PyTorch model") if args.dense else (model, "the original")
            with _step(f"checking with onnxruntime against {name}", timings, "check"):
                check = check_onnx(staged, reference, example)
            print(check)
        written = check is None or check.passed
        if written:
            _check_writable(args.output, args.force)  # again: the file may have appeared meanwhile
            os.replace(staged, args.output)
    print(f"timings: {', '.join(f'{k} {v:.1f} s' for k, v in timings.items())}")

    if args.report:
        document = {
            "model": args.model,
            "input_shape": list(shape),
            "output": str(args.output) if written else None,
            **report.to_dict(),
            "onnx_ops": {"original": original_ops, "converted": converted_ops},
            "check": None if check is None else vars(check),
            "timings_s": timings,
            "versions": versions(),
        }
        _write_json(args.report, document)
    if not written:
        print(f"fxconv: the check failed; {args.output} was not written", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print(f"wrote {args.output}")
    return EXIT_OK


def _parse_shape(text: str) -> tuple[int, ...]:
    """'1,3,224,224' -> (1, 3, 224, 224)."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) < 1:
        raise InvalidArgumentError(f"--input-shape {text!r} is not a shape like 1,3,224,224")
    return shape


def _check_writable(path: Path, force: bool) -> None:
    """Refuse, before any work, an output whose folder is missing or that exists (unless forced)."""
    if path.is_dir():
        raise InvalidArgumentError(f"{path} is a directory: name the file to write, e.g. {path / 'model.onnx'}")
    if not path.parent.is_dir():
        raise InvalidArgumentError(f"cannot write {path}: directory {path.parent} does not exist")
    if path.exists() and not force:
        raise InvalidArgumentError(f"{path} exists; pass --force to replace it")


def _load_model(spec: str, state_dict: Path | None, allow_pickle: bool = False) -> nn.Module | ExportedProgram:
    """The model a MODEL argument names (in eval mode), with ``state_dict`` loaded into it if given."""
    if os.getcwd() not in sys.path:  # modules and pickled classes import from where the user stands
        sys.path.insert(0, os.getcwd())
    library, _, name = spec.partition(":")
    if library in _LIBRARIES and name:
        model = _LIBRARIES[library](name)
    elif Path(spec).is_file() and spec.endswith(".pt2"):
        if state_dict is not None:
            raise InvalidArgumentError(f"{spec} is an ExportedProgram: its weights are in it, --state-dict does not apply")
        try:
            return torch.export.load(spec)  # the safe format: no code runs; fixed to the mode it was saved in
        except Exception as e:
            raise InvalidArgumentError(f"cannot load {spec} with torch.export.load: {first_line(e)}") from e
    elif Path(spec).is_file():
        model = _pickled_model(spec, allow_pickle)
    elif ":" in spec:
        model = _factory_model(spec)
    else:
        raise InvalidArgumentError(
            f"MODEL {spec!r} is neither torchvision:NAME, timm:NAME, package.module:callable, nor an existing file"
        )
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"{spec} gave a {type(model).__name__}, not a torch.nn.Module")
    if state_dict is not None:
        try:
            weights = torch.load(state_dict, map_location="cpu", weights_only=True)
            if isinstance(weights, dict) and isinstance(weights.get("state_dict"), dict):
                weights = weights["state_dict"]  # a training checkpoint: {"state_dict": ..., "epoch": ...}
            model.load_state_dict(weights)
        except Exception as e:
            raise InvalidArgumentError(f"cannot load --state-dict {state_dict}: {e}") from e
    return model.eval()


def _pickled_model(spec: str, allow_pickle: bool) -> nn.Module:
    """A ``torch.save(model)`` file: unpickling runs code from it, so only with ``--allow-pickle``."""
    try:
        torch.load(spec, map_location="cpu", weights_only=True)
    except Exception:
        pass  # not plain tensors: a pickled model (or not a torch file at all)
    else:
        raise InvalidArgumentError(
            f"{spec} holds weights, not a model: name the model (torchvision:NAME, module:Factory) and pass "
            f"this file with --state-dict"
        )
    if not allow_pickle:
        raise InvalidArgumentError(
            f"{spec} is a pickled model: loading it runs code stored in the file. If you trust it, pass "
            "--allow-pickle (safer: torch.export.save a .pt2 file, or a state dict with --state-dict)"
        )
    try:
        return torch.load(spec, map_location="cpu", weights_only=False)
    except Exception as e:
        raise InvalidArgumentError(f"cannot load {spec} with torch.load: {first_line(e)}") from e


def _torchvision_model(name: str) -> nn.Module:
    try:
        import torchvision
    except ImportError as e:
        raise InvalidArgumentError("torchvision is not installed: pip install torchvision") from e
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise InvalidArgumentError(
            f"unknown torchvision model {name!r}; classification models are: {', '.join(names)}"
        )
    return torchvision.models.get_model(name, weights=None)


def _timm_model(name: str) -> nn.Module:
    try:
        import timm
    except ImportError as e:
        raise InvalidArgumentError("timm is not installed: pip install timm") from e
    if not timm.is_model(name):
        raise InvalidArgumentError(f"unknown timm model {name!r} (timm.list_models() lists them)")
    return timm.create_model(name, pretrained=False)


_LIBRARIES = {"torchvision": _torchvision_model, "timm": _timm_model}


def _factory_model(spec: str) -> nn.Module:
    """``package.module:Factory(arg, key=value)`` (dotted attributes, Python literals, no eval), or a
    bare ``package.module:callable`` called without arguments; importable from here or PYTHONPATH."""
    module_name, _, expression = spec.partition(":")
    path, args, kwargs = _parse_call(expression, spec)
    try:
        target = importlib.import_module(module_name)
    except SyntaxError as e:
        raise InvalidArgumentError(f"cannot import {module_name!r}: syntax error in {e.filename}:{e.lineno}: {e.msg}") from e
    except ImportError as e:
        raise InvalidArgumentError(f"cannot import {module_name!r}: {e}") from e
    for i, attr in enumerate(path):
        if not hasattr(target, attr):
            raise InvalidArgumentError(f"module {module_name!r} has no {'.'.join(path[: i + 1])!r}")
        target = getattr(target, attr)
    if isinstance(target, nn.Module) and not (args or kwargs):
        return target
    try:
        return target(*args, **kwargs)
    except Exception as e:
        call = spec if "(" in expression else f"{spec}()"
        raise InvalidArgumentError(f"{call} failed: {type(e).__name__}: {e}") from e


def _parse_call(expression: str, spec: str) -> tuple[list[str], list, dict]:
    """``A.b(1, k='v')`` -> (["A", "b"], [1], {"k": "v"}); arguments must be Python literals."""
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
        call = tree if isinstance(tree, ast.Call) else None
        args = [ast.literal_eval(a) for a in call.args] if call else []
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords} if call else {}
        if call and any(k.arg is None for k in call.keywords):
            raise ValueError("**kwargs")
        path, node = [], call.func if call else tree
        while isinstance(node, ast.Attribute):
            path.insert(0, node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            raise ValueError(ast.dump(node))
        return [node.id, *path], args, kwargs
    except (SyntaxError, ValueError) as e:
        raise InvalidArgumentError(
            f"MODEL {spec!r}: after the ':' write a name, dotted names, or a call with literal arguments, "
            "e.g. models:make_net, pkg.nets:Net.from_name('b0'), pkg.nets:Net(depth=18)"
        ) from e


@contextlib.contextmanager
def _step(what: str, timings: dict[str, float], key: str):
    """Say on stderr that a step is running, and how long it took once done."""
    print(f"... {what}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - start
    print(f"    done in {timings[key]:.1f} s", file=sys.stderr, flush=True)


def _census_table(original: dict[str, int], converted: dict[str, int]) -> str:
    """The op counts of both files side by side; changed rows are marked."""
    lines = [f"  {'ONNX op':<24}{'original':>9}{'converted':>11}"]
    for op in sorted(set(original) | set(converted)):
        a, b = original.get(op, 0), converted.get(op, 0)
        lines.append(f"  {op:<24}{a:>9}{b:>11}{'   <-' if a != b else ''}")
    return "\n".join(lines)


def _write_json(path: Path, document: dict) -> None:
    """Write JSON atomically (a temporary file beside it, then a rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(document, f, indent=2, default=str)
    os.replace(tmp, path)


# -- inspect -------------------------------------------------------------------------------------


def _inspect(args: argparse.Namespace) -> int:
    model = load_onnx(args.file)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    print(f"{args.file}: opsets {opsets}")
    for title, values in (("inputs", [v for v in graph.input if v.name not in initializers]), ("outputs", graph.output)):
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
    sys.exit(main())
