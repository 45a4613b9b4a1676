"""fxconv: turn the Linear layers fed by a flattened feature map into convolutions, provably equal.

>>> import fxconv
>>> module, report = fxconv.convert(model, torch.randn(2, 3, 224, 224))   # doctest: +SKIP
"""

from .convert import METHODS, ConvertResult, convert
from .errors import (
    ExampleInputError,
    FxconvError,
    InvalidArgumentError,
    NotConvertibleError,
    OnnxError,
    TraceError,
)
from .report import Converted, Frozen, Report, Skipped

__all__ = [
    "METHODS",
    "ConvertResult",
    "Converted",
    "ExampleInputError",
    "Frozen",
    "FxconvError",
    "InvalidArgumentError",
    "NotConvertibleError",
    "OnnxError",
    "Report",
    "Skipped",
    "TraceError",
    "convert",
]
