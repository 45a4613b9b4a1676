"""Turn a MODEL argument of the command line into a model: a library name, a factory, or a file.

    torchvision:resnet50 · timm:vit_small_patch16_224 · pkg.nets:Net.from_name('b0') · model.pt2 ·
    a torch.save(model) file (with --allow-pickle only: unpickling runs code stored in it)

Factory calls are parsed with ``ast`` and take Python literals only: nothing the user writes is
evaluated. Every failure is an :class:`InvalidArgumentError` the CLI prints as one line.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.export import ExportedProgram

from ._util import first_line
from .errors import InvalidArgumentError


def load_model(spec: str, state_dict: Path | None, allow_pickle: bool = False) -> nn.Module | ExportedProgram:
    """The model a MODEL argument names (in eval mode), with ``state_dict`` loaded into it if given."""
    if os.getcwd() not in sys.path:  # modules and pickled classes import from where the user stands
        sys.path.insert(0, os.getcwd())
    library, _, name = spec.partition(":")
    if library in _LIBRARIES and name:
        model = _LIBRARIES[library](name)
    elif Path(spec).is_file() and spec.endswith(".pt2"):
        if state_dict is not None:
            raise InvalidArgumentError(
                f"{spec} is an ExportedProgram: its weights are in it, --state-dict does not apply"
            )
        try:
            return torch.export.load(spec)  # the safe format: no code runs; fixed to the mode it was saved in
        except Exception as e:
            raise InvalidArgumentError(f"cannot load {spec} with torch.export.load: {first_line(e)}") from e
    elif Path(spec).is_file():
        model = _pickled_model(spec, allow_pickle)
    else:  # package.module:callable (the command line refused a spec that is none of these, before torch)
        model = _factory_model(spec)
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
        raise InvalidArgumentError("torchvision is not installed: pip install 'fxconv[vision]'") from e
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise InvalidArgumentError(f"unknown torchvision model {name!r}{_did_you_mean(name, names)} "
                                   "(torchvision.models.list_models() lists its classification models)")
    return torchvision.models.get_model(name, weights=None)


def _timm_model(name: str) -> nn.Module:
    try:
        import timm
    except ImportError as e:
        raise InvalidArgumentError("timm is not installed: pip install 'fxconv[timm]'") from e
    if not timm.is_model(name):
        raise InvalidArgumentError(
            f"unknown timm model {name!r}{_did_you_mean(name, timm.list_models())} (timm.list_models() lists them)"
        )
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
        where = f"{e.filename}:{e.lineno}"
        raise InvalidArgumentError(f"cannot import {module_name!r}: syntax error in {where}: {e.msg}") from e
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


def model_dtype(model: nn.Module | ExportedProgram) -> torch.dtype:
    """The dtype the model computes in: that of its first floating-point parameter or buffer."""
    tensors = model.state_dict().values() if isinstance(model, nn.Module) else model.state_dict.values()
    return next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)


def _did_you_mean(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f": did you mean {' or '.join(map(repr, close))}?" if close else ""
