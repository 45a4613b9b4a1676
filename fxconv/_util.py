"""Small helpers shared by fxconv's modules."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map, tree_map_only

from .errors import InvalidArgumentError

PLAIN = (type(None), bool, int, float, str)  # values a call may take beside its tensors (flags, sizes)


@dataclass(frozen=True)
class Example:
    """Example inputs as a call takes them: positional ``args`` and keyword ``kwargs``, each a tensor or a
    nest of them (dicts, lists, tuples: pytrees, as torch.export takes them) or a plain value (a flag).

    ``Example.of`` reads what a user passes as ``example_inputs``: a tensor, a tuple of positional inputs,
    or a dict of keyword inputs (``model(**inputs)``, as a tokenizer's output is passed).
    """

    args: tuple
    kwargs: dict = field(default_factory=dict)

    @classmethod
    def of(cls, example_inputs) -> Example:
        if isinstance(example_inputs, Example):
            return example_inputs
        if isinstance(example_inputs, Mapping):
            example = cls((), dict(example_inputs))
        else:
            example = cls(tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,))
        leaves = tree_leaves((example.args, example.kwargs))
        odd = [type(v).__name__ for v in leaves if not isinstance(v, (torch.Tensor, *PLAIN))]
        if odd or not any(isinstance(v, torch.Tensor) for v in leaves):
            kinds = ", ".join(odd) or "no tensor"
            raise InvalidArgumentError(
                "example_inputs must be a tensor, a tuple of inputs or a dict of keyword inputs (tensors, or "
                f"dicts, lists and tuples of them), got {kinds}"
            )
        return example

    @property
    def tensors(self) -> list[torch.Tensor]:
        """The tensors, in the order torch.export and the ONNX exporter flatten them (the file's inputs)."""
        return [v for v in tree_leaves((self.args, self.kwargs)) if isinstance(v, torch.Tensor)]

    @property
    def batch(self) -> int | None:
        """Dim 0 of the first tensor that has one."""
        return next((t.shape[0] for t in self.tensors if t.dim()), None)

    def map(self, function) -> Example:
        """The example with ``function`` applied to each tensor."""
        args, kwargs = tree_map_only(torch.Tensor, function, (self.args, self.kwargs))
        return Example(args, kwargs)

    def with_tensors(self, tensors) -> Example:
        """The example with its tensors replaced, in order, by ``tensors``."""
        given = iter(tensors)
        return self.map(lambda _: next(given))

    def bound(self, module: nn.Module) -> Example:
        """The same call in the form ``module`` takes it: as its torch.export input spec says (such a module
        takes its inputs only in the form it was captured with), else as its forward's signature takes them
        most plainly — by position where it takes a position, keyword-only parameters by keyword. Unchanged
        where the signature cannot be read or does not take them."""
        try:
            bound = inspect.signature(module.forward).bind(*self.args, **self.kwargs)
        except (TypeError, ValueError):
            return self
        spec = getattr(module, "_in_spec", None)
        if spec is None:
            return Example(bound.args, bound.kwargs)
        args, kwargs = spec.children()
        positional, keywords = args.num_children, kwargs.context
        named = bound.arguments
        return Example(tuple(named.values())[:positional], {k: named[k] for k in keywords if k in named})

    def call(self, function):
        return function(*self.args, **self.kwargs)

    def by_name(self, function, per_tensor) -> dict:
        """``per_tensor(t)`` for each tensor (None for other values), keyed by the parameter of ``function``
        that takes it — the ``dynamic_shapes`` torch.export and the ONNX exporter take for this call (a
        ``*args`` collects its values as a tuple). A TypeError if the signature cannot take the example."""
        bound = inspect.signature(function).bind(*self.args, **self.kwargs).arguments
        return {name: tree_map(lambda v: per_tensor(v) if isinstance(v, torch.Tensor) else None, value)
                for name, value in bound.items()}  # fmt: skip


def batch_of_two(t: torch.Tensor) -> torch.Tensor:
    """An example with batch ≥ 2: torch.export specialises a batch of 1 to a constant."""
    return torch.cat([t, t]) if t.dim() > 0 and t.shape[0] == 1 else t


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """Put ``module`` in eval mode for the duration, then restore each submodule's own flag.

    The flags are set directly: ``ExportedProgram.module()`` refuses ``.eval()``.
    """
    flags = [(m, m.training) for m in module.modules()]
    for m, _ in flags:
        m.training = False
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


@contextlib.contextmanager
def buffers_kept(module: nn.Module):
    """Run ``module`` for the duration with its buffers given back as they were after: fxconv's own runs
    (recording shapes, comparing outputs) must not step a KV cache or a counter the forward updates."""
    saved = [(m, key, b, b.clone()) for m in module.modules() for key, b in m._buffers.items() if b is not None]

    def give_back() -> None:  # also yielded: a caller that runs the module twice starts both from one state
        with torch.no_grad():
            for m, key, b, was in saved:
                m._buffers[key] = b  # a forward may assign its buffer a new tensor (self.h = ...)
                if b.shape != was.shape:  # an observer's empty min/max grows on its first run
                    b.resize_(was.shape)  # (only then: a buffer that requires grad cannot be resized at all)
                b.copy_(was)

    try:
        yield give_back
    finally:
        give_back()


def call_noting_writes(module: nn.Module, example: Example) -> tuple[object, dict[str, torch.Tensor]]:
    """``module`` called on ``example``: its outputs, and the buffers the call wrote — in place (their version
    moved) or assigned anew (``self.h = ...``) — by name."""
    before = {name: (id(b), b._version) for name, b in module.named_buffers()}
    outputs = example.call(module)
    return outputs, {name: b for name, b in module.named_buffers() if before.get(name) != (id(b), b._version)}


@contextlib.contextmanager
def quiet(logger: logging.Logger):
    """``logger``'s warnings dropped for the duration (its errors still show)."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def silenced():
    """The compilers print pages (Vela's summary, coremltools' passes, their warnings at import off macOS):
    kept off the user's terminal for the duration."""
    disabled = logging.root.manager.disable
    logging.disable(logging.WARNING)  # every logger's warnings, whatever its level (torch's set their own)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)
