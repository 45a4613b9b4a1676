"""What a conversion did: the Linear calls it converted, and those it left alone with a reason."""

from __future__ import annotations

import contextlib
import dataclasses
import platform
from dataclasses import dataclass, field
from importlib import metadata


@dataclass(frozen=True)
class Converted:
    """One Linear call rewritten as a convolution."""

    name: str  # the Linear's qualified name (its module or weight), or the graph node; "(call 2)" on a repeat
    method: str  # "kernel" or "1x1"
    flattened_from: tuple[int, ...]  # (C, *S): the feature map its input was a flattening of
    kernel: tuple[int, ...]  # the convolution's kernel size
    node: str  # the graph node of the convolution that replaced it
    layout: str = ""  # a head's "folded"/"batched"; for a Linear at every position, "(N, L, C) as (N, C, 1, L)"
    why: str = ""  # the target's reason, where it has one


@dataclass(frozen=True)
class Skipped:
    """One Linear call left as it was."""

    name: str
    code: str  # a stable short code, e.g. "not-flattened" (fxconv.codes.CODES says what each means)
    reason: str  # a sentence for a person

    def matches(self, code: str) -> bool:
        """Whether this is a skip of ``code``, also under a name the code had before (``fxconv.codes.ALIASES``)."""
        from .codes import ALIASES

        return self.code == ALIASES.get(code, code)


@dataclass(frozen=True)
class Frozen:
    """An adaptive (global) pooling fixed at the geometry it had for the example input (dense mode)."""

    name: str
    was: str  # what the node computed, e.g. "mean over dims (2, 3)"
    now: str  # what it computes now, e.g. "avg_pool2d kernel (7, 7), stride 1"


@dataclass(frozen=True)
class Verification:
    """What the self-check compared (``fxconv.verify``; ``convert_onnx``: in onnxruntime), and the largest
    difference it saw."""

    batches: tuple[int, ...]  # the batch sizes run (the example's first)
    calls: int  # calls in a row at each batch (STEPS where the forward writes state)
    max_abs_diff: float  # over every float output and written buffer
    state: tuple[str, ...] = ()  # the buffers the model's forward wrote, compared after each call
    note: str = ""  # what could not be compared, and why
    compared: bool = True  # False: the outputs could not be compared (random draws in the forward, see note)

    def __str__(self) -> str:
        if not self.compared:
            return f"NOT VERIFIED: {self.note}"
        batches = " and ".join(map(str, self.batches))
        text = f"verified: batch{'es' if len(self.batches) > 1 else ''} {batches}"
        if self.calls > 1:
            text += f", {self.calls} calls in a row"
        text += f", max abs diff {self.max_abs_diff:.2g}"
        if self.state:
            text += f" (outputs and state: {', '.join(self.state)})"
        return text + (f"; {self.note}" if self.note else "")


@dataclass
class Report:
    """The outcome of :func:`fxconv.convert`; ``str(report)`` is a readable table."""

    method: str
    scope: str = "heads"
    layout: str = "batched"
    dense: bool = False
    capture: str = ""  # how the graph was obtained: symbolic_trace, torch.export, GraphModule, ExportedProgram
    capture_note: str = ""  # why symbolic_trace was not used, where torch.export was
    target: str = "onnxruntime"  # the compiler the choices are made for (fxconv.targets)
    fixed_batch: int | None = None  # a static capture: the result runs at this batch only (as the graph did)
    converted: list[Converted] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)  # what fxconv could not convert (strict=True refuses)
    kept: list[Skipped] = field(default_factory=list)  # what the target keeps a Linear, on purpose (code "kept")
    frozen: list[Frozen] = field(default_factory=list)
    approximate: list[str] = field(default_factory=list)  # dense mode: global pools kept (approximate=True)
    state: list[str] = field(default_factory=list)  # the buffers the forward writes in place (kept, in order)
    verified: Verification | None = None  # what the self-check compared (fxconv.verify); None: verify=False

    def to_dict(self) -> dict:
        """A JSON-ready dict of everything in the report."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        mode = ", dense" if self.dense else ""
        target = f"target={self.target!r}, " if self.target != "onnxruntime" else ""
        kept = f", {len(self.kept)} kept for the target" if self.kept else ""
        lines = [
            f"fxconv ({target}method={self.method!r}, scope={self.scope!r}, layout={self.layout!r}{mode}): "
            f"{len(self.converted)} Linear converted{kept}, {len(self.skipped)} left alone"
        ]
        if self.capture:
            because = f" ({self.capture_note})" if self.capture_note else ""
            lines.append(f"  captured with {self.capture}{because}")
        for c in self.converted:
            kernel = "x".join(map(str, c.kernel))
            shape = "x".join(map(str, c.flattened_from))
            if c.method == "channels-last":
                lines.append(f"  converted  {c.name:<24} flatten of {shape} -> linear on its channels-last flattening")
            elif c.flattened_from:
                lines.append(f"  converted  {c.name:<24} flatten of {shape} -> conv{len(c.kernel)}d, kernel {kernel}")
            else:
                lines.append(f"  converted  {c.name:<24} at every position, {c.layout} -> conv{len(c.kernel)}d 1x1")
        lines += _grouped("kept", self.kept) + _grouped("skipped", self.skipped)
        for f in self.frozen:
            lines.append(f"  frozen     {f.name:<24} {f.was} -> {f.now}")
        if self.approximate:
            lines.append(
                f"  APPROXIMATE: {len(self.approximate)} global pools inside the backbone still pool the "
                "whole input, so a window's prediction depends on pixels outside it:"
            )
            lines += [f"    {name}" for name in self.approximate]
        if self.state:
            lines.append(f"  state      {', '.join(self.state)}: written in place by the forward, every write kept")
        if self.verified is None:
            lines.append("  NOT VERIFIED: verify=False, the result was not compared with the model")
        else:
            lines.append(f"  {self.verified}")
        return "\n".join(lines)


def _grouped(verb: str, entries: list[Skipped], most: int = 3) -> list[str]:
    """One line per entry; more than ``most`` entries with one reason become one line naming the first few."""
    groups: dict[tuple[str, str], list[str]] = {}
    for s in entries:
        groups.setdefault((s.code, s.reason), []).append(s.name)
    lines = []
    for (code, reason), names in groups.items():
        if len(names) <= most:
            lines += [f"  {verb:<10} {name:<24} [{code}] {reason}" for name in names]
        else:
            shown = ", ".join(names[:most])
            lines.append(f"  {verb:<10} {len(names)} Linears ({shown}, ... {names[-1]}) [{code}] {reason}")
    return lines


def versions() -> dict[str, str]:
    """The Python, machine and library versions that a report's figures depend on."""
    found = {"python": platform.python_version(), "machine": platform.platform()}
    for name in ("fxconv", "torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "openvino"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found
