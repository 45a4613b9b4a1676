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
import logging
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.export import ExportedProgram

from ._inputs import embedding_size
from ._util import quiet
from .errors import InvalidArgumentError, first_line

_PYTREE = logging.getLogger("torch.utils._pytree")  # torchao (transformers imports it as a model is built) warns there


def load_model(spec: str, state_dict: Path | None, allow_pickle: bool = False) -> nn.Module | ExportedProgram:
    """The model a MODEL argument names (in eval mode), with ``state_dict`` loaded into it if given."""
    if os.getcwd() not in sys.path:  # modules and pickled classes import from where the user stands
        sys.path.insert(0, os.getcwd())
    library, _, expression = spec.partition(":")
    if library in _LIBRARIES and expression:
        name, paren, call = expression.partition("(")  # a zoo's names hold dashes and dots: not Python
        _, args, kwargs = _parse_call(f"f({call}", spec) if paren else (None, [], {})
        with quiet(_PYTREE):
            model = _LIBRARIES[library](name.strip(), args, kwargs, spec)
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
        _load_weights(model, state_dict, spec)
    return model.eval()


def _load_weights(model: nn.Module, path: Path, spec: str) -> None:
    """Load a state dict (or a training checkpoint's) into ``model``; one that does not fit is refused
    with a summary: how many keys are missing and unexpected, the first of each and of the shapes that
    differ (PyTorch's own message lists every key, kilobytes on one line)."""
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InvalidArgumentError(f"cannot load --state-dict {path}: {first_line(e)}") from e
    if isinstance(weights, dict) and isinstance(weights.get("state_dict"), dict):
        weights = weights["state_dict"]  # a training checkpoint: {"state_dict": ..., "epoch": ...}
    if not isinstance(weights, dict):
        raise InvalidArgumentError(f"--state-dict {path} holds a {type(weights).__name__}, not a state dict")
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    differ = [f"{k} {tuple(weights[k].shape)} in the file, {tuple(own[k].shape)} in the model" for k in own
              if k in weights and isinstance(weights[k], torch.Tensor) and weights[k].shape != own[k].shape]
    problems = [_some(len(keys), what, keys) for keys, what in
                ((missing, "missing"), (unexpected, "unexpected"), (differ, "of another shape")) if keys]
    if problems:
        prefixed = unexpected and all(k.startswith("module.") for k in unexpected)
        hint = " (saved from a DataParallel wrapper: strip the 'module.' prefix)" if prefixed else ""
        raise InvalidArgumentError(
            f"--state-dict {path} does not fit {spec}: {'; '.join(problems)}{hint}. Is this the model these "
            "weights belong to?"
        )
    try:
        model.load_state_dict(weights)
    except Exception as e:
        raise InvalidArgumentError(f"cannot load --state-dict {path}: {first_line(e)}") from e


def _some(count: int, what: str, items: list[str], shown: int = 3) -> str:
    """'12 keys missing: a, b, c and 9 more'."""
    more = f" and {count - shown} more" if count > shown else ""
    return f"{count} key{'s' * (count != 1)} {what}: {', '.join(items[:shown])}{more}"


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


def _torchvision_model(name: str, args: list, kwargs: dict, spec: str) -> nn.Module:
    """``torchvision:resnet18``, ``torchvision:resnet18(num_classes=10)``: random weights."""
    try:
        import torchvision
    except ImportError as e:
        raise InvalidArgumentError("torchvision is not installed: pip install 'fxconv[vision]'") from e
    _keywords_only(args, spec)
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise InvalidArgumentError(f"unknown torchvision model {name!r}{_did_you_mean(name, names)} "
                                   "(torchvision.models.list_models() lists its classification models)")
    return _called(torchvision.models.get_model, spec, name, **{"weights": None, **kwargs})  # weights='DEFAULT' too


def _timm_model(name: str, args: list, kwargs: dict, spec: str) -> nn.Module:
    """``timm:vit_small_patch16_224``, ``timm:resnet18(num_classes=10)``: random weights."""
    try:
        import timm
    except ImportError as e:
        raise InvalidArgumentError("timm is not installed: pip install 'fxconv[timm]'") from e
    _keywords_only(args, spec)
    if not timm.is_model(name):
        raise InvalidArgumentError(
            f"unknown timm model {name!r}{_did_you_mean(name, timm.list_models())} (timm.list_models() lists them)"
        )
    return _called(timm.create_model, spec, name, **{"pretrained": False, **kwargs})  # pretrained=True too


def _transformers_model(name: str, args: list, kwargs: dict, spec: str) -> nn.Module:
    """A Hugging Face model, random weights from its config: ``transformers:BertModel`` (the default
    config), ``transformers:BertModel(num_hidden_layers=2, hidden_size=128)`` (keyword literals set the
    config's fields; a field the config lacks is refused, not silently kept), ``transformers:BertModel(
    'config.json')`` (a config file or a folder holding one, fields after it override it), and
    ``transformers:AutoModel('config.json')`` for any model type. Anything else is called as written:
    ``transformers:BertModel.from_pretrained('bert-base-uncased')`` loads trained weights from the hub
    cache."""
    try:
        import transformers
    except ImportError as e:
        raise InvalidArgumentError("transformers is not installed: pip install 'fxconv[transformers]'") from e
    path = name.split(".")
    if not hasattr(transformers, path[0]):
        models = [n for n in dir(transformers) if n.endswith(("Model", "LMHeadModel")) or "For" in n]
        raise InvalidArgumentError(f"transformers has no {path[0]!r}{_did_you_mean(path[0], models)}")
    target = _attribute(transformers, path, "transformers")
    auto = len(path) == 1 and hasattr(target, "from_config") and path[0].startswith("Auto")
    model_class = len(path) == 1 and isinstance(target, type) and issubclass(target, transformers.PreTrainedModel)
    if not (auto or model_class):
        return _called(target, spec, *args, **kwargs)
    if len(args) > 1 or (args and not isinstance(args[0], str)) or (auto and not args):
        raise InvalidArgumentError(
            f"MODEL {spec!r}: a Hugging Face model takes one config file (a path to config.json or its folder) "
            "and config fields as keywords, e.g. transformers:BertModel(num_hidden_layers=2) or "
            "transformers:AutoModel('config.json')"
        )
    config_class = transformers.AutoConfig if auto else target.config_class
    if args and not Path(args[0]).exists():
        raise InvalidArgumentError(
            f"MODEL {spec!r}: no config file {args[0]!r} (a config.json or a folder holding one)"
        )
    base = _called(config_class.from_pretrained, spec, args[0]) if args else config_class()
    unknown = [k for k in kwargs if not hasattr(base, k)]
    if unknown:
        close = _did_you_mean(unknown[0], list(base.to_dict()))
        raise InvalidArgumentError(f"{type(base).__name__} has no field {unknown[0]!r}{close}")
    for key, value in kwargs.items():
        setattr(base, key, value)
    return _called(target.from_config if auto else target, spec, base)


_LIBRARIES = {"torchvision": _torchvision_model, "timm": _timm_model, "transformers": _transformers_model}


def _keywords_only(args: list, spec: str) -> None:
    if args:
        raise InvalidArgumentError(
            f"MODEL {spec!r}: a zoo model is a name with keyword arguments, e.g. torchvision:resnet18(num_classes=10)"
        )


def _called(function, spec: str, *args, **kwargs):
    """``function(*args, **kwargs)``, a failure as one line naming the MODEL."""
    try:
        return function(*args, **kwargs)
    except Exception as e:
        raise InvalidArgumentError(f"{spec} failed: {type(e).__name__}: {first_line(e)}") from e


def _attribute(root, path: list[str], owner: str):
    """``root.a.b`` for path ["a", "b"]; an unknown name is refused naming it and its ``owner``."""
    for i, attr in enumerate(path):
        if not hasattr(root, attr):
            raise InvalidArgumentError(f"{owner} has no {'.'.join(path[: i + 1])!r}")
        root = getattr(root, attr)
    return root


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
    target = _attribute(target, path, f"module {module_name!r}")
    if isinstance(target, nn.Module) and not (args or kwargs):
        return target
    return _called(target, spec if "(" in expression else f"{spec}()", *args, **kwargs)


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


_DEFAULT_SHAPE = (1, 3, 224, 224)
_TOKENS = 32  # a Hugging Face text model's default example: one row of 32 token ids
_SAMPLES = 16000  # an audio model's (input_values): one second at 16 kHz


def example_input(model: nn.Module | ExportedProgram, shape: tuple[int, ...] | None) -> torch.Tensor:
    """The input a MODEL is converted and checked with: random values of ``shape`` (by default the
    model's own: an ExportedProgram's input as exported, a Hugging Face vision model's image size from
    its config, an audio model's second of 16 kHz samples, a Whisper encoder's mel frames, else 1x3x224x224)
    in the model's dtype — or token ids below the vocabulary size for a Hugging Face model whose input is
    ``input_ids``, or a model that starts with an Embedding (one row of 32)."""
    dtype = model_dtype(model)
    if isinstance(model, ExportedProgram):
        value = next(n.meta["val"] for n in model.graph.nodes
                     if n.op == "placeholder" and n.name in model.graph_signature.user_inputs)
        shape = shape or tuple(d if isinstance(d, int) else d.node.hint for d in value.shape)
        dtype = value.dtype
    config = getattr(model, "config", None)
    kind = getattr(model, "main_input_name", None) if config is not None else None
    if kind == "input_ids":
        return torch.randint(0, config.vocab_size, shape or (1, _TOKENS))
    rows = embedding_size(model)
    if config is None and rows is not None:  # a model that starts by looking up token ids
        return torch.randint(0, rows, shape or (1, _TOKENS))
    if kind == "input_features" and shape is None and hasattr(config, "num_mel_bins"):
        # Whisper's encoder: its mel frames, twice its positions (the convolutions' stride 2 halves them)
        shape = (1, config.num_mel_bins, 2 * config.max_source_positions)
    if kind == "input_values" and shape is None:
        shape = (1, _SAMPLES)
    if kind == "pixel_values" and shape is None and hasattr(config, "image_size"):
        size = config.image_size if isinstance(config.image_size, (list, tuple)) else [config.image_size] * 2
        shape = (1, getattr(config, "num_channels", 3), *size)
    if not dtype.is_floating_point:
        return torch.zeros(shape or _DEFAULT_SHAPE, dtype=dtype)
    return torch.randn(shape or _DEFAULT_SHAPE, dtype=dtype)


def model_dtype(model: nn.Module | ExportedProgram) -> torch.dtype:
    """The dtype the model computes in: that of its first floating-point parameter or buffer."""
    tensors = model.state_dict().values() if isinstance(model, nn.Module) else model.state_dict.values()
    return next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)


def _did_you_mean(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f": did you mean {' or '.join(map(repr, close))}?" if close else ""
