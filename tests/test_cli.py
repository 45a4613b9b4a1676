"""The command line, run as a user runs it: in a subprocess, reading exit codes, stdout and stderr."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch import nn

import fxconv

from conftest import fxconv_cli

TINY = "1,3,16,16"
FACTORY = """
import torch
from torch import nn

def make():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 10), nn.ReLU(), nn.Linear(10, 5)
    )

def noisy():
    class Noisy(nn.Module):
        def forward(self, x):
            return x.flatten(1) + torch.rand_like(x.flatten(1))  # differs on every run: the check fails
    return Noisy()

def double():
    return make().double()

def broken():
    raise RuntimeError("no weights here")

def with_none():  # returns (logits, None): the ONNX file returns the logits alone
    class WithNone(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 16 * 16, 4)

        def forward(self, x):
            return self.fc(x.flatten(1)), None
    return WithNone()

def per_pixel():  # a Linear over the last axis of an image: nothing a head rewrite converts (not-2d)
    return nn.Sequential(nn.Conv2d(3, 2, 1), nn.Linear(16, 4))

class Sized(nn.Module):  # checks its input's size with a message formatted from it, as timm's patch embedding

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 16 * 16, 4)

    def forward(self, x):
        torch._assert(x.shape[2] == 16, f"Input height ({x.shape[2]}) doesn't match model (16).")
        return self.fc(x.flatten(1))

class Net(nn.Module):  # built with arguments, or by a classmethod: the specs real libraries need

    def __init__(self, width=4, pool="mean"):
        super().__init__()
        self.conv, self.pool, self.fc = nn.Conv2d(3, width, 3), pool, nn.Linear(width, 3)

    @classmethod
    def from_name(cls, name):
        return cls(width={"small": 2, "large": 8}[name])

    def forward(self, x):
        x = self.conv(x)
        return self.fc(x.mean((2, 3)) if self.pool == "mean" else x.amax((2, 3)))

class Tokens(nn.Module):  # starts by looking up token ids: its example is ids below its vocabulary

    def __init__(self):
        super().__init__()
        self.embed, self.fc = nn.Embedding(50, 8), nn.Linear(8 * 32, 4)

    def forward(self, ids):
        return self.fc(self.embed(ids).flatten(1))

class Pair(nn.Module):  # two inputs, and a mask of ids

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, image, other, mask=None):
        out = self.fc(image.flatten(1)) + self.fc(other.flatten(1))
        return out if mask is None else out * mask
"""


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "nets.py").write_text(textwrap.dedent(FACTORY))
    return tmp_path


@pytest.mark.slow
def test_a_torchvision_model_end_to_end(workdir):
    result = fxconv_cli(
        "convert", "torchvision:resnet18", "--input-shape", "1,3,64,64", "-o", "r18.onnx",
        "--report", "r18.json", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "converted  fc" in result.stdout and "check PASSED" in result.stdout
    assert "exporting the converted model" in result.stderr  # long steps say that they run
    assert "original" not in result.stderr.split("checking")[0]  # one export: the original's is not needed
    assert "<- 1 replace Linears" in result.stdout and "Gemm/MatMul reading a weight: 0" in result.stdout
    ops = fxconv.op_census(fxconv.load_onnx(workdir / "r18.onnx"))
    assert ops["Conv"] == 21 and "Gemm" not in ops
    report = json.loads((workdir / "r18.json").read_text())
    assert [c["name"] for c in report["converted"]] == ["fc"]
    artifact = report["artifact"]
    assert {k: artifact[k] for k in ("batch", "opset", "ops", "weight_products")} == {
        "batch": None, "opset": 20, "ops": ops, "weight_products": 0}  # fmt: skip
    assert artifact["check"]["passed"] and artifact["check"]["runtime"] == "onnxruntime"
    assert list(report["timings_s"]) == ["start-up", "load", "convert", "export", "check", "total"]
    assert report["timings_s"]["total"] >= sum(v for k, v in report["timings_s"].items() if k != "total")
    assert report["versions"]["torch"] and "timings: start-up " in result.stdout

    inspected = fxconv_cli("inspect", "r18.onnx", cwd=workdir)
    assert inspected.returncode == 0
    assert "[batch, 3, 64, 64]" in inspected.stdout and "Conv" in inspected.stdout
    initializers = fxconv.load_onnx(workdir / "r18.onnx").graph.initializer
    assert f"parameters: {sum(math.prod(i.dims) for i in initializers):,} in {len(initializers)}" in inspected.stdout


@pytest.mark.slow
def test_an_npu_file_static_batch_older_opset_checked_in_openvino(workdir):
    pytest.importorskip("openvino")
    result = fxconv_cli(
        "convert", "torchvision:alexnet", "--input-shape", "1,3,224,224", "--batch", "1", "--opset", "13",
        "--runtime", "openvino", "-o", "a.onnx", "--report", "a.json", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "openvino check PASSED" in result.stdout and "Transpose" not in result.stdout
    written = fxconv.load_onnx(workdir / "a.onnx")
    assert written.opset_import[0].version == 13
    assert [d.dim_value for d in written.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 224, 224]
    assert [i.name for i in written.graph.input] == ["input"] and [o.name for o in written.graph.output] == ["output"]
    assert json.loads((workdir / "a.json").read_text())["artifact"]["batch"] == 1


def fxconv_cli_counting_torch(*args: str, cwd) -> tuple[subprocess.CompletedProcess, str]:
    """Run the command line in a fresh interpreter; also say its exit code and whether torch got imported."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['fxconv', *{list(args)!r}]\n"
        "try:\n    runpy.run_module('fxconv', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
        "print(code, 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
    return result, result.stdout.strip().splitlines()[-1]


def test_help_answers_without_importing_torch(workdir):
    result, ending = fxconv_cli_counting_torch("convert", "--help", cwd=workdir)
    assert "--opset N" in result.stdout and ending == "0 False", result.stdout
    top = subprocess.run([sys.executable, "-m", "fxconv", "--help"], capture_output=True, text=True, cwd=workdir)
    assert "Linear layers as the convolutions they are" in top.stdout and "fxconv convert torchvision:" in top.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["nets:make", "--opset", "12"], "--opset 12: fxconv writes opsets 13 to"),
        (["nets:make", "--input-shape", "0,3,16,16"], "is not a shape"),
        (["missing.pt2"], "MODEL 'missing.pt2' is neither torchvision:NAME"),
        (["m.onnx", "--batch", "1"], "--batch: not for an ONNX input"),
        (["nets:make", "--input-shape", "1,3,100000,100000"],
         "one example of 1,3,100000,100000 is 111.8 GiB of float32, more than this"),
        (["nets:make", "--input", "x=1,3,16,16:int99"], "--input x=1,3,16,16:int99: unknown dtype 'int99'"),
        (["nets:make", "--input", "ids=1,32:int64:9,1"], "the range 9,1 runs from high to low"),
        (["nets:make", "--input", "x=absent.npy"], "--input x=absent.npy: no file absent.npy"),
        (["nets:make", "--input", "1,3,16,16", "--input-shape", "1,3,16,16"], "--input-shape and --input both"),
        (["m.onnx", "--input", "1,3,16,16"], "--input: an ONNX file's inputs are the ones it declares"),
    ],
    ids=["opset", "shape", "missing-file", "onnx-batch", "huge-example", "unknown-dtype", "backward-range",
         "missing-input-file", "input-twice", "onnx-input"],
)
def test_what_can_be_refused_before_torch_is_imported_is(workdir, args, message):
    (workdir / "m.onnx").write_bytes(b"not read: refused first")
    result, ending = fxconv_cli_counting_torch("convert", *args, "-o", "out.onnx", cwd=workdir)
    assert ending == "2 False" and message in result.stderr, (result.stdout, result.stderr)


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(workdir):
    result, ending = fxconv_cli_counting_torch("convert", "nets:make", "-o", "/proc/fxconv-m.onnx", cwd=workdir)
    assert ending == "2 False", (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith("fxconv: error: cannot write /proc/fxconv-m.onnx: ") and "in /proc" in result.stderr


def test_the_self_check_is_printed_and_no_verify_says_so_loudly(workdir):
    checked = fxconv_cli("convert", "nets:make", "--input-shape", TINY, "-o", "m.onnx", cwd=workdir)
    assert checked.returncode == 0 and "  verified: batches 1 and 2, max abs diff " in checked.stdout, checked.stderr
    unchecked = fxconv_cli("convert", "nets:make", "--input-shape", TINY, "--no-verify", "-o", "n.onnx", cwd=workdir)
    assert unchecked.returncode == 0 and "NOT VERIFIED: verify=False" in unchecked.stdout, unchecked.stderr
    assert "--no-verify" in fxconv_cli("convert", "--help", cwd=workdir).stdout


def test_a_model_returning_none_beside_its_tensors_is_written_and_checked(workdir):
    result = fxconv_cli("convert", "nets:with_none", "--input-shape", TINY, "-o", "m.onnx", cwd=workdir)
    assert result.returncode == 0 and "check PASSED" in result.stdout, result.stderr
    assert [o.name for o in fxconv.load_onnx(workdir / "m.onnx").graph.output] == ["output"]


def test_a_runtime_that_is_not_installed_is_refused_before_any_work(workdir, monkeypatch, capsys):
    from fxconv import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    code = cli.main(["convert", "no.such:model", "--runtime", "openvino", "-o", str(workdir / "m.onnx")])
    assert (
        code == 2
        and "--runtime openvino: it is not installed (pip install 'fxconv[openvino]')" in capsys.readouterr().err
    )


def test_a_module_callable_model(workdir):
    result = fxconv_cli("convert", "nets:make", "--input-shape", TINY, "--method", "1x1", "-o", "m.onnx", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("converted  ") == 2
    assert "Gemm" not in fxconv.op_census(fxconv.load_onnx(workdir / "m.onnx"))


def test_a_pickled_model_needs_allow_pickle_and_checkpoints_are_unwrapped(workdir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 14 * 14, 4))
    torch.save(model, workdir / "model.pt")
    weights = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(392, 4)).state_dict()
    torch.save({"state_dict": weights, "epoch": 3}, workdir / "w.pt")  # a training checkpoint
    refused = fxconv_cli("convert", "model.pt", "--input-shape", TINY, "-o", "m.onnx", cwd=workdir)
    assert refused.returncode == 2 and "pickled model" in refused.stderr and "--allow-pickle" in refused.stderr
    assert not (workdir / "m.onnx").exists()
    weights_only = fxconv_cli("convert", "w.pt", "--input-shape", TINY, "-o", "m.onnx", cwd=workdir)
    assert weights_only.returncode == 2 and "holds weights, not a model" in weights_only.stderr
    result = fxconv_cli(
        "convert", "model.pt", "--allow-pickle", "--input-shape", TINY, "--state-dict", "w.pt", "-o", "m.onnx",
        "--report", "r.json", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (workdir / "m.onnx").is_file() and "check PASSED" in result.stdout


@pytest.mark.parametrize(
    ("spec", "width"),
    [("nets:Net(8, pool='max')", 8), ("nets:Net.from_name('small')", 2), ("nets:Net", 4)],
)
def test_factories_with_literal_arguments_and_dotted_names(workdir, spec, width):
    result = fxconv_cli("convert", spec, "--input-shape", TINY, "-o", "n.onnx", "--report", "n.json", cwd=workdir)
    assert result.returncode == 0, result.stderr
    report = json.loads((workdir / "n.json").read_text())
    assert [(c["name"], c["flattened_from"]) for c in report["converted"]] == [("fc", [width, 1, 1])]


@pytest.fixture
def in_workdir(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.syspath_prepend(str(workdir))
    return workdir


def test_zoo_models_take_keyword_arguments_and_weights_that_do_not_fit_are_summarised(in_workdir):
    workdir = in_workdir
    from fxconv._load import load_model

    assert load_model("torchvision:resnet18(num_classes=10)", None).fc.out_features == 10
    for wrong in ("torchvision:resnet18(10)", "timm:resnet18(1, num_classes=2)"):
        with pytest.raises(fxconv.InvalidArgumentError, match="a name with keyword arguments"):
            load_model(wrong, None)
    torch.save(nn.Linear(16, 4).state_dict(), workdir / "linear.pt")
    wide = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 10))
    torch.save({f"module.{k}": v for k, v in wide.state_dict().items()}, workdir / "parallel.pt")
    torch.save(wide.state_dict(), workdir / "wide.pt")
    for weights, summary in [
        ("linear.pt", "6 keys missing: 0.weight, 0.bias, 3.weight and 3 more; 2 keys unexpected: weight, bias."),
        ("parallel.pt", "4 keys unexpected: module.0.weight, module.0.bias, module.3.weight and 1 more (saved "
                        "from a DataParallel wrapper: strip the 'module.' prefix)"),
        ("wide.pt", "2 keys missing: 5.weight, 5.bias; 3 keys of another shape: 0.weight (8, 3, 3, 3) in the file, "
                    "(4, 3, 3, 3) in the model, 0.bias"),
    ]:  # fmt: skip
        result = fxconv_cli("convert", "nets:make", "--state-dict", weights, "-o", "m.onnx", cwd=workdir)
        error = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2 and summary in error, error
        assert error.endswith("Is this the model these weights belong to?"), error
        assert len(error) < 400


def test_hugging_face_models_from_their_config(in_workdir):
    transformers = pytest.importorskip("transformers")
    bert = ("transformers:BertModel(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, "
            "intermediate_size=64, vocab_size=100)")  # fmt: skip
    result = fxconv_cli("convert", bert, "--scope", "all", "-o", "bert.onnx", "--report", "b.json", cwd=in_workdir)
    assert result.returncode == 0, result.stderr
    report = json.loads((in_workdir / "b.json").read_text())
    assert report["input_shape"] == [1, 32] and report["artifact"]["check"]["passed"]  # token ids: one row of 32
    assert len(report["converted"]) == 7 and report["skipped"] == []  # q, k, v, out, the MLP, the pooler
    assert "W1202" not in result.stderr and "Enum subclass" not in result.stderr  # torchao's import warnings
    config = transformers.ViTConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                    intermediate_size=64, image_size=32, patch_size=16)  # fmt: skip
    config.to_json_file(in_workdir / "vit.json")
    result = fxconv_cli("convert", "transformers:AutoModel('vit.json')", "--scope", "all", "-o", "vit.onnx",
                        "--report", "v.json", cwd=in_workdir)  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((in_workdir / "v.json").read_text())
    assert report["input_shape"] == [1, 3, 32, 32] and report["artifact"]["check"]["passed"]  # the config's image size

    from fxconv._load import example_input, load_model

    model = load_model("transformers:ViTForImageClassification('vit.json', num_labels=5)", None)
    assert model.classifier.out_features == 5 and model.config.num_hidden_layers == 1
    audio = load_model("transformers:Wav2Vec2Model(num_hidden_layers=1, hidden_size=32, intermediate_size=64, "
                       "num_attention_heads=2)", None)  # fmt: skip
    assert example_input(audio, None).shape == (1, 16000) and example_input(model, (2, 3, 32, 32)).shape[0] == 2
    ids = example_input(load_model("transformers:BertModel(vocab_size=50, num_hidden_layers=1)", None), (2, 7))
    assert ids.shape == (2, 7) and ids.dtype == torch.int64 and 0 <= ids.min() and ids.max() < 50
    for spec, message in [
        ("transformers:BertModel(num_hiden_layers=1)", "BertConfig has no field 'num_hiden_layers': did you mean "
                                                       "'num_hidden_layers'?"),
        ("transformers:BertModl", "transformers has no 'BertModl': did you mean 'BertModel'"),
        ("transformers:AutoModel", "takes one config file"),
        ("transformers:BertModel('absent.json')", "no config file 'absent.json'"),
    ]:  # fmt: skip
        with pytest.raises(fxconv.InvalidArgumentError, match=re.escape(message)):
            load_model(spec, None)


def test_a_timm_model(workdir):
    pytest.importorskip("timm")
    result = fxconv_cli("convert", "timm:resnet10t", "--input-shape", "1,3,32,32", "-o", "t.onnx", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "converted  fc" in result.stdout and "check PASSED" in result.stdout


def test_an_exported_program_file(workdir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 14 * 14, 4)).eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, workdir / "model.pt2")
    result = fxconv_cli("convert", "model.pt2", "--input-shape", TINY, "-o", "p.onnx", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "captured with ExportedProgram" in result.stdout and "check PASSED" in result.stdout
    refused = fxconv_cli("convert", "model.pt2", "--state-dict", "w.pt", "-o", "q.onnx", cwd=workdir)
    assert refused.returncode == 2 and "--state-dict does not apply" in refused.stderr


def test_dense_gives_a_file_with_dynamic_height_and_width(workdir):
    result = fxconv_cli("convert", "nets:make", "--input-shape", TINY, "--dense", "-o", "d.onnx", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "dense" in result.stdout and "check PASSED" in result.stdout
    inspected = fxconv_cli("inspect", "d.onnx", cwd=workdir)
    assert "[batch, 3, dim2, dim3]" in inspected.stdout
    assert "[batch, 5, " in inspected.stdout  # (N, classes, h, w) out


def test_the_newest_opset_is_written_without_the_exporter_s_chatter(workdir):
    newest = fxconv.export.OPSETS[-1]
    result = fxconv_cli("convert", "nets:make", "--input-shape", TINY, "--opset", str(newest), "-o", "m.onnx",
                        cwd=workdir)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert fxconv.load_onnx(workdir / "m.onnx").opset_import[0].version == newest
    progress = ("...", "    done", "    [torch.onnx] ", "    writing m.onnx")  # the steps, the exporter's stages
    assert all(line.startswith(progress) for line in result.stderr.splitlines()), result.stderr


def test_no_check_skips_the_comparison_and_says_so(workdir):
    result = fxconv_cli("convert", "nets:make", "--input-shape", TINY, "--no-check", "-o", "m.onnx", cwd=workdir)
    assert result.returncode == 0 and "onnxruntime check" not in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "wrote m.onnx (not checked: --no-check)"
    assert (workdir / "m.onnx").is_file()


def test_the_report_is_named_on_stdout_and_readable_like_the_onnx_file(workdir):
    result = fxconv_cli("convert", "nets:make", "--input-shape", TINY, "-o", "m.onnx", "--report", "m.json",
                        cwd=workdir)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-2:] == ["wrote the report m.json", "wrote m.onnx"]
    assert (workdir / "m.json").stat().st_mode & 0o777 == (workdir / "m.onnx").stat().st_mode & 0o777


def test_inspect_into_a_reader_that_goes_away_ends_quietly(workdir):
    assert fxconv_cli("convert", "nets:make", "--input-shape", TINY, "--no-check", "-o", "m.onnx",
                      cwd=workdir).returncode == 0  # fmt: skip
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line (``| head -n 0``)
    inspect = subprocess.run([sys.executable, "-m", "fxconv", "inspect", "m.onnx"], cwd=workdir, stdout=write,
                             stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    os.close(write)
    assert inspect.returncode == 141 and inspect.stderr == "", inspect.stderr


def test_a_failed_check_exits_1_and_writes_nothing(workdir):
    result = fxconv_cli(
        "convert", "nets:noisy", "--input-shape", TINY, "-o", "m.onnx", "--report", "r.json", cwd=workdir
    )
    assert result.returncode == 1
    assert "check FAILED" in result.stdout and "was not written" in result.stderr
    assert not (workdir / "m.onnx").exists()
    assert json.loads((workdir / "r.json").read_text())["output"] is None
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".")] == []  # no staging left behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["torchvision:resnet9000"], "unknown torchvision model 'resnet9000'"),
        (["torchvision:resnet-18"], "unknown torchvision model 'resnet-18': did you mean 'resnet18'"),
        (["nowhere.nothing:make"], "cannot import 'nowhere.nothing'"),
        (["nets:absent"], "module 'nets' has no 'absent'"),
        (["nets:Net.from_nam('small')"], "module 'nets' has no 'Net.from_nam'"),
        (["nets:Net(width=len('ab'))"], "literal arguments"),
        (["broken_syntax:make"], "syntax error in"),
        (["timm:no_such_net"], "unknown timm model 'no_such_net'"),
        (["nets:broken"], "nets:broken() failed: RuntimeError: no weights here"),
        (["just-a-word"], "neither torchvision:NAME"),
        (["nets:make", "--input-shape", "1,3,a,b"], "is not a shape"),
        (["nets:make", "--input-shape", "1,3,5,5"], "rejects the example inputs at module '3'"),
        (["nets:make", "--input-shape", "1,1,16,16"], "expects 3 input channels in a 4-D (N, C, H, W) input"),
        (["nets:make", "--input-shape", "1,3,16"], "its first layer, module '0', is Conv2d(3, 4"),
        (["nets:double"], "the model is torch.float64: onnxruntime has no float64 (double) Conv kernel"),
        (["nets:make", "--opset", "12"], "--opset 12: fxconv writes opsets 13 to"),
        (["nets:make", "--batch", "0"], "'0' is not a positive integer"),
        (["nets:make", "--runtime", "tensorrt"], "invalid choice: 'tensorrt'"),
        (["nets:make", "--method", "3x3"], "invalid choice: '3x3'"),
        (["nets:make", "--layout", "sideways"], "invalid choice: 'sideways'"),
        (["nets:make", "--dense", "--method", "1x1"], "--dense needs --method kernel"),  # the hint as the CLI's flags
        (["nets:Sized", "--input-shape", "1,3,8,16"], "Input height (8) doesn't match model (16)."),  # not Proxy()
        (["nets:make", "--state-dict", "absent.pt"], "cannot load --state-dict"),
        (["nets:make", "-o", "missing/m.onnx"], "directory missing does not exist"),
        (["nets:make", "-o", "."], ". is a directory: name the file to write"),
        (["nets:make", "-o", "existing.onnx"], "existing.onnx exists; pass --force"),
        (["nets:make", "--bogus"], "unrecognized arguments: --bogus"),
        (["nets:make", "-o", "model.json"], "model.json: fxconv writes .onnx, .mlpackage, .pte files"),
        (["nets:make", "-o", "m.pte"], "m.pte: an ExecuTorch program for Arm Ethos-U is for --target ethos-u; "
                                       "--target onnxruntime ships .onnx"),
        (["nets:make", "-o", "m.mlpackage", "--target", "ethos-u"], "is for --target coreml; --target ethos-u ships "
                                                                    ".onnx, .pte"),
        (["existing.onnx", "-o", "m.pte", "--target", "ethos-u"], "an ONNX model converts to an ONNX file"),
        (["nets:make", "-o", "m.onnx", "--device", "ethos-u85-256"], "--device is for .pte files, not m.onnx"),
        (["nets:make", "-o", "m.pte", "--target", "ethos-u", "--no-check"], "--no-check is for .onnx files"),
        (["nets:make", "-o", "m.pte", "--target", "ethos-u", "--device", "u55"], "invalid choice: 'u55'"),
        (["nets:make", "-o", "m.pte", "--target", "ethos-u", "--calibration", "absent"], "no calibration data at"),
        (["nets:make", "-o", "m.pte", "--target", "ethos-u", "--calibration", "ints.npy"],
         "calibration input 0 is torch.int64; the example is torch.float32"),
        (["nets:make", "-o", "m.pte", "--target", "ethos-u", "--calibration", "small.npy"],
         "small.npy: an array of shape (3, 8, 8) is not a stack of inputs of the example's shape (1, 3, 16, 16)"),
        (["nets:make", "-o", "m.mlpackage", "--target", "coreml", "--precision", "int4"], "invalid choice: 'int4'"),
    ],
    ids=[
        "unknown-model", "typo", "no-module", "no-callable", "no-attribute", "not-a-literal", "syntax-error",
        "unknown-timm", "factory-fails", "bad-spec", "shape-unparsable", "shape-rejected", "wrong-channels",
        "wrong-rank", "float64", "opset-12", "batch-0", "unknown-runtime", "unknown-method", "unknown-layout",
        "dense-1x1", "size-message", "bad-state-dict", "missing-dir", "output-is-a-directory", "existing-output",
        "bad-flag", "unknown-suffix", "pte-for-onnxruntime", "mlpackage-for-ethos-u", "onnx-in-pte-out",
        "device-for-onnx", "no-check-for-pte", "unknown-device", "calibration-missing", "calibration-dtype",
        "calibration-shape", "unknown-precision",
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(workdir, args, message):
    """Every refusal is one line and exit 2, and loses nothing: an existing output stays, nothing is left."""
    (workdir / "existing.onnx").write_bytes(b"precious")
    np.save(workdir / "ints.npy", np.zeros((2, 3, 16, 16), np.int64))
    np.save(workdir / "small.npy", np.zeros((3, 8, 8), np.float32))
    (workdir / "broken_syntax.py").write_text("def make(:\n    pass\n")
    # --force: even when allowed to replace it, a failed run leaves the existing file as it was.
    argv = ["convert", *args] + ([] if "-o" in args else ["-o", "existing.onnx", "--force"])
    if "--input-shape" not in args:
        argv += ["--input-shape", TINY]
    result = fxconv_cli(*argv, cwd=workdir)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("fxconv: error:") and message in lines[-1], result.stderr
    assert all(line.startswith(("...", "    done", "fxconv: error:")) for line in lines), result.stderr
    assert "Traceback" not in result.stderr
    assert (workdir / "existing.onnx").read_bytes() == b"precious"
    assert sorted(p.name for p in workdir.iterdir() if p.suffix in (".onnx", ".pte", ".mlpackage")) == ["existing.onnx"]
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".")] == []  # no staging left behind


@pytest.mark.parametrize(
    "args, message",
    [
        (["nets:make", "-o", "a.onnx", "--report", "./a.onnx"], "-o and --report both name a.onnx"),
        (["nets:make", "-o", "a.onnx", "--report", "link.json"], "-o and --report both name link.json"),
        (["existing.onnx", "-o", "sub/../existing.onnx"], "MODEL and -o both name sub/../existing.onnx"),
        (["existing.onnx", "-o", "e.onnx", "--report", "hard.onnx"], "MODEL and --report both name hard.onnx"),
    ],
    ids=["same-path", "symlink", "dot-dot", "hard-link"],
)
def test_two_of_the_files_naming_one_file_are_refused_before_any_work_even_with_force(workdir, args, message):
    (workdir / "existing.onnx").write_bytes(b"precious")
    (workdir / "sub").mkdir()
    (workdir / "a.onnx").write_bytes(b"old")
    (workdir / "link.json").symlink_to("a.onnx")
    os.link(workdir / "existing.onnx", workdir / "hard.onnx")
    result = fxconv_cli("convert", *args, "--input-shape", TINY, "--force", cwd=workdir)
    assert result.returncode == 2 and result.stderr.strip() == f"fxconv: error: {message}: give each its own file"
    assert (workdir / "existing.onnx").read_bytes() == b"precious" and (workdir / "a.onnx").read_bytes() == b"old"


def test_inspect_a_corrupt_file_is_one_line(workdir):
    (workdir / "bad.onnx").write_bytes(b"not onnx at all")
    result = fxconv_cli("inspect", "bad.onnx", cwd=workdir)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "not a valid ONNX model" in result.stderr


def test_debug_shows_the_traceback(workdir):
    result = fxconv_cli("convert", "nets:broken", "--input-shape", TINY, "-o", "m.onnx", "--debug", cwd=workdir)
    assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.slow
def test_dense_refuses_squeeze_and_excitation_in_one_line_and_approximate_says_so(workdir):
    args = ("convert", "torchvision:mobilenet_v3_small", "--input-shape", "1,3,64,64", "--dense")
    refused = fxconv_cli(*args, "-o", "a.onnx", cwd=workdir)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "module 'features.1.block.1.avgpool'" in refused.stderr.splitlines()[-1]
    assert "--approximate" in refused.stderr and not (workdir / "a.onnx").exists()
    accepted = fxconv_cli(*args, "--approximate", "-o", "b.onnx", cwd=workdir)
    assert accepted.returncode == 0, accepted.stderr
    assert "APPROXIMATE: 9 global pools" in accepted.stdout and "check PASSED" in accepted.stdout


def test_version():
    result = subprocess.run([sys.executable, "-m", "fxconv", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"fxconv {fxconv.__version__}"


def test_nothing_converted_is_said_and_strict_writes_nothing(workdir):
    plain = fxconv_cli("convert", "nets:per_pixel", "--input-shape", TINY, "-o", "p.onnx", cwd=workdir)
    assert plain.returncode == 0, plain.stderr
    assert "no Linear was converted" in plain.stderr and "[not-2d]" in plain.stdout
    assert "--scope all converts it as a 1x1 convolution" in plain.stdout  # the hint in the CLI's own words
    assert "scope='all'" not in plain.stdout and "CLI:" not in plain.stdout
    strict = fxconv_cli("convert", "nets:per_pixel", "--input-shape", TINY, "--strict", "-o", "s.onnx", cwd=workdir)
    assert strict.returncode == 1 and "--strict: 1 Linear left alone; nothing was written" in strict.stderr
    assert not (workdir / "s.onnx").exists() and "Traceback" not in strict.stderr


def test_scope_all_converts_the_per_position_linear_the_default_leaves(workdir):
    result = fxconv_cli(
        "convert", "nets:per_pixel", "--input-shape", TINY, "--scope", "all", "--strict", "-o", "a.onnx",
        "--report", "a.json", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--scope all" in result.stdout and "(N, H, W, C) as (N, C, H, W) -> conv2d 1x1" in result.stdout
    assert "check PASSED" in result.stdout and "Gemm/MatMul reading a weight: 0" in result.stdout
    report = json.loads((workdir / "a.json").read_text())
    assert report["scope"] == "all" and report["converted"][0]["layout"] == "(N, H, W, C) as (N, C, H, W)"
    bad = fxconv_cli("convert", "nets:make", "--input-shape", TINY, "--scope", "every", "-o", "b.onnx", cwd=workdir)
    assert bad.returncode == 2 and "invalid choice: 'every'" in bad.stderr and not (workdir / "b.onnx").exists()


def test_a_target_chooses_and_the_report_says_what_it_kept(workdir):
    result = fxconv_cli(
        "convert", "nets:make", "--input-shape", TINY, "--target", "ethos-u", "--strict", "-o", "e.onnx",
        "--report", "e.json", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--target ethos-u, --method channels-last" in result.stdout and "1 kept for the target" in result.stdout
    assert "check PASSED" in result.stdout
    # The file's one Conv is the model's own; its head is a Gemm re-laid, not a convolution: the table says so.
    assert re.search(r"Conv +1\n", result.stdout) and "replace Linears" not in result.stdout
    assert re.search(r"Gemm +2   <- 1 Linears re-laid, not made convolutions \(channels-last\)", result.stdout)
    report = json.loads((workdir / "e.json").read_text())
    assert report["target"] == "ethos-u" and [c["name"] for c in report["converted"]] == ["3"]
    assert "Ethos-U" in report["converted"][0]["why"]
    assert [(k["name"], k["code"]) for k in report["kept"]] == [("5", "kept")]
    slower = fxconv_cli(
        "convert", "nets:make", "--input-shape", TINY, "--target", "ethos-u", "--method", "kernel", "-o", "k.onnx",
        cwd=workdir,
    )  # fmt: skip
    assert slower.returncode == 0 and "fxconv: warning: --method kernel with --target ethos-u" in slower.stderr
    assert "Traceback" not in slower.stderr and "FxconvWarning" not in slower.stderr and ".py:" not in slower.stderr


@pytest.mark.slow
@pytest.mark.parametrize("step", ["tracing", "exporting", "checking"])
def test_ctrl_c_in_any_step_even_pressed_again_exits_130_in_one_line_and_leaves_nothing(workdir, step):
    process = subprocess.Popen(
        [sys.executable, "-m", "fxconv", "convert", "torchvision:vgg11", "--input-shape", "1,3,64,64", "-o", "v.onnx"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in process.stderr:
        if line.startswith(f"... {step}"):
            break
    while process.poll() is None:  # Ctrl-C pressed again and again: each one may land anywhere in the exit
        process.send_signal(signal.SIGINT)
        time.sleep(0.05)
    rest = process.stderr.read()
    assert process.returncode == 130, rest
    assert rest.strip().splitlines()[-1] == "fxconv: interrupted; nothing was written" and "Traceback" not in rest, rest
    assert sorted(p.name for p in workdir.iterdir()) == ["nets.py"]  # no file, no staging folder


def test_an_interrupt_a_library_swallows_still_stops_the_run(workdir, monkeypatch, capsys):
    """Ctrl-C mid-export inside code that catches KeyboardInterrupt: the run still ends with 130, no file."""
    import fxconv.export
    from fxconv import cli

    real = fxconv.export.export_onnx

    def swallowing_export(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass  # what a careless library does
        return real(*args, **kwargs)

    monkeypatch.setattr(fxconv.export, "export_onnx", swallowing_export)
    monkeypatch.chdir(workdir)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup and in some CI workers
    code = cli.main(["convert", "nets:make", "--input-shape", TINY, "-o", "m.onnx"])
    assert (
        code == 130 and capsys.readouterr().err.strip().splitlines()[-1] == "fxconv: interrupted; nothing was written"
    )
    assert sorted(p.name for p in workdir.iterdir()) == ["nets.py"]
    assert signal.getsignal(signal.SIGINT) is before  # the handler is given back


INTERRUPTED_FINALIZER = """
import os, signal, sys
import fxconv.export
from fxconv import cli

class Finalizer:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(1000))  # the handler runs here, inside __del__: Python would print "Exception ignored"

real = fxconv.export.export_onnx

def export_after_a_finalizer(*args, **kwargs):
    Finalizer()  # collected at once
    return real(*args, **kwargs)

fxconv.export.export_onnx = export_after_a_finalizer
sys.exit(cli.main(["convert", "nets:make", "--input-shape", "1,3,16,16", "-o", "m.onnx"]))
"""


def test_an_interrupt_inside_a_finalizer_stops_the_run_in_one_line(workdir):
    """In a subprocess: pytest would catch the "Exception ignored" report itself."""
    result = subprocess.run([sys.executable, "-c", INTERRUPTED_FINALIZER], cwd=workdir, capture_output=True, text=True)
    assert result.returncode == 130 and "Exception ignored" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "fxconv: interrupted; nothing was written"
    assert sorted(p.name for p in workdir.iterdir()) == ["nets.py"]


def test_an_onnx_file_is_rewritten_checked_and_left_as_it_was(workdir):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 10), nn.ReLU(), nn.Linear(10, 5)
    )
    torch.onnx.export(
        model.eval(),
        (torch.randn(1, 3, 16, 16),),
        workdir / "in.onnx",
        dynamo=False,
        opset_version=13,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
    )
    before = (workdir / "in.onnx").read_bytes()
    result, ending = fxconv_cli_counting_torch("convert", "in.onnx", "-o", "out.onnx", "--report", "r.json",
                                               "--strict", cwd=workdir)  # fmt: skip
    assert ending == "0 False", result.stderr  # an ONNX file in, an ONNX file out, checked: no torch
    assert ", write " in result.stdout and "export" not in result.stdout  # it writes a file: it exports nothing
    assert "check PASSED" in result.stdout and "against the original in.onnx" in result.stderr
    assert "Gemm/MatMul reading a weight: 0" in result.stdout and "<- 2 replace Linears" in result.stdout
    assert (workdir / "in.onnx").read_bytes() == before
    written = fxconv.load_onnx(workdir / "out.onnx")
    assert "Gemm" not in fxconv.op_census(written) and written.opset_import[0].version == 13
    report = json.loads((workdir / "r.json").read_text())
    assert [c["name"] for c in report["converted"]] == ["3.weight", "5.weight"]
    assert report["artifact"]["check"]["passed"]

    again = fxconv_cli("convert", "in.onnx", "-o", "out.onnx", cwd=workdir)
    assert again.returncode == 2 and "out.onnx exists; pass --force" in again.stderr
    onnx = pytest.importorskip("onnx")
    onnx.save(written, workdir / "external.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    (workdir / "weights.bin").rename(workdir / "elsewhere.bin")
    for args, message in [
        (["in.onnx", "--batch", "1"], "--batch: not for an ONNX input"),
        (["corrupt.onnx"], "corrupt.onnx is not a valid ONNX model"),
        (["external.onnx"], "external.onnx keeps its weights in weights.bin, which is not beside it"),
    ]:
        (workdir / "corrupt.onnx").write_bytes(b"not onnx")
        refused = fxconv_cli("convert", *args, "-o", "b.onnx", cwd=workdir)
        assert refused.returncode == 2 and message in refused.stderr.splitlines()[-1], refused.stderr
        assert "Traceback" not in refused.stderr and not (workdir / "b.onnx").exists()


def test_every_input_a_model_takes_is_described_on_the_command_line(workdir):
    """Token ids for a model that starts with an Embedding; several inputs, by position and by name, with dtypes,
    ranges and values from a file; a model of several inputs given none is told the flags, in one line."""
    tokens = fxconv_cli("convert", "nets:Tokens", "-o", "t.onnx", "--report", "t.json", cwd=workdir)
    assert tokens.returncode == 0 and "check PASSED" in tokens.stdout, tokens.stderr
    assert json.loads((workdir / "t.json").read_text())["input_shape"] == [1, 32]
    assert fxconv.load_onnx(workdir / "t.onnx").graph.input[0].type.tensor_type.elem_type == 7  # int64 ids

    bare = fxconv_cli("convert", "nets:Pair", "-o", "p.onnx", cwd=workdir)
    assert bare.returncode == 2 and bare.stderr.strip().splitlines()[-1] == (
        "fxconv: error: the model's forward takes 2 inputs (image, other): describe each with --input "
        "image=SHAPE --input other=SHAPE (SHAPE[:DTYPE[:LOW,HIGH]], or a .npy file)")  # fmt: skip
    np.save(workdir / "other.npy", np.ones((2, 3, 4, 4), np.float64))
    given = fxconv_cli("convert", "nets:Pair", "--input", "2,3,4,4:float32:-1,1", "--input", "other=other.npy",
                       "--input", "mask=2,5:int64:0,1", "-o", "p.onnx", "--report", "p.json", cwd=workdir)  # fmt: skip
    assert given.returncode == 0 and "check PASSED" in given.stdout, given.stderr
    assert json.loads((workdir / "p.json").read_text())["input_shape"] == [[2, 3, 4, 4], [2, 3, 4, 4], [2, 5]]
    inputs = fxconv.load_onnx(workdir / "p.onnx").graph.input
    assert [i.type.tensor_type.elem_type for i in inputs] == [1, 1, 7]  # float32 (the file's float64 cast), int64


@pytest.mark.slow
def test_a_whisper_encoder_gets_its_mel_frames_and_a_decoder_the_cache_hint_in_flags(workdir):
    whisper = fxconv_cli("convert", "transformers:WhisperForAudioClassification(d_model=64, encoder_layers=1, "
                         "encoder_attention_heads=2, encoder_ffn_dim=128)", "--scope", "all", "-o", "w.onnx",
                         "--report", "w.json", cwd=workdir)  # fmt: skip
    assert whisper.returncode == 0, whisper.stderr
    assert json.loads((workdir / "w.json").read_text())["input_shape"] == [1, 80, 3000]  # 2 x max_source_positions
    llama = fxconv_cli("convert", "transformers:LlamaForCausalLM(hidden_size=64, num_hidden_layers=1, "
                       "num_attention_heads=2, num_key_value_heads=2, intermediate_size=128, vocab_size=100)",
                       "--capture", "export",
                       "-o", "l.onnx", cwd=workdir)  # fmt: skip
    assert llama.returncode == 2 and "model.config" not in llama.stderr
    assert 'add use_cache=False to the model\'s keywords: "transformers:CLASS(..., use_cache=False)"' in llama.stderr


def test_a_long_step_says_it_still_runs_and_passes_on_the_exporter_s_stages(workdir, monkeypatch, capsys):
    from fxconv import cli

    monkeypatch.chdir(workdir)
    monkeypatch.syspath_prepend(str(workdir))
    monkeypatch.setattr(cli, "HEARTBEAT_S", 0.01)
    assert cli.main(["convert", "nets:make", "--input-shape", TINY, "-o", "m.onnx"]) == 0
    err = capsys.readouterr().err
    exporting = err.split("... exporting the converted model to ONNX")[1].split("    done in")[0]
    assert "    ... still exporting the converted model to ONNX: " in exporting
    assert "    [torch.onnx] Translate the graph into ONNX..." in exporting and "    writing m.onnx" in exporting
    assert not logging.getLogger("fxconv").handlers  # the command line's handler is gone with its run
