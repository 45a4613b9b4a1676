"""Targets, proven on the targets' own compilers: Vela's cycles through ExecuTorch's Arm flow (Ethos-U55-128 and
U85-256) and coremltools' MIL programs (through torch.export and torch.jit.trace).

The compilers are part of the test extra; if one cannot be imported the test fails naming it (never a
silent pass). Vela is deterministic: a model gives the same cycles on every run, so the figures are
compared exactly.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import fxconv

from conftest import assert_same_outputs
from test_scope import Mlp

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))  # the models the Targets table measures
from targets import CifarCnn, RotaryBlock

DEVICES = ("ethos-u55-128", "ethos-u85-256")


def _compilers():
    """fxconv's compiler flows (``fxconv.artifacts``), once the compilers they drive import — or a failure that
    names the missing one."""
    for package in ("executorch", "coremltools", "ethosu.vela", "tosa_serializer", "tosa_reference_model"):
        try:
            importlib.import_module(package)
        except ImportError as e:
            pytest.fail(f"{package} is not installed: the test extra brings it (pip install -e '.[test]'): {e}")
    from fxconv.artifacts import coreml, ethos_u

    return coreml, ethos_u


@pytest.fixture(scope="module")
def ethos():
    return _compilers()[1].ethos_u


def test_ethos_u_reads_a_flattened_map_channels_last_and_runs_in_fewer_cycles(ethos):
    torch.manual_seed(0)
    model, x = CifarCnn().eval(), torch.randn(1, 3, 32, 32)
    module, report = fxconv.convert(model, x, target="ethos-u")
    assert report.target == "ethos-u" and [(c.name, c.method) for c in report.converted] == [("fc1", "channels-last")]
    assert [(k.name, k.code) for k in report.kept] == [("fc2", "kept")] and report.skipped == []
    assert "channels-last flattening" in str(report) and "1 kept for the target" in str(report)
    assert_same_outputs(module, model, x)
    for device in DEVICES:
        original, converted = ethos(model, x, device), ethos(module, x, device)
        assert converted.cycles < original.cycles, device  # the NHWC flow's two Transposes are gone
        assert len(converted.outside) <= len(original.outside), (device, converted.outside)


def test_ethos_u_runs_each_token_linear_as_its_own_1x1_convolution_in_fewer_cycles(ethos):
    """Each Linear in and out of (N, C, 1, L) on its own, nothing else in the layout: fewer cycles on both
    devices; carrying the layout through the block (the onnxruntime profile's scope="all") costs 21x on U85."""
    torch.manual_seed(0)
    model, x = nn.Sequential(Mlp(96, 384)).eval(), torch.randn(1, 49, 96)
    module, report = fxconv.convert(model, x, target="ethos-u", strict=True)
    assert [c.layout for c in report.converted] == ["(N, L, C) as (N, C, 1, L)"] * 2 and report.kept == []
    assert all("its own 1x1 convolution" in c.why for c in report.converted)
    assert_same_outputs(module, model, x)
    carried, _ = fxconv.convert(model, x, scope="all", layout="batched")
    for device in DEVICES:
        original = ethos(model, x, device).cycles
        assert ethos(module, x, device).cycles < original, device
    assert ethos(carried, x, "ethos-u85-256").cycles > 10 * original  # the residual add in the layout


class LookedUp(nn.Module):
    """Token ids looked up, then a head on the flattened (N, L, C) sequence."""

    def __init__(self):
        super().__init__()
        self.embed, self.fc = nn.Embedding(50, 16), nn.Linear(32 * 16, 4)

    def forward(self, ids):
        return self.fc(self.embed(ids).flatten(1))


@pytest.mark.parametrize("kind", ["embedding", "conv1d"])
def test_ethos_u_keeps_a_head_on_a_flattened_1d_map_which_tosa_holds_in_its_own_order(kind, ethos):
    """Only 4-D maps are NHWC in TOSA: a (N, C, L) map's channels-last flattening would add the Transposes it
    saves on an image (measured +7 % / +13 % after an Embedding, before the target kept it)."""
    torch.manual_seed(0)
    if kind == "embedding":
        model, x = LookedUp().eval(), torch.randint(0, 50, (1, 32))
    else:
        model, x = nn.Sequential(nn.Conv1d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 32, 4)), \
            torch.randn(1, 8, 32)  # fmt: skip
    module, report = fxconv.convert(model.eval(), x, target="ethos-u")
    assert report.converted == [] and [k.code for k in report.kept] == ["kept"]
    assert "only 4-D maps are NHWC" in report.kept[0].reason
    for device in DEVICES:
        assert ethos(module, x, device).cycles == ethos(model, x, device).cycles, device
    _, chosen = fxconv.convert(model, x, "channels-last")  # chosen by the user: made as asked
    assert [c.method for c in chosen.converted] == ["channels-last"]


class TokensToHead(nn.Module):
    """A Linear at every position of a token sequence, its output flattened into a head."""

    def __init__(self):
        super().__init__()
        self.tokens, self.head = nn.Linear(8, 16), nn.Linear(32 * 16, 4)

    def forward(self, x):
        return self.head(torch.relu(self.tokens(x)).flatten(1))


def test_ethos_u_keeps_a_linear_at_every_position_whose_output_a_head_flattens(ethos):
    """Its 1x1 convolution's way back out of (N, C, 1, L) before the flatten cost +38 % / +36 % cycles."""
    torch.manual_seed(0)
    model, x = TokensToHead().eval(), torch.randn(1, 32, 8)
    module, report = fxconv.convert(model, x, target="ethos-u")
    assert report.converted == [] and [k.name for k in report.kept] == ["tokens", "head"]
    assert "flattened into a head's vector" in report.kept[0].reason and "4-D maps" in report.kept[1].reason
    for device in DEVICES:
        assert ethos(module, x, device).cycles == ethos(model, x, device).cycles, device
    _, alone = fxconv.convert(nn.Sequential(model.tokens, nn.ReLU()).eval(), x, target="ethos-u")
    assert [c.name for c in alone.converted] == ["0"]  # not flattened: converted as before


class TwoParts(nn.Module):
    """A convolution, an AvgPool2d(8) Ethos-U55 leaves to the CPU (as MLPerf Tiny's ResNet-8's), then a Linear:
    two delegated NPU parts with the CPU between them."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.sigmoid(nn.functional.avg_pool2d(self.conv(x), 8)).flatten(1))


def test_vela_s_cycles_are_every_delegated_part_s(ethos):
    """ExecuTorch gives every part the one intermediate folder, where each part's summary overwrote the last:
    the figure was the last part's (2,400 cycles of 20,442 here)."""
    torch.manual_seed(0)
    model, x = TwoParts().eval(), torch.randn(1, 3, 32, 32)
    compiled = ethos(model, x, "ethos-u55-128")
    assert compiled.outside == ["avg_pool2d"] and len(compiled.parts) == 2
    assert compiled.cycles == sum(compiled.parts) and all(part > 0 for part in compiled.parts)
    alone = ethos(nn.Sequential(model.conv), x, "ethos-u55-128")  # the first part on its own
    assert alone.parts == [alone.cycles] and compiled.parts[0] >= alone.cycles > compiled.parts[-1]


def test_a_target_is_a_profile_that_explicit_choices_override():
    model, x = CifarCnn().eval(), torch.randn(2, 3, 32, 32)
    _, report = fxconv.convert(model, x, target="coreml")
    assert (report.method, report.scope, report.layout) == ("kernel", "all", "batched")
    assert all(c.why.startswith("Core ML") for c in report.converted)
    _, report = fxconv.convert(model, x, "1x1", target="coreml")
    assert (report.method, report.scope) == ("1x1", "all")
    _, report = fxconv.convert(model, x, target="ethos-u", method="kernel")
    assert [c.method for c in report.converted] == ["kernel", "kernel"] and report.kept == []
    with pytest.warns(fxconv.FxconvWarning, match="layout='batched' with target='onnxruntime'"):
        fxconv.convert(model, x, layout="batched")
    with pytest.raises(fxconv.InvalidArgumentError, match="unknown target 'tpu'"):
        fxconv.convert(model, x, target="tpu")


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_the_channels_last_method_is_exact_for_every_map_rank_and_both_captures(capture):
    torch.manual_seed(0)
    for rank in (1, 2, 3):
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank]
        model = nn.Sequential(conv(2, 3, 1), nn.Flatten(), nn.Dropout(), nn.Linear(3 * 4**rank, 5)).eval()
        x = torch.randn(2, 2, *(4,) * rank)
        module, report = fxconv.convert(model, x, "channels-last", capture=capture, strict=True)
        assert [c.method for c in report.converted] == ["channels-last"]
        assert_same_outputs(module, model, x)
        assert_same_outputs(module, model, torch.randn(3, 2, *(4,) * rank))


# -- Core ML -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coreml():
    return _compilers()[0].coreml_ops


class Logits(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids).logits


def _transformers():
    timm = pytest.importorskip("timm")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    deit = timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=2).eval()
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64)  # fmt: skip
    bert = Logits(transformers.BertForSequenceClassification(config).eval()).eval()
    return {"deit": (deit, torch.randn(1, 3, 32, 32)), "bert": (bert, torch.randint(0, 100, (1, 8)))}


@pytest.mark.parametrize("name", ["deit", "bert"])
def test_core_ml_runs_a_transformer_in_b_c_1_s_with_no_more_transposes_than_the_original(name, coreml):
    """Every Linear a 1x1 convolution, attention split per head with Apple's einsums, through both of
    coremltools' paths: no ``linear`` op, no more MIL transposes (nor reshapes) than the original's."""
    model, x = _transformers()[name]
    module, report = fxconv.convert(model, x, target="coreml", strict=True)
    assert len(report.converted) == sum(isinstance(m, nn.Linear) for m in model.modules())
    runnable = module.module() if isinstance(module, torch.export.ExportedProgram) else module
    with torch.no_grad():
        torch.testing.assert_close(runnable(x), model(x))
    for via in ("export", "trace"):
        original, converted = coreml(model, x, via), coreml(module, x, via)
        assert converted["linear"] == 0 and converted["conv"] >= len(report.converted), (via, converted)
        assert converted["transpose"] <= original["transpose"], (via, converted["transpose"], original["transpose"])
        assert converted["reshape"] <= original["reshape"], via
        assert converted["einsum"] > 0, via  # the split-einsum attention


@pytest.mark.parametrize(("rotary", "kv_heads"), [(8, 4), (4, 4), (8, 2)], ids=["rotary", "partial-rotary", "gqa"])
@pytest.mark.parametrize("capture", ["fx", "export"])
def test_core_ml_carries_rotary_embeddings_and_causal_attention_in_b_c_1_s(rotary, kv_heads, capture, coreml,
                                                                          tmp_path):
    """The halves rotary embeddings rotate are slices and a concatenation of each head's channels, cos and sin
    broadcast over the heads, GQA's repeated key heads an expand of a factor, the causal mask a constant: all
    in (B, C, 1, S), so the attention stays split per head (Apple's einsums) and the MIL program holds fewer
    transposes than the original's."""
    torch.manual_seed(0)
    model, x = RotaryBlock(rotary=rotary, kv_heads=kv_heads).eval(), torch.randn(1, 8, 32)
    module, report = fxconv.convert(model, x, target="coreml", capture=capture, strict=True)
    assert len(report.converted) == 4
    assert sorted(module.state_dict()) == sorted(model.state_dict())  # the causal mask is no checkpoint entry
    for batch in (1, 2):
        inputs = torch.randn(batch, 8, 32)
        torch.testing.assert_close(module(inputs), model(inputs))
    for via in ("export", "trace"):
        original, converted = coreml(model, x, via), coreml(module, x, via)
        assert converted["linear"] == 0 and converted["einsum"] == 2 * model.heads, (via, converted)
        assert converted["transpose"] < original["transpose"], (via, converted["transpose"], original["transpose"])
    check = fxconv.check_onnx(fxconv.export_onnx(module, x, tmp_path / "rotary.onnx"), model, x)
    assert check.passed and check.ops["Einsum"] == 2 * model.heads, check


def test_core_ml_converts_a_head_through_jit_trace_too(coreml):
    torch.manual_seed(0)
    model, x = CifarCnn().eval(), torch.randn(1, 3, 32, 32)
    module, _ = fxconv.convert(model, x, target="coreml", strict=True)
    for via in ("export", "trace"):
        ops = coreml(module, x, via)
        assert ops["linear"] == 0 and ops["conv"] == 4 and ops["transpose"] == 0, (via, ops)


def test_a_token_mlp_pays_exactly_the_way_into_b_c_1_s_and_out(coreml):
    model, x = nn.Sequential(Mlp(96, 384), Mlp(96, 384)).eval(), torch.randn(1, 49, 96)
    module, _ = fxconv.convert(model, x, target="coreml", strict=True)
    ops = coreml(module, x)
    assert ops["linear"] == 0 and ops["conv"] == 4 and ops["transpose"] == 2
    assert ops["layer_norm"] == 2  # written out over the channels, fused back by coremltools
