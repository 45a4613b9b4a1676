"""Hugging Face ``transformers`` image classifiers, built from their default configs (random weights, no
download). None of them can be captured by symbolic_trace (control flow on shapes and config flags), so
each goes through torch.export: outputs equal at two batch sizes, the head converted, the ONNX file checked.
"""

from __future__ import annotations

import pytest
import torch

import fxconv

transformers = pytest.importorskip("transformers")

# (config, model class, input size, Linears left alone): the CNNs have none; ConvNext and Swin keep
# the per-position Linears of their blocks (not-2d), which scope="heads" does not convert.
MODELS = {
    "resnet": ("ResNetConfig", "ResNetForImageClassification", 64),
    "convnext": ("ConvNextConfig", "ConvNextForImageClassification", 64),
    "mobilenet_v1": ("MobileNetV1Config", "MobileNetV1ForImageClassification", 64),
    "mobilenet_v2": ("MobileNetV2Config", "MobileNetV2ForImageClassification", 64),
    "regnet": ("RegNetConfig", "RegNetForImageClassification", 64),
    "swin": ("SwinConfig", "SwinForImageClassification", 224),
}
# torch.onnx.export (torch 2.14) fails on the graph of ExportedProgram.module() for Swin even unconverted
# (an aten.view of a transposed tensor under a symbolic batch): its ONNX step is a torch limitation.
NO_ONNX = {"swin"}


def logits(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_a_transformers_classifier_converts_through_torch_export(name, tmp_path):
    config, cls, size = MODELS[name]
    torch.manual_seed(0)
    model = getattr(transformers, cls)(getattr(transformers, config)()).eval()
    x = torch.randn(2, 3, size, size)
    method = "kernel" if len(name) % 2 else "1x1"
    module, report = fxconv.convert(model, x, method)
    assert report.capture == "torch.export"
    assert "symbolic_trace failed in" in report.capture_note  # names the module and line
    assert [c.name.split(".")[0] for c in report.converted] == ["classifier"]  # HF ResNet: classifier.1
    assert {s.code for s in report.skipped} <= {"not-2d"}, str(report)
    with torch.no_grad():
        for batch in (x, x[:1]):
            torch.testing.assert_close(logits(module(batch)), logits(model(batch)))
    if name in NO_ONNX:
        return
    check = fxconv.check_onnx(fxconv.export_onnx(module, x, tmp_path / f"{name}.onnx"), model, x)
    assert check.passed, check
    assert "Gemm" not in check.ops
