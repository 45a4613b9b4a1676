"""fxconv: turn the Linear layers fed by a flattened feature map into convolutions, provably equal.

>>> import fxconv
>>> module, report = fxconv.convert(model, torch.randn(2, 3, 224, 224))   # doctest: +SKIP

The names below load on first use, so that ``import fxconv`` (and ``fxconv --help``) does not import
torch.
"""

import importlib as _importlib
from importlib import metadata as _metadata

from .errors import (
    CompilerError,
    ExampleInputError,
    FxconvError,
    FxconvWarning,
    InvalidArgumentError,
    NotConvertibleError,
    OnnxError,
    TraceError,
    VerificationError,
)
from .options import CAPTURES, CONV_METHODS, LAYOUTS, METHODS, RUNTIMES, SCOPES, TARGETS
from .report import Converted, Frozen, Report, Skipped, Verification

try:
    __version__ = _metadata.version("fxconv")
except _metadata.PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_LAZY = {  # public name: the module that defines it
    "ConvertResult": "_convert",
    "convert": "_convert",
    "convert_onnx": "onnx.convert",
    "OnnxCheck": "check",
    "check_onnx": "check",
    "load_onnx": "check",
    "op_census": "check",
    "export_onnx": "export",
    "Shipped": "artifacts",
    "ship": "artifacts",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in ("artifacts", "capture", "check", "export"):  # submodules, as `fxconv.check.tolerance`
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fxconv' has no attribute {name!r}")


__all__ = [
    "CAPTURES",
    "CONV_METHODS",
    "LAYOUTS",
    "METHODS",
    "RUNTIMES",
    "SCOPES",
    "TARGETS",
    "CompilerError",
    "ConvertResult",
    "Converted",
    "ExampleInputError",
    "Frozen",
    "FxconvError",
    "FxconvWarning",
    "InvalidArgumentError",
    "NotConvertibleError",
    "OnnxCheck",
    "OnnxError",
    "Report",
    "Shipped",
    "Skipped",
    "TraceError",
    "Verification",
    "VerificationError",
    "check_onnx",
    "convert",
    "convert_onnx",
    "export_onnx",
    "load_onnx",
    "op_census",
    "ship",
]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
