"""Targets, proven on the targets' own compilers: Vela's cycles through ExecuTorch's Arm flow (Ethos-U55-128 and
U85-256) and coremltools' MIL programs (through torch.export and torch.jit.trace).

The compilers are part of the test extra; if one cannot be imported the test fails naming it (never a
silent pass). Vela is deterministic: a model gives the same cycles on every run, so the figures are
compared exactly.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import fxconv

from conftest import assert_same_outputs
from test_scope import Mlp

DEVICES = ("ethos-u55-128", "ethos-u85-256")


def _compilers():
    """fxconv.compilers, once the compilers it drives import — or a failure that names the missing one."""
    for package in ("executorch", "coremltools", "ethosu.vela", "tosa_serializer"):
        try:
            importlib.import_module(package)
        except ImportError as e:
            pytest.fail(f"{package} is not installed: the test extra brings it (pip install -e '.[test]'): {e}")
    from fxconv import compilers

    return compilers


class CifarCnn(nn.Module):
    """Two conv stages, then a head on the flattened NCHW map (32x8x8)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))  # fmt: skip
        self.fc1, self.fc2 = nn.Linear(32 * 8 * 8, 64), nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.flatten(self.features(x), 1))))


@pytest.fixture(scope="module")
def ethos():
    return _compilers().ethos_u


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


def test_ethos_u_keeps_a_token_mlp_as_it_is_and_says_why(ethos):
    """Every Linear as a 1x1 convolution costs 21x on U85-256 for this block: the target keeps them all,
    so the model Vela compiles is the original's (the same cycles); scope="all" is warned about."""
    torch.manual_seed(0)
    model, x = nn.Sequential(Mlp(96, 384)).eval(), torch.randn(1, 49, 96)
    module, report = fxconv.convert(model, x, target="ethos-u")
    assert report.converted == [] and len(report.kept) == 2
    assert all("21x on U85-256" in k.reason for k in report.kept)
    for device in DEVICES:
        assert ethos(module, x, device).cycles == ethos(model, x, device).cycles
    with pytest.warns(fxconv.FxconvWarning, match=r"scope='all' with target='ethos-u'.*21x"):
        _, report = fxconv.convert(model, x, target="ethos-u", scope="all")
    assert len(report.converted) == 2 and report.kept == []  # the user's choice is made, and warned about


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
