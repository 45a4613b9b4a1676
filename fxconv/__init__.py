"""fxconv: turn the Linear layers fed by a flattened feature map into convolutions, provably equal.

>>> import fxconv
>>> module, report = fxconv.convert(model, torch.randn(2, 3, 224, 224))   # doctest: +SKIP
"""

from importlib import metadata as _metadata

from .check import OnnxCheck, check_onnx, load_onnx, op_census
from .convert import CAPTURES, LAYOUTS, METHODS, ConvertResult, convert
from .errors import (
    ExampleInputError,
    FxconvError,
    InvalidArgumentError,
    NotConvertibleError,
    OnnxError,
    TraceError,
)
from .export import export_onnx
from .report import Converted, Frozen, Report, Skipped

try:
    __version__ = _metadata.version("fxconv")
except _metadata.PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "CAPTURES",
    "LAYOUTS",
    "METHODS",
    "ConvertResult",
    "Converted",
    "ExampleInputError",
    "Frozen",
    "FxconvError",
    "InvalidArgumentError",
    "NotConvertibleError",
    "OnnxCheck",
    "OnnxError",
    "Report",
    "Skipped",
    "TraceError",
    "check_onnx",
    "convert",
    "export_onnx",
    "load_onnx",
    "op_census",
]
