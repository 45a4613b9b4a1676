"""``fxconv.ship`` and ``fxconv convert -o FILE``: the file each target's compiler ships, written and proven on
the real compilers — an ExecuTorch program for Ethos-U (Vela, the TOSA reference model), a Core ML package
(coremltools), an ONNX file (onnxruntime) — and every refusal before work, with nothing left behind."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fxconv
from fxconv.artifacts import coreml, ethos_u

from conftest import fxconv_cli

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))  # the models the Targets table measures
from targets import CifarCnn, RotaryBlock


def _delegates(path: Path) -> list[str]:
    """The backends an ExecuTorch program's first method delegates to, read from the file."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(path.read_bytes()).program
    return [d.id for d in program.execution_plan[0].delegates]


def _bert(layers: int = 1):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16)  # fmt: skip
    torch.manual_seed(0)
    return transformers.BertModel(config).eval(), torch.randint(0, 100, (1, 8))


# -- Ethos-U: a .pte --------------------------------------------------------------------------------------


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_a_pte_is_an_executorch_program_whose_tosa_gives_the_original_s_int8_outputs(capture, tmp_path):
    """The program Vela compiled, run in the TOSA reference model, gives what the original's int8 program gives
    there; Vela's cycles side by side — the channels-last head saves the NHWC flow's Transposes."""
    torch.manual_seed(0)
    model, x = CifarCnn().eval(), torch.randn(1, 3, 32, 32)
    calibration = [torch.randn(1, 3, 32, 32) for _ in range(3)]
    shipped = fxconv.ship(model, x, tmp_path / "cnn.pte", target="ethos-u", capture=capture, calibration=calibration)
    proof = shipped.proof
    assert shipped.passed and shipped.path == tmp_path / "cnn.pte" and proof.runs == 3
    assert proof.steps <= ethos_u.STEPS and proof.calibration == "3 given inputs"
    assert proof.converted.cycles < proof.original.cycles and proof.converted.device == "ethos-u55-128"
    assert _delegates(shipped.path) == ["EthosUBackend"]
    assert "TOSA reference model check PASSED" in str(shipped) and "cycles original" in str(shipped)
    assert [p.name for p in tmp_path.iterdir()] == ["cnn.pte"]  # the staging folder is gone


def test_the_tosa_proof_fails_a_program_that_differs_and_nothing_is_written(tmp_path, monkeypatch):
    """A rewrite that changed the function is caught in the TOSA reference model: a converted model whose head
    reads its map in the wrong order (the conversion's own self-check switched off) gives other int8 outputs."""
    torch.manual_seed(0)
    model, x = CifarCnn().eval(), torch.randn(1, 3, 32, 32)
    module, _ = fxconv.convert(model, x, target="ethos-u")
    wrong = CifarCnn().eval()  # other weights: what a wrong rewrite computes
    monkeypatch.setattr(fxconv.artifacts, "_convert_model", lambda *a, **k: (wrong, fxconv.convert(model, x)[1]))
    (tmp_path / "cnn.pte").write_bytes(b"precious")
    with pytest.warns(fxconv.FxconvWarning, match="not representative"), \
            pytest.raises(fxconv.VerificationError, match="failed its proof") as caught:  # fmt: skip
        fxconv.ship(model, x, tmp_path / "cnn.pte", target="ethos-u", force=True)
    assert not caught.value.shipped.passed and caught.value.shipped.path is None
    assert caught.value.shipped.proof.steps > 1
    assert (tmp_path / "cnn.pte").read_bytes() == b"precious" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.slow
def test_a_hugging_face_encoder_ships_for_ethos_u85(tmp_path):
    model, ids = _bert()
    shipped = fxconv.ship(model, ids, tmp_path / "bert.pte", target="ethos-u", device="ethos-u85-256",
                          calibration=[torch.randint(0, 100, (1, 8)) for _ in range(2)])  # fmt: skip
    assert shipped.passed and shipped.proof.converted.device == "ethos-u85-256"
    assert len(shipped.report.converted) == 6 and shipped.proof.steps <= 1
    assert shipped.proof.converted.cycles < shipped.proof.original.cycles
    assert set(_delegates(shipped.path)) == {"EthosUBackend"}


# -- Core ML: an .mlpackage ------------------------------------------------------------------------------


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_an_mlpackage_holds_no_linear_and_no_more_transposes_than_the_original_s(capture, tmp_path):
    torch.manual_seed(0)
    model, x = RotaryBlock(rotary=8, kv_heads=4).eval(), torch.randn(1, 8, 32)
    shipped = fxconv.ship(model, x, tmp_path / "block.mlpackage", target="coreml", capture=capture)
    proof = shipped.proof
    assert shipped.path.is_dir() and (shipped.path / "Manifest.json").is_file()
    assert proof.converted["linear"] == 0 and proof.original["linear"] == 4 and proof.converted["einsum"] == 2 * 4
    assert proof.converted["transpose"] < proof.original["transpose"]
    written = coreml._census(coreml._written(shipped.path))
    assert written == proof.converted  # the figures are the file's
    assert (proof.deployment, proof.precision) == ("iOS17", "float16")
    if sys.platform != "darwin":
        assert proof.max_abs_diff is None and "Core ML predicts on macOS only" in str(proof)


def test_a_hugging_face_encoder_ships_to_core_ml_in_float32_for_ios18(tmp_path):
    model, ids = _bert()
    shipped = fxconv.ship(model, ids, tmp_path / "bert.mlpackage", target="coreml", deployment="iOS18",
                          precision="float32")  # fmt: skip
    assert shipped.proof.converted["linear"] == 0 and shipped.proof.converted["conv"] >= 6
    assert "(iOS18, float32)" in str(shipped.proof)


def test_an_existing_package_is_replaced_whole_only_with_force_and_kept_on_ctrl_c(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model, x = CifarCnn().eval(), torch.randn(1, 3, 32, 32)
    old = tmp_path / "m.mlpackage"
    old.mkdir()
    (old / "old-file").write_text("precious")
    with pytest.raises(fxconv.InvalidArgumentError, match="m.mlpackage exists; pass --force"):
        fxconv.ship(model, x, old, target="coreml")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(coreml, "_written", interrupted)  # after the package is saved in the staging folder
    with pytest.raises(KeyboardInterrupt):
        fxconv.ship(model, x, old, target="coreml", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mlpackage"] and (old / "old-file").exists()
    monkeypatch.undo()
    shipped = fxconv.ship(model, x, old, target="coreml", force=True)
    assert shipped.passed and not (old / "old-file").exists() and (old / "Manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mlpackage"]


# -- the ONNX file, and every kind's refusals ----------------------------------------------------------------


def test_an_onnx_file_s_conversion_ships_through_the_same_call(tmp_path):
    torch.manual_seed(0)
    model, x = CifarCnn().eval(), torch.randn(1, 3, 32, 32)
    original = fxconv.export_onnx(model, x, tmp_path / "in.onnx")
    with pytest.raises(fxconv.InvalidArgumentError, match="capture=: not for an ONNX model"):
        fxconv.ship(original, None, tmp_path / "out.onnx", capture="export")
    shipped = fxconv.ship(original, None, tmp_path / "out.onnx")
    assert shipped.passed and shipped.proof.check.passed and shipped.proof.weight_products == 0
    assert shipped.proof.reference == f"the original {original}"
    assert [c.name for c in shipped.report.converted] == [c.name for c in fxconv.convert(model, x)[1].converted]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": "m.txt"}, "fxconv writes .onnx, .mlpackage, .pte files"),
        ({"path": "m.pte"}, "is for target='ethos-u'; target='onnxruntime' ships .onnx"),
        ({"path": "m.pte", "target": "ethos-u", "batch": 1}, "batch= is for .onnx files, not m.pte"),
        ({"path": "m.onnx", "device": "ethos-u55-128"}, "device= is for .pte files"),
        ({"path": "m.pte", "target": "ethos-u", "device": "ethos-u99"}, "unknown device 'ethos-u99'"),
        ({"path": "m.mlpackage", "target": "coreml", "deployment": "iOS12"}, "unknown deployment 'iOS12'"),
        ({"path": "m.onnx", "colour": "red"}, "unknown option 'colour'"),
        ({"path": "m.pte", "target": "ethos-u", "calibration": [torch.randn(1, 3, 8, 8)]}, "has shape (1, 3, 8, 8)"),
        ({"path": "m.pte", "target": "ethos-u", "calibration": [torch.zeros(1, 3, 32, 32, dtype=torch.long)]},
         "is torch.int64; the example is torch.float32"),
        ({"path": "m.pte", "target": "ethos-u", "calibration": []}, "holds no inputs"),
        ({"path": "absent/m.onnx"}, "directory absent does not exist"),
        ({"path": "m.pte", "target": "tpu"}, "unknown target 'tpu'"),
    ],
)  # fmt: skip
def test_what_cannot_be_shipped_is_refused_before_any_work(kwargs, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fxconv.artifacts, "_convert_model", None)  # any work would fail on calling it
    path = kwargs.pop("path")
    with pytest.raises(fxconv.InvalidArgumentError, match=_escaped(message)):
        fxconv.ship(CifarCnn(), torch.randn(1, 3, 32, 32), path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.parametrize(("suffix", "target", "package", "extra"),
                         [(".mlpackage", "coreml", "coremltools", "coreml"),
                          (".pte", "ethos-u", "tosa_reference_model", "ethos-u")])  # fmt: skip
def test_a_missing_compiler_names_the_extra_that_brings_it(suffix, target, package, extra, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    from fxconv import cli

    result = cli.main(["convert", "nets:absent", "--target", target, "-o", str(tmp_path / f"m{suffix}")])
    assert result == 2
    with pytest.raises(fxconv.InvalidArgumentError, match=_escaped(f"pip install 'fxconv[{extra}]'")):
        fxconv.ship(CifarCnn(), torch.randn(1, 3, 32, 32), tmp_path / f"m{suffix}", target=target)


# -- the command line ---------------------------------------------------------------------------------------

NETS = """
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
"""


@pytest.mark.slow
def test_the_command_line_writes_each_target_s_file_and_its_proof(tmp_path):
    (tmp_path / "nets.py").write_text(NETS)
    np.save(tmp_path / "data.npy", np.random.default_rng(0).standard_normal((6, 3, 16, 16), dtype=np.float32))
    shape = ["--input-shape", "1,3,16,16"]
    pte = fxconv_cli("convert", "nets:make", *shape, "--target", "ethos-u", "--device", "ethos-u85-256",
                     "--calibration", "data.npy", "-o", "m.pte", "--report", "pte.json", cwd=tmp_path)  # fmt: skip
    assert pte.returncode == 0, pte.stderr
    assert "TOSA reference model check PASSED" in pte.stdout and "Ethos-U (ethos-u85-256, Vela)" in pte.stdout
    assert "not representative" not in pte.stderr and "running its TOSA programs" in pte.stderr
    document = json.loads((tmp_path / "pte.json").read_text())
    assert document["output"] == "m.pte" and document["artifact"]["calibration"] == "6 given inputs"
    assert document["artifact"]["converted"]["cycles"] == sum(document["artifact"]["converted"]["parts"])
    assert _delegates(tmp_path / "m.pte") == ["EthosUBackend"]

    package = fxconv_cli("convert", "nets:make", *shape, "--target", "coreml", "-o", "m.mlpackage", cwd=tmp_path)
    assert package.returncode == 0, package.stderr
    assert "MIL op" in package.stdout and (tmp_path / "m.mlpackage" / "Manifest.json").is_file()
    random = fxconv_cli("convert", "nets:make", *shape, "--target", "ethos-u", "-o", "r.pte", cwd=tmp_path)
    assert random.returncode == 0 and "warning: the int8 scales are calibrated on 4 random inputs" in random.stderr
    assert "--calibration DATA" in random.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_calibration_data_is_read_from_npy_npz_pt_files_and_folders_in_the_example_s_batch(tmp_path):
    from fxconv.artifacts.calibration import load_calibration

    x = torch.zeros(2, 3, 4, 4)
    folder = tmp_path / "data"
    folder.mkdir()
    np.save(folder / "a.npy", np.ones((4, 3, 4, 4), np.float64))  # two inputs of the example's batch of 2
    np.savez(folder / "b.npz", first=np.full((2, 3, 4, 4), 2, np.float32), second=np.full((2, 3, 4, 4), 3, np.float32))
    torch.save([torch.full((2, 3, 4, 4), 4.0)], folder / "c.pt")
    (folder / "notes.txt").write_text("not data: skipped")
    samples = load_calibration(folder, x)
    assert [s.tensors[0].shape for s in samples] == [(2, 3, 4, 4)] * 5
    assert [s.tensors[0][0, 0, 0, 0].item() for s in samples] == [1, 1, 2, 3, 4]
    assert all(s.tensors[0].dtype == torch.float32 for s in samples)  # float64 cast to the example's dtype
    assert len(load_calibration(folder / "c.pt", x)) == 1
    np.save(tmp_path / "odd.npy", np.ones((3, 3, 4, 4), np.float32))  # 3 rows for a batch of 2
    with pytest.raises(fxconv.InvalidArgumentError, match="is not a stack of inputs of the example's shape"):
        load_calibration(tmp_path / "odd.npy", x)
    with pytest.raises(fxconv.InvalidArgumentError, match="for a model of one input"):
        load_calibration(folder, (x, x))


def test_a_compiler_that_fails_is_named_in_one_line_and_nothing_is_written(tmp_path, monkeypatch):
    def fails(*args):
        raise RuntimeError("Unsupported operator\nwith pages of detail")

    monkeypatch.setattr(ethos_u, "_lower", fails)
    with pytest.raises(fxconv.CompilerError, match="ExecuTorch's Arm flow failed on the original for ethos-u55-128: "
                                                   "RuntimeError: Unsupported operator$"):  # fmt: skip
        fxconv.ship(CifarCnn().eval(), torch.randn(1, 3, 32, 32), tmp_path / "m.pte", target="ethos-u",
                    calibration=[torch.randn(1, 3, 32, 32)])  # fmt: skip
    assert list(tmp_path.iterdir()) == []
