"""Capture: the GraphModule the rewrite works on, from whatever the user holds, with every node's shape.

::

    nn.Module ──symbolic_trace──▶ torch-level GraphModule ── equal to the model, every Linear seen? ──▶ rewrite
        │        (trace failed, not equal, forward set on the instance, or a Linear inside a call kept whole)
        └──────────torch.export (dynamic batch)──▶ ExportedProgram.module(): ATen-level GraphModule ──▶ rewrite
    GraphModule (traced by you, or ExportedProgram.module()) ───────────────────────────────────────▶ rewrite
    ExportedProgram ──.module()──▶ ATen-level GraphModule ──▶ rewrite ──▶ torch.export again

The rewrite never asks how its graph was made: the rules (``fxconv.carry``) name both levels' spellings.

Faithful. ``symbolic_trace`` can record a graph that is not the model: it traces the class's ``forward``
even where the instance has its own (``model.forward = ...``, as pretrainedmodels does), and it drops the
hooks of the modules it traces through. So its graph is run on the example beside the model, and only a
graph that gives the model's outputs is used; otherwise ``capture="auto"`` falls back to torch.export,
whose graph inlines hooks and instance methods. It also keeps ``torch.nn`` modules (``nn.MultiheadAttention``)
and ``torch.fx.wrap`` functions (torchvision's Swin attention) whole, hiding the Linears inside them
(``hidden_linears``): "auto" then uses torch.export too, and a graph that keeps them hidden reports them.

Where tracing failed. When no capture works, the error names the innermost module of the model and the
source line (outside torch) where each tracer stopped, read from the exception's traceback.
"""

from __future__ import annotations

import copy
import inspect
import operator
import re
import sysconfig
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import fx, nn
from torch.export import Dim, ExportedProgram
from torch.fx import Node
from torch.fx import _pytree as fx_pytree
from torch.fx.experimental.symbolic_shapes import is_concrete_int
from torch.fx.passes.shape_prop import _extract_tensor_metadata
from torch.utils._pytree import tree_leaves
from torch.utils._sympy.numbers import int_oo

from ._util import PLAIN, Example, batch_of_two, buffers_kept, eval_mode
from .errors import ExampleInputError, FxconvError, InvalidArgumentError, TraceError, first_line
from .fx.nodes import module_path
from .fx.state import root, writes, written_state
from .options import CAPTURES

__all__ = ["Captured", "capture", "export_again", "fixed_batch", "graph_inputs", "node_place", "record_shapes"]

_TORCH_AND_FXCONV = tuple(str(Path(p).resolve()) for p in (torch.__path__[0], Path(__file__).parent))
_STDLIB = str(Path(sysconfig.get_path("stdlib")).resolve())


def _is_library(file: str) -> bool:
    """Code that is not the model's: torch, fxconv, Python's own modules (site-packages hold models)."""
    path = str(Path(file).resolve())
    in_stdlib = path.startswith(_STDLIB) and "-packages" not in path
    return path.startswith(_TORCH_AND_FXCONV) or in_stdlib or file.startswith("<")


@dataclass
class Captured:
    """A graph ready for the rewrite, and how it was obtained."""

    gm: fx.GraphModule
    how: str  # "symbolic_trace", "torch.export", "GraphModule" (given) or "ExportedProgram" (given)
    note: str = ""  # why the first choice was not used, for the report
    program: ExportedProgram | None = None  # the ExportedProgram given, whose result is exported again
    hidden: list[tuple[str, str]] = field(default_factory=list)  # (Linear, the call that hides it), see hidden_linears
    fixed_batch: int | None = None  # the one batch a static capture runs at


def capture(model, inputs, how: str = "auto", *, inplace: bool = False) -> Captured:
    """The graph of ``model`` (copied unless ``inplace``), with every node's shape recorded for ``inputs``
    (example inputs as ``convert`` takes them, or an ``Example``)."""
    inputs = Example.of(inputs)
    if how not in CAPTURES:
        raise InvalidArgumentError(f"unknown capture {how!r}: choose one of {', '.join(CAPTURES)}")
    if isinstance(model, ExportedProgram):
        gm = model.module()
        batch = fixed_batch(model)
        captured = Captured(gm if inplace else _copy(gm), "ExportedProgram", _given_static(batch), program=model,
                            fixed_batch=batch)
    elif not isinstance(model, nn.Module):
        raise InvalidArgumentError(
            f"model must be a torch.nn.Module, a GraphModule or an ExportedProgram, got {type(model).__name__}"
        )
    else:
        model = model if inplace else _copy(model)
        if isinstance(model, fx.GraphModule):
            batch = fixed_batch(model)
            captured = Captured(model, "GraphModule", _given_static(batch), fixed_batch=batch)
        else:
            return _capture_module(model, inputs, how)
    record_shapes(captured.gm, inputs)
    captured.hidden = hidden_linears(captured.gm)
    return captured


def _given_static(batch: int | None) -> str:
    return "" if batch is None else f"fixed to batch {batch}: the graph given is static"


def _capture_module(model: nn.Module, inputs: Example, how: str) -> Captured:
    """symbolic_trace if it gives the model itself and sees every Linear (``how`` "auto" or "fx"), else torch.export."""
    note, traced = "", None
    if how in ("auto", "fx"):
        try:
            with buffers_kept(model):  # tracing, and the graph, may update the model's tensors in place
                gm = _symbolic_trace(model, inputs)
                packed = [n.target for n in gm.graph.nodes if n.op == "placeholder" and n.target.startswith("*")]
                if packed:  # *args, **kwargs: one placeholder, which the rewrite cannot see into
                    raise TraceError(f"symbolic_trace takes the {packed[0]} of {type(model).__name__}.forward as "
                                     "one input")  # fmt: skip
                try:
                    outputs = record_shapes(gm, inputs)
                except ExampleInputError as e:
                    raise _in_the_models_words(e, model, inputs) from e
            traced = Captured(gm, "symbolic_trace", hidden=hidden_linears(gm, model))
            state = written_state(gm)
            if not _same(outputs, _run(model, inputs)):
                note = "symbolic_trace's graph gives other outputs than the model (hooks on a traced-through module?)"
            elif how == "fx" or not (traced.hidden or state):
                return traced
            elif traced.hidden:  # torch.export traces into what symbolic_trace keeps whole; keep its graph if it fails
                name, where = traced.hidden[0]
                note = (f"symbolic_trace keeps {len(traced.hidden)} Linears inside calls it does not trace into "
                        f"({name!r} in {where})")
            else:  # torch.export makes each write an output of its graph; keep symbolic_trace's graph if it fails
                note = f"the forward writes {', '.join(state)} in place: torch.export captures state as such"
        except TraceError as e:
            note = str(e)
        if how == "fx":
            raise TraceError(f"capture='fx': {note}")
    try:
        program, fixed = _export(model, inputs, static=how == "static")
    except Exception as e:
        if traced is not None and note and not note.startswith("symbolic_trace's graph gives"):
            return traced  # faithful, and the best there is
        cache = re.search(r"Found <class '[\w.]*?(\w*Cache)'> in output", str(e))
        if cache:  # Hugging Face's default use_cache=True: the forward returns a cache object
            raise TraceError(
                f"fxconv cannot capture {type(model).__name__}: it returns a {cache.group(1)} (Hugging Face's "
                "use_cache=True), which torch.export cannot give back: build it with use_cache=False "
                "(model.config.use_cache = False)"
            ) from e
        tried = f"{note}; " if note else ""
        raise TraceError(
            f"fxconv cannot capture {type(model).__name__}: {tried}torch.export failed{_where(e, model)}: "
            f"{first_line(e)}. Make that code traceable, or trace the model yourself (for example with a "
            "torch.fx.Tracer whose is_leaf_module keeps that module whole) and pass the GraphModule to fxconv"
        ) from e
    gm = program.module(check_guards=not _guards_read_var_keywords(program, model))
    record_shapes(gm, inputs)
    return Captured(gm, "torch.export", "; ".join(filter(None, (fixed, note))), fixed_batch=fixed_batch(gm))


def fixed_batch(module) -> int | None:
    """The one batch a graph of torch.export's runs at (a static capture), or None if it runs at any."""
    users = None
    if isinstance(module, ExportedProgram):
        module, users = module.graph_module, set(module.graph_signature.user_inputs)  # not the lifted weights
    if not isinstance(module, fx.GraphModule):
        return None
    values = [n.meta.get("val") for n in module.graph.nodes
              if n.op == "placeholder" and (users is None or n.name in users)]  # fmt: skip
    # A SymInt is dynamic, unless torch.export specialised it to a constant (a branch on the batch).
    sizes = [int(size) if is_concrete_int(size) else None
             for size in (v.shape[0] for v in values if isinstance(v, torch.Tensor) and v.dim())]  # fmt: skip
    static = sizes and None not in sizes and len(set(sizes)) == 1
    return sizes[0] if static else None


def hidden_linears(gm: fx.GraphModule, model: nn.Module | None = None) -> list[tuple[str, str]]:
    """The Linears a graph cannot show: inside a module call it keeps whole, or a function it does not trace.

    symbolic_trace keeps ``torch.nn`` modules whole (``nn.MultiheadAttention``, whose in- and output
    projections are Linears) and calls functions marked with ``torch.fx.wrap`` without tracing them
    (torchvision's ``shifted_window_attention``, which takes the Linears' weights). Returns
    ``(Linear's name, the call)`` pairs. ``model``: the traced module (the graph keeps only what it calls).
    """
    modules = dict((model or gm).named_modules())
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    hidden = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and not isinstance(modules[node.target], nn.Linear):
            module = modules[node.target]
            inner = [f"{node.target}.{name}" for name, m in module.named_modules() if name and isinstance(m, nn.Linear)]
            if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
                inner.insert(0, f"{node.target}.in_proj")
            hidden += [(name, f"module {node.target!r} ({type(module).__name__})") for name in inner]
        elif node.op == "call_function" and _library(node.target) not in _TRACED:
            weights = [a.target for a in node.all_input_nodes if a.op == "get_attr" and a.target.endswith(".weight")]
            linears = [w.removesuffix(".weight") for w in weights]
            name = getattr(node.target, "__name__", node.name)
            inner = [lin for lin in linears if isinstance(modules.get(lin), nn.Linear) and lin not in called]
            hidden += [(lin, f"function {name!r}") for lin in inner]
    return hidden


_TRACED = {"torch", "_operator", "operator", "builtins", "math"}  # functions whose calls show what they compute


def _library(function) -> str:
    """The top-level package a function comes from (torch's own when it says none)."""
    return (getattr(function, "__module__", None) or "torch").split(".")[0]


def _symbolic_trace(model: nn.Module, given: Example) -> fx.GraphModule:
    """``torch.fx.symbolic_trace``, with each module's train/eval flag kept; a TraceError says where it stopped.

    The arguments the example leaves to their defaults (``attn_mask=None``, ``return_dict=False``) are traced
    at those values, as torch.export does: the graph is the model as it was called — branches on them
    resolved — and fx asserts at run time that they keep those values.
    """
    if "forward" in vars(model):
        raise TraceError(f"{type(model).__name__} has a forward set on the instance, which symbolic_trace ignores")
    tracer = _Tracer()
    tracer.record_stack_traces = True  # so that messages can name the source line of a node
    # Buffers as graph nodes, not the tensors they hold while tracing: a value computed from a buffer alone
    # (``self.cache.transpose(1, 2)``) would otherwise be frozen into the graph as a constant, blind to the
    # writes of later calls and to a state_dict loaded into the result.
    tracer.proxy_buffer_attributes = True
    bound = {(name, key): b for name, m in model.named_modules() for key, b in m._buffers.items()}
    try:
        try:
            graph = tracer.trace(model, concrete_args=_defaults_after(model, given) or None)
        finally:
            rebound = _rebind(model, bound)
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as e:
        raise TraceError(f"symbolic_trace failed{_where(e, model) or _entry(model)}: {first_line(e)}") from e
    if rebound:  # ``self.steps += 1``: the graph holds a new tensor, and nothing that puts it back in the buffer
        raise TraceError(f"{type(model).__name__}.forward assigns its buffer {rebound[0]!r} (self.{rebound[0]} = "
                         "...), a write symbolic_trace cannot record")  # fmt: skip
    # symbolic_trace rebuilds containers (ModuleList, ...) as new modules in training mode: give every
    # module the flag it had, so that an eval model stays entirely in eval mode.
    flags = {name: m.training for name, m in model.named_modules()}
    for name, m in gm.named_modules():
        m.training = flags.get(name, model.training)
    return gm


class _Proxy(fx.Proxy):
    """fx's Proxy, which also records what a tensor does in place: an assignment into it (``cache[:, pos] =
    k``) and an augmented assignment (``x += y`` is ``x.add_(y)`` for a tensor; fx would record ``x + y``)."""

    def __setitem__(self, index, value) -> None:
        self.tracer.create_proxy("call_function", operator.setitem, (self, index, value), {})

    def _in_place(self, method: str, other) -> fx.Proxy:
        return self.tracer.create_proxy("call_method", method, (self, other), {})

    def __iadd__(self, other):
        return self._in_place("add_", other)

    def __isub__(self, other):
        return self._in_place("sub_", other)

    def __imul__(self, other):
        return self._in_place("mul_", other)

    def __itruediv__(self, other):
        return self._in_place("div_", other)


class _Tracer(fx.Tracer):
    def proxy(self, node: Node) -> fx.Proxy:
        return _Proxy(node, self)


def _rebind(model: nn.Module, bound: dict) -> list[str]:
    """Give each buffer its tensor again where the traced forward assigned one (a tracer's value); the
    buffers so assigned."""
    modules, rebound = dict(model.named_modules()), []
    for (name, key), tensor in bound.items():
        value = modules[name]._buffers.get(key)
        if value is tensor:
            continue
        modules[name]._buffers[key] = tensor
        path = f"{name}.{key}" if name else key
        written = writes(value.node) if isinstance(value, fx.Proxy) else None
        if written is None or root(written).op != "get_attr" or root(written).target != path:
            rebound.append(path)  # not the buffer itself written in place (``self.steps += 1``)
    return rebound


def _entry(model: nn.Module) -> str:
    """' on the signature of Model.forward (file.py:12)': where a tracer that stops before any of the
    model's code stopped (it could not rebuild a decorated forward's signature: "co_varnames is too small")."""
    forward = inspect.unwrap(type(model).forward)
    try:
        file, line = inspect.getsourcefile(forward), inspect.getsourcelines(forward)[1]
    except (OSError, TypeError):
        return f" on the signature of {type(model).__name__}.forward"
    return f" on the signature of {type(model).__name__}.forward ({Path(file).name}:{line}, a decorated forward)"


def _defaults_after(model: nn.Module, given: Example) -> dict:
    """The forward's parameters the example leaves to their defaults, where those are plain values (None,
    flags, numbers)."""
    try:
        signature = inspect.signature(model.forward)
        named = signature.bind(*given.args, **given.kwargs).arguments
    except (TypeError, ValueError):  # no signature to read, or it does not take the example: tracing will say
        return {}
    return {p.name: p.default for p in signature.parameters.values()
            if p.name not in named and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and isinstance(p.default, PLAIN)}  # fmt: skip


def _export(model: nn.Module, inputs: Example, static: bool = False) -> tuple[ExportedProgram, str]:
    """torch.export with a dynamic batch (examples of batch 1 doubled: export specialises a batch of 1);
    where that cannot be had, or ``static`` asks for it, static at the example's own batch, with a note
    that says so.

    Static is what a decode step over a fixed-size KV cache, or a model whose export specialises the
    batch, can be: its graph runs at that batch only, and never at one the user did not give. A dynamic
    graph that holds for some batches only (a branch ``if x.shape[0] == 2`` leaves torch.export's guard
    ``x.size()[0] != 2``) would fail where the model runs: it is captured static too.
    """
    examples = inputs.map(batch_of_two)
    # buffers_kept: a failed export can leave a forward's in-place updates behind, and the next one
    # would capture them as the buffers' values.
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]), buffers_kept(model):
        warnings.simplefilter("ignore")
        dynamic = program = None
        if not static:
            try:
                program = torch.export.export(model, examples.args, examples.kwargs,
                                              dynamic_shapes=_batch_dynamic(model, examples))
            except Exception as e:
                dynamic = e
            else:
                specialised, guards = fixed_batch(program), _batch_guards(program)
                if specialised is None and not guards:
                    return program, ""
                if specialised is None and _within(guards, inputs.batch):
                    # A branch on the batch's size (diffusers' ``if x.shape[0] >= 64``): the graph holds for a
                    # range of batches, the user's among them, and its module checks the range at every call.
                    return program, (f"batch free for {batch_range(program)} ({' and '.join(guards)}): "
                                     "the module raises outside it")
                # The batch was specialised (a branch on it, a reshape by it), or the graph holds for some
                # batches only: capture again at the user's own batch (a doubled example is one they never
                # gave; a specialised graph of their own batch is kept).
                doubled = any(a is not b for a, b in zip(examples.tensors, inputs.tensors))
                if specialised is not None:
                    dynamic = TraceError(f"torch.export specialised the batch to {specialised}")
                else:
                    dynamic = TraceError(f"torch.export's graph holds only where {' and '.join(guards)}")
                if specialised is None or doubled:
                    program = None
        if program is None:
            try:
                program = torch.export.export(model, inputs.args, inputs.kwargs)
            except Exception:
                if dynamic is None:
                    raise
                raise dynamic from None  # not a matter of the batch: the dynamic capture's error says why
    why = "capture='static' asks for it" if static else f"a dynamic batch could not be captured ({first_line(dynamic)})"
    return program, f"fixed to batch {inputs.batch}: {why}"


def _batch_guards(program: ExportedProgram) -> list[str]:
    """The checks torch.export's graph makes on the batch (``x.size()[0] != 2``): the batches it does not
    hold for. Checks that relate two inputs' batches (``x.size()[0] == mask.size()[0]``) hold for every
    batch fxconv runs."""
    guards = []
    for code in _guards_code(program):
        batches = set(re.findall(r"(\S+?)\.size\(\)\[0\]", code))
        if len(batches) == 1:
            guards.append(re.sub(r"L\['(\w+)'\]", r"\1", code))
    return guards


def batch_range(program: ExportedProgram) -> str | None:
    """The batches a dynamic program holds for where they stop at a largest one (``"1 <= batch <= 63"``),
    else None."""
    values = [n.meta.get("val") for n in program.graph.nodes
              if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]  # fmt: skip
    symbols = {v.shape[0].node.expr for v in values
               if isinstance(v, torch.Tensor) and v.dim() and isinstance(v.shape[0], torch.SymInt)}  # fmt: skip
    ranges = [program.range_constraints[s] for s in symbols if s in program.range_constraints]
    upper = min((int(r.upper) for r in ranges if r.upper != int_oo), default=None)
    return None if upper is None else f"1 <= batch <= {upper}"


# Only an upper bound keeps the batch free: every batch from 1 to it then runs the captured branch, so the
# self-check's one row fewer and check_onnx's batch 1 stay inside. A lower bound (``x.size()[0] >= 3``)
# would put batch 1 on the other branch: such a graph is captured static, as any other guard's.
_BOUND = re.compile(r"\S+\.size\(\)\[0\] (<|<=) (\d+)")


def _within(guards: list[str], batch: int | None) -> bool:
    """Whether every guard bounds the batch from above (``x.size()[0] < 64``) and ``batch`` lies below."""
    compare = {"<": operator.lt, "<=": operator.le}
    bounds = [_BOUND.fullmatch(g) for g in guards]
    return batch is not None and all(b and compare[b[1]](batch, int(b[2])) for b in bounds)


def _guards_read_var_keywords(program: ExportedProgram, model: nn.Module) -> bool:
    """Whether a guard reads an input that ``**kwargs`` collected (``L['extra']['scale']``), which the
    module's guard function cannot (torch 2.14: NameError: name 'L' is not defined). Its checks are then
    left out; the input-spec hook still checks the inputs' shapes."""
    try:
        names = [p.name for p in inspect.signature(model.forward).parameters.values() if p.kind == p.VAR_KEYWORD]
    except (TypeError, ValueError):
        return False
    return any(f"L['{name}']" in code for name in names for code in _guards_code(program))


def _guards_code(program: ExportedProgram) -> list[str]:
    """The run-time checks of torch.export's graph, as Python source (private to ExportedProgram: [] if absent)."""
    return list(getattr(program, "_guards_code", None) or ())


def _batch_dynamic(model: nn.Module, examples: Example) -> tuple | dict:
    """``dynamic_shapes`` with dim 0 of every example tensor free, shaped as the forward's signature takes
    them (by parameter name: keyword inputs, a ``*args`` as one tuple, dicts and lists as they are)."""
    def free(t):
        return {0: Dim.AUTO} if t.dim() else {}

    try:
        return examples.by_name(model.forward, free)
    except (TypeError, ValueError):  # no signature to read, or it does not take them: export will say why
        return tuple(free(t) for t in examples.tensors)


def export_again(gm: fx.GraphModule, program: ExportedProgram, inputs: Example) -> ExportedProgram:
    """The rewritten graph of an ExportedProgram as an ExportedProgram, dynamic where the original was, taking
    its inputs in the original's form (by keyword where it took them so)."""
    inputs = inputs.bound(gm)
    users = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
    leaves = graph_inputs(gm, inputs)  # the program's module: its placeholders are the user inputs' leaves
    free = {id(leaf): {d: Dim.AUTO for d, size in enumerate(n.meta["val"].shape) if not isinstance(size, int)}
            for leaf, n in zip(leaves, users) if isinstance(leaf, torch.Tensor)}  # fmt: skip
    examples = inputs.map(lambda t: batch_of_two(t) if 0 in free[id(t)] else t)
    try:
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore")
            return torch.export.export(gm, examples.args, examples.kwargs,
                                       dynamic_shapes=inputs.by_name(gm.forward, lambda t: free[id(t)]))
    except Exception as e:
        raise TraceError(f"torch.export of the converted program failed: {first_line(e)}") from e


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy; a model that cannot be copied is an fxconv error with the way round it."""
    try:
        return copy.deepcopy(model)
    except Exception as e:
        raise TraceError(
            f"fxconv cannot copy {type(model).__name__} ({first_line(e)}); pass inplace=True to rewrite it "
            "without a copy (the result then shares its parameters)"
        ) from e


def _run(model: nn.Module, inputs: Example):
    """The model's outputs on ``inputs``, in eval mode, leaving its state and the RNG as they were."""
    with torch.no_grad(), eval_mode(model), buffers_kept(model), torch.random.fork_rng(devices=[]):
        return inputs.call(model)


def _in_the_models_words(error: ExampleInputError, model: nn.Module, inputs) -> FxconvError:
    """What to raise when symbolic_trace's graph rejects the example inputs. Its messages were formatted
    while tracing, so they hold tracer names where the sizes belong ("Input height (Proxy(getitem_2))
    doesn't match model (224)"): the model itself, run on the inputs, says it with the sizes. If the
    model takes the inputs, the graph is not the model (a TraceError: torch.export is tried next)."""
    try:
        _run(model, inputs)
    except Exception as e:
        if "Proxy(" not in str(error):  # the graph's own words name the place and the sizes: keep them
            return error
        return ExampleInputError(
            f"the model rejects the example inputs{_where(e, model)}: {type(e).__name__}: {first_line(e)}"
        )
    return TraceError(f"symbolic_trace's graph rejects inputs the model takes ({error})")


def _same(a, b) -> bool:
    """Whether two outputs (tensors, or nests of them) hold the same values."""
    leaves_a, leaves_b = tree_leaves(a), tree_leaves(b)
    if len(leaves_a) != len(leaves_b):
        return False
    for x, y in zip(leaves_a, leaves_b):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor):
            same_kind = x.shape == y.shape and x.dtype == y.dtype
            if not same_kind or not torch.allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True):
                return False
        elif x != y:
            return False
    return True


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and records each tensor's metadata as ``node.meta["tensor_meta"]``."""

    def __init__(self, gm: fx.GraphModule, key: str = "tensor_meta"):
        super().__init__(gm)
        self.key = key
        self.extra_traceback = False  # fx would append the node and a traceback to our one-line error

    def run_node(self, n: Node):
        try:
            result = super().run_node(n)
        except Exception as e:
            rejected = f"the model rejects the example inputs at {node_place(n)}: {type(e).__name__}: {first_line(e)}"
            raise ExampleInputError(self._expected(n) or rejected) from e
        if isinstance(result, torch.Tensor):
            n.meta[self.key] = _extract_tensor_metadata(result) if self.key == "tensor_meta" else tuple(result.shape)
        return result

    def _expected(self, n: Node) -> str:
        """What the model's first layer expects, when it is that layer that rejects an example; else ''."""
        source = n.args[0] if n.op == "call_module" and n.args else None
        if not isinstance(source, Node) or source.op != "placeholder":
            return ""
        layer = self.module.get_submodule(n.target)
        shape = tuple(self.env[source].shape)
        if isinstance(layer, nn.modules.conv._ConvNd):
            rank = len(layer.kernel_size) + 2
            dims = ", ".join(["N", "C", *"DHW"[3 - len(layer.kernel_size):]])
            want = f"{layer.in_channels} input channels in a {rank}-D ({dims}) input"
            fits = len(shape) == rank and shape[1] == layer.in_channels
        elif isinstance(layer, nn.Linear):
            want = f"inputs of {layer.in_features} features (the last dim)"
            fits = bool(shape) and shape[-1] == layer.in_features
        else:
            return ""
        if fits:  # the shape is right: what the layer rejects is something else (a dtype), said as it is
            return ""
        return f"the model expects {want} (its first layer, {node_place(n)}, is {layer}); the example is {shape}"


def graph_inputs(gm: fx.GraphModule, inputs: Example) -> list:
    """The values of ``gm``'s placeholders for a call with ``inputs``, in order: the flattened tensors for a
    graph of torch.export's (its placeholders are the pytree's leaves), else the forward's parameters bound
    (keyword inputs by name, defaults where the example gives none)."""
    spec = getattr(gm, "_in_spec", None)
    if spec is not None:
        bound = inputs.bound(gm)  # in the form it was captured with: positional ids for a keyword input_ids
        return fx_pytree.tree_flatten_spec((list(bound.args), bound.kwargs), spec)
    try:
        bound = inspect.signature(gm.forward).bind(*inputs.args, **inputs.kwargs)
    except TypeError as e:
        names = ", ".join(n.target for n in gm.graph.nodes if n.op == "placeholder")
        raise ExampleInputError(f"the model's forward({names}) does not take the example inputs: {e}") from e
    bound.apply_defaults()
    return list(bound.args)


def record_shapes(gm: fx.GraphModule, inputs: Example):
    """Record every node's shape for ``inputs``, leaving the model's state and the RNG as they were."""
    values = graph_inputs(gm, inputs)
    # Eval mode so that BatchNorm running statistics are not updated by this extra run; the shapes are
    # the same in both modes. fork_rng so that dropout here does not shift the user's random stream.
    with torch.no_grad(), eval_mode(gm), buffers_kept(gm), torch.random.fork_rng(devices=[]):
        outputs = _ShapeRecorder(gm).run(*values)
        _record_batch_dims(gm, inputs)
    return outputs


def _record_batch_dims(gm: fx.GraphModule, inputs: Example) -> None:
    """Which dims of each node's tensor change with the batch: ``node.meta["batch_dims"]``, {dim: a*N+c}.

    One example cannot tell them apart: at batch 1, MultiheadAttention's (1, N·heads, d) looks like a
    (1, heads, d) map to flatten, and a head read from it would be right at batch 1 only. So the graph runs
    once more, every input one row longer, and a dim whose size moved is marked with the size as a function
    of the batch N (``"N"``, ``"4N"``). A graph that runs at its example's batch only marks none.
    """
    batch = inputs.batch
    if batch is None:
        return
    grown = inputs.map(lambda t: torch.cat([t, t[:1]]) if t.dim() else t)
    try:
        _ShapeRecorder(gm, key="grown_shape").run(*graph_inputs(gm, grown))
    except Exception:  # fixed to the example's batch (a static capture, a cache of one size): no dim moves
        for n in gm.graph.nodes:
            n.meta.pop("grown_shape", None)
        return
    for n in gm.graph.nodes:
        grown_shape, meta = n.meta.pop("grown_shape", None), n.meta.get("tensor_meta")
        if grown_shape is None or not hasattr(meta, "shape") or len(grown_shape) != len(meta.shape):
            continue
        moved = {d: _in_batch(size, size_then - size, batch)
                 for d, (size, size_then) in enumerate(zip(meta.shape, grown_shape)) if size != size_then}
        if moved:
            n.meta["batch_dims"] = moved


def _in_batch(size: int, per_row: int, batch: int) -> str:
    """A size that grew by ``per_row`` with one more row, as a function of the batch N: "N", "4N", "2N+1"."""
    rest = size - per_row * batch
    return f"{per_row if per_row != 1 else ''}N" + (f"{rest:+d}" if rest else "")


def node_place(node: Node) -> str:
    """A node as a user knows it: "module 'layer2.0.se' (model.py:12: `x.mean((2, 3))`)"."""
    path = str(node.target) if node.op == "call_module" else module_path(node)
    where = f"module {path!r}" if path else f"the model's own forward ({node.name})"
    frames = re.findall(r'File "([^"]+)", line (\d+), in \S+\n\s*(.*)', node.meta.get("stack_trace") or "")
    user = [f for f in frames if not _is_library(f[0])]
    if user:
        file, line, code = user[-1]
        where += f" ({Path(file).name}:{line}: `{code.strip()}`)"
    return where


def _where(error: BaseException, model: nn.Module) -> str:
    """' in module 'layer2.0' at file.py:12 (`if x.sum() > 0:`)': where in the model's code a tracer stopped."""
    names = {id(m): name for name, m in model.named_modules()}
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    for e in reversed(chain):  # the original error first: wrappers re-raise from inside torch
        module, place = None, None
        for frame, line in traceback.walk_tb(e.__traceback__):
            owner = frame.f_locals.get("self")
            if id(owner) in names:
                module = names[id(owner)]
            if not _is_library(frame.f_code.co_filename):
                place = (frame.f_code.co_filename, line)
        if place:
            source = traceback.extract_tb(e.__traceback__)
            text = next((f.line for f in reversed(source) if (f.filename, f.lineno) == place), "")
            inside = f" in module {module!r}" if module else f" in {type(model).__name__}.forward"  # "": the root
            return f"{inside} at {Path(place[0]).name}:{place[1]}" + (f" (`{text}`)" if text else "")
    return ""

