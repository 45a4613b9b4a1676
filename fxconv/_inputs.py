"""The command line's example inputs: ``--input`` specs, read before torch is imported, made into an example.

    --input 1,3,224,224                      one positional input, random, in the model's dtype
    --input input_ids=1,64:int64:0,32000     a keyword input: shape, dtype, range of values (LOW,HIGH inclusive)
    --input a=1,8 --input b=1,8              two inputs, by name
    --input mask=1,64:bool                   a boolean mask (random)
    --input features=mel.npy                 values from a file (.npy, or .pt holding one tensor)

Inputs without a name are passed by position, in order, then the named ones by keyword. Floats are drawn
from a normal distribution, or uniformly within LOW,HIGH; integers uniformly within LOW,HIGH — by default
below the vocabulary of the Embedding that reads the model's input where there is one, else 0..9.
``--input-shape N,C,H,W`` is ``--input N,C,H,W``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidArgumentError

DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
_INTEGERS_BELOW = 10  # an integer input's values without a range or an Embedding to read them: 0..9
_SPEC = re.compile(r"^(?:(?P<name>[A-Za-z_]\w*)=)?(?P<source>.+)$")


@dataclass(frozen=True)
class InputSpec:
    """One ``--input``: its name (None: by position), and either a file or a shape with a dtype and range."""

    text: str
    name: str | None
    shape: tuple[int, ...] = ()
    dtype: str | None = None  # None: the model's own (floating) dtype
    low: float | None = None
    high: float | None = None
    file: Path | None = None


def parse_input(text: str, option: str = "--input") -> InputSpec:
    """An ``--input`` spec read, or refused with what is wrong with it (torch is not imported)."""
    match = _SPEC.match(text.strip())
    name, source = (match.group("name"), match.group("source")) if match else (None, text)
    if Path(source).suffix.lower() in (".npy", ".pt"):
        if not Path(source).is_file():
            raise InvalidArgumentError(f"{option} {text}: no file {source}")
        return InputSpec(text, name, file=Path(source))
    shape_text, dtype, bounds = (source.split(":") + [None, None])[:3]
    shape = parse_shape(shape_text, f"{option} {text}")
    if dtype is not None and dtype not in DTYPES:
        raise InvalidArgumentError(f"{option} {text}: unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    low = high = None
    if bounds is not None:
        try:
            low, high = (float(b) for b in bounds.split(","))
        except ValueError:
            raise InvalidArgumentError(f"{option} {text}: the range {bounds!r} is not LOW,HIGH (0,32000)") from None
        if low > high:
            raise InvalidArgumentError(f"{option} {text}: the range {bounds} runs from high to low")
    return InputSpec(text, name, shape, dtype, low, high)


def parse_shape(text: str, option: str = "--input-shape") -> tuple[int, ...]:
    """'1,3,224,224' -> (1, 3, 224, 224); a shape whose float32 example alone would not fit in this machine's
    memory is refused before anything is allocated."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) < 1 or min(shape) < 1:
        raise InvalidArgumentError(f"{option}: {text!r} is not a shape like 1,3,224,224")
    size, memory = math.prod(shape) * 4, _memory()
    if memory and size > memory:
        raise InvalidArgumentError(f"{option}: one example of {text} is {_bytes(size)} of float32, more than this "
                                   f"machine's {_bytes(memory)} of memory")  # fmt: skip
    return shape


def example_from(specs: list[InputSpec], model):
    """The example the specs describe, for ``model`` (an ``fxconv._util.Example``)."""
    import torch

    from ._load import model_dtype
    from ._util import Example

    generator = torch.Generator().manual_seed(0)
    vocabulary = embedding_size(model)
    args, kwargs = [], {}
    for spec in specs:
        value = _tensor(spec, model_dtype(model), vocabulary, generator)
        if spec.name is None:
            if kwargs:
                raise InvalidArgumentError(f"--input {spec.text}: inputs by position come before those by name")
            args.append(value)
        elif spec.name in kwargs:
            raise InvalidArgumentError(f"--input {spec.text}: {spec.name} is given twice")
        else:
            kwargs[spec.name] = value
    return Example(tuple(args), kwargs)


def _tensor(spec: InputSpec, model_dtype, vocabulary: int | None, generator):
    import numpy as np
    import torch

    if spec.file is not None:
        try:
            value = (torch.load(spec.file, weights_only=True) if spec.file.suffix.lower() == ".pt"
                     else torch.from_numpy(np.load(spec.file, allow_pickle=False)))  # fmt: skip
        except Exception as e:
            raise InvalidArgumentError(f"--input {spec.text}: cannot read it ({type(e).__name__}: {e})") from None
        if not isinstance(value, torch.Tensor):
            raise InvalidArgumentError(f"--input {spec.text}: {spec.file} holds a {type(value).__name__}, not a tensor")
        return value.to(model_dtype) if value.is_floating_point() else value
    dtype = getattr(torch, spec.dtype) if spec.dtype else model_dtype
    if dtype == torch.bool:
        return torch.rand(spec.shape, generator=generator) < 0.5
    if dtype.is_floating_point:
        if spec.low is None:
            return torch.randn(spec.shape, generator=generator, dtype=torch.float32).to(dtype)
        return (torch.rand(spec.shape, generator=generator) * (spec.high - spec.low) + spec.low).to(dtype)
    low, high = (int(spec.low), int(spec.high)) if spec.low is not None else (0, (vocabulary or _INTEGERS_BELOW) - 1)
    return torch.randint(low, high + 1, spec.shape, generator=generator, dtype=dtype)


def embedding_size(model) -> int | None:
    """How many rows the Embedding that reads the model's input has — the first Embedding the model holds,
    where no layer with weights comes before it — else None."""
    from torch import nn

    if not isinstance(model, nn.Module):
        return None
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            return module.num_embeddings
        if any(True for _ in module.parameters(recurse=False)):
            return None
    return None


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
