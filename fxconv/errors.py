"""fxconv's exception types: every error fxconv raises on purpose is an ``FxconvError``.

Each carries a message a user can act on; the CLI prints it as one line.
"""

import re

__all__ = [
    "CompilerError",
    "ExampleInputError",
    "FxconvError",
    "FxconvWarning",
    "InvalidArgumentError",
    "NotConvertibleError",
    "OnnxError",
    "TraceError",
    "VerificationError",
]


class FxconvError(Exception):
    """Base class of fxconv's errors."""


class InvalidArgumentError(FxconvError, ValueError):
    """An argument has the wrong type or value (an unknown method, inputs that are not tensors, ...)."""


class TraceError(FxconvError):
    """torch.fx could not trace the model."""


class ExampleInputError(FxconvError, ValueError):
    """The model rejected the example inputs."""


class NotConvertibleError(FxconvError):
    """A conversion that was asked to be complete (``strict=True``, dense mode) is not. Under ``strict`` its
    ``report`` says what was converted and what was left alone."""


class VerificationError(FxconvError):
    """The converted model does not compute what the model computes: fxconv's self-check (``fxconv.verify``)
    found an output or a written buffer that differs, or a batch where only the model runs; or the file
    ``fxconv.ship`` wrote failed its proof (then its ``shipped`` holds the figures, and nothing was written)."""


class FxconvWarning(UserWarning):
    """A choice fxconv was told to make that its target's compiler was measured to run slower, or a result that
    is not what it will be in use (an int8 program calibrated on random inputs)."""


class CompilerError(FxconvError):
    """A target's compiler (coremltools, ExecuTorch's Arm flow and Vela) failed on a model: the message says
    which model and which compiler."""


class OnnxError(FxconvError):
    """An ONNX file could not be written, read or checked against its reference model."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (torch's errors run to pages, some in colour)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__
