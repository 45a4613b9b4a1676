"""``fxconv.ship``: convert a model, write the file its target's compiler ships, and prove that file.

    ship(model, x, "model.onnx")                         ONNX (any target): run in onnxruntime beside the model
    ship(model, x, "model.mlpackage", target="coreml")   a Core ML ML program: its MIL ops beside the original's;
                                                         run against the model on macOS
    ship(model, x, "model.pte", target="ethos-u")        an ExecuTorch program for an Arm Ethos-U (int8, Vela): its
                                                         TOSA programs run in the TOSA reference model against
                                                         the original's quantised program; Vela's cycles of both
    ship("vendor.onnx", None, "converted.onnx")          an ONNX file's Linears (convert_onnx), run beside it

The kind of file is its name's suffix (``ARTIFACTS``). Every refusal comes before any work: a suffix the
target's compiler does not read, an option that is not for that kind of file, a compiler that is not
installed (naming the extra that brings it), calibration data unlike the example, a file that exists
(unless ``force=True``) or a folder that does not. The conversion proves itself in PyTorch first
(``convert``'s self-check). The file is written in a staging folder beside its path and moved there whole
once proven — an ``.mlpackage`` is a folder — so a failure or Ctrl-C leaves nothing behind and replaces
nothing; a proof that fails raises :class:`VerificationError`, whose ``shipped`` holds what was found.
The command line's ``fxconv convert`` is this call.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidArgumentError, VerificationError
from ..options import DEPLOYMENTS, DEVICES, PRECISIONS, RUNTIMES, TARGETS
from ..report import Report

__all__ = ["ARTIFACTS", "Artifact", "Shipped", "plan", "ship"]


@dataclass(frozen=True)
class Artifact:
    """A kind of file fxconv writes: what it is, the targets whose compiler reads it (None: any), the
    options only it takes (with their defaults), and the packages its compiler needs (and the extra)."""

    what: str
    targets: tuple[str, ...] | None
    options: dict
    packages: tuple[str, ...] = ()
    extra: str = ""


ARTIFACTS = {
    ".onnx": Artifact("an ONNX file", None,
                      {"batch": None, "opset": None, "runtime": "onnxruntime", "check": True, "dense": False}),
    ".mlpackage": Artifact("a Core ML ML program", ("coreml",), {"deployment": "iOS17", "precision": "float16"},
                           ("coremltools",), "coreml"),
    ".pte": Artifact("an ExecuTorch program for Arm Ethos-U", ("ethos-u",),
                     {"device": "ethos-u55-128", "calibration": None},
                     ("executorch", "torchao", "ethosu.vela", "tosa_reference_model"), "ethos-u"),
}  # fmt: skip


@dataclass
class Shipped:
    """What :func:`ship` wrote and how it was proven: ``path`` (None where the proof failed: nothing was
    written), the conversion's ``report``, the artifact's ``proof``, each step's seconds."""

    path: Path | None
    report: Report
    proof: object  # OnnxProof, CoreMLProof or EthosUProof: str() for people, to_dict() for files
    timings: dict[str, float]

    @property
    def passed(self) -> bool:
        return self.proof.passed

    def __str__(self) -> str:
        return f"{self.report}\n{self.proof}"

    def to_dict(self) -> dict:
        return {"output": None if self.path is None else str(self.path), **self.report.to_dict(),
                "artifact": self.proof.to_dict(), "timings_s": self.timings}  # fmt: skip


def ship(
    model,
    example_inputs,
    path: str | os.PathLike,
    *,
    target: str = "onnxruntime",
    method: str | None = None,
    scope: str | None = None,
    layout: str | None = None,
    capture: str = "auto",
    approximate: bool = False,
    strict: bool = False,
    verify: bool = True,
    inplace: bool = False,
    force: bool = False,
    progress=None,
    **options,
) -> Shipped:
    """Convert ``model`` for ``target``, write what the target's compiler ships at ``path``, prove it.

    ``model`` and ``example_inputs`` are what :func:`fxconv.convert` takes, and the conversion's options mean
    what they mean there; or ``model`` is an ONNX file's path or ModelProto (:func:`fxconv.convert_onnx`;
    ``example_inputs`` then None, or arrays for a file whose inputs have free dims beyond the batch). The
    kind of file is ``path``'s suffix; its own ``options`` (keywords), with their defaults:

    * ``.onnx``: ``batch`` (None: dynamic), ``opset``, ``runtime`` ("onnxruntime" or "openvino"),
      ``check`` (True: run it beside the model), ``dense`` (fully convolutional, on larger inputs).
    * ``.mlpackage`` (target "coreml"): ``deployment`` ("iOS17", the minimum deployment target),
      ``precision`` ("float16", or "float32").
    * ``.pte`` (target "ethos-u"): ``device`` ("ethos-u55-128", or any configuration Vela knows),
      ``calibration`` (a list of example inputs like ``example_inputs``; None: 4 random inputs in the
      example's ranges, with a warning that the int8 scales are then not representative).

    ``force`` replaces an existing file. ``progress(what, key)``, if given, is entered around each step (a
    context manager: the command line prints what runs and how long it took).
    """
    path = Path(path)
    artifact, given = plan(path, model, target, force, options)
    onnx_input = _is_onnx(model)
    pytorch_only = {"capture": capture != "auto", "approximate": approximate, "inplace": inplace}
    if onnx_input and any(pytorch_only.values()):
        wrong = ", ".join(f"{name}=" for name, given_ in pytorch_only.items() if given_)
        raise InvalidArgumentError(f"{wrong}: not for an ONNX model, which convert_onnx reads from its file")
    if artifact is ARTIFACTS[".pte"] and given["calibration"] is not None:
        from .calibration import calibration_like

        given["calibration"] = calibration_like(given["calibration"], example_inputs)
    timings: dict[str, float] = {}
    step = _stepper(timings, progress)
    choices = dict(method=method, scope=scope, layout=layout, target=target, strict=strict, verify=verify)
    if not onnx_input:
        choices.update(dense=given.get("dense", False), approximate=approximate, capture=capture, inplace=inplace)
    with step("converting the ONNX file" if onnx_input else "tracing and converting", "convert"):
        module, report = _convert_model(model, example_inputs, onnx_input, choices)
    with _staged(path, force) as staged:
        proof = _write(artifact, model, module, report, example_inputs, staged, given, onnx_input, step)
        shipped = Shipped(path if proof.passed else None, report, proof, timings)
        if not proof.passed:
            error = VerificationError(f"the written {path.suffix} file failed its proof; nothing was written:\n{proof}")
            error.shipped = shipped
            raise error
    return shipped


def _convert_model(model, example_inputs, onnx_input: bool, choices: dict):
    """``convert`` or ``convert_onnx``: the converted model and its report (proven in its own graph level)."""
    if onnx_input:
        from ..onnx.convert import convert_onnx

        return convert_onnx(model, **choices)
    from .._convert import convert

    return convert(model, example_inputs, **choices)


def plan(path: Path, model, target: str, force: bool, options: dict) -> tuple[Artifact, dict]:
    """The artifact ``path`` names and its options (defaults and those given), or the refusal of what cannot
    be — before any work (the command line calls it before it loads the model)."""
    if target not in TARGETS:
        raise InvalidArgumentError(f"unknown target {target!r}: choose one of {', '.join(TARGETS)}")
    _refuse_directory(path)
    artifact = _artifact(path, model, target)
    given = _options(artifact, path, options)
    _refuse_before_work(artifact, path, force, given)
    return artifact, given


def _artifact(path: Path, model, target: str) -> Artifact:
    suffix = path.suffix.lower()
    if suffix not in ARTIFACTS:
        raise InvalidArgumentError(f"{path}: fxconv writes {', '.join(ARTIFACTS)} files; name the output with one")
    artifact = ARTIFACTS[suffix]
    onnx_input = _is_onnx(model)
    if onnx_input and suffix != ".onnx":
        raise InvalidArgumentError(f"{path}: an ONNX model converts to an ONNX file (.onnx); {artifact.what} is "
                                   "made from a PyTorch model")  # fmt: skip
    if artifact.targets is not None and target not in artifact.targets:
        readers = ", ".join(s for s, a in ARTIFACTS.items() if a.targets is None or target in a.targets)
        raise InvalidArgumentError(f"{path}: {artifact.what} is for target={artifact.targets[0]!r}; "
                                   f"target={target!r} ships {readers}")  # fmt: skip
    return artifact


def _is_onnx(model) -> bool:
    if isinstance(model, (str, os.PathLike)):
        return str(model).lower().endswith(".onnx")
    return type(model).__name__ == "ModelProto"  # onnx is not imported for a PyTorch model


def _options(artifact: Artifact, path: Path, options: dict) -> dict:
    """The artifact's options: its defaults, with those given; one for another kind of file is refused."""
    known = {name for a in ARTIFACTS.values() for name in a.options}
    for name in options:
        if name not in known:
            raise InvalidArgumentError(f"ship() got an unknown option {name!r}")
        if name not in artifact.options:
            kinds = ", ".join(s for s, a in ARTIFACTS.items() if name in a.options)
            raise InvalidArgumentError(f"{name}= is for {kinds} files, not {path.name}")
    return {**artifact.options, **options}


def _refuse_before_work(artifact: Artifact, path: Path, force: bool, given: dict) -> None:
    """What can be refused before any work: values that are none, a compiler not installed, the output."""
    for name, allowed in (("runtime", RUNTIMES), ("deployment", DEPLOYMENTS), ("precision", PRECISIONS),
                          ("device", DEVICES)):  # fmt: skip
        if name in given and given[name] not in allowed:
            raise InvalidArgumentError(f"unknown {name} {given[name]!r}: choose one of {', '.join(allowed)}")
    for package in artifact.packages:
        if not _installed(package):
            raise InvalidArgumentError(f"{artifact.what} needs {package}, which is not installed: "
                                       f"pip install 'fxconv[{artifact.extra}]'")  # fmt: skip
    if given.get("check") and not _installed(given["runtime"]):
        raise InvalidArgumentError(f"runtime={given['runtime']!r}: it is not installed "
                                   f"(pip install 'fxconv[{given['runtime']}]')")  # fmt: skip
    check_writable(path, force)


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package.split(".")[0]) is not None and importlib.util.find_spec(package) is not None


def _refuse_directory(path: Path) -> None:
    if path.is_dir() and path.suffix.lower() != ".mlpackage":  # a Core ML package is a folder
        raise InvalidArgumentError(f"{path} is a directory: name the file to write, e.g. {path / 'model.onnx'}")


def check_writable(path: Path, force: bool) -> None:
    """Refuse an output whose folder is missing or cannot be written in, or that exists (unless forced)."""
    _refuse_directory(path)
    if not path.parent.is_dir():
        raise InvalidArgumentError(f"cannot write {path}: directory {path.parent} does not exist")
    if path.exists() and not force:
        raise InvalidArgumentError(f"{path} exists; pass --force to replace it")
    try:  # what the write will do: a staging folder beside the output (permissions, a read-only file system)
        with tempfile.TemporaryDirectory(prefix=".fxconv-", dir=path.parent):
            pass
    except OSError as e:
        raise InvalidArgumentError(f"cannot write {path}: {e.strerror or e} in {path.parent}") from None


def _stepper(timings: dict[str, float], progress):
    @contextlib.contextmanager
    def step(what: str, key: str):
        start = time.perf_counter()
        with progress(what, key) if progress else contextlib.nullcontext():
            yield
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start

    return step


@contextlib.contextmanager
def _staged(path: Path, force: bool):
    """A path in a staging folder beside ``path``, moved to ``path`` — a file, its ``.data`` weights, or a
    folder — when the block ends without an error (the folder and all in it removed in every case)."""
    with tempfile.TemporaryDirectory(prefix=".fxconv-", dir=path.parent) as folder:
        staged = Path(folder) / path.name
        yield staged
        check_writable(path, force)  # again: the file may have appeared meanwhile
        weights = Path(f"{staged}.data")
        if weights.exists():  # external weights first: the model never names a missing file
            os.replace(weights, f"{path}.data")
        if path.is_dir():  # a folder cannot be replaced by rename: the old one moves aside into the staging folder
            os.replace(path, Path(folder) / "replaced")
        os.replace(staged, path)


def _write(artifact: Artifact, model, module, report: Report, example, staged: Path, given: dict, onnx_input: bool,
           step):  # fmt: skip
    """Write the artifact at ``staged`` and prove it; its proof."""
    if artifact is ARTIFACTS[".onnx"]:
        from . import onnx_file

        runtime = given["runtime"] if given["check"] else None
        if onnx_input:
            with step("writing the converted ONNX file", "write"):
                onnx_file.write_proto(module, staged)
            name = f"the original {model}" if isinstance(model, (str, os.PathLike)) else "the original file"
            return onnx_file.prove(staged, report, model, name, example, runtime=runtime, step=step)
        with step("exporting the converted model to ONNX", "export"):
            onnx_file.write_module(module, example, staged, batch=given["batch"], opset=given["opset"],
                                   dense=given["dense"])  # fmt: skip
        # A dense file answers (N, K, h, w): it is checked against the dense PyTorch model, whose output at the
        # example's size convert() proved equal to the original's logits.
        reference, name = (module, "the dense PyTorch model") if given["dense"] else (model, "the original")
        return onnx_file.prove(staged, report, reference, name, example, runtime=runtime, step=step)
    from .._util import Example  # torch: not for an ONNX file's conversion

    example = Example.of(example)
    if artifact is ARTIFACTS[".mlpackage"]:
        from . import coreml

        return coreml.write(model, module, example, staged, deployment=given["deployment"],
                            precision=given["precision"], step=step)  # fmt: skip
    from . import ethos_u

    return ethos_u.write(model, module, example, staged, device=given["device"], calibration=given["calibration"],
                         step=step)  # fmt: skip

