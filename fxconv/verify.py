"""Every conversion proves itself before it is returned: the converted module against the model.

``convert`` (and ``convert_onnx``, in onnxruntime: ``fxconv.onnx.convert``) compare before they return::

    model ─────┬─ the example ───────────────────┬─ outputs, state ─┐
               └─ fresh inputs at another batch ─┘                  ├─ each output within tolerance?
    converted ─┴─ the same, from the same state ─── outputs, state ─┘    (else VerificationError)

What is compared. The example, and — where the batch is free (the graph is not fixed to one batch and
the model runs at another) — fresh random inputs at another batch: one row fewer (batch 1, where users
deploy, for a batch-2 example; the cheaper run), or 2 for a batch-1 example. Floats are uniform in the
example's range, integers in it too (token ids stay below the vocabulary); booleans and floats holding
-inf (masks) are the example's rows.
A forward that writes state (a KV cache, running statistics, a step counter: the buffers whose version a
call moves) is called ``STEPS`` times in a row, and every buffer the model wrote is compared after each
call. Both start from the same state, and every buffer is given back as it was. The model runs in its
own mode (train or eval), both under one random seed.

Tolerance: ``fxconv.check``'s, each output against its own scale (``|got - want| <= atol + rtol ·
max|want|``; (1e-4, 1e-5) in float32): a convolution sums in another order than the Linear did, and a
wrong rewrite is off by the order of the output itself. Integer, boolean and other outputs are equal.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import nn
from torch.export import ExportedProgram
from torch.utils._pytree import tree_flatten

from ._util import Example, buffers_kept, call_noting_writes, eval_mode
from .check import tolerance
from .errors import VerificationError, first_line
from .report import Verification

__all__ = ["STEPS", "verify"]

STEPS = 3  # calls in a row for a forward that writes state: each reads what the ones before wrote


def verify(model, converted, inputs: Example, *, batch_free: bool = True, dense: bool = False) -> Verification:
    """Compare ``converted`` with ``model`` (modules or ExportedPrograms) as the module docstring says; raise
    :class:`VerificationError` naming the output and the difference where they differ. ``dense``: the
    converted module is dense (``fxconv.fx.dense``): at the example's size each output is the model's with
    one window, trailing (…, 1, 1)."""
    reference, candidate = (m.module() if isinstance(m, ExportedProgram) else m for m in (model, converted))
    runs = [inputs]
    if batch_free and inputs.batch is not None:
        runs.append(_fresh(inputs, inputs.batch - 1 if inputs.batch > 1 else 2))
    try:
        return _compare_runs(reference, candidate, runs, dense)
    except VerificationError as e:
        if not _draws_random(reference, inputs):
            raise
        if not any(m.training for m in reference.modules()):
            return Verification((), 0, 0.0, compared=False, note=(
                "the forward draws random numbers (torch.rand, ...), which the converted module draws in its own "
                f"layout, so the two cannot be compared ({first_line(e)})"))
        with eval_mode(reference), eval_mode(candidate):  # dropout's masks are drawn in each module's layout
            verified = _compare_runs(reference, candidate, runs, dense)
        why = ("compared in eval mode: in training mode the forward draws random numbers (dropout), each module "
               "in its own layout")
        return dataclasses.replace(verified, note="; ".join(filter(None, (why, verified.note))))


def _compare_runs(reference: nn.Module, candidate: nn.Module, runs: list[Example], dense: bool) -> Verification:
    """The two modules over ``runs`` (the example, then fresh inputs the model may not take), each from the
    same state; a VerificationError where an output or a written buffer differs."""
    worst, state, calls, batches, note = 0.0, (), 1, [], ""
    with contextlib.ExitStack() as stack:
        give_back = [stack.enter_context(buffers_kept(m)) for m in (reference, candidate)]
        for example in runs:
            for restore in give_back:
                restore()
            try:
                want = _calls(reference, example, STEPS, stateless_once=True)
            except Exception:
                if example is runs[0]:
                    raise
                note = f"the model does not run at batch {example.batch}: compared at its example's batch only"
                continue
            written = list(dict.fromkeys(name for _, buffers in want for name in buffers))
            for restore in give_back:
                restore()
            got = _calls(candidate, example, len(want), where=f"batch {example.batch}")
            try:
                worst = max(worst, _compare_calls(want, got, written, candidate, example.batch, dense))
            except VerificationError:
                for restore in give_back:
                    restore()
                if _repeats(reference, example, want):
                    raise
                changing = (f"the model's outputs at batch {example.batch} change from call to call (uninitialised "
                            "memory, a nondeterministic kernel)")  # fmt: skip
                if example is runs[0]:
                    return Verification((), 0, 0.0, compared=False, note=f"{changing}: nothing to compare with")
                note = f"{changing}: compared at its example's batch only"
                continue
            state, calls = tuple(written) or state, max(calls, len(want))
            batches += [example.batch] if example.batch is not None else []
    return Verification(tuple(batches), calls, worst, state, note)


def _compare_calls(want: list, got: list, written: list[str], candidate: nn.Module, batch, dense: bool) -> float:
    """The largest difference between the model's calls and the converted module's, outputs and the buffers
    the model wrote; a VerificationError where one differs."""
    worst = 0.0
    for step, ((outputs, buffers), (outputs_got, buffers_got)) in enumerate(zip(want, got)):
        where = f"at batch {batch}" + (f", call {step + 1}" if len(want) > 1 else "")
        worst = max(worst, _compare(outputs, outputs_got, "output", where, dense))
        for name in written:
            if name not in dict(candidate.named_buffers()):
                raise VerificationError(f"the converted module has no buffer {name!r}, which the model writes in "
                                        "its forward")  # fmt: skip
            if name not in buffers_got:
                raise VerificationError(f"buffer {name!r} {where}: the model writes it, the converted module does "
                                        "not")  # fmt: skip
            worst = max(worst, _compare(buffers[name], buffers_got[name], f"buffer {name!r}", where))
    return worst


def _repeats(module: nn.Module, example: Example, calls: list) -> bool:
    """Whether ``module``, from the state ``calls`` started from, gives their outputs again."""
    try:
        _compare_calls(calls, _calls(module, example, len(calls)), [], module, example.batch, False)
    except VerificationError:
        return False
    return True


def _calls(module: nn.Module, example: Example, steps: int, *, stateless_once: bool = False,
           where: str = "") -> list[tuple[object, dict]]:
    """``steps`` calls of ``module`` in a row, each under one seed: each one's outputs and the buffers it
    wrote (copies). ``stateless_once``: one call where the first writes no buffer. ``where``: errors are the
    converted module's (a VerificationError)."""
    done, example = [], example.bound(module)  # a torch.export module takes its inputs in its captured form
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for _ in range(steps):
            torch.manual_seed(0)
            try:
                outputs, written = call_noting_writes(module, example)
            except Exception as e:
                if not where:
                    raise
                raise VerificationError(f"the converted module fails at {where}, where the model runs: "
                                        f"{type(e).__name__}: {first_line(e)}") from e  # fmt: skip
            done.append((outputs, {name: b.clone() for name, b in written.items()}))
            if stateless_once and not written:
                break
    return done


def _draws_random(module: nn.Module, example: Example) -> bool:
    """Whether a call of ``module`` moves the random generator (dropout in training mode, torch.rand)."""
    with buffers_kept(module), torch.no_grad(), torch.random.fork_rng(devices=[]):
        before = torch.get_rng_state()
        example.bound(module).call(module)
        return not torch.equal(before, torch.get_rng_state())


def _fresh(inputs: Example, batch: int) -> Example:
    """Random inputs like the example at ``batch``: values in each tensor's range, of its dtype."""
    generator = torch.Generator().manual_seed(0)
    size = inputs.batch

    def fresh(t: torch.Tensor) -> torch.Tensor:
        if not t.dim() or t.shape[0] != size:  # not batched: shared by the rows (a table, a position)
            return t
        shape = (batch, *t.shape[1:])
        if not t.numel() or t.dtype == torch.bool or t.is_complex() or not torch.isfinite(t).all():
            return t[torch.arange(batch) % size]  # booleans, additive masks (-inf) and the rest: the example's rows
        if t.is_floating_point():
            low, high = t.min().item(), t.max().item()
            values = torch.rand(shape, generator=generator, dtype=torch.float64) * (high - low) + low
            return values.to(t.dtype)
        low, high = int(t.min()), int(t.max())
        return torch.randint(low, high + 1, shape, generator=generator).to(t.dtype)

    return inputs.map(fresh)


def _compare(want, got, what: str, where: str, dense: bool = False) -> float:
    """The largest absolute difference between two outputs (nests of tensors and plain values); a
    VerificationError where one differs beyond tolerance."""
    want_leaves, want_spec = tree_flatten(want)
    got_leaves, got_spec = tree_flatten(got)
    if len(want_leaves) != len(got_leaves):
        raise VerificationError(f"the converted module returns {len(got_leaves)} values {where}, the model "
                                f"{len(want_leaves)}")  # fmt: skip
    worst = 0.0
    for i, (w, g) in enumerate(zip(want_leaves, got_leaves)):
        name = f"{what} {i}" if len(want_leaves) > 1 and what == "output" else what
        if not isinstance(w, torch.Tensor) or not isinstance(g, torch.Tensor):
            if type(w) is not type(g) or w != g:
                raise VerificationError(f"{name} {where}: the model gives {w!r}, the converted module {g!r}")
            continue
        if dense and g.shape == (*w.shape, *(1,) * (g.dim() - w.dim())):
            g = g.reshape(w.shape)  # one window: (N, K, 1, 1) is the model's (N, K)
        if w.shape != g.shape or w.dtype != g.dtype:
            raise VerificationError(f"{name} {where}: the model gives {w.dtype} {tuple(w.shape)}, the converted "
                                    f"module {g.dtype} {tuple(g.shape)}")  # fmt: skip
        if not (w.is_floating_point() or w.is_complex()):
            if not torch.equal(w, g):
                raise VerificationError(f"{name} {where}: the converted module's {w.dtype} values differ from the "
                                        f"model's at {int((w != g).sum())} of {w.numel()} places")  # fmt: skip
            continue
        worst = max(worst, _float_diff(w, g, name, where))
    return worst


def _float_diff(want: torch.Tensor, got: torch.Tensor, name: str, where: str) -> float:
    """Max |got - want|, within ``fxconv.check``'s tolerance of want's scale; NaN and inf where the model has them."""
    rtol, atol = tolerance(want.dtype)
    want, got = want.detach().to(torch.float64), got.detach().to(torch.float64)
    finite = torch.isfinite(want)
    same_specials = torch.equal(want[~finite].nan_to_num(0.0), got[~finite].nan_to_num(0.0)) and torch.equal(
        want[~finite].isnan(), got[~finite].isnan())
    if not same_specials or not torch.isfinite(got[finite]).all():
        bad = int((torch.isfinite(got) != finite).sum())
        raise VerificationError(f"{name} {where}: the converted module gives NaN or inf at {bad} places where the "
                                "model does not (or the other way round)")  # fmt: skip
    diff = float((got[finite] - want[finite]).abs().max()) if finite.any() else 0.0
    scale = float(want[finite].abs().max()) if finite.any() else 0.0
    if diff > atol + rtol * scale:
        raise VerificationError(f"{name} {where}: the converted module differs from the model by {diff:.3g} "
                                f"(max abs), over the tolerance {atol:g} + {rtol:g} × {scale:.3g} (its scale)")
    return diff
