"""scope="all": every Linear becomes a convolution, in a layout whose permutes cancel across a block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fxconv
from fxconv.check import load_onnx, op_census, weight_products
from fxconv.fx.nodes import op_name

from conftest import assert_same_outputs, onnx_session
from test_capture import weight_products as linear_calls

CAPTURES = ["fx", "export"]
TOKENS = "(N, L, C) as (N, C, 1, L)"
CHANNELS_LAST = "(N, H, W, C) as (N, C, H, W)"


TRANSPOSES = {"permute", "transpose", "t", "movedim", "swapaxes", "swapdims", "numpy_T", "mT"}


def layout_changes(module) -> int:
    """How many permutes/transposes a graph runs (torch or ATen level)."""
    gm = module.module() if isinstance(module, torch.export.ExportedProgram) else module
    return sum(
        op_name(n) in TRANSPOSES or (op_name(n) == "getattr" and n.args[1] in ("T", "mT")) for n in gm.graph.nodes
    )


class Mlp(nn.Module):
    """A transformer MLP sub-block: LayerNorm -> fc1 -> GELU -> fc2 -> + residual."""

    def __init__(self, c=8, hidden=16):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(c), nn.Linear(c, hidden), nn.Linear(hidden, c)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class ConvNeXtBlock(nn.Module):
    """torchvision's ConvNeXt block: NCHW -> permute to NHWC -> LayerNorm, MLP -> permute back, scaled, + x."""

    def __init__(self, c=8):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(c, eps=1e-6), nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.scale = nn.Parameter(torch.rand(c, 1, 1))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        return x + self.scale * y


class TinyViT(nn.Module):
    """Patch embedding, a class token, attention and MLP blocks, a class-token head."""

    def __init__(self, c=8, heads=2):
        super().__init__()
        self.patch = nn.Conv2d(3, c, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, c))
        self.attn = nn.MultiheadAttention(c, heads, batch_first=True)
        self.norm1, self.mlp, self.norm = nn.LayerNorm(c), Mlp(c), nn.LayerNorm(c)
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return self.head(self.norm(self.mlp(x))[:, 0])


class Mixer(nn.Module):
    """MLP-Mixer: token mixing (a Linear over the tokens, on the transposed tensor), channel mixing, mean head."""

    def __init__(self, c=8, tokens=4):
        super().__init__()
        self.norm1, self.tokens, self.norm2, self.channels = (
            nn.LayerNorm(c),
            nn.Linear(tokens, tokens),
            nn.LayerNorm(c),
            Mlp(c),
        )
        self.head = nn.Linear(c, 3)

    def forward(self, x):  # (N, L, C)
        x = x + self.tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        x = self.channels(self.norm2(x))
        return self.head(x.mean(dim=1))


# -- spellings ------------------------------------------------------------------------------------


class Spelled(nn.Module):
    def __init__(self, spelling: str):
        super().__init__()
        self.spelling, self.fc = spelling, nn.Linear(6, 5)

    def forward(self, x):
        w, b = self.fc.weight, self.fc.bias
        return {
            "module": lambda: self.fc(x),
            "functional": lambda: F.linear(x, w, b),
            "matmul": lambda: x @ w.t() + b,
            "torch.matmul": lambda: torch.matmul(x, w.T) + b,
            "no bias": lambda: torch.matmul(x, w.transpose(0, 1)),
        }[self.spelling]()


@pytest.mark.parametrize("capture", CAPTURES)
@pytest.mark.parametrize("spelling", ["module", "functional", "matmul", "torch.matmul", "no bias"])
@pytest.mark.parametrize(
    ("shape", "layout"),
    [((2, 6), "(N, C) as (1, C, 1, N)"), ((2, 3, 6), TOKENS), ((2, 3, 4, 6), CHANNELS_LAST),
     ((2, 2, 3, 2, 6), "(N, D, H, W, C) as (N, C, D, H, W)")],
)  # fmt: skip
def test_every_spelling_at_every_rank_becomes_a_1x1_convolution(spelling, shape, layout, capture):
    torch.manual_seed(0)
    model = Spelled(spelling).eval()
    x = torch.randn(*shape)
    module, report = fxconv.convert(model, x, scope="all", capture=capture, strict=True)
    assert [(c.name, c.layout, c.kernel) for c in report.converted] == [("fc", layout, (1,) * max(2, len(shape) - 2))]
    assert not linear_calls(module)
    assert_same_outputs(module, model, x)
    assert_same_outputs(module, model, torch.randn(5, *shape[1:]))  # the batch is not baked in


def test_vectors_take_the_batched_layout_when_asked():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    x = torch.randn(3, 6)
    module, report = fxconv.convert(model, x, scope="all", layout="batched", strict=True)
    assert {c.layout for c in report.converted} == {"(N, C) as (N, C, 1, 1)"}
    assert layout_changes(module) == 0  # unsqueezes and squeezes only
    assert_same_outputs(module, model, x)


def test_scope_heads_reports_per_position_linears_with_the_way_to_convert_them():
    _, report = fxconv.convert(Mlp().eval(), torch.randn(2, 3, 8))
    assert {s.code for s in report.skipped} == {"not-2d"}
    assert all("scope='all'" in s.reason for s in report.skipped)


def test_an_unknown_scope_is_refused():
    with pytest.raises(fxconv.InvalidArgumentError, match="unknown scope 'every'.*heads, all"):
        fxconv.convert(Mlp(), torch.randn(2, 3, 8), scope="every")


# -- the layout propagates --------------------------------------------------------------------------


@pytest.mark.parametrize("capture", CAPTURES)
def test_a_transformer_mlp_pays_one_layout_change_in_and_one_out(capture):
    torch.manual_seed(0)
    model = nn.Sequential(Mlp(), Mlp(), Mlp()).eval()
    x = torch.randn(2, 5, 8)
    module, report = fxconv.convert(model, x, scope="all", capture=capture, strict=True)
    assert len(report.converted) == 6
    assert layout_changes(module) == 2  # three blocks, residuals included, run in (N, C, 1, L)
    assert_same_outputs(module, model, x)


@pytest.mark.parametrize("capture", CAPTURES)
def test_convnext_permutes_cancel(capture):
    torch.manual_seed(0)
    model = nn.Sequential(ConvNeXtBlock(), ConvNeXtBlock()).eval()
    x = torch.randn(2, 8, 5, 6)
    module, report = fxconv.convert(model, x, scope="all", capture=capture, strict=True)
    assert [c.layout for c in report.converted] == [CHANNELS_LAST] * 4
    assert layout_changes(module) == 0
    assert_same_outputs(module, model, x)


def test_token_embedding_enters_the_layout_without_a_transpose():
    """``conv(x).flatten(2).transpose(1, 2)`` is (N, L, C) tokens whose conv layout is the conv's output."""

    class Embed(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch, self.mlp = nn.Conv2d(3, 8, 2, 2), Mlp()

        def forward(self, x):
            return self.mlp(self.patch(x).flatten(2).transpose(1, 2))

    model, x = Embed().eval(), torch.randn(2, 3, 4, 6)
    module, _ = fxconv.convert(model, x, scope="all", capture="fx", strict=True)
    assert layout_changes(module) == 1  # only the way out
    assert_same_outputs(module, model, x)


def test_operands_broadcasting_against_tokens_are_entered_alike():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.gamma = nn.Linear(8, 8), nn.Parameter(torch.rand(8))

        def forward(self, x, mask):  # mask (N, L, 1); gamma per channel, as timm's LayerScale
            y = self.fc(x) * self.gamma
            return (y * mask).relu_() + 1.0

    model, x, mask = Gated().eval(), torch.randn(2, 5, 8), torch.rand(2, 5, 1)
    module, report = fxconv.convert(model, (x, mask), scope="all", capture="fx", strict=True)
    assert_same_outputs(module, model, x, mask)


@pytest.mark.parametrize("capture", CAPTURES)
def test_a_weight_that_an_activation_also_reads_stays_a_weight(capture):
    """``y + w`` lays ``w`` out for the conv layout; ``y @ w.t()`` must still see ``w.t()`` as a weight."""

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.w = nn.Linear(4, 4), nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return (self.fc(x) + self.w) @ self.w.t()

    model, x = Tied().eval(), torch.randn(4, 4)
    module, report = fxconv.convert(model, x, scope="all", capture=capture, strict=True)
    assert len(report.converted) == 2 and not linear_calls(module)
    assert_same_outputs(module, model, x)


def test_inplace_activations_keep_their_meaning():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Linear(8, 4), nn.Hardswish(inplace=True)).eval()
    x = torch.randn(2, 5, 8)
    module, _ = fxconv.convert(model, x, scope="all", capture="fx", strict=True)
    assert_same_outputs(module, model, x)


# -- attention, mixers, heads ---------------------------------------------------------------------


def test_multihead_attention_projections_convert_under_torch_export():
    torch.manual_seed(0)
    model, x = TinyViT().eval(), torch.randn(2, 3, 8, 8)
    module, report = fxconv.convert(model, x, scope="all", strict=True)
    assert report.capture == "torch.export"  # symbolic_trace keeps nn.MultiheadAttention whole
    assert "MultiheadAttention" in report.capture_note
    names = {c.name for c in report.converted}
    assert {"attn.in_proj", "attn.out_proj", "mlp.fc1", "mlp.fc2", "head"} <= names, str(report)
    assert not linear_calls(module)
    assert_same_outputs(module, model, x)


def test_linears_a_forced_symbolic_trace_cannot_see_are_reported():
    _, report = fxconv.convert(TinyViT().eval(), torch.randn(2, 3, 8, 8), scope="all", capture="fx")
    hidden = {s.name: s.reason for s in report.skipped}
    assert set(hidden) == {"attn.in_proj", "attn.out_proj"}
    assert all("module 'attn' (MultiheadAttention)" in r and "capture='export'" in r for r in hidden.values())


@torch.fx.wrap
def projected(x, weight, bias):
    return F.linear(x, weight, bias)


def test_a_wrapped_function_that_takes_linear_weights_hides_them():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, x):
            return projected(x, self.proj.weight, self.proj.bias)

    model, x = Wrapped().eval(), torch.randn(2, 3, 8)
    _, report = fxconv.convert(model, x, scope="all", capture="fx")
    assert [(s.name, s.code) for s in report.skipped] == [("proj", "opaque")]
    assert "function 'projected'" in report.skipped[0].reason
    module, report = fxconv.convert(model, x, scope="all")
    assert report.capture == "torch.export" and [c.name for c in report.converted] == ["proj"]
    assert_same_outputs(module, model, x)


@pytest.mark.parametrize("capture", CAPTURES)
def test_token_mixing_and_a_token_pooled_head(capture):
    torch.manual_seed(0)
    model, x = Mixer().eval(), torch.randn(2, 4, 8)
    module, report = fxconv.convert(model, x, scope="all", capture=capture, strict=True)
    layouts = {c.name: c.layout for c in report.converted}
    assert layouts == {"tokens": TOKENS, "channels.fc1": TOKENS, "channels.fc2": TOKENS, "head": "folded"}
    assert_same_outputs(module, model, x)


@pytest.mark.parametrize("capture", CAPTURES)
@pytest.mark.parametrize(("shape", "dims"), [((2, 4, 8), 1), ((2, 3, 4, 8), (1, 2)), ((2, 3, 4, 8), (-3, -2))])
def test_a_head_pooling_over_the_positions_is_a_head_in_scope_heads(shape, dims, capture):
    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.head = nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))

        def forward(self, x):
            return self.head(self.fc(x).mean(dims))

    torch.manual_seed(0)
    model, x = Pooled().eval(), torch.randn(*shape)
    module, report = fxconv.convert(model, x, capture=capture)
    assert [(c.name, c.flattened_from) for c in report.converted] == [("head.0", (8, 1, 1)), ("head.2", (6, 1, 1))]
    assert [s.name for s in report.skipped] == ["fc"]
    assert_same_outputs(module, model, x)
    module, report = fxconv.convert(model, x, scope="all", layout="batched", capture=capture, strict=True)
    assert layout_changes(module) == 1  # the way in; pooled in the conv layout, nothing leaves it
    assert_same_outputs(module, model, x)


def test_a_class_token_head_converts_in_scope_all_only():
    model, x = nn.Sequential(Mlp(), nn.LayerNorm(8)).eval(), torch.randn(2, 5, 8)

    class ClassToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = model, nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.body(x)[:, 0])

    model = ClassToken().eval()
    _, report = fxconv.convert(model, x)
    assert ("head", "not-flattened") in [(s.name, s.code) for s in report.skipped]
    module, report = fxconv.convert(model, x, scope="all", strict=True)
    assert report.converted[-1].layout == "(N, C) as (1, C, 1, N)"
    assert_same_outputs(module, model, x)


@pytest.mark.parametrize("capture", CAPTURES)
def test_a_linear_on_more_than_three_position_dims_runs_them_as_one_row_of_tokens(capture):
    model, x = Spelled("module").eval(), torch.randn(2, 2, 3, 2, 2, 6)  # Twins' (N, h, w, ws, ws, C) windows
    module, report = fxconv.convert(model, x, scope="all", capture=capture, strict=True)
    assert [c.layout for c in report.converted] == ["(N, *P, C) as (N, C, 1, L)"]
    assert not linear_calls(module)
    assert_same_outputs(module, model, x)
    assert_same_outputs(module, model, torch.randn(3, 2, 3, 2, 2, 6))


def test_a_linear_without_a_batch_dim_is_reported_and_strict_refuses_it():
    model, x = Spelled("functional").eval(), torch.randn(6)
    _, report = fxconv.convert(model, x, scope="all", capture="fx")
    assert [(s.name, s.code) for s in report.skipped] == [("fc", "no-batch")]  # as convert_onnx says it
    assert "no batch dimension" in report.skipped[0].reason
    with pytest.raises(fxconv.NotConvertibleError, match="1 Linear left alone"):
        fxconv.convert(model, x, scope="all", capture="fx", strict=True)


# -- promises kept: weights, training, dense mode, the report ----------------------------------------


def test_weights_are_shared_not_copied_and_gradients_reach_them():
    torch.manual_seed(0)
    model, x = nn.Sequential(Mlp(), Mlp()).train(), torch.randn(2, 5, 8)
    module, _ = fxconv.convert(model, x, scope="all", capture="fx", inplace=True)
    assert module.state_dict().keys() == model.state_dict().keys()
    assert {p.data_ptr() for p in module.parameters()} == {p.data_ptr() for p in model.parameters()}
    module(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_dense_mode_slides_a_convnext_like_classifier_with_every_linear_converted():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.block, self.head = nn.Conv2d(3, 8, 2, 2), ConvNeXtBlock(), nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.block(self.stem(x)).mean((2, 3)))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(1, 3, 8, 8)
    module, report = fxconv.convert(model, x, scope="all", dense=True, strict=True)
    assert len(report.converted) == 3
    assert_same_outputs(lambda t: module(t).flatten(1), model, x)
    big = torch.randn(1, 3, 12, 8)
    with torch.no_grad():
        heat = module(big)
        assert heat.shape == (1, 3, 3, 1)
        # Window 2 of the backbone's (6, 4) map, through the original head.
        window = model.block(model.stem(big))[:, :, 2:6, :]
        torch.testing.assert_close(heat[..., 2, 0], model.head(window.mean((2, 3))))


class ChannelsLastPooled(nn.Module):
    """A Linear on an (N, H, W, C) map, then a head reading its mean over the positions."""

    def __init__(self):
        super().__init__()
        self.stem, self.fc, self.head = nn.Conv2d(3, 8, 2, 2), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.fc(self.stem(x).permute(0, 2, 3, 1)).mean((1, 2)))


def test_dense_mode_slides_a_head_pooled_over_channels_last_positions_in_scope_all_only():
    torch.manual_seed(0)
    model, x = ChannelsLastPooled().eval(), torch.randn(1, 3, 8, 8)
    with pytest.raises(fxconv.NotConvertibleError, match="pools over the positions of a channels-last value"):
        fxconv.convert(model, x, dense=True)
    module, _ = fxconv.convert(model, x, scope="all", dense=True, strict=True)
    big = torch.randn(1, 3, 8, 12)
    with torch.no_grad():
        heat = module(big)
        window = model.fc(model.stem(big).permute(0, 2, 3, 1))[:, :, 1:5, :]  # window 1 of the (4, 6) map
        torch.testing.assert_close(heat[..., 0, 1], model.head(window.mean((1, 2))))


def test_the_report_names_each_layout():
    _, report = fxconv.convert(Mixer().eval(), torch.randn(2, 4, 8), scope="all")
    text = str(report)
    assert "scope='all'" in text and f"at every position, {TOKENS} -> conv2d 1x1" in text
    assert report.to_dict()["converted"][0]["layout"] == TOKENS


# -- the ONNX file -------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [None, 1])
def test_the_onnx_file_has_no_weight_matmul_and_the_convnext_transposes_are_gone(batch, tmp_path):
    torch.manual_seed(0)
    model, x = nn.Sequential(ConvNeXtBlock(), ConvNeXtBlock()).eval(), torch.randn(2, 8, 4, 4)
    module, _ = fxconv.convert(model, x, scope="all", strict=True)
    original, converted = tmp_path / "original.onnx", tmp_path / "converted.onnx"
    fxconv.export_onnx(model, x, original, batch=batch)
    fxconv.export_onnx(module, x, converted, batch=batch)
    ops = op_census(load_onnx(converted))
    assert ops.get("Transpose", 0) == 0 < op_census(load_onnx(original))["Transpose"]
    assert weight_products(load_onnx(converted)) == 0 and "Gemm" not in ops
    weights = {n.input[1] for n in load_onnx(converted).graph.node if n.op_type == "Conv"}
    assert {f"{b}.{fc}.weight" for b in "01" for fc in ("fc1", "fc2")} <= weights  # named after the Linears
    result = fxconv.check_onnx(converted, model, x, batch_sizes=None if batch is None else [1])
    assert result.passed, str(result)


def test_a_token_model_file_checks_in_onnxruntime_and_openvino(tmp_path):
    torch.manual_seed(0)
    model, x = TinyViT().eval(), torch.randn(2, 3, 8, 8)
    module, _ = fxconv.convert(model, x, scope="all", strict=True)
    path = fxconv.export_onnx(module, x, tmp_path / "vit.onnx")
    assert weight_products(load_onnx(path)) == 0
    (got,) = onnx_session(path)(x)
    torch.testing.assert_close(got, model(x).detach())
    result = fxconv.check_onnx(path, model, x, runtime="openvino")
    assert result.passed, str(result)


# -- properties -----------------------------------------------------------------------------------------


class Chain(nn.Module):
    """Linears at every position with optional LayerNorm, activation and residual around each."""

    def __init__(self, widths: list[int], bias: bool, residual: bool, norm: bool):
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(nn.LayerNorm(a) if norm else nn.Identity() for a in widths[:-1])
        self.residual = [residual and a == b for a, b in zip(widths, widths[1:])]

    def forward(self, x):
        for fc, norm, residual in zip(self.fcs, self.norms, self.residual):
            y = F.gelu(fc(norm(x)))
            x = x + y if residual else y
        return x


@settings(max_examples=60, deadline=None)
@given(
    positions=st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple),
    n=st.integers(1, 3),
    widths=st.lists(st.integers(1, 9), min_size=2, max_size=4),
    bias=st.booleans(),
    residual=st.booleans(),
    norm=st.booleans(),
    layout=st.sampled_from(fxconv.LAYOUTS),
    seed=st.integers(0, 2**16),
)
def test_any_chain_at_every_position_converts_and_matches(positions, n, widths, bias, residual, norm, layout, seed):
    torch.manual_seed(seed)
    if residual:
        widths = [widths[0]] * len(widths)  # residuals need equal widths
    model = Chain(widths, bias, residual, norm).eval()
    x = torch.randn(n, *positions, widths[0])
    module, report = fxconv.convert(model, x, scope="all", layout=layout, capture="fx", strict=True)
    assert len(report.converted) == len(widths) - 1
    assert layout_changes(module) <= (2 if positions or layout == "folded" else 0)  # one in, one out
    assert_same_outputs(module, model, x)
    assert_same_outputs(module, model, torch.randn(n + 1, *positions, widths[0]))
