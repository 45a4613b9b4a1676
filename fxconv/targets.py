"""Targets: the choices that make fxconv's output right for the compiler a user ships with, each measured there.

A target is a profile of choices fxconv already has — which Linears to convert, the method, the layout,
the scope — plus the ops it writes for that compiler. ``convert(..., target=...)``, ``convert_onnx``
and the CLI's ``--target`` take one; explicit ``method``/``scope``/``layout`` arguments override its
defaults, and a combination the target's compiler is measured to be slower with is warned about. The
figures behind each choice: ``python benchmarks/bench.py --only targets`` (docs/targets.md).

* ``onnxruntime`` (the default): heads as convolutions over the folded map (one GEMM for the batch in
  onnxruntime's CPU kernels), Linears at every position with ``scope="all"``.
* ``ethos-u`` (Arm Ethos-U through ExecuTorch's TOSA flow and Vela 5.2): a head that flattens an NCHW map
  reads the map's *channels-last* flattening instead (the Linear stays one, its weight's columns permuted),
  so the NHWC flow needs no Transposes before it (CIFAR CNN: −0.8 % cycles on U55-128 and U85-256; the
  kernel method saves them too but costs more on U85 for a VGG-size head, +0.2 %). Each Linear at every
  position becomes its own 1x1 convolution, in and out of (N, C, 1, L) around it alone — in TOSA's NHWC
  that is the tokens' own memory — with nothing else moved into the layout: a token MLP block measured
  −13 % cycles on U55-128 and −28 % on U85-256, BERT-tiny −2 % and −5 %, a 2-layer Llama −2 % and −3 %,
  a ViT the same; carrying the layout through the block's residual add instead measured 21x on U85-256.
  A Linear on a vector (a pooled head, a head's later Linears) costs the same cycles either way: kept. A
  head on a flattened 1-D map (N, C, L) is kept too: only 4-D maps are NHWC in TOSA, and reading a 1-D map
  channels-last adds Transposes (+7 % / +13 % cycles after an Embedding, U55-128 / U85-256), and so is a
  Linear at every position whose output a head flattens (its way back out of (N, C, 1, L): +24 % to +40 %).
* ``coreml`` (Core ML's converter, for the Apple Neural Engine): Apple's guidance — every Linear a 1x1
  convolution in (B, C, 1, S), the ops between kept in that layout (LayerNorm and RMSNorm over the
  channels, which coremltools fuses back into one ``layer_norm``; attention split per head with Apple's
  einsums, causal or masked; rotary embeddings and GQA's repeated key heads on the heads' channels),
  batch first (``layout="batched"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

from .carry import ATTENTION, CARRIED, Rule
from .errors import FxconvWarning, InvalidArgumentError
from .options import LAYOUTS, METHODS, SCOPES
from .options import TARGETS as OPTIONS_TARGETS


@dataclass(frozen=True)
class Target:
    name: str
    scope: str
    method: str
    layout: str
    why: Mapping[str, str]  # recorded on each Linear it converts, by what it reads: "head", "positions"
    keeps: Mapping[str, str] | None = None  # why it keeps a Linear, by what it reads: "vector", "positions",
    # "1-d map" (a head on a flattened (N, C, L) map), "flattened" (one at every position whose output is)
    rules: tuple[Rule, ...] = CARRIED  # the ops carried in the layout (ATTENTION: attention split per head too)
    carries: bool = True  # False: each Linear at every position changes layout on its own, nothing else moves
    slower: Mapping[tuple[str, str], str] = field(default_factory=dict)  # (option, value) -> what was measured


@dataclass(frozen=True)
class Options:
    """Every choice of one conversion, resolved once (:func:`resolve`) and read by each step after it: the
    pipeline (``fxconv.pipeline``), the rewrite and its planner, for both front ends."""

    target: Target
    method: str
    scope: str
    layout: str
    keeps: Mapping[str, str] | None  # the target's reasons to keep a Linear; None where the user chose
    dense: bool = False
    approximate: bool = False
    strict: bool = False
    verify: bool = True
    slower: tuple[str, ...] = ()  # what the target's compiler was measured slower with, of the choices given

    @property
    def folded(self) -> bool:
        return self.layout == "folded"

    def warn(self, stacklevel: int = 2) -> None:
        """Warn of each choice measured slower on the target, at the caller's caller by default."""
        for warning in self.slower:
            warnings.warn(warning, FxconvWarning, stacklevel=stacklevel + 1)


TARGETS: dict[str, Target] = {
    "onnxruntime": Target(
        "onnxruntime", "heads", "kernel", "folded",
        why={"head": "", "positions": ""},
        slower={("layout", "batched"): "onnxruntime runs a convolution as one GEMM per image: the batched layout "
                "measured 2.6x the Gemm at batch 8 and 4.3x at 32 (VGG16 head)"},
    ),
    "ethos-u": Target(
        "ethos-u", "all", "channels-last", "batched",
        why={
            "head": "Ethos-U: the head reads its map's channels-last flattening, so the NHWC flow needs no "
                    "Transposes before it (measured: −0.8 % cycles, CIFAR CNN, U55-128 and U85-256)",
            "positions": "Ethos-U: each Linear at every position as its own 1x1 convolution (measured: −13 % "
                         "cycles on U55-128, −28 % on U85-256 for a token MLP block; carrying the layout through "
                         "its residual add measured 21x on U85-256)",
        },
        keeps={
            "vector": "Ethos-U: Vela runs the 1x1 convolution of a vector as the fully connected op it was (the "
                      "same cycles, measured)",
            "1-d map": "Ethos-U: a flattened (N, C, L) map is in TOSA's order already (only 4-D maps are NHWC "
                       "there): reading it channels-last adds the Transposes it saves on an image (measured: "
                       "+14 % cycles on U55-128 and +107 % on U85-256 for a token sequence's head, +7 % and "
                       "+13 % after an Embedding)",
            "flattened": "Ethos-U: its output is flattened into a head's vector, and changing its layout back "
                         "before the flatten costs more than the 1x1 convolution saves (measured: +24 % to +40 % "
                         "cycles on U55-128 and U85-256)",
        },
        carries=False,
        slower={
            ("method", "kernel"): "on Ethos-U85 the kernel method measured +0.2 % cycles for a VGG-size head "
                                  "(channels-last: −1.3 %)",
        },
    ),
    "coreml": Target(
        "coreml", "all", "kernel", "batched",
        why=dict.fromkeys(("head", "positions"), "Core ML: a 1x1 convolution in (B, C, 1, S), Apple's layout for "
                          "the Neural Engine"),
        rules=ATTENTION,
        slower={("scope", "heads"): "Apple's Neural Engine guidance runs every Linear as a 1x1 convolution in "
                                    "(B, C, 1, S); with scope='heads' the per-position Linears stay"},
    ),
}
assert tuple(TARGETS) == OPTIONS_TARGETS  # options.TARGETS names them without importing this module


def resolve(
    target: str = "onnxruntime", method: str | None = None, scope: str | None = None, layout: str | None = None, *,
    dense: bool = False, approximate: bool = False, strict: bool = False, verify: bool = True,
) -> Options:
    """The choices to use: the target's defaults where none is given (dense mode is always batched);
    ``keeps`` dropped when the user chose the method or scope; what the target was measured slower with.
    A choice that is not one, or a combination that cannot be, is an :class:`InvalidArgumentError` here,
    before any work."""
    if target not in TARGETS:
        raise InvalidArgumentError(f"unknown target {target!r}: choose one of {', '.join(TARGETS)}")
    profile = TARGETS[target]
    given = {"method": method, "scope": scope, "layout": layout}
    chosen = {option: given[option] or getattr(profile, option) for option in given}
    if dense and layout is None:
        chosen["layout"] = "batched"
    for option, values in (("method", METHODS), ("scope", SCOPES), ("layout", LAYOUTS)):
        if chosen[option] not in values:
            raise InvalidArgumentError(f"unknown {option} {chosen[option]!r}: choose one of {', '.join(values)}")
    if dense and chosen["method"] != "kernel":
        raise InvalidArgumentError("dense=True needs method='kernel': a 1x1 head reads a reshaped vector")
    if dense and chosen["layout"] != "batched":
        raise InvalidArgumentError(
            "dense=True needs layout='batched': the windows of one image already fill the spatial axes"
        )
    if approximate and not dense:
        raise InvalidArgumentError("approximate=True is a dense-mode option: pass dense=True too")
    slower = tuple(
        f"{option}={chosen[option]!r} with target={target!r}: {why}"
        for (option, value), why in profile.slower.items()
        if chosen[option] == value and given[option] is not None
    )
    keeps = profile.keeps if method is None and scope is None else None
    return Options(profile, **chosen, keeps=keeps, dense=dense, approximate=approximate, strict=strict,
                   verify=verify, slower=slower)  # fmt: skip
